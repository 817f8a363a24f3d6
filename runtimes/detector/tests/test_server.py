"""``modelloop-detector`` as a process, over real HTTP, fed real CloudEvents in both modes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    FAST_ARGS,
    FEATURES,
    Detector,
    Mode,
    encode,
    inference_event,
    numeric_rows,
    start_detector,
    stop_detector,
    write_predictions,
    write_reference,
)

TRAINER_PYTHON = Path(__file__).resolve().parents[3] / ".venvs" / "trainer" / "bin" / "python"


def value(detector: Detector, name: str, /, **labels: str) -> float | None:
    for sample_labels, sample_value in detector.metrics().get(name, []):
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
            return sample_value
    return None


def dropped(detector: Detector, reason: str) -> float:
    return value(detector, "modelloop_detector_events_dropped_total", reason=reason) or 0.0


def register(detector: Detector, service: str, reference_uri: str, **extra: Any) -> None:
    body = {
        "model": "iris",
        "versions": {"3": {"referenceUri": reference_uri, "endpoint": "default"}},
        **extra,
    }
    reply = detector.register(service, body)
    assert reply.status_code == 200, reply.text


def v2_request(rows: np.ndarray, named: bool) -> dict[str, Any]:
    if named:
        return {
            "inputs": [
                {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": rows[:, index].tolist()}
                for index, name in enumerate(FEATURES)
            ]
        }
    return {
        "inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
        ]
    }


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("protocol", ["v1-lists", "v1-objects", "v2-tensor", "v2-named"])
def test_logged_inferences_become_window_rows(
    detector: Detector, reference_uri: str, mode: Mode, protocol: str
) -> None:
    service = f"rows-{mode}-{protocol}"
    register(detector, service, reference_uri)
    rows = numeric_rows(3, seed=9)
    request: dict[str, Any]
    if protocol == "v1-lists":
        request = {"instances": rows.tolist()}
    elif protocol == "v1-objects":
        request = {"instances": [dict(zip(FEATURES, row, strict=True)) for row in rows.tolist()]}
    else:
        request = v2_request(rows, named=protocol == "v2-named")
    response: dict[str, Any] = (
        {"predictions": [0, 1, 2]}
        if protocol.startswith("v1")
        else {
            "model_name": "iris",
            "model_version": "3",
            "outputs": [{"name": "output-0", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]}],
        }
    )
    detector.send_pair("first", request, response, mode=mode, service=service)
    detector.send_pair("second", request, response, mode=mode, service=service, response_first=True)
    assert detector.status(service)["versions"]["3"]["windowRows"] == 6
    assert value(detector, "modelloop_drift_window_rows", service=service, version="3", model="iris") == 6


def test_drift_is_judged_and_exported_as_metrics(detector: Detector, reference_uri: str) -> None:
    register(detector, "drifting", reference_uri)
    register(detector, "steady", reference_uri)
    detector.send_rows(numeric_rows(100, seed=21, shift=1.0), [1] * 100, prefix="d", service="drifting")
    detector.send_rows(numeric_rows(100, seed=22), [1] * 100, prefix="s", service="steady")

    def judged(state: dict[str, Any]) -> bool:
        return {record["detector"] for record in state["versions"]["3"]["verdicts"]} == {"ks", "mmd"}

    for service, drift in (("drifting", 1.0), ("steady", 0.0)):
        state = detector.wait_for(service, judged)
        combined = {r["detector"]: r for r in state["versions"]["3"]["verdicts"] if r["feature"] == ""}
        assert combined["ks"]["drift"] is bool(drift)
        assert combined["mmd"]["drift"] is bool(drift)
        labels = {"namespace": "ml", "service": service, "model": "iris", "version": "3"}
        assert value(detector, "modelloop_drift_verdict", detector="ks", **labels) == drift
        assert value(detector, "modelloop_drift_verdict", detector="mmd", **labels) == drift
        for feature in ["", *FEATURES]:
            assert (
                value(detector, "modelloop_drift_score", detector="ks", feature=feature, **labels) is not None
            )
            assert (
                value(detector, "modelloop_drift_p_value", detector="ks", feature=feature, **labels)
                is not None
            )
        assert value(detector, "modelloop_drift_score", detector="mmd", feature="", **labels) is not None
    assert (value(detector, "modelloop_drift_verdict_seconds_count", detector="ks") or 0) >= 2
    assert (value(detector, "modelloop_drift_verdict_seconds_count", detector="mmd") or 0) >= 2


def test_prediction_check_runs_when_the_reference_predictions_are_given(
    detector: Detector, tmp_path: Path
) -> None:
    rows = numeric_rows(200, seed=1)
    uri = write_reference(tmp_path, rows)
    predictions = write_predictions(tmp_path, np.random.default_rng(3).choice(["a", "b", "c"], 200).tolist())
    reply = detector.register(
        "classes", {"model": "iris", "versions": {"3": {"referenceUri": uri, "predictionsUri": predictions}}}
    )
    assert reply.status_code == 200, reply.text
    detector.send_rows(numeric_rows(60, seed=2), ["a"] * 60, prefix="p", service="classes")
    state = detector.wait_for(
        "classes", lambda s: any(r["detector"] == "prediction" for r in s["versions"]["3"]["verdicts"])
    )
    [check] = [r for r in state["versions"]["3"]["verdicts"] if r["detector"] == "prediction"]
    assert check["feature"] == "prediction" and check["drift"] is True
    labels = {"service": "classes", "version": "3", "detector": "prediction"}
    assert value(detector, "modelloop_drift_score", feature="prediction", **labels) is not None


BAD_EVENTS = [
    (
        "not_cloudevent",
        {"content-type": "application/json"},
        b'{"instances": [[1, 2, 3, 4]]}',
        "not a CloudEvent",
    ),
    ("not_cloudevent", {"content-type": "application/cloudevents+json"}, b"{oops", "not a CloudEvent"),
    (
        "not_cloudevent",  # binary mode without an id: nothing to pair it by
        {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-source": "http://localhost:9081/",
            "ce-type": "org.kubeflow.serving.inference.request",
        },
        b'{"instances": [[1, 2, 3, 4]]}',
        "missing required attributes: ['id']",
    ),
]


@pytest.mark.parametrize(("reason", "headers", "body", "message"), BAD_EVENTS)
def test_what_is_not_a_cloudevent_is_refused_and_counted(
    detector: Detector, reason: str, headers: dict[str, str], body: bytes, message: str
) -> None:
    before = dropped(detector, reason)
    reply = detector.client.post("/", headers=headers, content=body)
    assert reply.status_code == 400
    assert message in reply.json()["error"]
    assert dropped(detector, reason) == before + 1


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize(
    ("reason", "kind", "body", "message"),
    [
        ("unknown_type", "other", {"instances": [[1, 2, 3, 4]]}, "event type"),
        ("invalid_json", "request", b"instances=1", "not JSON"),
        ("invalid_payload", "request", {"instances": "five rows"}, "non-empty list of rows"),
        ("invalid_payload", "response", {"predictions": [[0.2, 0.8]]}, "one value per row"),
        (
            "feature_mismatch",
            "request",
            {"instances": [[1, 2, 3]]},
            "rows have 3 values, the reference has 4",
        ),
    ],
)
def test_malformed_events_are_refused_with_the_reason_and_counted(
    detector: Detector, reference_uri: str, mode: Mode, reason: str, kind: str, body: Any, message: str
) -> None:
    register(detector, "strict", reference_uri)
    event = inference_event("request" if kind == "other" else kind, "x", {}, service="strict")  # type: ignore[arg-type]
    if kind == "other":
        event["type"] = "org.example.other"
    event.data = body if isinstance(body, bytes) else __import__("json").dumps(body).encode()
    headers, payload = encode(event, mode)
    before = dropped(detector, reason)
    reply = detector.client.post("/", headers=headers, content=payload)
    assert reply.status_code == 400
    assert message in reply.json()["error"]
    assert dropped(detector, reason) == before + 1


def test_events_of_an_unregistered_service_are_accepted_and_counted(detector: Detector) -> None:
    before = dropped(detector, "unknown_service")
    reply = detector.post_event(
        inference_event("request", "z", {"instances": [[1, 2, 3, 4]]}, service="nobody")
    )
    assert reply.status_code == 202
    assert dropped(detector, "unknown_service") == before + 1


def test_received_events_are_counted_by_type_and_exported_as_a_counter(detector: Detector) -> None:
    def received(kind: str) -> float:
        return value(detector, "modelloop_detector_events_total", type=kind) or 0.0

    before = {kind: received(kind) for kind in ("request", "response")}
    detector.send_pair("counted", {"instances": [[1, 2, 3, 4]]}, {"predictions": [0]}, service="nobody")
    detector.post_event(inference_event("request", "counted-2", {"instances": []}, service="nobody"))
    assert {kind: received(kind) - before[kind] for kind in before} == {"request": 2, "response": 1}
    text = detector.client.get("/metrics").text
    assert "# TYPE modelloop_detector_events_total counter" in text
    assert re.search(r'^modelloop_detector_events_created\{type="request"\} \d', text, re.MULTILINE)


def test_registration_is_idempotent_and_reports_each_version(detector: Detector, tmp_path: Path) -> None:
    good = write_reference(tmp_path, numeric_rows(80, seed=1))
    body = {
        "model": "iris",
        "targetColumn": "species",
        "versions": {
            "3": {"referenceUri": good, "endpoint": "default"},
            "4": {"referenceUri": (tmp_path / "missing.csv").as_uri(), "endpoint": "canary"},
        },
    }
    reply = detector.register("twoversions", body)
    assert reply.status_code == 422
    assert "version 4: cannot read" in reply.json()["error"]
    assert reply.json()["versions"] == {"3": {"referenceRows": 80, "features": FEATURES}}
    detector.send_rows(numeric_rows(10, seed=2), [0] * 10, prefix="k", service="twoversions")
    del body["versions"]["4"]  # type: ignore[attr-defined]
    reply = detector.register("twoversions", body)
    assert reply.status_code == 200
    assert reply.json() == {"versions": {"3": {"referenceRows": 80, "features": FEATURES}}}
    assert detector.status("twoversions")["versions"]["3"]["windowRows"] == 10  # the same window, kept


def test_a_version_no_longer_served_loses_its_series(detector: Detector, reference_uri: str) -> None:
    versions = {
        "3": {"referenceUri": reference_uri},
        "4": {"referenceUri": reference_uri, "endpoint": "canary"},
    }
    assert detector.register("rollover", {"model": "iris", "versions": versions}).status_code == 200
    assert value(detector, "modelloop_drift_window_rows", service="rollover", version="3") == 0
    del versions["3"]
    assert detector.register("rollover", {"model": "iris", "versions": versions}).status_code == 200
    assert value(detector, "modelloop_drift_window_rows", service="rollover", version="3") is None
    assert value(detector, "modelloop_drift_window_rows", service="rollover", version="4") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"versions": {}},
        {"model": "iris", "versions": {"3": {}}},
        {"model": "iris", "versions": {"3": {"referenceUri": "x", "endpoint": "blue"}}},
    ],
)
def test_a_registration_without_what_is_needed_is_refused(detector: Detector, body: dict[str, Any]) -> None:
    reply = detector.register("invalid", body)
    assert reply.status_code == 400
    assert reply.json()["error"]


def test_feedback_accuracy_joins_labels_that_come_before_and_after_rows(
    detector: Detector, reference_uri: str
) -> None:
    register(detector, "labelled", reference_uri)
    rows = numeric_rows(4, seed=3)
    early = detector.client.post("/v1/feedback/ml/labelled", json={"labels": [{"id": "late/0", "label": 1}]})
    assert early.json() == {"joined": 0, "pending": 1}
    detector.send_pair("late", {"instances": rows[:2].tolist()}, {"predictions": [1, 2]}, service="labelled")
    detector.send_pair("single", {"instances": rows[2:3].tolist()}, {"predictions": [0]}, service="labelled")
    reply = detector.client.post(
        "/v1/feedback/ml/labelled",
        json={"labels": [{"id": "late/1", "label": 0}, {"id": "single", "label": 0}]},
    )
    assert reply.json() == {"joined": 2, "pending": 0}
    labels = {"namespace": "ml", "service": "labelled", "model": "iris", "version": "3"}
    assert value(detector, "modelloop_feedback_accuracy", **labels) == pytest.approx(2 / 3)
    assert value(detector, "modelloop_feedback_labels_total", **labels) == 3
    state = detector.status("labelled")["versions"]["3"]
    assert state["labelledRows"] == 3 and state["feedback"]["accuracy"] == pytest.approx(2 / 3)


def test_feedback_for_an_unregistered_service_is_not_found(detector: Detector) -> None:
    reply = detector.client.post("/v1/feedback/ml/ghost", json={"labels": [{"id": "a", "label": 1}]})
    assert reply.status_code == 404


def test_export_writes_the_window_with_labels_and_the_hash_the_trainer_reads_it_with(
    detector: Detector, reference_uri: str, tmp_path: Path
) -> None:
    register(detector, "exported", reference_uri, targetColumn="species")
    rows = numeric_rows(6, seed=4)
    detector.send_pair("e", {"instances": rows.tolist()}, {"predictions": ["a"] * 6}, service="exported")
    detector.client.post(
        "/v1/feedback/ml/exported",
        json={"labels": [{"id": "e/0", "label": "setosa"}, {"id": "e/3", "label": "virginica"}]},
    )
    reply = detector.client.post(
        "/v1/export/ml/exported", json={"uriPrefix": (tmp_path / "exports").as_uri()}
    )
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["rows"] == 6 and result["labelled"] == 2
    digest = result["hash"].removeprefix("sha256:")
    assert re.fullmatch(
        rf"file://{tmp_path}/exports/ml-exported-\d{{8}}T\d{{6}}Z-{digest[:12]}\.csv", result["uri"]
    )
    lines = Path(result["uri"].removeprefix("file://")).read_text().splitlines()
    assert lines[0] == ",".join([*FEATURES, "species"])
    assert lines[1].endswith(",setosa") and lines[2].endswith(",") and lines[4].endswith(",virginica")
    if not TRAINER_PYTHON.exists():
        pytest.skip(f"the trainer's environment ({TRAINER_PYTHON}) is not there: make trainer-venv")
    trainers = subprocess.run(
        [
            str(TRAINER_PYTHON),
            "-c",
            # The trainer reads the file as it reads an additional dataset, with its own pandas and numpy.
            "import sys; from modelloop_trainer.dataset import load_dataset; "
            "print(load_dataset(sys.argv[1], 'csv').content_hash)",
            result["uri"],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert trainers == result["hash"]


def test_exporting_an_empty_window_is_a_conflict(
    detector: Detector, reference_uri: str, tmp_path: Path
) -> None:
    register(detector, "empty", reference_uri)
    reply = detector.client.post("/v1/export/ml/empty", json={"uriPrefix": tmp_path.as_uri()})
    assert reply.status_code == 409
    assert "no rows" in reply.json()["error"]


def test_sigterm_stops_the_detector_cleanly() -> None:
    running = start_detector(*FAST_ARGS)
    assert stop_detector(running) == 0
