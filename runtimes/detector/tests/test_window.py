"""The window's bounds (rows and age) and when a window is judged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelloop_detector.service import WindowSettings, evaluation_due
from modelloop_detector.window import RowWindow


def add(window: RowWindow, start: int, count: int, now: float) -> None:
    values = np.arange(start, start + count, dtype=np.float64)
    window.append(
        np.column_stack([values, -values]),
        values,
        values.astype(object),
        [str(int(value)) for value in values],
        now,
    )


def test_the_window_keeps_the_newest_rows_up_to_its_size() -> None:
    window = RowWindow(2, max_rows=5, max_seconds=60)
    add(window, 0, 3, now=0)
    add(window, 3, 4, now=1)
    assert len(window) == 5
    assert window.ids() == ["2", "3", "4", "5", "6"]
    assert sorted(window.snapshot().features[:, 0].tolist()) == [2, 3, 4, 5, 6]
    assert window.rows().features[:, 1].tolist() == [-2, -3, -4, -5, -6]


def test_a_batch_larger_than_the_window_keeps_its_last_rows() -> None:
    window = RowWindow(2, max_rows=4, max_seconds=60)
    add(window, 0, 10, now=0)
    assert window.ids() == ["6", "7", "8", "9"]


def test_rows_older_than_the_window_seconds_leave_it() -> None:
    window = RowWindow(2, max_rows=100, max_seconds=10)
    add(window, 0, 3, now=0)
    add(window, 3, 2, now=5)
    assert window.expire(now=10) == 0
    assert window.expire(now=10.5) == 3
    assert window.ids() == ["3", "4"]
    assert window.expire(now=16) == 2
    assert len(window) == 0


def test_a_wrapped_window_snapshot_has_exactly_its_rows() -> None:
    window = RowWindow(2, max_rows=4, max_seconds=10)
    add(window, 0, 4, now=0)
    add(window, 4, 2, now=5)
    window.expire(now=10.5)  # rows 2, 3 (t=0) go; 4, 5 stay, stored at the front
    snapshot = window.snapshot()
    assert snapshot.rows == 2
    assert sorted(snapshot.features[:, 0].tolist()) == [4, 5]


def test_changes_count_appends_and_evictions() -> None:
    window = RowWindow(1, max_rows=4, max_seconds=10)
    window.append(np.zeros((1, 1)), np.zeros(1), np.zeros(1, dtype=object), ["a"], 0)
    window.expire(5)
    assert window.changes == 1
    window.expire(11)
    assert window.changes == 2


SETTINGS = WindowSettings(min_rows=50, evaluate_every_rows=100, evaluate_every_seconds=5)


@pytest.mark.parametrize(
    ("rows", "changes", "new_rows", "seconds", "due"),
    [
        (49, None, 49, 0.0, False),  # too few rows
        (50, None, 50, 0.0, True),  # first verdict as soon as there are enough
        (500, 0, 0, 60.0, False),  # unchanged since the last verdict
        (500, 3, 99, 1.0, False),  # neither enough new rows nor enough time
        (500, 3, 100, 1.0, True),  # enough new rows
        (500, 1, 1, 5.0, True),  # enough time
    ],
)
def test_a_window_is_judged_when_it_has_enough_new_rows_or_time(
    rows: int, changes: int | None, new_rows: int, seconds: float, due: bool
) -> None:
    assert (
        evaluation_due(rows=rows, changes=changes, new_rows=new_rows, seconds=seconds, settings=SETTINGS)
        is due
    )


def test_probabilities_stay_aligned_with_their_rows_across_the_ring() -> None:
    window = RowWindow(2, max_rows=5, max_seconds=60, classes=2)
    for start in range(0, 12, 3):
        values = np.arange(start, start + 3, dtype=np.float64)
        # Every other batch comes without probabilities: its rows are NaN.
        given = np.column_stack([values / 100, 1 - values / 100]) if start % 2 == 0 else None
        window.append(
            np.column_stack([values, -values]),
            values,
            values.astype(object),
            [str(int(v)) for v in values],
            0,
            given,
        )
    snapshot = window.snapshot()
    assert snapshot.probabilities is not None and snapshot.probabilities.shape == (5, 2)
    by_row = {
        int(row): probabilities
        for row, probabilities in zip(snapshot.features[:, 0], snapshot.probabilities, strict=True)
    }
    assert sorted(by_row) == [7, 8, 9, 10, 11]
    assert all(np.isnan(by_row[row]).all() for row in (9, 10, 11))  # their batch had none
    assert by_row[7].tolist() == pytest.approx([0.07, 0.93]) and by_row[8][1] == pytest.approx(0.92)
    assert snapshot.probability_rows() == 2


def test_a_window_of_a_version_without_classes_keeps_no_probabilities() -> None:
    window = RowWindow(2, max_rows=5, max_seconds=60)
    add(window, 0, 3, now=0)
    assert window.snapshot().probabilities is None and window.snapshot().probability_rows() == 0


def _observed(window: RowWindow) -> tuple[Any, ...]:
    """Everything a window's owner can see of it."""
    rows, snapshot = window.rows(), window.snapshot()
    order = np.argsort(snapshot.features[:, 0], kind="stable")
    probabilities = None
    if snapshot.probabilities is not None:  # NaN (no probabilities) as -1: NaN equals nothing
        probabilities = np.nan_to_num(snapshot.probabilities[order], nan=-1.0).tolist()
    return (
        len(window),
        window.changes,
        rows.ids,
        rows.features.tolist(),
        rows.predictions.tolist(),
        rows.times.tolist(),
        snapshot.rows,
        snapshot.features[order].tolist(),
        snapshot.predictions[order].tolist(),
        probabilities,
        window.probability_rows(),
        window.predictions_by_id()[0],
    )


@pytest.mark.parametrize("max_rows", [1, 3, 7, 200])
@pytest.mark.parametrize("classes", [0, 2])
def test_rows_added_one_at_a_time_are_what_batches_of_one_make(max_rows: int, classes: int) -> None:
    """append_row keeps rows waiting and writes them together: its length, evictions by count and age,
    changes and every copy are those of appending each row at once, through every flush; and both keep
    what a plain list of the last rows within the window's age keeps."""
    rng = np.random.default_rng(max_rows + classes)
    model: list[tuple[str, float]] = []  # (id, time), oldest first
    waiting = RowWindow(2, max_rows=max_rows, max_seconds=10, classes=classes)
    direct = RowWindow(2, max_rows=max_rows, max_seconds=10, classes=classes)
    now = 0.0
    for step in range(3 * RowWindow.FLUSH_ROWS + 17):
        now += float(rng.choice([0.0, 0.05, 0.5, 3.0, 12.0], p=[0.3, 0.4, 0.2, 0.08, 0.02]))
        features = [float(step), float(rng.normal())]
        given = None
        if classes and rng.random() < 0.7:
            first = float(rng.random())
            given = [first, 1.0 - first]
        waiting.append_row(waiting.pack_row(*features), float(step % 3), step % 3, str(step), now, given)
        direct.append(
            np.array([features]),
            np.array([float(step % 3)]),
            np.array([step % 3], dtype=object),
            [str(step)],
            now,
            None if given is None else np.array([given]),
        )
        model = [*model, (str(step), now)][-max_rows:]
        assert len(waiting) == len(direct) == len(model)
        if rng.random() < 0.3:
            young = [(row_id, time) for row_id, time in model if time >= now - 10]
            assert waiting.expire(now) == direct.expire(now) == len(model) - len(young)
            model = young
            assert len(waiting) == len(direct) and waiting.changes == direct.changes
        if rng.random() < 0.02:
            assert _observed(waiting) == _observed(direct)
            assert waiting.ids() == [row_id for row_id, _ in model]
    assert waiting.expire(now + 10.5) == direct.expire(now + 10.5) == len(model)
    assert _observed(waiting) == _observed(direct)
    assert len(waiting) == 0


def test_a_row_of_another_width_is_refused_at_once() -> None:
    window = RowWindow(3, max_rows=5, max_seconds=60)
    with pytest.raises(ValueError, match="2 features; this window's have 3"):
        window.append_row(np.array([1.0, 2.0]).tobytes(), 0.0, 0, "a", 0.0)
    assert len(window) == 0
