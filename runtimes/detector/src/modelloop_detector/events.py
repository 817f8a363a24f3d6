"""KServe's payload-logger CloudEvents, read from HTTP in binary or structured mode.

KServe's agent (``cmd/agent``) posts each logged request and response as a CloudEvent of type
``org.kubeflow.serving.inference.request``/``.response``; a request and its response share the
event id. Extensions name the InferenceService (``inferenceservicename``, ``namespace``), the
component and the ``endpoint`` (``default`` or ``canary``) that answered.
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

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_KINDS: dict[str, Literal["request", "response"]] = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}


class DropReason(StrEnum):
    """Why an event did not become rows: the ``reason`` label of the dropped-events counter."""

    NOT_CLOUDEVENT = "not_cloudevent"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_SERVICE = "missing_service"
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
    """One logged request or response of an InferenceService."""

    kind: Literal["request", "response"]
    id: str
    namespace: str
    service: str
    endpoint: str
    body: Any


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
            f"event type {event_type!r} is neither {REQUEST_TYPE!r} nor {RESPONSE_TYPE!r}",
        )
    read = event.get_attributes()
    service, namespace = read.get("inferenceservicename"), read.get("namespace")
    if not service or not namespace:
        raise EventRejected(
            DropReason.MISSING_SERVICE,
            "the event lacks the 'inferenceservicename' and 'namespace' extensions of KServe's logger",
        )
    return InferenceEvent(
        kind=kind,
        id=str(event["id"]),
        namespace=str(namespace),
        service=str(service),
        endpoint=str(read.get("endpoint") or DEFAULT_ENDPOINT),
        body=_json_body(event.data),
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
        raise EventRejected(DropReason.INVALID_JSON, "the event has no data; KServe logs the JSON body")
    try:
        return json.loads(data)
    except (ValueError, TypeError) as exc:
        raise EventRejected(DropReason.INVALID_JSON, f"the event's data is not JSON: {exc}") from None
