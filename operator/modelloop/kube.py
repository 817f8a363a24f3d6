"""The one Kubernetes client wrapper: configuration (in-cluster or kubeconfig), start-up checks, and the
writes the controllers make.

kopf keeps its own watch connections and caches; this module is for the calls the operator makes beside
them. The calls are synchronous (the kubernetes client); async controllers run them in threads.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

__all__ = [
    "FIELD_MANAGER",
    "PERMANENT_STATUSES",
    "REQUEST_TIMEOUT",
    "ApiException",
    "Applied",
    "Conflict",
    "PreflightError",
    "api_message",
    "create_job",
    "current_namespace",
    "get_object",
    "list_objects",
    "patch_labels",
    "patch_status",
    "preflight",
    "register_model_version",
    "server_side_apply",
]
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from modelloop.api import GROUP, KINDS, MODEL_VERSION, VERSION

_shared: ApiClient | None = None
_shared_lock = threading.Lock()

# Every call beside kopf's watches has a deadline: (connect, read) seconds. A hung API server then costs a
# reconcile a retry, never a worker thread for good.
REQUEST_TIMEOUT = (5.0, 30.0)
# The field manager of everything the operator writes with server-side apply.
FIELD_MANAGER = "modelloop"
# Answers that retrying the same request cannot change: the request itself is wrong (400, 422) or not
# allowed (403). They are reported in the object's status, not only logged.
PERMANENT_STATUSES = frozenset({400, 403, 422})


class Conflict(Exception):
    """The object changed since it was read (409 on a resourceVersion precondition): read it again and
    decide again. ``key`` is the object's (namespace, name)."""

    def __init__(self, message: str, key: tuple[str, str]) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Applied:
    """The outcome of a server-side apply: the object as the server has it now, or, when another field
    manager owns a field we set, ``conflict`` with the server's message (nothing was changed)."""

    obj: dict[str, Any] | None
    conflict: str | None = None


def api_message(error: BaseException) -> str:
    """What the API server said, for a log line or a condition's message:
    ``422 Unprocessable Entity: Job.batch "x" is invalid: ...`` for an ApiException (the server's own
    message from the Status body, else the body's text, cut to 500 characters: it can be a whole
    manifest echoed back); for any other error its type and text."""
    if not isinstance(error, ApiException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    body = error.body
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    message = text
    try:
        status = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            message = status["message"]
    head = f"{error.status} {error.reason}"
    message = message.strip()[:500]
    return f"{head}: {message}" if message else head


class PreflightError(RuntimeError):
    """The operator cannot work against this cluster; the message says why and what to do."""


def api_client(connection_pool_maxsize: int | None = None) -> ApiClient:
    """A client configured the way kubectl would be: in-cluster when running in a pod, else the
    kubeconfig named by KUBECONFIG (or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=_kubeconfig_path(), client_configuration=configuration
            )
        except (ConfigException, FileNotFoundError) as error:
            raise PreflightError(
                f"no Kubernetes configuration found (in-cluster or kubeconfig): {error}"
            ) from error
    if connection_pool_maxsize is not None:
        configuration.connection_pool_maxsize = connection_pool_maxsize
    return ApiClient(configuration)


def preflight(plurals: Iterable[str] | None = None, timeout: float = 10.0) -> str:
    """Check that the API server answers and serves our kinds; return its version.

    Raises PreflightError with a message a person can act on: which server could not be reached, or
    which CustomResourceDefinitions are missing and how to install them.
    """
    wanted = set(plurals if plurals is not None else (info.plural for info in KINDS))
    client = api_client()
    server = client.configuration.host
    with client:
        try:
            version = kubernetes.client.VersionApi(client).get_code(_request_timeout=timeout)
        except (HTTPError, OSError) as error:
            raise PreflightError(f"cannot reach the Kubernetes API server at {server}: {error}") from error
        except ApiException as error:
            raise PreflightError(
                f"the Kubernetes API server at {server} refused us: {error.reason}"
            ) from error
        try:
            served = kubernetes.client.CustomObjectsApi(client).get_api_resources(
                GROUP, VERSION, _request_timeout=timeout
            )
            available = {resource.name for resource in served.resources}
        except ApiException as error:
            if error.status != 404:
                raise PreflightError(f"cannot list the {GROUP}/{VERSION} API: {error.reason}") from error
            available = set()
    missing = sorted(wanted - available)
    if missing:
        crds = ", ".join(f"{plural}.{GROUP}" for plural in missing)
        raise PreflightError(
            f"the cluster at {server} does not serve {crds}: install the CRDs first "
            "(kubectl apply --server-side -f crds/, or `modelloop crds | kubectl apply --server-side -f -`)"
        )
    return str(version.git_version)


def shared_client() -> ApiClient:
    """The process's client, made on first use, with a connection pool sized for concurrent controllers."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = api_client(connection_pool_maxsize=32)
        return _shared


def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create a Job; return False when one of that name exists already (Job names are deterministic, so
    that is the same Job, created before a restart or by a concurrent reconcile)."""
    api = kubernetes.client.BatchV1Api(shared_client())
    try:
        # The response is not read (_preload_content=False): deserializing a whole Job per create cost the
        # operator memory and time it has better uses for.
        _discard(
            api.create_namespaced_job(
                manifest["metadata"]["namespace"],
                cast(Any, dict(manifest)),
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def patch_status(
    plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
) -> str:
    """Merge-patch the status subresource of one of our objects, only if it still has
    ``resource_version`` (optimistic concurrency); return its new resourceVersion.

    Raises Conflict when the object changed since it was read: a decision made on stale data never
    overwrites newer status. Only ``modelloop.runtime.status.StatusWriter`` calls this.
    """
    body: dict[str, Any] = {"status": dict(status)}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        response = kubernetes.client.CustomObjectsApi(shared_client()).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as error:
        if error.status == 409:
            raise Conflict(api_message(error), (namespace, name)) from error
        raise
    return _resource_version(response)


def patch_labels(
    plural: str, namespace: str, name: str, labels: Mapping[str, str], resource_version: str | None
) -> str:
    """Merge labels into one of our objects (the others it has stay), only if it still has
    ``resource_version``; return its new resourceVersion. Raises Conflict as ``patch_status`` does."""
    body: dict[str, Any] = {"metadata": {"labels": dict(labels)}}
    if resource_version is not None:
        body["metadata"]["resourceVersion"] = resource_version
    try:
        response = kubernetes.client.CustomObjectsApi(shared_client()).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as error:
        if error.status == 409:
            raise Conflict(api_message(error), (namespace, name)) from error
        raise
    return _resource_version(response)


def server_side_apply(plural: str, manifest: Mapping[str, Any], *, force: bool = False) -> Applied:
    """Server-side apply ``manifest``, a namespaced custom object of any group (``plural`` is its
    resource, e.g. inferenceservices), as field manager ``modelloop``.

    For the objects the operator owns in other systems (KServe InferenceServices, HTTPRoutes,
    SeldonDeployments): only the fields in ``manifest`` are ours, and a field another manager set is
    not taken from it: the conflict comes back in ``Applied.conflict`` for the caller to report in
    status, instead of the two managers fighting. ``force`` takes the fields (for fields that are ours
    by contract).
    """
    group, _, version = str(manifest["apiVersion"]).rpartition("/")
    meta = manifest["metadata"]
    try:
        response = kubernetes.client.CustomObjectsApi(shared_client()).patch_namespaced_custom_object(
            group,
            version,
            meta["namespace"],
            plural,
            meta["name"],
            dict(manifest),
            field_manager=FIELD_MANAGER,
            force=force,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as error:
        if error.status == 409:
            return Applied(obj=None, conflict=api_message(error))
        raise
    raw = cast(Any, response)
    try:
        return Applied(obj=cast(dict[str, Any], json.loads(raw.data)))
    finally:
        raw.release_conn()


def delete_object(plural: str, namespace: str, name: str, uid: str, resource_version: str) -> bool:
    """Delete one of our objects if it is still exactly what was decided on (same uid and resourceVersion);
    return False when it is gone already or has changed since (decide again)."""
    options = kubernetes.client.V1DeleteOptions(
        preconditions=kubernetes.client.V1Preconditions(uid=uid, resource_version=resource_version)
    )
    try:
        _discard(
            kubernetes.client.CustomObjectsApi(shared_client()).delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body=options,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
    except ApiException as error:
        if error.status in (404, 409):
            return False
        raise
    return True


def list_objects(plural: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Our objects of one kind in a namespace, selected by labels."""
    listed = cast(
        dict[str, Any],
        kubernetes.client.CustomObjectsApi(shared_client()).list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT
        ),
    )
    return list(listed.get("items") or [])


def _resource_version(response: Any) -> str:
    """The resourceVersion of the object in an unparsed write response (and release its connection)."""
    try:
        return str(json.loads(response.data)["metadata"]["resourceVersion"])
    finally:
        response.release_conn()


def _discard(response: Any) -> None:
    """Read an unparsed response's bytes (so that its connection can be reused) and let it go."""
    response.data  # noqa: B018  # reading drains the connection for the pool
    response.release_conn()


def register_model_version(
    namespace: str, model_name: str, render: Callable[[int], dict[str, Any]], attempts: int = 100
) -> dict[str, Any]:
    """Create the next version of a model: one more than the highest registered. The version is part of
    the object's name, so when two runs finish at once the API server refuses the second create, which
    then takes the next number."""
    api = kubernetes.client.CustomObjectsApi(shared_client())
    # By spec, not by label: a user may register versions by hand, with labels or without.
    existing = [
        mv
        for mv in list_objects(MODEL_VERSION.plural, namespace, "")
        if (mv.get("spec") or {}).get("modelName") == model_name
    ]
    version = max((int(mv["spec"]["version"]) for mv in existing), default=0)
    for _ in range(attempts):
        # Each refusal means that number was just taken: the next one is tried, so that numbers stay
        # consecutive however many registrations race.
        version += 1
        manifest = render(version)
        try:
            created = cast(
                dict[str, Any],
                api.create_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    MODEL_VERSION.plural,
                    manifest,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        except ApiException as error:
            if error.status == 409:
                continue
            raise
        return created
    raise RuntimeError(f"could not register a version of {model_name} after {attempts} attempts")


def get_object(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our objects, or None when it does not exist."""
    try:
        return cast(
            dict[str, Any],
            kubernetes.client.CustomObjectsApi(shared_client()).get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            ),
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


_POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def current_namespace() -> str:
    """The namespace kubectl would use: the pod's own in a cluster, else the kubeconfig's current
    context's, else ``default``."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(_POD_NAMESPACE_FILE):
        with open(_POD_NAMESPACE_FILE) as file:
            return file.read().strip() or "default"
    try:
        _, context = kubernetes.config.list_kube_config_contexts(config_file=_kubeconfig_path())  # type: ignore[no-untyped-call]
    except (ConfigException, OSError):
        return "default"
    return str(((context or {}).get("context") or {}).get("namespace") or "default")


def _kubeconfig_path() -> str:
    # KUBECONFIG is read at each call, not when the kubernetes package was imported.
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
