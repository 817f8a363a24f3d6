"""The runtime metrics each answer carries for seldon-core to record."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloop_seldon.messages import ERROR_REASONS
from modelloop_seldon.metrics import ERRORS, PREDICTIONS, REQUESTS, ServerMetrics


def counters(metrics: list[dict[str, Any]]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert all(metric["type"] == "COUNTER" for metric in metrics)
    return {(metric["key"], frozenset(metric["tags"].items())): metric["value"] for metric in metrics}


def test_the_first_answer_of_a_worker_creates_every_error_reason_and_class_at_zero() -> None:
    metrics = ServerMetrics("3", ["setosa", "versicolor"])

    first = counters(metrics.for_predictions(np.array(["setosa"], dtype=object)))
    second = counters(metrics.for_predictions(np.array(["setosa"], dtype=object)))

    assert first == {
        **{(ERRORS, frozenset({("version", "3"), ("reason", reason)})): 0 for reason in ERROR_REASONS},
        (PREDICTIONS, frozenset({("version", "3"), ("class", "versicolor")})): 0,
        (PREDICTIONS, frozenset({("version", "3"), ("class", "setosa")})): 1,
        (REQUESTS, frozenset({("version", "3"), ("code", "200")})): 1,
    }
    assert second == {
        (PREDICTIONS, frozenset({("version", "3"), ("class", "setosa")})): 1,
        (REQUESTS, frozenset({("version", "3"), ("code", "200")})): 1,
    }


def test_a_classifiers_predictions_are_counted_by_class() -> None:
    metrics = ServerMetrics("1", [0, 1, 2])
    metrics.for_predictions(np.array([0]))

    answer = counters(metrics.for_predictions(np.array([2, 0, 2, 2])))

    assert answer == {
        (PREDICTIONS, frozenset({("version", "1"), ("class", "0")})): 1,
        (PREDICTIONS, frozenset({("version", "1"), ("class", "2")})): 3,
        (REQUESTS, frozenset({("version", "1"), ("code", "200")})): 1,
    }


def test_a_regressors_predictions_are_counted_without_a_class() -> None:
    metrics = ServerMetrics("1", None)
    metrics.for_predictions(np.array([1.0]))

    answer = counters(metrics.for_predictions(np.array([1.5, -2.0])))

    assert answer == {
        (PREDICTIONS, frozenset({("version", "1")})): 2,
        (REQUESTS, frozenset({("version", "1"), ("code", "200")})): 1,
    }


def test_a_failure_counts_a_request_with_its_code_and_an_error_with_its_reason() -> None:
    metrics = ServerMetrics("2", None)
    metrics.for_failure(500, "internal")

    answer = counters(metrics.for_failure(400, "invalid_features"))

    assert answer == {
        (REQUESTS, frozenset({("version", "2"), ("code", "400")})): 1,
        (ERRORS, frozenset({("version", "2"), ("reason", "invalid_features")})): 1,
    }
