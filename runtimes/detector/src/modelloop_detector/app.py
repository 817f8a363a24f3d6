"""The HTTP API as a bare ASGI application (no framework: ingestion is the hot path).

=======  ====================================  ===========================================
POST     /                                     KServe's and Seldon's logged inference CloudEvents
PUT/GET  /v1/services/{namespace}/{service}    register what is served / read its state
DELETE   /v1/services/{namespace}/{service}    forget it
POST     /v1/feedback/{namespace}/{service}    ground-truth labels by request id
POST     /v1/export/{namespace}/{service}      write the window's rows (with labels) as CSV
GET      /metrics, /healthz                    Prometheus metrics, liveness
=======  ====================================  ===========================================

A body is read in chunks up to ``MODELLOOP_DETECTOR_MAX_BODY_BYTES`` and refused past it (413) before
anything parses it. What a limit refuses (:class:`~modelloop_detector.limits.Refused`) is answered with
its 4xx and counted in ``modelloop_detector_refused_total{reason}``. A detector set to one namespace
(:class:`~modelloop_detector.tenancy.Tenancy`) answers 403 to any event, and any path (before its body is
read), that names another. With authentication on (:mod:`~modelloop_detector.auth`,
``MODELLOOP_DETECTOR_AUTH=kubernetes``), every call under ``/v1/`` must then carry a Kubernetes bearer token
allowed the access the call needs (401, 403, or 503 when the API server cannot tell), checked before its
body is read; ingestion, ``/metrics`` and ``/healthz`` stay open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from modelloop_contracts import ExportRequest, InvalidMessage, Registration
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelloop_detector.api import parse_labels, reference_summary, service_status
from modelloop_detector.auth import Authorizer, required_access
from modelloop_detector.events import EventRejected, read_raw_event
from modelloop_detector.export import ExportFailed, export_csv
from modelloop_detector.limits import DNS_LABEL, FEATURE, NAME, RefusalReason, Refused, check_name
from modelloop_detector.metrics import DetectorMetrics
from modelloop_detector.service import DriftService, NothingToExport, UnknownService

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Reply = tuple[int, bytes, bytes]

JSON = b"application/json"
ACCEPTED = (202, b'{"accepted":true}', JSON)
# The headers of the answer to almost every event, made once.
_ACCEPTED_HEADERS = ((b"content-type", JSON), (b"content-length", str(len(ACCEPTED[1])).encode()))


def _json(status: int, body: Any) -> Reply:
    return status, json.dumps(body).encode(), JSON


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message})


class DetectorApp:
    """The ASGI application over one :class:`DriftService`; ``authorizer``, where given, checks the callers
    of ``/v1/`` (None: anyone that reaches the detector may call it)."""

    def __init__(
        self, service: DriftService, metrics: DetectorMetrics, authorizer: Authorizer | None = None
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.authorizer = authorizer
        self._received = metrics.events.counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up or tear down
        headers: tuple[tuple[bytes, bytes], ...] = ()
        try:
            if scope["path"] == "/" and scope["method"] == "POST":  # ingestion: almost every request
                raw = dict(scope["headers"])  # the last of a repeated header, as a loop would keep
                limit = self.service.limits.max_body_bytes
                _check_length(raw, limit)
                message = await receive()
                body = message.get("body", b"")
                if message.get("more_body") or len(body) > limit:
                    body = await _read_rest(body, message, receive, limit)
                try:
                    event = read_raw_event(raw, body)
                    self._received[event.kind] += 1
                    self.service.ingest(event, len(body))
                    reply = ACCEPTED
                except EventRejected as exc:
                    self.metrics.count_drop(exc.reason)
                    reply = _error(400, str(exc))
            else:
                reply = await self._route(scope, receive)
        except Refused as exc:
            self.metrics.count_refusal(exc.reason)
            reply = _error(exc.status, str(exc))
            headers = exc.headers
        except Exception as exc:  # a bug must answer 500, not kill the connection
            logger.exception("%s %s failed", scope["method"], scope["path"])
            reply = _error(500, f"internal error ({type(exc).__name__})")
        if reply is ACCEPTED:  # most answers: their headers made once
            start = {"type": "http.response.start", "status": 202, "headers": list(_ACCEPTED_HEADERS)}
            await send(start)
            await send({"type": "http.response.body", "body": ACCEPTED[1]})
            return
        status, payload, content_type = reply
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(payload)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, headers: Mapping[bytes, bytes], receive: Receive) -> bytes:
        """The request's body (``headers``: its raw headers by name), refused (413) past the limit, whether
        or not it says its length."""
        limit = self.service.limits.max_body_bytes
        _check_length(headers, limit)
        message = await receive()
        return await _read_rest(message.get("body", b""), message, receive, limit)

    async def _route(self, scope: Scope, receive: Receive) -> Reply:
        method, path = scope["method"], scope["path"]
        if path == "/":  # not a POST: that is __call__'s
            await self._read_body(dict(scope["headers"]), receive)
            return _error(405, "POST inference CloudEvents to /")
        if path == "/healthz":
            return 200, b'{"status":"ok"}', JSON
        if path == "/metrics":
            return 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode()
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "v1":
            return _error(404, f"no such path: {path}")
        resource, namespace, name = parts[1], parts[2], parts[3]
        if resource in ("services", "feedback", "export"):
            self.service.check_namespace(namespace)  # before the body is read
        access = required_access(method, resource, namespace, name)
        if access is not None and self.authorizer is not None:
            # Only names an InferenceService can have go to the API server.
            limit = self.service.limits.max_name_length
            check_name("the path's namespace", namespace, DNS_LABEL, limit)
            check_name("the path's service", name, DNS_LABEL, limit)
            # Before the body is read: a caller without the right reads nothing and makes nothing be held.
            await self.authorizer.check(scope["headers"], access)
        body = await self._read_body(dict(scope["headers"]), receive)
        try:
            if resource == "services":
                return await self._services(method, namespace, name, body)
            if resource == "feedback" and method == "POST":
                labels = parse_labels(_load(body))
                joined, pending = self.service.add_labels(namespace, name, labels)
                return _json(200, {"joined": joined, "pending": pending})
            if resource == "export" and method == "POST":
                return await self._export(namespace, name, ExportRequest.from_json(_load(body)))
        except InvalidMessage as exc:
            return _error(400, str(exc))
        except UnknownService as exc:
            return _error(404, str(exc))
        except NothingToExport as exc:
            return _error(409, str(exc))
        return _error(
            404 if resource not in ("services", "feedback", "export") else 405, f"no {method} {path}"
        )

    async def _services(self, method: str, namespace: str, name: str, body: bytes) -> Reply:
        if method == "PUT":
            document = _load(body)
            registration = Registration.from_json(document)
            # Refused before going to a thread: a refused registration reads nothing.
            self.service.check_registration(namespace, name, registration)
            result = await asyncio.to_thread(
                self.service.register, namespace, name, registration, mmd=registration.mmd
            )
            versions = {
                key: reference_summary(reference, result.estimation.get(key))
                for key, reference in result.versions.items()
            }
            if result.errors:
                message = "; ".join(f"version {key}: {error}" for key, error in result.errors.items())
                return _json(422, {"error": message, "errors": result.errors, "versions": versions})
            return _json(200, {"versions": versions})
        if method == "GET":
            state = self.service.service(namespace, name)
            with state.lock:
                return _json(200, service_status(state))
        if method == "DELETE":
            if not self.service.unregister(namespace, name):
                raise UnknownService(f"service {namespace}/{name} is not registered")
            return _json(200, {"deleted": f"{namespace}/{name}"})
        return _error(405, f"{method} is not allowed on /v1/services/...: use PUT, GET or DELETE")

    async def _export(self, namespace: str, name: str, request: ExportRequest) -> Reply:
        limits = self.service.limits
        if request.version is not None:
            check_name("version", request.version, NAME, limits.max_name_length)
        if request.target_column is not None:
            check_name("targetColumn", request.target_column, FEATURE, limits.max_feature_name_length)
        prefix = self.service.roots.check("uriPrefix", request.uri_prefix)
        rows = self.service.export_rows(namespace, name, request.version, request.target_column)
        try:
            table = await asyncio.to_thread(export_csv, rows, prefix, namespace, name)
        except ExportFailed as exc:
            return _error(422, str(exc))
        return _json(200, table.to_json())


def _check_length(headers: Mapping[bytes, bytes], limit: int) -> None:
    """Refuse a body that says it is larger than ``limit`` before reading it."""
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)


async def _read_rest(first: bytes, message: Message, receive: Receive, limit: int) -> bytes:
    """The body that starts with ``first``, the body of ``message``, refused past ``limit``."""
    if len(first) > limit:
        raise _too_large(limit)
    if not message.get("more_body"):
        return first  # the whole body at once: what a server gives for a small one
    chunks = [first]
    size = len(first)
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _too_large(limit: int) -> Refused:
    return Refused(
        RefusalReason.BODY_TOO_LARGE,
        f"the request body is larger than {limit} bytes (MODELLOOP_DETECTOR_MAX_BODY_BYTES)",
        413,
    )


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidMessage(f"the body is not JSON: {exc}") from None
