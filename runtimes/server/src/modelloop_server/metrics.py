"""The server's Prometheus metrics, labelled with the served model's name and version.

KServe's ``/metrics`` exposes its own per-stage latency histograms (``request_predict_seconds``
and the like, labelled ``model_name`` only) but counts no requests and no errors. These add what
canary analysis and drift watching need: every answered inference request by protocol and status
code, its latency, and the distribution of the predictions.

Label children are resolved once and kept: ``labels()`` costs a lock and a dict lookup per call,
which shows on a server that answers a request in a fraction of a millisecond.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Fine enough to tell a 1 ms answer from a 2 ms one, wide enough for a slow PyTorch batch.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Regression outputs have no natural scale: a 1-2.5-5 ladder from 0 to 10000 covers most targets
# (--prediction_buckets sets others). Bounds stay non-negative on purpose: prometheus_client drops a
# histogram's _sum when a bound is negative, and the mean prediction is what drift queries want.
PREDICTION_VALUE_BUCKETS = (
    0.0,
    *(step * 10.0**exponent for exponent in range(-2, 4) for step in (1, 2.5, 5)),
    10000.0,
)


def inference_protocol(path: str) -> str | None:
    """``v1`` or ``v2`` for a path of KServe's inference endpoints; None for every other path."""
    if path.startswith("/v1/models/"):
        return "v1" if path.endswith(":predict") else None
    if path.startswith("/v2/models/"):
        return "v2" if path.endswith("/infer") else None
    return None


class ServerMetrics:
    """The metrics of one served model (one name, one version), registered in ``registry``."""

    def __init__(
        self,
        model: str,
        version: str,
        *,
        registry: CollectorRegistry = REGISTRY,
        prediction_buckets: Sequence[float] = PREDICTION_VALUE_BUCKETS,
    ) -> None:
        self.model, self.version = model, version
        labels = ("model", "version")
        self.requests = Counter(
            "modelloop_server_requests",
            "Inference requests answered, by protocol and HTTP status code.",
            (*labels, "protocol", "code"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "modelloop_server_request_duration_seconds",
            "Time from an inference request's arrival to its answer.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "modelloop_server_predictions",
            "Predictions made by a classifier, by predicted class.",
            (*labels, "class"),
            registry=registry,
        )
        self.prediction_value = Histogram(
            "modelloop_server_prediction_value",
            "Values predicted by a regressor.",
            labels,
            buckets=tuple(prediction_buckets),
            registry=registry,
        )
        self._duration = self.request_duration.labels(model, version)
        self._values = self.prediction_value.labels(model, version)
        self._requests: dict[tuple[str, int], Any] = {}
        self._classes: dict[Any, Any] = {}

    def declare_classes(self, classes: Iterable[Any]) -> None:
        """Create a classifier's per-class series at zero, so that rates exist before the first prediction."""
        for label in classes:
            self._class_child(label)

    def observe_request(self, protocol: str, code: int, seconds: float) -> None:
        """Count one answered inference request and its latency."""
        child = self._requests.get((protocol, code))
        if child is None:
            child = self._requests[protocol, code] = self.requests.labels(
                self.model, self.version, protocol, str(code)
            )
        child.inc()
        self._duration.observe(seconds)

    def observe_classes(self, predictions: np.ndarray) -> None:
        """Count a classifier's predicted labels."""
        if len(predictions) == 1:
            self._class_child(predictions[0]).inc()
            return
        labels, counts = np.unique(predictions, return_counts=True)
        for label, count in zip(labels, counts, strict=True):
            self._class_child(label).inc(int(count))

    def observe_values(self, predictions: np.ndarray) -> None:
        """Record a regressor's predicted values in the value histogram."""
        for value in predictions.tolist():
            self._values.observe(value)

    def _class_child(self, label: Any) -> Any:
        key = label.item() if isinstance(label, np.generic) else label
        child = self._classes.get(key)
        if child is None:
            child = self._classes[key] = self.predictions.labels(self.model, self.version, str(key))
        return child


class RequestMetricsMiddleware:
    """ASGI middleware that counts every answered inference request with its status code.

    It sits inside Starlette's error middleware, so an exception that escapes every handler is
    counted as the 500 that the error middleware then answers.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = inference_protocol(scope["path"]) if scope["type"] == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.observe_request(protocol, status, time.perf_counter() - started)
