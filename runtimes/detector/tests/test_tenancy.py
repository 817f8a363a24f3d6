"""A detector set to one namespace serves that namespace only: another namespace's events, labels,
registrations, status reads and exports are refused (403, counted as ``reason="namespace"``) and leave no
state; a detector set to none serves every namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from conftest import (
    FAST_ARGS,
    Detector,
    Mode,
    inference_event,
    numeric_rows,
    start_detector,
    stop_detector,
    write_reference,
)
from modelloop_detector.cli import build_parser

OWN, OTHER = "team-a", "team-b"


@pytest.fixture(scope="module")
def namespaced() -> Iterator[Detector]:
    """A detector for team-a, set by the environment variable as the chart and kustomize set it."""
    running = start_detector(*FAST_ARGS, "--no-mmd", env={"MODELLOOP_DETECTOR_NAMESPACE": OWN})
    yield running
    stop_detector(running)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_reference(tmp_path_factory.mktemp("tenancy"), numeric_rows(100, seed=1))


def registration(reference: str) -> dict[str, object]:
    return {"model": "iris", "versions": {"1": {"referenceUri": reference}}}


def counters(detector: Detector, name: str) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in detector.metrics()[name]}


def refused_for_namespace(detector: Detector) -> float:
    return counters(detector, "modelloop_detector_refused_total").get("namespace", 0.0)


def gauge(detector: Detector, name: str) -> float:
    [(_, value)] = detector.metrics()[name]
    return value


def assert_refused_for_the_namespace(reply_status: int, reply_json: dict[str, str]) -> None:
    assert reply_status == 403, reply_json
    error = reply_json["error"]
    assert f"serves namespace '{OWN}' only" in error and f"not '{OTHER}'" in error
    assert "MODELLOOP_DETECTOR_NAMESPACE" in error


@pytest.fixture
def own_service(namespaced: Detector, reference: str) -> Iterator[str]:
    """team-a/iris registered, with 20 rows in its window; deleted after."""
    reply = namespaced.register("iris", registration(reference), namespace=OWN)
    assert reply.status_code == 200, reply.text
    namespaced.send_rows(numeric_rows(20, seed=2), [1] * 20, prefix="own", namespace=OWN)
    namespaced.wait_for("iris", lambda s: s["versions"]["1"]["windowRows"] == 20, namespace=OWN)
    yield "iris"
    assert namespaced.client.delete(f"/v1/services/{OWN}/iris").status_code == 200


def test_another_namespaces_events_are_refused_and_never_wait_for_their_other_half(
    namespaced: Detector, own_service: str
) -> None:
    refused = refused_for_namespace(namespaced)
    dropped = counters(namespaced, "modelloop_detector_events_dropped_total")
    row = {"instances": numeric_rows(1, seed=3).tolist()}
    halves: list[tuple[Literal["request", "response"], Any]] = [
        ("request", row),
        ("response", {"predictions": [1]}),
    ]
    modes: list[Mode] = ["binary", "structured"]
    # The same service name and event id as the team's own: had it been kept, it would pair with them.
    for kind, body in halves:
        for mode in modes:
            event = inference_event(kind, "shared-id", body, namespace=OTHER)
            reply = namespaced.post_event(event, mode)
            assert_refused_for_the_namespace(reply.status_code, reply.json())

    assert refused_for_namespace(namespaced) == refused + 4
    assert gauge(namespaced, "modelloop_detector_unpaired_halves") == 0
    assert counters(namespaced, "modelloop_detector_events_dropped_total") == dropped
    # The team's own half with that id waits for its own other half, and pairs with it alone.
    namespaced.send_pair("shared-id", row, {"predictions": [1]}, namespace=OWN)
    state = namespaced.wait_for(own_service, lambda s: s["versions"]["1"]["windowRows"] == 21, namespace=OWN)
    assert state["namespace"] == OWN


def test_another_namespaces_labels_are_refused_before_their_body_is_read(
    namespaced: Detector, own_service: str
) -> None:
    refused = refused_for_namespace(namespaced)
    labels = {"labels": [{"id": "own-0/0", "label": 0}]}
    reply = namespaced.client.post(f"/v1/feedback/{OTHER}/{own_service}", json=labels)
    assert_refused_for_the_namespace(reply.status_code, reply.json())
    reply = namespaced.client.post(f"/v1/feedback/{OTHER}/{own_service}", content=b"not json")
    assert_refused_for_the_namespace(reply.status_code, reply.json())
    assert refused_for_namespace(namespaced) == refused + 2

    state = namespaced.status(own_service, namespace=OWN)
    assert state["pendingLabels"] == 0 and state["versions"]["1"]["labelledRows"] == 0
    reply = namespaced.client.post(f"/v1/feedback/{OWN}/{own_service}", json=labels)
    assert reply.status_code == 200 and reply.json() == {"joined": 1, "pending": 0}


def test_another_namespaces_registrations_are_refused_and_its_services_cannot_be_read_or_deleted(
    namespaced: Detector, own_service: str, reference: str
) -> None:
    refused = counters(namespaced, "modelloop_detector_refused_total")
    reply = namespaced.register("iris", registration(reference), namespace=OTHER)
    assert_refused_for_the_namespace(reply.status_code, reply.json())
    # Refused for its namespace before its reference is looked at, wherever that is.
    reply = namespaced.register("iris", registration("file:///etc/passwd"), namespace=OTHER)
    assert_refused_for_the_namespace(reply.status_code, reply.json())
    for method in ("GET", "DELETE"):
        reply = namespaced.client.request(method, f"/v1/services/{OTHER}/{own_service}")
        assert_refused_for_the_namespace(reply.status_code, reply.json())

    after = counters(namespaced, "modelloop_detector_refused_total")
    assert after.get("namespace") == refused.get("namespace", 0.0) + 4
    assert after["outside_artifact_roots"] == refused["outside_artifact_roots"]
    assert gauge(namespaced, "modelloop_detector_services") == 1
    series = namespaced.metrics()["modelloop_drift_window_rows"]
    assert [(labels["namespace"], labels["service"]) for labels, _ in series] == [(OWN, own_service)]
    assert namespaced.status(own_service, namespace=OWN)["versions"]["1"]["windowRows"] == 20


def test_another_namespaces_export_is_refused_and_writes_nothing(
    namespaced: Detector, own_service: str, tmp_path: Path
) -> None:
    refused = refused_for_namespace(namespaced)
    exports = tmp_path / "exports"
    reply = namespaced.client.post(f"/v1/export/{OTHER}/{own_service}", json={"uriPrefix": exports.as_uri()})
    assert_refused_for_the_namespace(reply.status_code, reply.json())
    assert refused_for_namespace(namespaced) == refused + 1
    assert not exports.exists()

    reply = namespaced.client.post(f"/v1/export/{OWN}/{own_service}", json={"uriPrefix": exports.as_uri()})
    assert reply.status_code == 200, reply.text
    assert reply.json()["rows"] == 20
    assert [path.name.startswith(f"{OWN}-{own_service}-") for path in exports.iterdir()] == [True]


def test_a_detector_set_to_no_namespace_serves_every_namespace(detector: Detector, reference: str) -> None:
    for namespace in (OWN, OTHER):
        reply = detector.register("everyone", registration(reference), namespace=namespace)
        assert reply.status_code == 200, reply.text
        detector.send_pair(
            "e",
            {"instances": numeric_rows(1, seed=5).tolist()},
            {"predictions": [1]},
            namespace=namespace,
            service="everyone",
        )
        detector.wait_for("everyone", lambda s: s["versions"]["1"]["windowRows"] == 1, namespace=namespace)
        assert detector.client.delete(f"/v1/services/{namespace}/everyone").status_code == 200


def test_the_namespace_flag_is_read_from_the_environment_and_wins_over_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELLOOP_DETECTOR_NAMESPACE", OWN)
    assert build_parser().parse_args([]).namespace == OWN
    assert build_parser().parse_args(["--namespace", OTHER]).namespace == OTHER
    monkeypatch.delenv("MODELLOOP_DETECTOR_NAMESPACE")
    assert build_parser().parse_args([]).namespace == ""


@pytest.mark.parametrize("setting", ["Team-A", "team_a", "a" * 64, "team-a,team-b"])
def test_a_namespace_setting_that_is_no_namespace_stops_the_detector_at_start_naming_it(setting: str) -> None:
    with pytest.raises(RuntimeError, match="MODELLOOP_DETECTOR_NAMESPACE"):
        start_detector(*FAST_ARGS, "--no-mmd", "--namespace", setting)
