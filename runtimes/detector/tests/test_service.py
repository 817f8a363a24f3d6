"""The service's bookkeeping in-process, on virtual time: pairing, version attribution, windows,
dropped events and labels. The detectors are alibi-detect's, built from small references."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelloop_contracts import Registration, VersionSpec

from conftest import FEATURES, artifact_roots, numeric_rows, write_predictions, write_reference
from modelloop_detector.api import service_status
from modelloop_detector.detectors import DetectorSettings
from modelloop_detector.events import DropReason, EventRejected, InferenceEvent
from modelloop_detector.metrics import DetectorMetrics
from modelloop_detector.service import DriftService, WindowSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, tmp_path: Path, **window: Any) -> None:
        self.clock = Clock()
        self.drops: Counter[DropReason] = Counter()
        self.service = DriftService(
            WindowSettings(**{"window_rows": 100, "window_seconds": 60.0, "min_rows": 10, **window}),
            DetectorSettings(device="cpu", mmd_permutations=10),
            clock=self.clock,
            on_drop=lambda reason, count: self.drops.update({reason: count}),
            roots=artifact_roots(),
        )
        self.tmp_path = tmp_path

    def register(self, versions: dict[str, VersionSpec], **extra: Any) -> None:
        result = self.service.register("ml", "iris", Registration(model="iris", versions=versions, **extra))
        assert not result.errors

    def event(self, kind: str, event_id: str, body: Any, endpoint: str = "default") -> int:
        event = InferenceEvent(kind, event_id, "ml", "iris", endpoint, body)  # type: ignore[arg-type]
        return self.service.ingest(event)

    def pair(self, event_id: str, rows: list[list[float]], predictions: list[Any], **response: Any) -> int:
        self.event("request", event_id, {"instances": rows})
        return self.event("response", event_id, {"predictions": predictions, **response})

    def window(self, version: str) -> list[str]:
        state = self.service.service("ml", "iris")
        return state.versions[version].window.ids()


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    running = Harness(tmp_path)
    uri = write_reference(tmp_path, numeric_rows(60, seed=1))
    running.register({"3": VersionSpec(uri, endpoint="default"), "4": VersionSpec(uri, endpoint="canary")})
    return running


ROW = [5.1, 3.5, 1.4, 0.2]


def test_a_request_and_its_response_become_rows_in_either_order(harness: Harness) -> None:
    assert harness.event("request", "a", {"instances": [ROW]}) == 0
    assert harness.event("response", "a", {"predictions": [0]}) == 1
    assert harness.event("response", "b", {"predictions": [1, 2]}) == 0
    assert harness.event("request", "b", {"instances": [ROW, ROW]}) == 2
    assert harness.window("3") == ["a", "b/0", "b/1"]


def test_the_response_model_version_decides_the_version(harness: Harness) -> None:
    harness.event("request", "a", {"instances": [ROW]})
    harness.event("response", "a", {"predictions": [0], "model_version": "4"})
    assert harness.window("4") == ["a"]
    assert harness.window("3") == []


def test_without_model_version_the_endpoint_decides(harness: Harness) -> None:
    harness.event("request", "a", {"instances": [ROW]}, endpoint="canary")
    harness.event("response", "a", {"predictions": [0]}, endpoint="canary")
    harness.event("request", "b", {"instances": [ROW]})
    harness.event("response", "b", {"predictions": [0]})
    assert harness.window("4") == ["a"]
    assert harness.window("3") == ["b"]


def test_an_unknown_version_is_dropped_and_counted(harness: Harness) -> None:
    harness.event("request", "a", {"instances": [ROW]})
    assert harness.event("response", "a", {"predictions": [0], "model_version": "9"}) == 0
    assert harness.drops == {DropReason.UNKNOWN_VERSION: 1}


def test_no_version_for_the_endpoint_is_an_unknown_version(tmp_path: Path) -> None:
    running = Harness(tmp_path)
    running.register(
        {"3": VersionSpec(write_reference(tmp_path, numeric_rows(20, seed=1)), endpoint="default")}
    )
    running.event("request", "a", {"instances": [ROW]}, endpoint="canary")
    running.event("response", "a", {"predictions": [0]}, endpoint="canary")
    assert running.drops == {DropReason.UNKNOWN_VERSION: 1}


def test_an_unpaired_half_expires_after_the_window_seconds(harness: Harness) -> None:
    harness.event("request", "a", {"instances": [ROW]})
    harness.clock.now += 61
    harness.service.expire()
    assert harness.drops == {DropReason.UNPAIRED: 1}
    assert harness.event("response", "a", {"predictions": [0]}) == 0  # now waits for a new request


def test_rows_leave_the_window_by_age(harness: Harness) -> None:
    harness.pair("old", [ROW], [0])
    harness.clock.now += 30
    harness.pair("new", [ROW], [0])
    harness.clock.now += 31
    harness.service.expire()
    assert harness.window("3") == ["new"]


def test_the_window_keeps_at_most_window_rows(harness: Harness) -> None:
    for index in range(12):
        harness.pair(f"e{index}", [ROW] * 10, [0] * 10)
    ids = harness.window("3")
    assert len(ids) == 100
    assert ids[0] == "e2/0" and ids[-1] == "e11/9"


def test_rows_of_the_wrong_width_are_rejected_with_the_reason(harness: Harness) -> None:
    with pytest.raises(EventRejected, match="rows have 3 values, the reference has 4 features") as caught:
        harness.event("request", "a", {"instances": [[1, 2, 3]]})
    assert caught.value.reason == DropReason.FEATURE_MISMATCH


def test_a_response_with_a_different_row_count_is_dropped(harness: Harness) -> None:
    harness.event("request", "a", {"instances": [ROW, ROW]})
    assert harness.event("response", "a", {"predictions": [0]}) == 0
    assert harness.drops == {DropReason.INVALID_PAYLOAD: 1}


def test_events_of_an_unregistered_service_are_counted(harness: Harness) -> None:
    event = InferenceEvent("request", "a", "ml", "nobody", "default", {"instances": [ROW]})
    assert harness.service.ingest(event) == 0
    assert harness.drops == {DropReason.UNKNOWN_SERVICE: 1}


def test_labels_join_rows_that_arrived_before_or_after_them(harness: Harness) -> None:
    harness.pair("before", [ROW, ROW], [0, 1])
    assert harness.service.add_labels("ml", "iris", [("before/0", 0), ("before/1", 0), ("later", 1)]) == (
        2,
        1,
    )
    harness.pair("later", [ROW], [1])
    version = harness.service.service("ml", "iris").versions["3"]
    assert version.feedback.labels_total == 3
    assert version.feedback.accuracy() == pytest.approx(2 / 3)
    assert harness.service.service("ml", "iris").labels.pending() == 0


def test_a_repeated_label_corrects_without_counting_twice(harness: Harness) -> None:
    harness.pair("a", [ROW], [0])
    harness.service.add_labels("ml", "iris", [("a", 0)])
    assert harness.service.add_labels("ml", "iris", [("a", 0)]) == (0, 0)
    assert harness.service.service("ml", "iris").versions["3"].feedback.labels_total == 1


def test_a_regressor_is_scored_by_mean_absolute_error(tmp_path: Path) -> None:
    running = Harness(tmp_path)
    folder = tmp_path
    running.register(
        {
            "1": VersionSpec(
                write_reference(folder, numeric_rows(30, seed=1)),
                write_predictions(folder, np.linspace(0.5, 3.5, 30)),
            )
        }
    )
    running.pair("a", [ROW, ROW], [1.5, 2.25])
    running.service.add_labels("ml", "iris", [("a/0", 1.0), ("a/1", 2.25)])
    feedback = running.service.service("ml", "iris").versions["1"].feedback
    assert feedback.accuracy() is None
    assert feedback.mae() == pytest.approx(0.25)


def test_a_version_no_longer_registered_is_forgotten_and_the_others_reused(harness: Harness) -> None:
    state = harness.service.service("ml", "iris")
    kept = state.versions["3"]
    harness.pair("a", [ROW], [0])
    harness.register({"3": VersionSpec(kept.reference.uri, endpoint="default")})
    assert list(state.versions) == ["3"]
    assert state.versions["3"] is kept
    assert harness.window("3") == ["a"]


def test_a_verdict_is_judged_on_the_window_copy(harness: Harness) -> None:
    rows = numeric_rows(40, seed=5, shift=2.0).tolist()
    harness.pair("a", rows, [0] * 40)
    state = harness.service.service("ml", "iris")
    due = [(service.name, version.name) for service, version in harness.service.due("fast")]
    assert due == [("iris", "3")]
    [ks] = harness.service.judge(state, state.versions["3"], "fast")
    assert ks.detector == "ks" and ks.drift and ks.rows == 40
    assert list(harness.service.due("fast")) == []  # judged, unchanged


def test_a_new_window_is_inconclusive_until_it_has_been_full_once(harness: Harness) -> None:
    version = harness.service.service("ml", "iris").versions["3"]
    rows = numeric_rows(100, seed=2).tolist()
    for index in range(99):
        harness.pair(f"r{index}", [rows[index]], [1])
    harness.service.judge(harness.service.service("ml", "iris"), version, "fast")
    assert version.verdicts["ks"].rows == 99  # judged: drift found in a partial window still shows
    status = service_status(harness.service.service("ml", "iris"))["versions"]["3"]
    assert status["verdictState"] == "Inconclusive"
    harness.pair("r99", [rows[99]], [1])  # window_rows (100) reached
    assert service_status(harness.service.service("ml", "iris"))["versions"]["3"]["verdictState"] == "Judged"
    harness.clock.now += 120  # the rows age out: still a window judged in full before
    harness.service.expire()
    assert len(version.window) == 0 and version.complete


def test_a_window_spanning_window_seconds_with_min_rows_is_complete(harness: Harness) -> None:
    version = harness.service.service("ml", "iris").versions["3"]
    for index, row in enumerate(numeric_rows(10, seed=2).tolist()):
        harness.pair(f"r{index}", [row], [1])
    harness.clock.now += 59
    harness.service.expire()
    assert not version.complete
    harness.pair("late", [[5.0, 3.0, 3.0, 1.0]], [1])
    harness.clock.now += 1  # 60 s (window_seconds) since registration, 11 rows >= min_rows
    harness.service.expire()
    assert version.complete


def test_a_restarted_detector_reports_inconclusive_in_its_answers_and_metrics(harness: Harness) -> None:
    # A restart is a new service told again what is served: its windows start empty.
    version = harness.service.service("ml", "iris").versions["3"]
    for index, row in enumerate(numeric_rows(100, seed=2).tolist()):
        harness.pair(f"r{index}", [row], [1])
    assert version.complete
    restarted = Harness(harness.tmp_path)
    restarted.register({"3": VersionSpec(version.reference.uri)})
    metrics = DetectorMetrics()
    metrics.watch(restarted.service)
    [(labels, value)] = [
        (sample.labels, sample.value)
        for family in metrics.registry.collect()
        if family.name == "modelloop_drift_inconclusive"
        for sample in family.samples
    ]
    assert value == 1.0 and labels["version"] == "3"
    state = service_status(restarted.service.service("ml", "iris"))["versions"]["3"]
    assert state["verdictState"] == "Inconclusive"


def test_one_row_events_read_without_numpy_fill_the_window_as_the_general_reader_does(
    tmp_path: Path,
) -> None:
    """The same rows, as numbers (read without numpy) and as text (which only numpy's conversion reads),
    make the same window, row index and label joins, through the window's flushes."""
    rows = numeric_rows(300, seed=4)
    uri = write_reference(tmp_path, numeric_rows(60, seed=1))
    windows = []
    for as_text in (False, True):
        running = Harness(tmp_path, window_rows=200)
        running.register({"3": VersionSpec(uri)})
        running.service.add_labels("ml", "iris", [("row-7", 1), ("row-250", 2)])
        for index, row in enumerate(rows.tolist()):
            running.clock.now += 0.25
            values = [str(value) for value in row] if as_text else row
            running.event("request", f"row-{index}", {"instances": [values]})
            prediction: Any = index % 3 if index % 5 else str(index % 3)
            assert running.event("response", f"row-{index}", {"predictions": [prediction]}) == 1
        running.service.add_labels("ml", "iris", [("row-299", 0)])
        state = running.service.service("ml", "iris")
        version = state.versions["3"]
        taken = version.window.rows()
        windows.append(
            (
                len(version.window),
                version.window.changes,
                taken.ids,
                taken.features.tolist(),
                taken.predictions.tolist(),
                taken.times.tolist(),
                version.window.snapshot().predictions.tolist(),
                list(state.row_index.items()),
                version.feedback.labels_total,
                version.feedback.accuracy(),
            )
        )
    assert windows[0] == windows[1]
    assert windows[0][0] == 200 and windows[0][8] == 3  # two labels waited for their rows, one came after


def test_a_request_laid_out_for_a_version_since_replaced_by_another_width_is_a_feature_mismatch(
    harness: Harness, tmp_path: Path
) -> None:
    harness.event("request", "a", {"instances": [ROW]})
    wider = tmp_path / "wider"
    wider.mkdir()
    rows = np.column_stack([numeric_rows(60, seed=1), numeric_rows(60, seed=2)[:, 0]])
    harness.register(
        {
            "3": VersionSpec(write_reference(wider, rows, [*FEATURES, "extra"]), endpoint="default"),
            "4": VersionSpec(write_reference(tmp_path, numeric_rows(60, seed=1)), endpoint="canary"),
        }
    )
    assert harness.event("response", "a", {"predictions": [0]}) == 0
    assert harness.drops == {DropReason.FEATURE_MISMATCH: 1}
    harness.event("request", "b", {"instances": [[*ROW, 1.0]]})
    assert harness.event("response", "b", {"predictions": [0]}) == 1
    assert harness.window("3") == ["b"]
