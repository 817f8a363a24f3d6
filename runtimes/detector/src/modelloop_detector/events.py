"""KServe's and Seldon Core's payload-logger CloudEvents, read from HTTP in binary or structured mode.

KServe's agent (``cmd/agent``) posts each logged request and response as a CloudEvent of type
``org.kubeflow.serving.inference.request``/``.response``; a request and its response share the
event id. Extensions name the InferenceService (``inferenceservicename``, ``namespace``), the
component and the ``endpoint`` (``default`` or ``canary``) that answered.

Seldon Core v1's executor posts ``io.seldon.serving.inference.request``/``.response`` events with the same
``inferenceservicename`` (the SeldonDeployment), ``namespace`` and ``endpoint`` (the predictor) extensions,
but a new id for each event: its ``requestid`` extension (the prediction's puid) is what a request and its
response share, and so the :attr:`InferenceEvent.id` of a Seldon event (:mod:`~modelloop_detector.seldon`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from modelloop_contracts import DEFAULT_ENDPOINT

from modelloop_detector import seldon

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EventKind = Literal["request", "response"]
Protocol = Literal["kserve", "seldon"]
"""How an event's body reads: ``kserve``, KServe's V1/V2 bodies (also what Seldon logs for its ``v2``,
``kfserving`` and ``tensorflow`` protocols); ``seldon``, Seldon's SeldonMessage."""
EVENT_KINDS: dict[str, EventKind] = {
    REQUEST_TYPE: "request",
    RESPONSE_TYPE: "response",
    seldon.REQUEST_TYPE: "request",
    seldon.RESPONSE_TYPE: "response",
}


class DropReason(StrEnum):
    """Why an event did not become rows: the ``reason`` label of the dropped-events counter."""

    NOT_CLOUDEVENT = "not_cloudevent"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_SERVICE = "missing_service"
    MISSING_REQUEST_ID = "missing_request_id"
    INVALID_JSON = "invalid_json"
    INVALID_PAYLOAD = "invalid_payload"
    FEATURE_MISMATCH = "feature_mismatch"
    UNKNOWN_SERVICE = "unknown_service"
    UNKNOWN_VERSION = "unknown_version"
    UNPAIRED = "unpaired"


class EventRejected(ValueError):
    """An event that is malformed: answered with HTTP 400 and counted as dropped for ``reason``."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InferenceEvent(NamedTuple):
    """One logged request or response of an InferenceService (or a SeldonDeployment).

    ``id`` pairs a request with its response, and names its rows: KServe's event id, Seldon's request id.
    A named tuple, immutable: one is made per event, and a frozen dataclass costs four times as much.
    """

    kind: EventKind
    id: str
    namespace: str
    service: str
    endpoint: str
    body: Any
    protocol: Protocol = "kserve"


def read_event(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    """The inference event in an HTTP request (header names in lower case), or :class:`EventRejected`
    saying what is wrong."""
    attributes = {name[3:]: value for name, value in headers.items() if name.startswith("ce-")}
    return _read(attributes, headers.get("content-type", ""), body)


def read_asgi_event(headers: Iterable[tuple[bytes, bytes]], body: bytes) -> InferenceEvent:
    """:func:`read_event` from an ASGI scope's raw headers (names in lower case, as ASGI gives them)."""
    return read_raw_event(dict(headers), body)  # the last of a repeated header, as a loop would keep


def read_raw_event(headers: Mapping[bytes, bytes], body: bytes) -> InferenceEvent:
    """:func:`read_event` from raw headers by name (in lower case). The detector's hot path:
    :func:`_logged_event` reads what the loggers send; anything else (another mode, a missing or unknown
    attribute) is decoded and read as :func:`read_event` reads it."""
    event = _logged_event(headers, body)
    if event is not None:
        return event
    attributes = {
        name[3:].decode("latin-1"): value.decode("latin-1")
        for name, value in headers.items()
        if name[:3] == b"ce-"
    }
    return _read(attributes, headers.get(b"content-type", b"").decode("latin-1"), body)


def _logged_event(headers: Mapping[bytes, bytes], body: bytes) -> InferenceEvent | None:
    """The event of a binary-mode CloudEvent that has every attribute :func:`_binary_event` needs, read
    from the raw headers, decoding only the four values kept; None for any other, which :func:`_read`
    then reads (or refuses, with its message). Its JSON is parsed as :func:`_read` parses it."""
    get = headers.get
    if get(b"ce-specversion") not in _SPECVERSION_BYTES or get(b"content-type", b"").startswith(
        _STRUCTURED_BYTES
    ):
        return None
    read = _KIND_BYTES.get(get(b"ce-type", b""))
    event_id, namespace, service = get(b"ce-id"), get(b"ce-namespace"), get(b"ce-inferenceservicename")
    if read is None or not (event_id and namespace and service and get(b"ce-source")):
        return None
    kind, seldon = read
    protocol: Protocol = "kserve"
    if seldon:
        event_id = get(b"ce-requestid")
        if not event_id:
            return None
        if get(b"ce-protocol", _SELDON_PROTOCOL_BYTES) == _SELDON_PROTOCOL_BYTES:
            protocol = "seldon"
    endpoint = get(b"ce-endpoint")
    return _new_event(
        InferenceEvent,
        (
            kind,
            event_id.decode("latin-1"),
            namespace.decode("latin-1"),
            service.decode("latin-1"),
            endpoint.decode("latin-1") if endpoint else DEFAULT_ENDPOINT,
            _json_body(body),
            protocol,
        ),
    )


# InferenceEvent(...) with every field, without the named tuple's __new__ (a Python function): half the cost.
_new_event = tuple.__new__


def _read(attributes: dict[str, str], content_type: str, body: bytes) -> InferenceEvent:
    if "specversion" in attributes and not content_type.startswith(_STRUCTURED):
        return _binary_event(attributes, body)
    # Structured mode (or no CloudEvent at all): the SDK reads it. The body is parsed below: a body
    # that is not JSON must be an error, not a string.
    headers = {f"ce-{name}": value for name, value in attributes.items()}
    if content_type:
        headers["content-type"] = content_type
    try:
        event = from_http(headers, body, data_unmarshaller=_keep)
    except (GenericException, ValueError, TypeError) as exc:
        raise EventRejected(DropReason.NOT_CLOUDEVENT, f"not a CloudEvent: {exc}") from None
    return _inference_event(event.get_attributes(), event.data)


def _binary_event(attributes: Mapping[str, str], body: bytes) -> InferenceEvent:
    """A binary-mode event (what KServe's and Seldon's loggers send: attributes in ``ce-*`` headers, the
    JSON body as its data), checked as the SDK's CloudEvent checks one (the required attributes, a
    specversion it knows) without making one: the SDK's object, and its generic ``from_http`` even more,
    would be most of the detector's hot path."""
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise EventRejected(
            DropReason.NOT_CLOUDEVENT, f"not a CloudEvent: missing required attributes: {missing}"
        )
    if attributes["specversion"] not in _SPECVERSIONS:
        raise EventRejected(
            DropReason.NOT_CLOUDEVENT, f"not a CloudEvent: Invalid specversion: {attributes['specversion']}"
        )
    return _inference_event(attributes, body)


def _inference_event(attributes: Mapping[str, Any], data: Any) -> InferenceEvent:
    """The inference event of a CloudEvent's attributes and data (its required attributes present)."""
    event_type = attributes["type"]
    kind = EVENT_KINDS.get(event_type)
    if kind is None:
        raise EventRejected(
            DropReason.UNKNOWN_TYPE,
            f"event type {event_type!r} is none of {REQUEST_TYPE!r}, {RESPONSE_TYPE!r} (KServe), "
            f"{seldon.REQUEST_TYPE!r}, {seldon.RESPONSE_TYPE!r} (Seldon Core)",
        )
    service, namespace = attributes.get("inferenceservicename"), attributes.get("namespace")
    if not service or not namespace:
        raise EventRejected(
            DropReason.MISSING_SERVICE,
            "the event lacks the 'inferenceservicename' and 'namespace' extensions of KServe's and "
            "Seldon's loggers",
        )
    protocol: Protocol = "kserve"
    if event_type in _KSERVE_TYPES:
        event_id = str(attributes["id"])
    else:
        request_id = attributes.get(seldon.REQUEST_ID_EXTENSION)
        if not request_id:
            raise EventRejected(
                DropReason.MISSING_REQUEST_ID,
                "the Seldon event lacks the 'requestid' extension that pairs a request with its response",
            )
        event_id = str(request_id)
        if attributes.get(seldon.PROTOCOL_EXTENSION, seldon.SELDON_PROTOCOL) == seldon.SELDON_PROTOCOL:
            protocol = "seldon"
    return InferenceEvent(
        kind,
        event_id,
        str(namespace),
        str(service),
        str(attributes.get("endpoint") or DEFAULT_ENDPOINT),
        _json_body(data),
        protocol,
    )


_STRUCTURED = "application/cloudevents"
_REQUIRED = ("specversion", "id", "source", "type")
# The specversions the SDK knows (cloudevents.http.event), whose required attributes are _REQUIRED.
_SPECVERSIONS = frozenset({"1.0", "0.3"})
_KSERVE_TYPES = frozenset({REQUEST_TYPE, RESPONSE_TYPE})
# What _logged_event compares raw header values with (latin-1, as they are decoded).
_SPECVERSION_BYTES = frozenset(version.encode("latin-1") for version in _SPECVERSIONS)
_STRUCTURED_BYTES = _STRUCTURED.encode("latin-1")
_KIND_BYTES: dict[bytes, tuple[EventKind, bool]] = {
    name.encode("latin-1"): (kind, name not in _KSERVE_TYPES) for name, kind in EVENT_KINDS.items()
}
_SELDON_PROTOCOL_BYTES = seldon.SELDON_PROTOCOL.encode("latin-1")
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""json.loads' scanner (the C one): ``(value, end)`` of the JSON value at an index, StopIteration where there
is none."""


def _keep(data: Any) -> Any:
    return data


def _json_body(data: Any) -> Any:
    if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\x00":
        # What json.loads(bytes) does for a body that starts as a UTF-8 object does ("{" then no NUL byte:
        # not UTF-16 nor UTF-32, no BOM), without its detection; then the decoder's scanner itself, without
        # the whitespace scans around it. Anything unusual goes to json.loads, for its answer.
        try:
            text = data.decode("utf-8", "surrogatepass")
            value, end = _SCAN(text, 0)
            if end == len(text):
                return value
        except (StopIteration, ValueError):
            pass
    if isinstance(data, dict | list):
        return data
    if data is None or data in (b"", ""):
        raise EventRejected(DropReason.INVALID_JSON, "the event has no data; the loggers log the JSON body")
    try:
        return json.loads(data)
    except (ValueError, TypeError) as exc:
        raise EventRejected(DropReason.INVALID_JSON, f"the event's data is not JSON: {exc}") from None
