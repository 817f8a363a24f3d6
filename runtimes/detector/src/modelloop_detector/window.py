"""The window of recent rows of one version: a ring buffer bounded by row count and by age.

Rows live in preallocated numpy arrays, so that a verdict copies them out without any conversion. A
window of a classifier whose performance is estimated keeps each row's class probabilities too (``classes``
columns; NaN for a row whose response had none).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

    Rows added one at a time (:meth:`append_row`, what ingestion does for each paired event) wait in
    Python lists and are written into the arrays together, once :data:`FLUSH_ROWS` wait or as soon as
    anything reads the rows: a numpy write costs more than a row. What the window answers is the same
    as if each row had been written at once: its length, its evictions by count and by age, ``changes``
    and every copy.
    """

    FLUSH_ROWS = 128
    """Rows that wait at most before they are written into the arrays."""

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
        """Rows in the arrays (some of them evicted already, by count, if rows wait)."""
        self._length = 0
        """Rows in the window: those in the arrays and those waiting, at most ``max_rows``."""
        self._floor = np.inf
        """At most the time of every row in the window: while the horizon is not past it, nothing
        expires, which :meth:`expire` checks without looking at a row."""
        self._flush_at = min(self.FLUSH_ROWS, max_rows)
        packing = struct.Struct(f"{width}d")
        self.pack_row = packing.pack
        """``pack_row(*numbers)``: a row's ``width`` numbers (floats, ints, booleans) packed as
        :meth:`append_row` takes them; ``struct.error`` for anything else (text, None, lists, another
        count), OverflowError for an int too large for a float."""
        self.packed_size = packing.size
        """The bytes of a packed row."""
        # Rows waiting to be written, oldest first; their features packed as the arrays hold them (numpy
        # converts a list of lists a number at a time, three times slower).
        self._waiting_features: list[bytes] = []
        self._waiting_encoded: list[float] = []
        self._waiting_predictions: list[Any] = []
        self._waiting_ids: list[str] = []
        self._waiting_times: list[float] = []
        self._waiting_probabilities: list[bytes] = []
        probabilities = struct.Struct(f"{classes}d")
        self._pack_probabilities = probabilities.pack
        self._no_probabilities = probabilities.pack(*[np.nan] * classes)
        self.changes = 0

    def __len__(self) -> int:
        return self._length

    def append_row(
        self,
        features: bytes,
        encoded_prediction: float,
        prediction: Any,
        row_id: str,
        now: float,
        probabilities: Sequence[float] | None = None,
    ) -> None:
        """Add one row (its features packed by :attr:`pack_row`, or a float64 row's ``tobytes()``) that
        arrived at ``now``, as :meth:`append` adds a batch of one: it waits, and is written with the next
        rows."""
        if len(features) != self.packed_size:
            raise ValueError(f"a row of {len(features) // 8} features; this window's have {self.width}")
        self._waiting_features.append(features)
        self._waiting_encoded.append(encoded_prediction)
        self._waiting_predictions.append(prediction)
        self._waiting_ids.append(row_id)
        self._waiting_times.append(now)
        if now < self._floor:
            self._floor = now
        if self._probabilities is not None:
            self._waiting_probabilities.append(
                self._no_probabilities if probabilities is None else self._pack_probabilities(*probabilities)
            )
        if self._length < self.max_rows:
            self._length += 1
        self.changes += 1
        if len(self._waiting_ids) >= self._flush_at:
            self._flush()

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
        self._flush()
        self._write(features, encoded_predictions, predictions, ids, now, probabilities)
        self._length = self._count
        if now < self._floor:
            self._floor = now
        self.changes += 1

    def _flush(self) -> None:
        """Write the waiting rows into the arrays."""
        if not self._waiting_ids:
            return
        count = len(self._waiting_ids)
        predictions = np.empty(count, dtype=object)
        predictions[:] = self._waiting_predictions
        ids = np.empty(count, dtype=object)
        ids[:] = self._waiting_ids
        probabilities = None
        if self._probabilities is not None:
            packed = b"".join(self._waiting_probabilities)
            probabilities = np.frombuffer(packed, dtype=np.float64).reshape(count, self.classes)
        self._write(
            np.frombuffer(b"".join(self._waiting_features), dtype=np.float64).reshape(count, self.width),
            np.array(self._waiting_encoded, dtype=np.float64),
            predictions,
            ids,
            np.array(self._waiting_times, dtype=np.float64),
            probabilities,
        )
        for waiting in (
            self._waiting_features,
            self._waiting_encoded,
            self._waiting_predictions,
            self._waiting_ids,
            self._waiting_times,
            self._waiting_probabilities,
        ):
            waiting.clear()

    def _write(
        self,
        features: FloatArray,
        encoded_predictions: FloatArray,
        predictions: ObjectArray,
        ids: Sequence[str] | ObjectArray,
        times: FloatArray | float,
        probabilities: FloatArray | None,
    ) -> None:
        """Write rows into the arrays after the last, evicting the oldest past ``max_rows``; ``times``,
        one per row or one for all."""
        count = len(features)
        if count > self.max_rows:
            features, encoded_predictions = features[-self.max_rows :], encoded_predictions[-self.max_rows :]
            predictions, ids = predictions[-self.max_rows :], ids[-self.max_rows :]
            if isinstance(times, np.ndarray):
                times = times[-self.max_rows :]
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
        if isinstance(times, np.ndarray):
            self._times[end : end + first] = times[:first]
            self._times[: count - first] = times[first:]
        else:
            self._times[end : end + first] = times
            self._times[: count - first] = times
        overflow = max(0, self._count + count - self.max_rows)
        self._start = (self._start + overflow) % self.max_rows
        self._count += count - overflow

    def expire(self, now: float) -> int:
        """Evict the rows older than ``max_seconds``; returns how many."""
        horizon = now - self.max_seconds
        if horizon <= self._floor:
            return 0  # every row is young enough: the common case, checked without looking at one
        self._flush()
        if not self._count or self._times[self._start] >= horizon:
            evicted = 0  # the oldest row is young enough
        else:
            order = self._order()
            evicted = int(np.searchsorted(self._times[order], horizon, side="left"))
        if evicted:
            self._start = (self._start + evicted) % self.max_rows
            self._count -= evicted
            self._length = self._count
            self.changes += 1
        self._floor = float(self._times[self._order()].min()) if self._count else np.inf
        return evicted

    def snapshot(self) -> WindowSnapshot:
        """The rows' features, encoded predictions and probabilities, copied."""
        self._flush()
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
        self._flush()
        order = self._order()
        return WindowRows(
            features=self._features[order],
            predictions=self._predictions[order],
            ids=self._ids[order].tolist(),
            times=self._times[order],
        )

    def probability_rows(self) -> int:
        """How many rows have class probabilities."""
        self._flush()
        if self._probabilities is None or not self._count:
            return 0
        return int(np.count_nonzero(~np.isnan(self._probabilities[self._order(), 0])))

    def predictions_by_id(self) -> tuple[list[str], ObjectArray]:
        """The rows' ids and predictions (as served), oldest first."""
        self._flush()
        order = self._order()
        return self._ids[order].tolist(), self._predictions[order]

    def ids(self) -> list[str]:
        """The rows' ids, oldest first."""
        self._flush()
        return list(self._ids[self._order()].tolist())

    def _order(self) -> npt.NDArray[np.intp]:
        return (self._start + np.arange(self._count)) % self.max_rows
