"""The server's metrics, as Seldon runtime metrics labelled with the served model's version.

The model answers through ``predict_raw``, so every answer, a failure as much as a prediction,
carries its metrics in ``meta.metrics``; seldon-core adds them to its collector (SeldonMetrics) and
its metrics server exports them, with its own labels from the environment. (A ``metrics()``
method would be read after successful predictions only.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from modelloop_contracts import Array, python_scalar

from modelloop_seldon.messages import ERROR_REASONS

# Counter names; Prometheus sees each with a _total suffix.
REQUESTS = "modelloop_seldon_requests"
ERRORS = "modelloop_seldon_errors"
PREDICTIONS = "modelloop_seldon_predictions"

Metric = dict[str, Any]


def class_label(label: Any) -> str:
    """A predicted class as the ``class`` label's value."""
    return str(python_scalar(label))


class ServerMetrics:
    """The runtime metrics of one worker's answers, for a model of ``version`` (and ``classes``)."""

    def __init__(self, version: str, classes: Sequence[Any] | None) -> None:
        self.version = version
        self.classes = None if classes is None else [class_label(label) for label in classes]
        self._declared = False

    def for_predictions(self, predictions: Array) -> list[Metric]:
        """An answered request (code 200) and its predictions: by class for a classifier."""
        metrics = [self._counter(REQUESTS, 1, code="200")]
        if self.classes is None:
            metrics.append(self._counter(PREDICTIONS, len(predictions)))
        elif len(predictions) == 1:
            metrics.append(self._counter(PREDICTIONS, 1, **{"class": class_label(predictions[0])}))
        else:
            labels, counts = np.unique(predictions, return_counts=True)
            metrics += [
                self._counter(PREDICTIONS, int(count), **{"class": class_label(label)})
                for label, count in zip(labels, counts, strict=True)
            ]
        return self._declaring(metrics)

    def for_failure(self, code: int, reason: str) -> list[Metric]:
        """A request answered with an error ``code``, and why (one of ``ERROR_REASONS``)."""
        return self._declaring(
            [self._counter(REQUESTS, 1, code=str(code)), self._counter(ERRORS, 1, reason=reason)]
        )

    def _declaring(self, metrics: list[Metric]) -> list[Metric]:
        # The worker's first answer also creates every error reason's and every class's series at 0:
        # an error ratio then reads 0, not "no data", until the first error (and a class's rate too).
        if self._declared:
            return metrics
        self._declared = True
        zeros = [self._counter(ERRORS, 0, reason=reason) for reason in ERROR_REASONS]
        zeros += [self._counter(PREDICTIONS, 0, **{"class": label}) for label in self.classes or ()]
        return zeros + metrics

    def _counter(self, key: str, value: int, **labels: str) -> Metric:
        # A new tags dict each time: seldon-core adds its "method" tag to it in place.
        return {"type": "COUNTER", "key": key, "value": value, "tags": {"version": self.version, **labels}}
