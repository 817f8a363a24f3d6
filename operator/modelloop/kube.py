"""The one Kubernetes client wrapper: configuration (in-cluster or kubeconfig), start-up checks, and the
writes the controllers make.

kopf keeps its own watch connections and caches; this module is for the calls the operator makes beside
them. The calls are synchronous (the kubernetes client); async controllers run them in threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

__all__ = [
    "ApiException",
    "PreflightError",
    "create_job",
    "current_namespace",
    "get_object",
    "list_objects",
    "patch_status",
    "preflight",
    "register_model_version",
]
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from modelloop.api import GROUP, KINDS, MODEL_VERSION, VERSION

_shared: ApiClient | None = None
_shared_lock = threading.Lock()


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
                manifest["metadata"]["namespace"], cast(Any, dict(manifest)), _preload_content=False
            )
        )
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def patch_status(plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch the status subresource of one of our objects."""
    _discard(
        kubernetes.client.CustomObjectsApi(shared_client()).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": dict(status)}, _preload_content=False
        )
    )


def patch_labels(plural: str, namespace: str, name: str, labels: Mapping[str, str]) -> None:
    """Merge labels into one of our objects (the others it has stay)."""
    _discard(
        kubernetes.client.CustomObjectsApi(shared_client()).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"metadata": {"labels": dict(labels)}},
            _preload_content=False,
        )
    )


def delete_object(plural: str, namespace: str, name: str, uid: str, resource_version: str) -> bool:
    """Delete one of our objects if it is still exactly what was decided on (same uid and resourceVersion);
    return False when it is gone already or has changed since (decide again)."""
    options = kubernetes.client.V1DeleteOptions(
        preconditions=kubernetes.client.V1Preconditions(uid=uid, resource_version=resource_version)
    )
    try:
        _discard(
            kubernetes.client.CustomObjectsApi(shared_client()).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body=options, _preload_content=False
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
            GROUP, VERSION, namespace, plural, label_selector=label_selector
        ),
    )
    return list(listed.get("items") or [])


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
                    GROUP, VERSION, namespace, MODEL_VERSION.plural, manifest
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
                GROUP, VERSION, namespace, plural, name
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
