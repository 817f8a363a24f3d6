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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http
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


@dataclass(frozen=True)
class InferenceEvent:
    """One logged request or response of an InferenceService (or a SeldonDeployment).

    ``id`` pairs a request with its response, and names its rows: KServe's event id, Seldon's request id.
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
    """:func:`read_event` from an ASGI scope's raw headers (names in lower case, as ASGI gives them):
    only the ``ce-*`` attributes and the content type are decoded. The detector's hot path."""
    attributes, content_type = {}, ""
    for name, value in headers:
        if name[:3] == b"ce-":
            attributes[name[3:].decode("latin-1")] = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    return _read(attributes, content_type, body)


def _read(attributes: dict[str, str], content_type: str, body: bytes) -> InferenceEvent:
    try:
        if "specversion" in attributes and not content_type.startswith(_STRUCTURED):
            event = _binary_event(attributes, body)
        else:
            # The body is parsed below: a body that is not JSON must be an error, not a string.
            headers = {f"ce-{name}": value for name, value in attributes.items()}
            if content_type:
                headers["content-type"] = content_type
            event = from_http(headers, body, data_unmarshaller=_keep)
    except (GenericException, ValueError, TypeError) as exc:
        raise EventRejected(DropReason.NOT_CLOUDEVENT, f"not a CloudEvent: {exc}") from None
    event_type = event["type"]
    kind = EVENT_KINDS.get(event_type)
    if kind is None:
        raise EventRejected(
            DropReason.UNKNOWN_TYPE,
            f"event type {event_type!r} is none of {REQUEST_TYPE!r}, {RESPONSE_TYPE!r} (KServe), "
            f"{seldon.REQUEST_TYPE!r}, {seldon.RESPONSE_TYPE!r} (Seldon Core)",
        )
    read = event.get_attributes()
    service, namespace = read.get("inferenceservicename"), read.get("namespace")
    if not service or not namespace:
        raise EventRejected(
            DropReason.MISSING_SERVICE,
            "the event lacks the 'inferenceservicename' and 'namespace' extensions of KServe's and "
            "Seldon's loggers",
        )
    protocol: Protocol = "kserve"
    if event_type in (REQUEST_TYPE, RESPONSE_TYPE):
        event_id = str(event["id"])
    else:
        request_id = read.get(seldon.REQUEST_ID_EXTENSION)
        if not request_id:
            raise EventRejected(
                DropReason.MISSING_REQUEST_ID,
                "the Seldon event lacks the 'requestid' extension that pairs a request with its response",
            )
        event_id = str(request_id)
        if read.get(seldon.PROTOCOL_EXTENSION, seldon.SELDON_PROTOCOL) == seldon.SELDON_PROTOCOL:
            protocol = "seldon"
    return InferenceEvent(
        kind=kind,
        id=event_id,
        namespace=str(namespace),
        service=str(service),
        endpoint=str(read.get("endpoint") or DEFAULT_ENDPOINT),
        body=_json_body(event.data),
        protocol=protocol,
    )


def _binary_event(attributes: dict[str, str], body: bytes) -> CloudEvent:
    """A binary-mode event (what KServe's agent sends: attributes in ``ce-*`` headers, the JSON body as
    its data), made with the SDK's CloudEvent from the attributes directly: the SDK's generic
    ``from_http`` takes 15 times as long, the detector's hot path. Any other mode goes to ``from_http``."""
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise ValueError(f"missing required attributes: {missing}")
    return CloudEvent(attributes, body)


_STRUCTURED = "application/cloudevents"
_REQUIRED = ("specversion", "id", "source", "type")


def _keep(data: Any) -> Any:
    return data


def _json_body(data: Any) -> Any:
    if isinstance(data, dict | list):
        return data
    if data is None or data in (b"", ""):
        raise EventRejected(DropReason.INVALID_JSON, "the event has no data; the loggers log the JSON body")
    try:
        return json.loads(data)
    except (ValueError, TypeError) as exc:
        raise EventRejected(DropReason.INVALID_JSON, f"the event's data is not JSON: {exc}") from None
