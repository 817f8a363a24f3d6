"""The Kubernetes client of the operator and the CLI (``KubeClient``): start-up checks, and the calls the
controllers make beside kopf's own watches. Where the cluster is and how to log in is
``modelloop.kubeconfig``'s.

A small asynchronous client on aiohttp, the HTTP library kopf itself runs on: the operator's writes run on
the event loop, not in threads; every request has a deadline (``REQUEST_TIMEOUT``); and the operator never
loads the kubernetes package's thousands of generated classes (about 20 MiB of memory, and the threads
its synchronous calls need). kopf logs in with the same configuration (``login``).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import aiohttp

from modelloop.api import GROUP, KINDS, VERSION
from modelloop.kubeconfig import ClusterConfig, Credentials, PreflightError, data_file, load_config

__all__ = [
    "FIELD_MANAGER",
    "PERMANENT_STATUSES",
    "REQUEST_TIMEOUT",
    "ApiException",
    "Applied",
    "Conflict",
    "KubeClient",
    "PreflightError",
    "api_message",
]

# Every call beside kopf's watches has a deadline. A hung API server then costs a reconcile a retry.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
# The field manager of everything the operator writes with server-side apply.
FIELD_MANAGER = "modelloop"
# Answers that retrying the same request cannot change: the request itself is wrong (400, 422) or not
# allowed (403). They are reported in the object's status, not only logged.
PERMANENT_STATUSES = frozenset({400, 403, 422})
_MERGE_PATCH = "application/merge-patch+json"
_APPLY_PATCH = "application/apply-patch+yaml"
_PLAIN_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_CONNECTIONS = 64  # at most this many requests in flight: every controller's reconciles together


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


# --- requests -------------------------------------------------------------------------------------------


class _Session:
    """The client session of one event loop (the operator has one; each CLI command its own)."""

    def __init__(self, config: ClusterConfig, credentials: Credentials | None = None) -> None:
        self.config = config
        self.credentials = credentials or Credentials(config)
        self.loop = asyncio.get_running_loop()
        self._certificate: tuple[str, str] | None = None
        self._retiring: set[asyncio.Future[None]] = set()
        self.session = self._open(None)

    def _open(self, certificate: tuple[str, str] | None) -> aiohttp.ClientSession:
        ssl_context: ssl.SSLContext | bool = (
            self.config.ssl_context(certificate) if self.config.server.startswith("https") else False
        )
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=_CONNECTIONS),
            timeout=REQUEST_TIMEOUT,
            json_serialize=json.dumps,
        )

    async def login(self) -> str | None:
        """The bearer token to send now (None: none); a plugin's new client certificate reopens the
        connections with it (those in flight finish on the old ones, closed a request's deadline later)."""
        if not self.credentials.uses_plugin:
            return await self.credentials.token()
        credential = await self.credentials.current()
        if credential.certificate and credential.key:
            pair = (
                data_file(credential.certificate, encoded=False),
                data_file(credential.key, encoded=False),
            )
            if pair != self._certificate:
                old, self.session, self._certificate = self.session, self._open(pair), pair
                self._retire(old)
        return credential.token

    def _retire(self, old: aiohttp.ClientSession) -> None:
        def close_old() -> None:
            closing = asyncio.ensure_future(old.close())
            self._retiring.add(closing)
            closing.add_done_callback(self._retiring.discard)

        self.loop.call_later(REQUEST_TIMEOUT.total or 30.0, close_old)

    async def close(self) -> None:
        await self.session.close()


class KubeClient:
    """The operator's client of the API server: one per operator process (the runner makes it and hands
    it to every controller) or per CLI command, and tests inject their own. It logs in as kubectl would
    (``modelloop.kubeconfig``), opens its connections on the event loop of its first request, and
    reports each request's method, status code and seconds to ``observe`` (the operator's metrics).
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        credentials: Credentials | None = None,
        observe: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._observe = observe
        self._current: _Session | None = None

    @property
    def config(self) -> ClusterConfig:
        """The configuration, loaded at first use (PreflightError when there is none)."""
        if self._config is None:
            self._config = load_config()
        return self._config

    async def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is None or current.loop is not loop or current.session.closed:
            credentials = self._credentials
            if credentials is None or credentials.config is not self.config:
                credentials = self._credentials = Credentials(self.config)
            current = self._current = _Session(self.config, credentials)
        return current

    async def close(self) -> None:
        """Close this client's connections (at shut-down, and at the end of each CLI command); a later
        request opens new ones."""
        current, self._current = self._current, None
        if current is not None and current.loop is asyncio.get_running_loop():
            await current.close()

    async def request(
        self,
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
        current = await self._session()
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            token = await current.login()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if data is not None:
                headers["Content-Type"] = content_type
            started = time.monotonic()
            code = 0  # no answer: a connection error or a timeout
            try:
                async with current.session.request(
                    method,
                    current.config.server + path,
                    data=data,
                    headers=headers,
                    params=params,
                    timeout=timeout,
                    server_hostname=current.config.tls_server_name,
                ) as response:
                    code = response.status
                    body_text = await response.text()
            finally:
                if self._observe is not None:
                    self._observe(method, code, time.monotonic() - started)
            # A refused credential (an exec plugin's that was revoked, a token file that rotated) is renewed
            # and the request sent once more, as kubectl does.
            if code != 401 or attempt == 2 or not await current.credentials.refused(token):
                break
        if code >= 400:
            raise ApiException(code, response.reason or "", body_text)
        if text:
            return body_text
        return json.loads(body_text) if parse and body_text else None

    async def get(self, path: str) -> dict[str, Any] | None:
        """GET any path; None when the object does not exist."""
        try:
            return cast(dict[str, Any], await self.request("GET", path))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def preflight(self, plurals: Iterable[str] | None = None, timeout: float = 10.0) -> str:
        """Check that the API server answers and serves our kinds; return its version.

        Raises PreflightError with a message a person can act on: which server could not be reached, or
        which CustomResourceDefinitions are missing and how to install them.
        """
        wanted = set(plurals if plurals is not None else (info.plural for info in KINDS))
        config = self.config
        deadline = aiohttp.ClientTimeout(total=timeout)
        try:
            try:
                version = await self.request("GET", "/version", timeout=deadline)
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
                served = await self.request("GET", f"/apis/{GROUP}/{VERSION}", timeout=deadline)
                available = {resource["name"] for resource in served.get("resources") or ()}
            except ApiException as error:
                if error.status != 404:
                    raise PreflightError(
                        f"cannot list the {GROUP}/{VERSION} API: {api_message(error)}"
                    ) from error
                available = set()
        finally:
            await self.close()
        missing = sorted(wanted - available)
        if missing:
            crds = ", ".join(f"{plural}.{GROUP}" for plural in missing)
            raise PreflightError(
                f"the cluster at {config.server} does not serve {crds}: install the CRDs first "
                "(kubectl apply --server-side -f crds/, or "
                "`modelloop crds | kubectl apply --server-side -f -`)"
            )
        return str(version.get("gitVersion"))

    async def unwatchable(self, namespaces: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        """Of ``namespaces`` (plain names; glob patterns are skipped, they match namespaces yet to come),
        those where this identity may not list and watch every modelloop kind, each with the first right it
        lacks. Asked of the API server with SelfSubjectAccessReviews, as `kubectl auth can-i` does."""
        deadline = aiohttp.ClientTimeout(total=timeout)
        refused: dict[str, str] = {}
        try:
            for namespace in namespaces:
                if not _PLAIN_NAMESPACE.fullmatch(namespace):
                    continue
                for info in KINDS:
                    lacking = None
                    for verb in ("list", "watch"):
                        review = await self.request(
                            "POST",
                            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                            body={
                                "apiVersion": "authorization.k8s.io/v1",
                                "kind": "SelfSubjectAccessReview",
                                "spec": {
                                    "resourceAttributes": {
                                        "namespace": namespace,
                                        "verb": verb,
                                        "group": GROUP,
                                        "resource": info.plural,
                                    }
                                },
                            },
                            timeout=deadline,
                        )
                        if not (review.get("status") or {}).get("allowed"):
                            lacking = f"{verb} {info.plural}.{GROUP}"
                            break
                    if lacking is not None:
                        refused[namespace] = f"may not {lacking} there"
                        break
        finally:
            await self.close()
        return refused

    async def create_job(self, manifest: Mapping[str, Any]) -> bool:
        """Create a Job, or what trains a distributed run (a Service, a TrainJob: by its apiVersion and
        kind); return False when one of that name exists already (the names are deterministic, so that is
        the same object, created before a restart or by a concurrent reconcile)."""
        path = _workload_path(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["namespace"])
        try:
            # The answer (the whole Job) is not parsed: the watch brings it to the index anyway.
            await self.request("POST", path, body=manifest, parse=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def pod_log(
        self, namespace: str, pod: str, container: str, *, tail_lines: int, limit_bytes: int, timeout: float
    ) -> str | None:
        """The last ``tail_lines`` lines of a container's log (at most ``limit_bytes``), within ``timeout``
        seconds; None when the pod or its log is not there (not started yet, or gone)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        params = {"container": container, "tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
        try:
            answer = await self.request(
                "GET", path, params=params, text=True, timeout=aiohttp.ClientTimeout(total=timeout)
            )
        except ApiException as error:
            if error.status in (400, 404):  # 400: the container has not started (or has no log yet)
                return None
            raise
        return str(answer)

    async def delete_job(
        self, namespace: str, name: str, api_version: str = "batch/v1", kind: str = "Job"
    ) -> bool:
        """Delete a Job (or a TrainJob) and, in the background, its pods; False when it was gone already."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        path = f"{_workload_path(api_version, kind, namespace)}/{quote(name)}"
        try:
            await self.request("DELETE", path, body=options, parse=False)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def serves(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``group_version`` (e.g. Kubeflow Trainer's TrainJobs
        in trainer.kubeflow.org/v1alpha1): its discovery document lists it."""
        served = await self.get(f"/apis/{group_version}")
        return any(r.get("name") == plural for r in (served or {}).get("resources") or ())

    async def create_object(self, plural: str, manifest: Mapping[str, Any]) -> bool:
        """Create one of our objects; return False when one of that name exists already (the name is
        deterministic, so that is the same object, created before a restart or by a retried pass)."""
        try:
            await self.request(
                "POST", _path(plural, manifest["metadata"]["namespace"]), body=manifest, parse=False
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> str:
        """Merge-patch the status subresource of one of our objects, only if it still has
        ``resource_version`` (optimistic concurrency); return its new resourceVersion.

        Raises Conflict when the object changed since it was read: a decision made on stale data never
        overwrites newer status. Only ``modelloop.machinery.status.StatusWriter`` calls this.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        path = _path(plural, namespace, name) + "/status"
        return await self._patch_versioned(path, body, (namespace, name))

    async def patch_labels(
        self, plural: str, namespace: str, name: str, labels: Mapping[str, str], resource_version: str | None
    ) -> str:
        """Merge labels into one of our objects (the others it has stay), only if it still has
        ``resource_version``; return its new resourceVersion. Raises Conflict as ``patch_status`` does."""
        metadata: dict[str, Any] = {"labels": dict(labels)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return await self._patch_versioned(
            _path(plural, namespace, name), {"metadata": metadata}, (namespace, name)
        )

    async def patch_annotations(
        self, plural: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge annotations into one of our objects (None removes one); a user's request, such as a rollout
        action, so the last writer wins."""
        body = {"metadata": {"annotations": dict(annotations)}}
        await self.request("PATCH", _path(plural, namespace, name), body=body, content_type=_MERGE_PATCH)

    async def _patch_versioned(self, path: str, body: Mapping[str, Any], key: tuple[str, str]) -> str:
        try:
            patched = await self.request("PATCH", path, body=body, content_type=_MERGE_PATCH)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(api_message(error), key) from error
            raise
        return str(patched["metadata"]["resourceVersion"])

    async def server_side_apply(
        self, plural: str, manifest: Mapping[str, Any], *, force: bool = False
    ) -> Applied:
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
            applied = await self.request(
                "PATCH", path, body=manifest, content_type=_APPLY_PATCH, params=params
            )
        except ApiException as error:
            if error.status == 409:
                return Applied(obj=None, conflict=api_message(error))
            raise
        return Applied(obj=cast(dict[str, Any], applied))

    async def delete_object(
        self, plural: str, namespace: str, name: str, uid: str, resource_version: str
    ) -> bool:
        """Delete one of our objects if it is still exactly what was decided on (same uid and
        resourceVersion); return False when it is gone already or has changed since (decide again)."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        try:
            await self.request("DELETE", _path(plural, namespace, name), body=options, parse=False)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Our objects of one kind in a namespace, selected by labels."""
        params = {"labelSelector": label_selector} if label_selector else None
        listed = await self.request("GET", _path(plural, namespace), params=params)
        return list(listed.get("items") or [])

    async def get_object(
        self, plural: str, namespace: str, name: str, group_version: str | None = None
    ) -> dict[str, Any] | None:
        """One of our objects (or, with ``group_version``, of another API), or None when it does not exist."""
        return await self.get(_path(plural, namespace, name, group_version=group_version))


# What the operator creates to train: by (apiVersion, kind), the collection's path under a namespace.
_WORKLOADS = {
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{namespace}/jobs",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    (
        "trainer.kubeflow.org/v1alpha1",
        "TrainJob",
    ): "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs",
}


def _workload_path(api_version: str, kind: str, namespace: str) -> str:
    template = _WORKLOADS.get((api_version, kind))
    if template is None:
        raise ValueError(f"the operator does not create {kind} objects of {api_version}")
    return template.format(namespace=quote(namespace))


def _path(plural: str, namespace: str, name: str | None = None, *, group_version: str | None = None) -> str:
    prefix = f"/apis/{group_version or f'{GROUP}/{VERSION}'}"
    if group_version == "v1":
        prefix = "/api/v1"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path
