"""The window of recent rows of one version: a ring buffer bounded by row count and by age.

Rows live in preallocated numpy arrays, so that a verdict copies them out without any conversion. A
window of a classifier whose performance is estimated keeps each row's class probabilities too (``classes``
columns; NaN for a row whose response had none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelloop_detector.payloads import FloatArray, ObjectArray


@dataclass(frozen=True)
class WindowSnapshot:
    """A copy of a window's rows (in no particular order) for the detectors."""

    features: FloatArray
    predictions: FloatArray
    rows: int
    probabilities: FloatArray | None = None
    """``(rows, classes)``, NaN where a row has none; None for a window that keeps none."""

    def probability_rows(self) -> int:
        """How many rows have probabilities."""
        if self.probabilities is None or not self.rows:
            return 0
        return int(np.count_nonzero(~np.isnan(self.probabilities[:, 0])))


@dataclass(frozen=True)
class WindowRows:
    """A copy of a window's rows, oldest first, with what an export needs."""

    features: FloatArray
    predictions: ObjectArray
    ids: list[str]
    times: FloatArray


class RowWindow:
    """The last ``max_rows`` rows that arrived within ``max_seconds``.

    Not thread-safe: its owner serializes access. ``changes`` counts appends and evictions, so a
    scheduler can tell whether a verdict is stale.
    """

    def __init__(self, width: int, *, max_rows: int, max_seconds: float, classes: int = 0) -> None:
        self.width = width
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.classes = classes
        """How many class probabilities a row keeps (0: none)."""
        self._probabilities = np.full((max_rows, classes), np.nan) if classes else None
        self._features = np.empty((max_rows, width), dtype=np.float64)
        self._encoded = np.empty(max_rows, dtype=np.float64)
        self._predictions = np.empty(max_rows, dtype=object)
        self._ids = np.empty(max_rows, dtype=object)
        self._times = np.empty(max_rows, dtype=np.float64)
        self._start = 0
        self._count = 0
        self.changes = 0

    def __len__(self) -> int:
        return self._count

    def append(
        self,
        features: FloatArray,
        encoded_predictions: FloatArray,
        predictions: ObjectArray,
        ids: Sequence[str],
        now: float,
        probabilities: FloatArray | None = None,
    ) -> None:
        """Add rows that arrived at ``now``, evicting the oldest past ``max_rows``; ``probabilities``,
        ``(rows, classes)``, are kept by a window that keeps them (None: NaN rows)."""
        count = len(features)
        if count > self.max_rows:
            features, encoded_predictions = features[-self.max_rows :], encoded_predictions[-self.max_rows :]
            predictions, ids = predictions[-self.max_rows :], ids[-self.max_rows :]
            if probabilities is not None:
                probabilities = probabilities[-self.max_rows :]
            count = self.max_rows
        end = (self._start + self._count) % self.max_rows
        first = min(count, self.max_rows - end)
        if self._probabilities is not None:
            if probabilities is None:
                self._probabilities[end : end + first] = np.nan
                self._probabilities[: count - first] = np.nan
            else:
                self._probabilities[end : end + first] = probabilities[:first]
                self._probabilities[: count - first] = probabilities[first:]
        for target, source in (
            (self._features, features),
            (self._encoded, encoded_predictions),
            (self._predictions, predictions),
        ):
            target[end : end + first] = source[:first]
            target[: count - first] = source[first:]
        self._ids[end : end + first] = ids[:first]
        self._ids[: count - first] = ids[first:]
        self._times[end : end + first] = now
        self._times[: count - first] = now
        overflow = max(0, self._count + count - self.max_rows)
        self._start = (self._start + overflow) % self.max_rows
        self._count += count - overflow
        self.changes += 1

    def expire(self, now: float) -> int:
        """Evict the rows older than ``max_seconds``; returns how many."""
        horizon = now - self.max_seconds
        if not self._count or self._times[self._start] >= horizon:
            return 0  # the oldest row is young enough: the common case, checked in O(1)
        order = self._order()
        evicted = int(np.searchsorted(self._times[order], horizon, side="left"))
        if evicted:
            self._start = (self._start + evicted) % self.max_rows
            self._count -= evicted
            self.changes += 1
        return evicted

    def snapshot(self) -> WindowSnapshot:
        """The rows' features, encoded predictions and probabilities, copied."""
        probabilities = self._probabilities
        if self._count == self.max_rows or self._start + self._count <= self.max_rows:
            span = slice(self._start, self._start + self._count)
            if self._count == self.max_rows:
                span = slice(0, self.max_rows)
            return WindowSnapshot(
                self._features[span].copy(),
                self._encoded[span].copy(),
                self._count,
                None if probabilities is None else probabilities[span].copy(),
            )
        order = self._order()
        return WindowSnapshot(
            self._features[order],
            self._encoded[order],
            self._count,
            None if probabilities is None else probabilities[order],
        )

    def rows(self) -> WindowRows:
        """Every row, oldest first."""
        order = self._order()
        return WindowRows(
            features=self._features[order],
            predictions=self._predictions[order],
            ids=self._ids[order].tolist(),
            times=self._times[order],
        )

    def probability_rows(self) -> int:
        """How many rows have class probabilities."""
        if self._probabilities is None or not self._count:
            return 0
        return int(np.count_nonzero(~np.isnan(self._probabilities[self._order(), 0])))

    def predictions_by_id(self) -> tuple[list[str], ObjectArray]:
        """The rows' ids and predictions (as served), oldest first."""
        order = self._order()
        return self._ids[order].tolist(), self._predictions[order]

    def ids(self) -> list[str]:
        """The rows' ids, oldest first."""
        return list(self._ids[self._order()].tolist())

    def _order(self) -> npt.NDArray[np.intp]:
        return (self._start + np.arange(self._count)) % self.max_rows
