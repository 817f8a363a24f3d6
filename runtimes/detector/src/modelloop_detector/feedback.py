"""Ground truth: labels that arrive by request id, joined to the rows the model predicted.

A label may arrive before its row (it waits, bounded in number and age) or after it (it is joined
at once). Each version scores its last joined predictions: accuracy for a classifier, mean
absolute error for a regressor.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from modelloop_detector.reference import Task


@dataclass
class Label:
    """A label as received, and the version of the row it was joined to (None while pending)."""

    value: Any
    received: float
    version: str | None = None


class LabelBook:
    """The labels of one service by row id, oldest first, at most ``max_labels``.

    Not thread-safe: its owner serializes access.
    """

    def __init__(self, *, max_labels: int, pending_seconds: float) -> None:
        self._labels: OrderedDict[str, Label] = OrderedDict()
        self.max_labels = max_labels
        self.pending_seconds = pending_seconds

    def __len__(self) -> int:
        return len(self._labels)

    def __bool__(self) -> bool:
        return bool(self._labels)

    def get(self, row_id: str) -> Label | None:
        """The label of ``row_id``, if one arrived."""
        return self._labels.get(row_id)

    def put(self, row_id: str, value: Any, now: float) -> Label:
        """Record (or replace) the label of ``row_id``."""
        label = Label(value=value, received=now)
        self._labels.pop(row_id, None)
        self._labels[row_id] = label
        while len(self._labels) > self.max_labels:
            self._labels.popitem(last=False)
        return label

    def pending(self) -> int:
        """How many labels wait for their row."""
        return sum(1 for label in self._labels.values() if label.version is None)

    def expire(self, now: float) -> int:
        """Forget pending labels older than ``pending_seconds``; returns how many."""
        horizon = now - self.pending_seconds
        stale = [
            key for key, label in self._labels.items() if label.version is None and label.received < horizon
        ]
        for key in stale:
            del self._labels[key]
        return len(stale)


def same_value(prediction: Any, label: Any) -> bool:
    """Whether a prediction equals a label: as numbers when both are, else as text (``1`` == ``"1"``)."""
    left, right = _number(prediction), _number(label)
    if left is not None and right is not None:
        return left == right
    return str(prediction) == str(label)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class FeedbackScore:
    """The last ``size`` (prediction, label) pairs of one version and what they say about the model."""

    def __init__(self, size: int, task: Task | None) -> None:
        self._pairs: deque[tuple[Any, Any]] = deque(maxlen=size)
        self.labels_total = 0
        # Known from the predictions file; otherwise learnt from the predictions themselves.
        self.task: Task | None = task
        self._task_fixed = task is not None

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, prediction: Any, label: Any) -> None:
        """Count one joined label."""
        self._pairs.append((prediction, label))
        self.labels_total += 1
        if not self._task_fixed and self.task != "regression":
            number = _number(prediction)
            regression = number is not None and not isinstance(prediction, str) and not number.is_integer()
            self.task = "regression" if regression else "classification"

    def accuracy(self) -> float | None:
        """The fraction of predictions equal to their label (None for a regressor, or without labels)."""
        if not self._pairs or self.task == "regression":
            return None
        return sum(same_value(prediction, label) for prediction, label in self._pairs) / len(self._pairs)

    def mae(self) -> float | None:
        """The mean absolute error (None for a classifier, or without numeric labels)."""
        if self.task != "regression":
            return None
        errors = [
            abs(left - right)
            for left, right in ((_number(p), _number(label)) for p, label in self._pairs)
            if left is not None and right is not None
        ]
        return sum(errors) / len(errors) if errors else None
