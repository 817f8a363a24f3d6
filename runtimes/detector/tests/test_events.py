"""Reading KServe's logged CloudEvents: the ASGI hot path and the generic reader agree, event by event."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Mode, encode, inference_event
from modelloop_detector.events import DropReason, EventRejected, read_asgi_event, read_event


def asgi_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI server gives them: lower-case names, latin-1 bytes, and others besides."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return [(b"host", b"detector:8080"), (b"content-length", b"42"), *raw]


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("kind", ["request", "response"])
def test_the_asgi_reader_reads_what_the_generic_reader_reads(mode: Mode, kind: str) -> None:
    body = {"instances": [[5.1, 3.5]]} if kind == "request" else {"predictions": [0]}
    event = inference_event(kind, "abc-1", body, endpoint="canary")  # type: ignore[arg-type]
    headers, data = encode(event, mode)
    generic = read_event({name.lower(): value for name, value in headers.items()}, data)
    fast = read_asgi_event(asgi_headers(headers), data)
    assert fast == generic
    assert (fast.kind, fast.id, fast.namespace, fast.service, fast.endpoint, fast.body) == (
        kind,
        "abc-1",
        "ml",
        "iris",
        "canary",
        body,
    )


def test_a_structured_content_type_wins_over_stray_ce_headers() -> None:
    headers, data = encode(inference_event("request", "abc-2", {"instances": [[1.0]]}), "structured")
    headers["ce-specversion"] = "1.0"  # a proxy's leftover: the body is the event
    event = read_asgi_event(asgi_headers(headers), data)
    assert (event.id, event.body) == ("abc-2", {"instances": [[1.0]]})


@pytest.mark.parametrize("missing", ["ce-specversion", "ce-id", "ce-source", "ce-type"])
def test_a_binary_event_without_a_required_attribute_is_not_a_cloudevent(missing: str) -> None:
    headers, data = encode(inference_event("request", "abc-3", {"instances": [[1.0]]}), "binary")
    headers[missing] = ""
    with pytest.raises(EventRejected) as rejected:
        read_asgi_event(asgi_headers(headers), data)
    assert rejected.value.reason == DropReason.NOT_CLOUDEVENT
    assert missing.removeprefix("ce-") in str(rejected.value)


KSERVE = {
    "ce-specversion": "1.0",
    "ce-id": "abc-4",
    "ce-source": "http://localhost:9081/",
    "ce-type": "org.kubeflow.serving.inference.request",
    "ce-inferenceservicename": "iris",
    "ce-namespace": "ml",
    "ce-endpoint": "canary",
    "ce-time": "2026-11-28T02:00:00Z",
    "content-type": "application/json",
}
SELDON = {
    **KSERVE,
    "ce-type": "io.seldon.serving.inference.response",
    "ce-requestid": "puid-1",
    "ce-protocol": "seldon",
}
BODY = b'{"instances": [[5.1, 3.5]]}'


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (KSERVE, BODY),
        ({**KSERVE, "ce-type": "org.kubeflow.serving.inference.response"}, b'{"predictions": [1]}'),
        ({**KSERVE, "ce-endpoint": ""}, BODY),
        ({key: value for key, value in KSERVE.items() if key != "ce-endpoint"}, BODY),
        ({key: value for key, value in KSERVE.items() if key != "content-type"}, BODY),
        ({**KSERVE, "ce-specversion": "0.3"}, BODY),
        ({**KSERVE, "ce-specversion": "2.0"}, BODY),
        ({key: value for key, value in KSERVE.items() if key != "ce-specversion"}, BODY),
        ({**KSERVE, "ce-id": ""}, BODY),
        ({key: value for key, value in KSERVE.items() if key != "ce-source"}, BODY),
        ({**KSERVE, "ce-type": "org.kubeflow.serving.inference.other"}, BODY),
        ({**KSERVE, "ce-namespace": ""}, BODY),
        ({key: value for key, value in KSERVE.items() if key != "ce-inferenceservicename"}, BODY),
        ({**KSERVE, "content-type": "application/cloudevents+json"}, BODY),
        (SELDON, b'{"data": {"ndarray": [[1]]}}'),
        ({**SELDON, "ce-protocol": "v2"}, b'{"outputs": []}'),
        ({key: value for key, value in SELDON.items() if key != "ce-protocol"}, b"{}"),
        ({**SELDON, "ce-requestid": ""}, b"{}"),
        (KSERVE, b""),
        (KSERVE, b"  "),
        (KSERVE, b'{"instances": [[1]]} trailing'),
        (KSERVE, b'{"instances": [[1]]}\n'),
        (KSERVE, b' {"instances": [[1]]}'),
        (KSERVE, b'{"instances": "\xff"}'),
        (KSERVE, b'{"instances": [NaN, Infinity]}'),
        (KSERVE, b"[1, 2]"),
        (KSERVE, "{}".encode("utf-16")),
    ],
)
def test_the_raw_header_reader_answers_what_the_generic_reader_answers(
    headers: dict[str, str], body: bytes
) -> None:
    """The hot path reads the loggers' events from the raw headers and the body's JSON without the SDK or
    json.loads' detection: the same event, or the same refusal with the same reason and message."""

    def outcome(read: Any) -> Any:
        try:
            return read()
        except EventRejected as exc:
            return exc.reason, str(exc)

    generic = outcome(lambda: read_event(headers, body))
    fast = outcome(lambda: read_asgi_event(asgi_headers(headers), body))
    assert fast == generic


@pytest.mark.parametrize(
    "body",
    [
        BODY,
        b'{"instances": [[1]]}\n',
        b' {"instances": [[1]]}',
        b'{"instances": [[1]]} trailing',
        b'{"instances": [[1]]}{}',
        b'{"instances": "\xff"}',
        b'{"instances": "\xed\xa0\x80"}',
        b'{"instances": [NaN, -Infinity, 1e400]}',
        b"{",
        b"{\x00}",
        b"[1, 2]",
        "{}".encode("utf-16"),
        "{}".encode("utf-8-sig"),
    ],
)
def test_a_binary_events_data_is_parsed_as_json_loads_parses_it(body: bytes) -> None:
    try:
        expected: Any = json.loads(body)
    except ValueError as exc:
        expected = (DropReason.INVALID_JSON, f"the event's data is not JSON: {exc}")
    try:
        read: Any = read_asgi_event(asgi_headers(KSERVE), body).body
    except EventRejected as exc:
        read = (exc.reason, str(exc))
    assert repr(read) == repr(expected)  # repr: NaN equals nothing
