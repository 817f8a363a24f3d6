"""Estimated and realised performance: a version registered with the trainer's holdout gets an estimator,
its window keeps the served class probabilities, the fast loop estimates its performance from them before
labels arrive and measures it on the rows whose labels have arrived; a holdout that cannot be used leaves the
version registered without estimates, and says why. In-process on virtual time, and over real HTTP."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import (
    HOLDOUT_LABEL_COLUMN,
    HOLDOUT_PREDICTION_COLUMN,
    Registration,
    VersionSpec,
    holdout_probability_column,
)

from conftest import FEATURES, Detector, artifact_roots, numeric_rows, write_reference
from modelloop_detector.api import service_status
from modelloop_detector.detectors import DetectorSettings
from modelloop_detector.events import InferenceEvent
from modelloop_detector.limits import RefusalReason, Refused
from modelloop_detector.metrics import DetectorMetrics
from modelloop_detector.payloads import ProbabilitiesIgnored
from modelloop_detector.service import DriftService, WindowSettings

CLASSES = (0, 1, 2)
MIN_ROWS = 40


def class_probabilities(rows: np.ndarray) -> np.ndarray:
    """A classifier's class probabilities of ``rows``: a softmax of the petal length, sharp enough for an
    accuracy of about 0.8."""
    centres = np.array([2.0, 3.7, 5.4])
    logits = -2.5 * (rows[:, 2:3] - centres[None, :]) ** 2
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.round(exp / exp.sum(axis=1, keepdims=True), 6)


def draw_labels(probabilities: np.ndarray, seed: int) -> np.ndarray:
    """Labels drawn from the probabilities: the model is calibrated."""
    rng = np.random.default_rng(seed)
    cumulative = probabilities.cumsum(axis=1)
    return (rng.random(len(probabilities))[:, None] > cumulative).sum(axis=1).clip(0, len(CLASSES) - 1)


def write_holdout(folder: Path, rows: int = 600, seed: int = 11) -> str:
    """The trainer's holdout.csv of the classifier above; returns its file:// URI."""
    features = numeric_rows(rows, seed=seed)
    probabilities = class_probabilities(features)
    probabilities[:, -1] = 1.0 - probabilities[:, :-1].sum(axis=1)
    frame = pd.DataFrame(features, columns=FEATURES)
    frame[HOLDOUT_LABEL_COLUMN] = draw_labels(probabilities, seed)
    frame[HOLDOUT_PREDICTION_COLUMN] = probabilities.argmax(axis=1)
    for index, label in enumerate(CLASSES):
        frame[holdout_probability_column(label)] = probabilities[:, index]
    path = folder / "holdout.csv"
    frame.to_csv(path, index=False, lineterminator="\n")
    return path.as_uri()


def write_regression_holdout(folder: Path, rows: int = 300) -> str:
    features = numeric_rows(rows, seed=21)
    predictions = features[:, 2] * 0.4
    labels = predictions + np.random.default_rng(21).normal(0, 0.2 + 0.1 * features[:, 0].clip(0), rows)
    frame = pd.DataFrame(features, columns=FEATURES)
    frame[HOLDOUT_LABEL_COLUMN] = labels
    frame[HOLDOUT_PREDICTION_COLUMN] = predictions
    path = folder / "holdout.csv"
    frame.to_csv(path, index=False, lineterminator="\n")
    return path.as_uri()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.ignored: Counter[ProbabilitiesIgnored] = Counter()
        self.refused: Counter[RefusalReason] = Counter()
        self.service = DriftService(
            WindowSettings(window_rows=300, window_seconds=600.0, min_rows=MIN_ROWS),
            DetectorSettings(device="cpu"),
            clock=self.clock,
            on_ignore=lambda reason: self.ignored.update([reason]),
            on_refuse=lambda reason: self.refused.update([reason]),
            roots=artifact_roots(),
        )
        self.tmp_path = tmp_path
        self.reference = write_reference(tmp_path, numeric_rows(200, seed=1))

    def register(self, holdout: str | None, **spec: Any) -> Any:
        versions = {"3": VersionSpec(self.reference, holdout_uri=holdout, **spec)}
        return self.service.register("ml", "iris", Registration(model="iris", versions=versions))

    def send(self, prefix: str, rows: np.ndarray, probabilities: Any, predictions: Any = None) -> int:
        """One request per row, answered with its prediction and (where given) its probabilities."""
        count = 0
        for index, row in enumerate(rows.tolist()):
            event_id = f"{prefix}-{index}"
            response: dict[str, Any] = {"model_version": "3"}
            if predictions is not None:
                response["predictions"] = [predictions[index]]
            else:
                response["predictions"] = [int(np.argmax(probabilities[index]))]
            if probabilities is not None:
                response["probabilities"] = [list(probabilities[index])]
            self.service.ingest(
                InferenceEvent("request", event_id, "ml", "iris", "default", {"instances": [row]})
            )
            count += self.service.ingest(
                InferenceEvent("response", event_id, "ml", "iris", "default", response)
            )
        return count

    def judge(self) -> Any:
        state = self.service.service("ml", "iris")
        version = state.versions["3"]
        self.service.judge(state, version, "fast")
        return version

    def status(self) -> dict[str, Any]:
        state = self.service.service("ml", "iris")
        with state.lock:
            result: dict[str, Any] = service_status(state)["versions"]["3"]
        return result


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def samples(service: DriftService, name: str) -> dict[str, float]:
    metrics = DetectorMetrics()
    metrics.watch(service)
    return {
        sample.labels.get("metric", ""): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_a_holdout_gives_the_version_an_estimator_and_its_window_the_classes(harness: Harness) -> None:
    result = harness.register(write_holdout(harness.tmp_path))
    assert not result.errors
    estimation = result.estimation["3"]
    assert estimation.error is None and estimation.holdout_rows == 600
    assert estimation.estimator is not None and estimation.estimator.classes == ("0", "1", "2")
    assert harness.service.service("ml", "iris").versions["3"].window.classes == 3


def test_the_fast_loop_estimates_accuracy_and_f1_once_min_rows_have_probabilities(harness: Harness) -> None:
    harness.register(write_holdout(harness.tmp_path))
    rows = numeric_rows(200, seed=5)
    probabilities = class_probabilities(rows)
    harness.send("early", rows[: MIN_ROWS - 1], probabilities[: MIN_ROWS - 1])
    harness.send("plain", rows[100:110], None, predictions=[1] * 10)  # rows without probabilities
    assert len(harness.judge().window) == MIN_ROWS + 9
    assert harness.judge().estimates == ()  # 39 rows with probabilities: not yet
    harness.send("more", rows[MIN_ROWS:150], probabilities[MIN_ROWS:150])
    version = harness.judge()
    estimates = {estimate.metric: estimate for estimate in version.estimates}
    assert set(estimates) == {"accuracy", "f1"}
    for estimate in estimates.values():
        assert estimate.rows == 149
        assert 0.0 <= estimate.lower <= estimate.value <= estimate.upper <= 1.0
    # The model is calibrated: the estimate is the expected accuracy of its predictions.
    expected = float(np.mean(probabilities[:149].max(axis=1)))
    assert estimates["accuracy"].value == pytest.approx(expected, abs=0.05)
    exported = samples(harness.service, "modelloop_estimated_performance")
    assert exported == {"accuracy": estimates["accuracy"].value, "f1": estimates["f1"].value}
    assert samples(harness.service, "modelloop_estimated_performance_lower")["f1"] == estimates["f1"].lower
    assert samples(harness.service, "modelloop_estimated_performance_rows") == {"": 149}
    status = harness.status()["estimation"]
    assert status["probabilityRows"] == 149 and status["error"] is None
    assert [record["metric"] for record in status["estimates"]] == ["accuracy", "f1"]
    assert status["estimates"][0]["upper"] == estimates["accuracy"].upper


def test_realised_performance_is_measured_once_min_rows_window_rows_have_labels(harness: Harness) -> None:
    harness.register(write_holdout(harness.tmp_path))
    rows = numeric_rows(250, seed=6)
    probabilities = class_probabilities(rows)
    predictions = probabilities.argmax(axis=1)
    labels = draw_labels(probabilities, seed=7)
    harness.send("r", rows, probabilities)
    harness.service.add_labels(
        "ml", "iris", [(f"r-{index}", int(labels[index])) for index in range(MIN_ROWS - 1)]
    )
    assert harness.judge().realised is None
    assert samples(harness.service, "modelloop_realised_performance") == {}
    harness.service.add_labels("ml", "iris", [(f"r-{index}", int(labels[index])) for index in range(200)])
    version = harness.judge()
    assert version.realised is not None and version.realised.rows == 200
    accuracy = float(np.mean(predictions[:200] == labels[:200]))
    assert version.realised.values["accuracy"] == pytest.approx(accuracy)
    assert samples(harness.service, "modelloop_realised_performance")["accuracy"] == pytest.approx(accuracy)
    assert samples(harness.service, "modelloop_realised_performance_rows") == {"": 200}
    assert harness.status()["estimation"]["realised"]["metrics"]["accuracy"] == pytest.approx(accuracy)
    # Estimated before the labels, the band holds what the labels then say.
    estimate = {estimate.metric: estimate for estimate in version.estimates}["accuracy"]
    realised_all = float(np.mean(predictions == labels))
    assert estimate.lower <= realised_all <= estimate.upper


def test_probabilities_of_another_class_count_are_ignored_and_counted(harness: Harness) -> None:
    harness.register(write_holdout(harness.tmp_path))
    rows = numeric_rows(5, seed=8)
    two = np.column_stack([np.full(5, 0.4), np.full(5, 0.6)])
    harness.send("two", rows, two)
    assert harness.ignored == {ProbabilitiesIgnored.CLASSES: 5}
    assert len(harness.judge().window) == 5 and harness.status()["estimation"]["probabilityRows"] == 0


def test_a_version_without_a_holdout_keeps_no_probabilities_and_shows_no_estimation(harness: Harness) -> None:
    result = harness.register(None)
    assert result.estimation == {}
    harness.send("p", numeric_rows(3, seed=9), class_probabilities(numeric_rows(3, seed=9)))
    assert harness.service.service("ml", "iris").versions["3"].window.classes == 0
    assert harness.status()["estimation"] is None
    assert not harness.ignored


@pytest.mark.parametrize(
    ("write", "error"),
    [
        (lambda folder: (folder / "missing.csv").as_uri(), "no such file"),
        (lambda folder: write_reference(folder, numeric_rows(30, seed=2)), "has no 'modelloop.label' column"),
    ],
)
def test_a_holdout_that_cannot_be_used_leaves_the_version_registered_without_estimates(
    harness: Harness, write: Any, error: str
) -> None:
    folder = harness.tmp_path / "holdout"
    folder.mkdir()
    result = harness.register(write(folder))
    assert not result.errors and list(result.versions) == ["3"]
    assert result.estimation["3"].estimator is None and error in (result.estimation["3"].error or "")
    status = harness.status()
    assert status["estimation"]["error"] == result.estimation["3"].error
    assert status["estimation"]["metrics"] == [] and status["estimation"]["estimates"] == []
    harness.send("d", numeric_rows(MIN_ROWS, seed=3), None, predictions=[1] * MIN_ROWS)
    version = harness.judge()
    assert version.verdicts["ks"].rows == MIN_ROWS  # its drift is judged all the same
    assert version.estimates == ()


def test_a_holdout_too_large_is_counted_as_refused(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.service.limits = type(harness.service.limits)(max_reference_bytes=50_000)
    result = harness.register(write_holdout(tmp_path, rows=3000))
    assert "MODELLOOP_DETECTOR_MAX_REFERENCE_BYTES" in (result.estimation["3"].error or "")
    assert harness.refused == {RefusalReason.REFERENCE_TOO_LARGE: 1}


def test_a_holdout_outside_the_artifact_roots_refuses_the_registration(harness: Harness) -> None:
    with pytest.raises(Refused) as refused:
        harness.register("file:///etc/passwd")
    assert refused.value.status == 403 and "versions.3.holdoutUri" in str(refused.value)


def test_the_holdout_is_part_of_what_a_version_is_reused_for(harness: Harness) -> None:
    holdout = write_holdout(harness.tmp_path)
    harness.register(holdout)
    first = harness.service.service("ml", "iris").versions["3"]
    harness.register(holdout)
    assert harness.service.service("ml", "iris").versions["3"] is first
    harness.register(None)
    assert harness.service.service("ml", "iris").versions["3"] is not first


def test_a_regressor_gets_an_estimated_mean_absolute_error(harness: Harness) -> None:
    harness.register(write_regression_holdout(harness.tmp_path))
    rows = numeric_rows(60, seed=4)
    harness.send("reg", rows, None, predictions=(rows[:, 2] * 0.4).tolist())
    [estimate] = harness.judge().estimates
    assert estimate.metric == "mae" and estimate.rows == 60
    assert 0.0 <= estimate.lower <= estimate.value <= estimate.upper


# --- over HTTP -------------------------------------------------------------------------------------


def test_a_detector_process_answers_and_exports_the_estimates(
    detector: Detector, tmp_path: Path, reference_uri: str
) -> None:
    bad = (tmp_path / "nothing.csv").as_uri()
    versions = {
        "3": {"referenceUri": reference_uri, "holdoutUri": write_holdout(tmp_path)},
        "4": {"referenceUri": reference_uri, "endpoint": "canary", "holdoutUri": bad},
    }
    reply = detector.register("estimated", {"model": "iris", "versions": versions})
    assert reply.status_code == 200, reply.text
    answer = reply.json()["versions"]
    assert (
        answer["3"]["estimation"]["metrics"] == ["accuracy", "f1"]
        and answer["3"]["estimation"]["error"] is None
    )
    assert answer["4"]["estimation"]["error"] == f"cannot read {bad}: no such file"
    rows = numeric_rows(60, seed=12)
    probabilities = class_probabilities(rows).tolist()
    for start in range(0, 60, 10):
        detector.send_pair(
            f"est-{start}",
            {"instances": rows[start : start + 10].tolist()},
            {
                "predictions": [int(np.argmax(row)) for row in probabilities[start : start + 10]],
                "probabilities": probabilities[start : start + 10],
                "model_version": "3",
            },
            service="estimated",
        )
    ignored = detector.metrics()["modelloop_detector_probabilities_ignored_total"]
    before = {labels["reason"]: value for labels, value in ignored}
    detector.send_pair(
        "est-two-classes",
        {"instances": rows[:1].tolist()},
        {"predictions": [1], "probabilities": [[0.4, 0.6]], "model_version": "3"},
        service="estimated",
    )
    state = detector.wait_for("estimated", lambda s: s["versions"]["3"]["estimation"]["estimates"])
    after = {
        labels["reason"]: value
        for labels, value in detector.metrics()["modelloop_detector_probabilities_ignored_total"]
    }
    assert after["classes"] == before["classes"] + 1 and after["range"] == before["range"]
    assert state["versions"]["4"]["estimation"]["error"] == answer["4"]["estimation"]["error"]
    exported = {
        labels["metric"]: value
        for labels, value in detector.metrics()["modelloop_estimated_performance"]
        if labels["service"] == "estimated"
    }
    assert exported == {
        record["metric"]: record["value"] for record in state["versions"]["3"]["estimation"]["estimates"]
    }
