"""What a hostile or buggy caller can make the detector hold is bounded, and refusals are counted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import (
    FAST_ARGS,
    Detector,
    inference_event,
    numeric_rows,
    start_detector,
    stop_detector,
    write_reference,
)

LIMITS = {
    "MODELLOOP_DETECTOR_MAX_BODY_BYTES": str(64 * 1024),
    "MODELLOOP_DETECTOR_MAX_SERVICES": "3",
    "MODELLOOP_DETECTOR_MAX_VERSIONS": "2",
    "MODELLOOP_DETECTOR_MAX_PENDING_HALVES": "50",
    "MODELLOOP_DETECTOR_MAX_PENDING_BYTES": str(20 * 1024),
    "MODELLOOP_DETECTOR_MAX_ID_LENGTH": "40",
    "MODELLOOP_DETECTOR_MAX_LABEL_LENGTH": "20",
}


@pytest.fixture(scope="module")
def limited() -> Iterator[Detector]:
    running = start_detector(*FAST_ARGS, "--no-mmd", env=LIMITS)
    yield running
    stop_detector(running)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_reference(tmp_path_factory.mktemp("limits"), numeric_rows(100, seed=1))


def refused(detector: Detector, reason: str) -> float:
    for labels, value in detector.metrics().get("modelloop_detector_refused_total", []):
        if labels["reason"] == reason:
            return value
    raise AssertionError(f"no refused counter for {reason}")


def gauge(detector: Detector, name: str) -> float:
    [(_, value)] = detector.metrics()[name]
    return value


def test_a_body_past_the_limit_is_refused_with_413_before_it_is_read_whole(limited: Detector) -> None:
    before = refused(limited, "body_too_large")
    body = b'{"instances": [' + b"[1.0, 2.0, 3.0, 4.0]," * 50_000 + b"[1,2,3,4]]}"  # ~1 MB
    event = inference_event("request", "big", {}, service="someone-elses")
    headers = {f"ce-{key}": str(value) for key, value in event.get_attributes().items()}
    headers["content-type"] = "application/json"
    started = time.monotonic()
    reply = limited.client.post("/", headers=headers, content=body)
    assert reply.status_code == 413, reply.text
    assert "MODELLOOP_DETECTOR_MAX_BODY_BYTES" in reply.json()["error"]
    assert time.monotonic() - started < 2.0

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        for _ in range(100):
            yield b"x" * 10_000

    reply = limited.client.post("/", headers=headers, content=chunks())
    assert reply.status_code == 413
    assert refused(limited, "body_too_large") == before + 2
    assert limited.client.get("/healthz").status_code == 200


def test_services_and_versions_past_the_limits_are_refused_naming_the_setting(
    limited: Detector, reference: str
) -> None:
    for name in ("a", "b", "c"):
        assert (
            limited.register(name, {"model": "m", "versions": {"1": {"referenceUri": reference}}}).status_code
            == 200
        )
    reply = limited.register("d", {"model": "m", "versions": {"1": {"referenceUri": reference}}})
    assert reply.status_code == 429
    assert "MODELLOOP_DETECTOR_MAX_SERVICES" in reply.json()["error"]
    # A registered service may still be updated; a deleted one frees its place.
    assert (
        limited.register("a", {"model": "m", "versions": {"2": {"referenceUri": reference}}}).status_code
        == 200
    )
    three = {str(n): {"referenceUri": reference} for n in range(3)}
    reply = limited.register("a", {"model": "m", "versions": three})
    assert reply.status_code == 400 and "MODELLOOP_DETECTOR_MAX_VERSIONS" in reply.json()["error"]
    assert refused(limited, "too_many_services") >= 1 and refused(limited, "too_many_versions") >= 1
    for name in ("a", "b", "c"):
        assert limited.client.delete(f"/v1/services/ml/{name}").status_code == 200
    assert gauge(limited, "modelloop_detector_services") == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/services/ML/x", {"model": "m", "versions": {}}, "namespace"),
        ("/v1/services/ml/x_y", {"model": "m", "versions": {}}, "service"),
        ("/v1/services/ml/" + "x" * 64, {"model": "m", "versions": {}}, "service"),
        ("/v1/services/ml/x", {"model": 'm"}\nfake_metric 1', "versions": {}}, "model"),
        ("/v1/services/ml/x", {"model": "m", "versions": {"v 1": {"referenceUri": "file:///x"}}}, "version"),
    ],
)
def test_names_that_become_prometheus_labels_are_checked(
    limited: Detector, path: str, body: dict[str, object], field: str
) -> None:
    reply = limited.client.put(path, json=body)
    assert reply.status_code == 400, reply.text
    assert field in reply.json()["error"]


def test_long_ids_and_labels_are_refused(limited: Detector, reference: str) -> None:
    assert (
        limited.register("ids", {"model": "m", "versions": {"1": {"referenceUri": reference}}}).status_code
        == 200
    )
    reply = limited.post_event(
        inference_event("request", "i" * 41, {"instances": [[1, 2, 3, 4]]}, service="ids")
    )
    assert reply.status_code == 400 and "MODELLOOP_DETECTOR_MAX_ID_LENGTH" in reply.json()["error"]
    reply = limited.client.post("/v1/feedback/ml/ids", json={"labels": [{"id": "a" * 41, "label": 1}]})
    assert reply.status_code == 400 and "labels[0].id" in reply.json()["error"]
    reply = limited.client.post("/v1/feedback/ml/ids", json={"labels": [{"id": "a", "label": "x" * 21}]})
    assert reply.status_code == 400 and "labels[0].label" in reply.json()["error"]
    assert refused(limited, "id_too_long") >= 2 and refused(limited, "invalid_label") >= 1
    limited.client.delete("/v1/services/ml/ids")


def test_memory_stays_flat_under_a_flood_of_oversized_unknown_and_unpaired_events(
    limited: Detector, reference: str
) -> None:
    assert (
        limited.register("flood", {"model": "m", "versions": {"1": {"referenceUri": reference}}}).status_code
        == 200
    )
    oversized = b"[" + b"1," * 40_000 + b"1]"
    row = {"instances": [[5.8, 3.0, 3.7, 1.2]] * 20}
    for index in range(400):
        # Unknown services (another team's), oversized bodies, and requests whose response never comes.
        assert (
            limited.post_event(inference_event("request", f"u{index}", row, service="other")).status_code
            == 202
        )
        reply = limited.client.post(
            "/", content=oversized, headers={"ce-id": "x", "content-type": "application/json"}
        )
        assert reply.status_code == 413
        assert (
            limited.post_event(inference_event("request", f"p{index}", row, service="flood")).status_code
            == 202
        )
    metrics = limited.metrics()
    [(_, halves)] = metrics["modelloop_detector_unpaired_halves"]
    [(_, pending_bytes)] = metrics["modelloop_detector_unpaired_bytes"]
    assert 0 < halves <= 50
    assert pending_bytes <= 20 * 1024
    assert gauge(limited, "modelloop_detector_services") == 1
    dropped = {
        labels["reason"]: value for labels, value in metrics["modelloop_detector_events_dropped_total"]
    }
    assert dropped["unknown_service"] >= 400 and dropped["unpaired"] >= 400 - 50
    limited.client.delete("/v1/services/ml/flood")


def test_a_wrong_limit_setting_stops_the_detector_at_start_naming_it() -> None:
    with pytest.raises(RuntimeError, match="MODELLOOP_DETECTOR_MAX_SERVICES"):
        start_detector(*FAST_ARGS, env={"MODELLOOP_DETECTOR_MAX_SERVICES": "many"})
