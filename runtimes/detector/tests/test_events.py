"""Reading KServe's logged CloudEvents: the ASGI hot path and the generic reader agree, event by event."""

from __future__ import annotations

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
