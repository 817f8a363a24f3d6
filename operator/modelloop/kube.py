"""The one Kubernetes client of the operator: configuration (in-cluster or kubeconfig), start-up checks,
and the calls the controllers make beside kopf's own watches.

A small asynchronous client on aiohttp, the HTTP library kopf itself runs on: the operator's writes run on
the event loop, not in threads; every request has a deadline (``REQUEST_TIMEOUT``); and the operator never
loads the kubernetes package's thousands of generated classes (about 20 MiB of memory, and the threads
its synchronous calls need). kopf logs in with the same configuration (``login``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import yaml

from modelloop.api import GROUP, KINDS, MODEL_VERSION, VERSION
from modelloop.runtime import metrics

__all__ = [
    "FIELD_MANAGER",
    "PERMANENT_STATUSES",
    "REQUEST_TIMEOUT",
    "ApiException",
    "Applied",
    "ClusterConfig",
    "Conflict",
    "PreflightError",
    "api_message",
    "close",
    "create_job",
    "current_namespace",
    "delete_object",
    "get",
    "get_object",
    "list_objects",
    "load_config",
    "patch_labels",
    "patch_status",
    "preflight",
    "register_model_version",
    "server_side_apply",
]

# Every call beside kopf's watches has a deadline. A hung API server then costs a reconcile a retry.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
# The field manager of everything the operator writes with server-side apply.
FIELD_MANAGER = "modelloop"
# Answers that retrying the same request cannot change: the request itself is wrong (400, 422) or not
# allowed (403). They are reported in the object's status, not only logged.
PERMANENT_STATUSES = frozenset({400, 403, 422})
_SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_MERGE_PATCH = "application/merge-patch+json"
_APPLY_PATCH = "application/apply-patch+yaml"
_CONNECTIONS = 64  # at most this many requests in flight: every controller's reconciles together


class PreflightError(RuntimeError):
    """The operator cannot work against this cluster; the message says why and what to do."""


class ApiException(Exception):
    """The API server answered with an error: ``status`` (e.g. 422), ``reason`` and the response ``body``
    (a Status object whose message says what was wrong)."""

    def __init__(self, status: int = 0, reason: str = "", body: str | bytes | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


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


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterConfig:
    """Where the API server is and how to authenticate: what kubectl would use."""

    server: str
    namespace: str = "default"
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    certificate_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None  # read at each connection: projected service-account tokens rotate
    source: str = field(default="", compare=False)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_file:
            context.load_cert_chain(self.certificate_file, self.key_file)
        return context

    def bearer_token(self) -> str | None:
        if self.token_file:
            with open(self.token_file) as file:
                return file.read().strip()
        return self.token


def load_config() -> ClusterConfig:
    """The configuration kubectl would use: in-cluster when running in a pod (the service account's token
    and CA), else the current context of the kubeconfig named by KUBECONFIG (or ~/.kube/config).

    Supported in a kubeconfig: certificate authority (file or data), client certificate and key (file or
    data), a token or token file, insecure-skip-tls-verify. A context that needs an exec credential plugin
    or an auth provider is refused with a message that says so.
    """
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = os.path.join(_SERVICE_ACCOUNT, "token")
    if host and port and os.path.exists(token_file):
        namespace_file = os.path.join(_SERVICE_ACCOUNT, "namespace")
        namespace = "default"
        if os.path.exists(namespace_file):
            with open(namespace_file) as file:
                namespace = file.read().strip() or "default"
        server_host = f"[{host}]" if ":" in host else host
        return ClusterConfig(
            server=f"https://{server_host}:{port}",
            namespace=namespace,
            ca_file=os.path.join(_SERVICE_ACCOUNT, "ca.crt"),
            token_file=token_file,
            source="in-cluster service account",
        )
    return _kubeconfig(_kubeconfig_path())


def _kubeconfig(path: str) -> ClusterConfig:
    try:
        with open(path) as file:
            config = yaml.safe_load(file) or {}
    except OSError as error:
        raise PreflightError(
            f"no Kubernetes configuration found (in-cluster or kubeconfig): {error}"
        ) from error
    except yaml.YAMLError as error:
        raise PreflightError(f"the kubeconfig {path} is not valid YAML: {error}") from error

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in config.get(section) or ():
            if item.get("name") == name:
                return dict(item.get(section[:-1]) or {})
        raise PreflightError(f"the kubeconfig {path} has no {section[:-1]} named {name!r}")

    context_name = config.get("current-context")
    if not context_name:
        raise PreflightError(f"the kubeconfig {path} sets no current-context")
    context = named("contexts", context_name)
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user"))
    plugin = "exec" if user.get("exec") else "auth-provider" if user.get("auth-provider") else None
    if plugin:
        raise PreflightError(
            f"the kubeconfig {path} authenticates through a credential plugin ({plugin}), which modelloop"
            " does not run: use a context with a token or a client certificate"
        )
    base = os.path.dirname(os.path.abspath(path))

    def file_of(key: str, source: Mapping[str, Any]) -> str | None:
        if source.get(f"{key}-data"):
            return _data_file(str(source[f"{key}-data"]))
        value = source.get(key)
        return None if not value else os.path.join(base, os.path.expanduser(str(value)))

    ca_data = cluster.get("certificate-authority-data")
    return ClusterConfig(
        server=str(cluster.get("server") or "").rstrip("/"),
        namespace=str(context.get("namespace") or "default"),
        ca_file=None if ca_data else file_of("certificate-authority", cluster),
        ca_data=base64.b64decode(ca_data).decode() if ca_data else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_file=file_of("client-certificate", user),
        key_file=file_of("client-key", user),
        token=user.get("token"),
        token_file=file_of("tokenFile", {"tokenFile": user["tokenFile"]}) if user.get("tokenFile") else None,
        source=f"kubeconfig {path}, context {context_name}",
    )


def _data_file(data: str) -> str:
    """A private file with the decoded ``data`` (an SSL context loads client certificates from files),
    named by its content: loading the configuration again (each login, each CLI command) reuses it."""
    content = base64.b64decode(data)
    folder = os.path.join(tempfile.gettempdir(), f"modelloop-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(content).hexdigest()[:32] + ".pem")
    if not os.path.exists(path):
        handle, partial = tempfile.mkstemp(dir=folder)
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(partial, path)
    return path


def _kubeconfig_path() -> str:
    # KUBECONFIG is read at each call; of a list of files, the first is used.
    configured = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.expanduser(configured or "~/.kube/config")


def current_namespace() -> str:
    """The namespace kubectl would use: the pod's own in a cluster, else the kubeconfig's current
    context's, else ``default``."""
    try:
        return load_config().namespace
    except PreflightError:
        return "default"


# --- requests -------------------------------------------------------------------------------------------


class _Session:
    """The client session of one event loop (the operator has one; each CLI command its own)."""

    # A token file is read again after this long: projected service-account tokens rotate (hourly by
    # default, valid for longer), and reading the file for every request would cost each one a read.
    TOKEN_SECONDS = 60.0

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self._token: tuple[float, str | None] | None = None
        ssl_context: ssl.SSLContext | bool = (
            config.ssl_context() if config.server.startswith("https") else False
        )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=_CONNECTIONS),
            timeout=REQUEST_TIMEOUT,
            json_serialize=json.dumps,
        )

    def token(self) -> str | None:
        now = time.monotonic()
        if self._token is None or now - self._token[0] > self.TOKEN_SECONDS:
            self._token = (now, self.config.bearer_token())
        return self._token[1]


_current: _Session | None = None


async def _session() -> _Session:
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current.loop is not loop or _current.session.closed:
        _current = _Session(load_config())
    return _current


async def close() -> None:
    """Close this event loop's connections (at shut-down, and at the end of each CLI command)."""
    global _current
    if _current is not None and _current.loop is asyncio.get_running_loop():
        await _current.session.close()
    _current = None


async def request(
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    params: Mapping[str, str] | None = None,
    parse: bool = True,
    timeout: aiohttp.ClientTimeout | None = None,
    text: bool = False,
) -> Any:
    """One request to the API server; the parsed JSON answer (None when ``parse`` is False; the body as
    text when ``text`` is True). An error answer raises ApiException with the server's status, reason and
    body."""
    current = await _session()
    headers = {"Accept": "application/json"}
    token = current.token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        headers["Content-Type"] = content_type
        data = json.dumps(body)
    started = time.monotonic()
    code = 0  # no answer: a connection error or a timeout
    try:
        async with current.session.request(
            method, current.config.server + path, data=data, headers=headers, params=params, timeout=timeout
        ) as response:
            code = response.status
            body_text = await response.text()
    finally:
        metrics.API_REQUESTS.labels(method, str(code)).inc()
        metrics.API_SECONDS.labels(method).observe(time.monotonic() - started)
    if code >= 400:
        raise ApiException(code, response.reason or "", body_text)
    if text:
        return body_text
    return json.loads(body_text) if parse and body_text else None


def _path(plural: str, namespace: str, name: str | None = None, *, group_version: str | None = None) -> str:
    prefix = f"/apis/{group_version or f'{GROUP}/{VERSION}'}"
    if group_version == "v1":
        prefix = "/api/v1"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


async def get(path: str) -> dict[str, Any] | None:
    """GET any path; None when the object does not exist."""
    try:
        return cast(dict[str, Any], await request("GET", path))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


async def preflight(plurals: Iterable[str] | None = None, timeout: float = 10.0) -> str:
    """Check that the API server answers and serves our kinds; return its version.

    Raises PreflightError with a message a person can act on: which server could not be reached, or
    which CustomResourceDefinitions are missing and how to install them.
    """
    wanted = set(plurals if plurals is not None else (info.plural for info in KINDS))
    config = load_config()
    deadline = aiohttp.ClientTimeout(total=timeout)
    try:
        try:
            version = await request("GET", "/version", timeout=deadline)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            # A timeout's text is empty: name its type then.
            why = str(error) or type(error).__name__
            raise PreflightError(
                f"cannot reach the Kubernetes API server at {config.server}: {why}"
            ) from error
        except ApiException as error:
            raise PreflightError(
                f"the Kubernetes API server at {config.server} refused us: {api_message(error)}"
            ) from error
        try:
            served = await request("GET", f"/apis/{GROUP}/{VERSION}", timeout=deadline)
            available = {resource["name"] for resource in served.get("resources") or ()}
        except ApiException as error:
            if error.status != 404:
                raise PreflightError(
                    f"cannot list the {GROUP}/{VERSION} API: {api_message(error)}"
                ) from error
            available = set()
    finally:
        await close()
    missing = sorted(wanted - available)
    if missing:
        crds = ", ".join(f"{plural}.{GROUP}" for plural in missing)
        raise PreflightError(
            f"the cluster at {config.server} does not serve {crds}: install the CRDs first "
            "(kubectl apply --server-side -f crds/, or `modelloop crds | kubectl apply --server-side -f -`)"
        )
    return str(version.get("gitVersion"))


async def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create a Job; return False when one of that name exists already (Job names are deterministic, so
    that is the same Job, created before a restart or by a concurrent reconcile)."""
    path = f"/apis/batch/v1/namespaces/{quote(manifest['metadata']['namespace'])}/jobs"
    try:
        # The answer (the whole Job) is not parsed: the watch brings it to the index anyway.
        await request("POST", path, body=manifest, parse=False)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


async def pod_log(
    namespace: str, pod: str, container: str, *, tail_lines: int, limit_bytes: int, timeout: float
) -> str | None:
    """The last ``tail_lines`` lines of a container's log (at most ``limit_bytes``), within ``timeout``
    seconds; None when the pod or its log is not there (not started yet, or gone)."""
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
    params = {"container": container, "tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
    try:
        answer = await request(
            "GET", path, params=params, text=True, timeout=aiohttp.ClientTimeout(total=timeout)
        )
    except ApiException as error:
        if error.status in (400, 404):  # 400: the container has not started (or has no log yet)
            return None
        raise
    return str(answer)


async def delete_job(namespace: str, name: str) -> bool:
    """Delete a Job and, in the background, its pods; False when it was gone already."""
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    path = f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}"
    try:
        await request("DELETE", path, body=options, parse=False)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


async def create_object(plural: str, manifest: Mapping[str, Any]) -> bool:
    """Create one of our objects; return False when one of that name exists already (the name is
    deterministic, so that is the same object, created before a restart or by a retried pass)."""
    try:
        await request("POST", _path(plural, manifest["metadata"]["namespace"]), body=manifest, parse=False)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


async def patch_status(
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
    return await _patch_versioned(_path(plural, namespace, name) + "/status", body, (namespace, name))


async def patch_labels(
    plural: str, namespace: str, name: str, labels: Mapping[str, str], resource_version: str | None
) -> str:
    """Merge labels into one of our objects (the others it has stay), only if it still has
    ``resource_version``; return its new resourceVersion. Raises Conflict as ``patch_status`` does."""
    metadata: dict[str, Any] = {"labels": dict(labels)}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return await _patch_versioned(_path(plural, namespace, name), {"metadata": metadata}, (namespace, name))


async def patch_annotations(
    plural: str, namespace: str, name: str, annotations: Mapping[str, str | None]
) -> None:
    """Merge annotations into one of our objects (None removes one); a user's request, such as a rollout
    action, so the last writer wins."""
    body = {"metadata": {"annotations": dict(annotations)}}
    await request("PATCH", _path(plural, namespace, name), body=body, content_type=_MERGE_PATCH)


async def _patch_versioned(path: str, body: Mapping[str, Any], key: tuple[str, str]) -> str:
    try:
        patched = await request("PATCH", path, body=body, content_type=_MERGE_PATCH)
    except ApiException as error:
        if error.status == 409:
            raise Conflict(api_message(error), key) from error
        raise
    return str(patched["metadata"]["resourceVersion"])


async def server_side_apply(plural: str, manifest: Mapping[str, Any], *, force: bool = False) -> Applied:
    """Server-side apply ``manifest``, a namespaced object of any group (``plural`` is its resource, e.g.
    inferenceservices), as field manager ``modelloop``.

    For the objects the operator owns in other systems (KServe InferenceServices, HTTPRoutes,
    SeldonDeployments): only the fields in ``manifest`` are ours, and a field another manager set is
    not taken from it: the conflict comes back in ``Applied.conflict`` for the caller to report in
    status, instead of the two managers fighting. ``force`` takes the fields (for fields that are ours
    by contract).
    """
    meta = manifest["metadata"]
    path = _path(plural, meta["namespace"], meta["name"], group_version=str(manifest["apiVersion"]))
    params = {"fieldManager": FIELD_MANAGER, **({"force": "true"} if force else {})}
    try:
        applied = await request("PATCH", path, body=manifest, content_type=_APPLY_PATCH, params=params)
    except ApiException as error:
        if error.status == 409:
            return Applied(obj=None, conflict=api_message(error))
        raise
    return Applied(obj=cast(dict[str, Any], applied))


async def delete_object(plural: str, namespace: str, name: str, uid: str, resource_version: str) -> bool:
    """Delete one of our objects if it is still exactly what was decided on (same uid and resourceVersion);
    return False when it is gone already or has changed since (decide again)."""
    options = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "preconditions": {"uid": uid, "resourceVersion": resource_version},
    }
    try:
        await request("DELETE", _path(plural, namespace, name), body=options, parse=False)
    except ApiException as error:
        if error.status in (404, 409):
            return False
        raise
    return True


async def list_objects(plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
    """Our objects of one kind in a namespace, selected by labels."""
    params = {"labelSelector": label_selector} if label_selector else None
    listed = await request("GET", _path(plural, namespace), params=params)
    return list(listed.get("items") or [])


async def get_object(
    plural: str, namespace: str, name: str, group_version: str | None = None
) -> dict[str, Any] | None:
    """One of our objects (or, with ``group_version``, of another API), or None when it does not exist."""
    return await get(_path(plural, namespace, name, group_version=group_version))


async def register_model_version(
    namespace: str, model_name: str, render: Callable[[int], dict[str, Any]], attempts: int = 100
) -> dict[str, Any]:
    """Create the next version of a model: one more than the highest registered. The version is part of
    the object's name, so when two runs finish at once the API server refuses the second create, which
    then takes the next number."""
    # By spec, not by label: a user may register versions by hand, with labels or without.
    existing = [
        mv
        for mv in await list_objects(MODEL_VERSION.plural, namespace)
        if (mv.get("spec") or {}).get("modelName") == model_name
    ]
    version = max((int(mv["spec"]["version"]) for mv in existing), default=0)
    path = _path(MODEL_VERSION.plural, namespace)
    for _ in range(attempts):
        # Each refusal means that number was just taken: the next one is tried, so that numbers stay
        # consecutive however many registrations race.
        version += 1
        try:
            return cast(dict[str, Any], await request("POST", path, body=render(version)))
        except ApiException as error:
            if error.status == 409:
                continue
            raise
    raise RuntimeError(f"could not register a version of {model_name} after {attempts} attempts")
