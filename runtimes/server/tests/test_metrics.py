"""The server's Prometheus metrics, on a registry of the test's own."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelloop_server.metrics import ServerMetrics, inference_protocol


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.mark.parametrize(
    ("path", "protocol"),
    [
        ("/v1/models/iris:predict", "v1"),
        ("/v2/models/iris/infer", "v2"),
        ("/v2/models/iris/versions/3/infer", "v2"),
        ("/v1/models/iris:explain", None),
        ("/v1/models/iris", None),
        ("/v2/models/iris/ready", None),
        ("/metrics", None),
        ("/", None),
    ],
)
def test_only_inference_endpoints_have_a_protocol(path: str, protocol: str | None) -> None:
    assert inference_protocol(path) == protocol


def test_requests_are_counted_by_protocol_and_code(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics("iris", "2", registry=registry)

    metrics.observe_request("v1", 200, 0.0012)
    metrics.observe_request("v1", 200, 0.0008)
    metrics.observe_request("v2", 400, 0.0003)

    def requests(protocol: str, code: str) -> float | None:
        labels = {"model": "iris", "version": "2", "protocol": protocol, "code": code}
        return registry.get_sample_value("modelloop_server_requests_total", labels)

    assert (requests("v1", "200"), requests("v2", "400"), requests("v1", "500")) == (2, 1, None)
    labels = {"model": "iris", "version": "2"}
    assert registry.get_sample_value("modelloop_server_request_duration_seconds_count", labels) == 3
    assert (
        registry.get_sample_value(
            "modelloop_server_request_duration_seconds_bucket", {**labels, "le": "0.001"}
        )
        == 2
    )


def test_declared_classes_exist_at_zero_and_predictions_count_per_class(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics("iris", "2", registry=registry)
    metrics.declare_classes(["setosa", "versicolor", "virginica"])

    metrics.observe_classes(np.array(["setosa"]))
    metrics.observe_classes(np.array(["virginica", "setosa", "virginica", "virginica"]))

    def predictions(label: str) -> float | None:
        return registry.get_sample_value(
            "modelloop_server_predictions_total", {"model": "iris", "version": "2", "class": label}
        )

    assert [predictions(label) for label in ("setosa", "versicolor", "virginica")] == [2, 0, 3]


def test_integer_classes_are_labelled_as_their_numbers(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics("m", "1", registry=registry)
    metrics.declare_classes([0, 1])

    metrics.observe_classes(np.array([1, 1, 0]))

    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("modelloop_server_predictions_total", {**labels, "class": "1"}) == 2
    assert registry.get_sample_value("modelloop_server_predictions_total", {**labels, "class": "0"}) == 1


def test_regression_values_fill_the_histogram_with_its_sum(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics("m", "1", registry=registry, prediction_buckets=(0.0, 10.0, 100.0))

    metrics.observe_values(np.array([5.0, 50.0, 500.0]))

    labels = {"model": "m", "version": "1"}
    sample = registry.get_sample_value
    assert [
        sample("modelloop_server_prediction_value_bucket", {**labels, "le": le})
        for le in ("10.0", "100.0", "+Inf")
    ] == [1, 2, 3]
    assert sample("modelloop_server_prediction_value_sum", labels) == 555.0
