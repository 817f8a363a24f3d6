"""The operator's own Prometheus metrics (kopf has none): reconciles, their duration and errors per kind,
the work queues' depth and wait, the API calls with their latency by verb and code, and the retrainings
drift policies started or skipped (the state of the objects is ``controllers.state_metrics``, registered
here too).

Every label value comes from a small fixed set (kinds, HTTP verbs, status codes), never from objects'
names: the number of series stays bounded however many objects the operator reconciles. The metrics live
in a registry of their own (``REGISTRY``; ``OperatorMetrics`` makes them in any other, for tests) and are
served by ``serve`` at /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds, from a fast status write to a slow sweep's registration.
_DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The process's registry, which ``serve`` serves."""


class OperatorMetrics:
    """The operator's collectors, registered in ``registry`` (the process's REGISTRY unless given): a test
    makes them in a registry of its own, puts them in place of the module's (``by_name``), and reads back
    only what the code under test wrote."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.reconciles = Counter(
            "modelloop_reconciles", "Reconciles by kind and result (success or error).", ("kind", "result"),
            registry=registry,
        )  # fmt: skip
        self.reconcile_seconds = Histogram(
            "modelloop_reconcile_duration_seconds", "How long reconciles took, by kind.", ("kind",),
            buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "modelloop_queue_wait_seconds", "How long a due key waited for a worker, by kind.", ("kind",),
            buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.api_requests = Counter(
            "modelloop_api_requests",
            "Requests to the Kubernetes API by verb and status code (0: no answer).",
            ("verb", "code"), registry=registry,
        )  # fmt: skip
        self.api_seconds = Histogram(
            "modelloop_api_request_duration_seconds", "Latency of Kubernetes API requests, by verb.",
            ("verb",), buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.drift_evaluation_lag = Histogram(
            "modelloop_drift_evaluation_lag_seconds",
            "How late DriftPolicy evaluations ran after they were due (interval after the last one).",
            buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.retraining_start_seconds = Histogram(
            "modelloop_drift_retraining_start_seconds",
            "From the start of the evaluation that confirms a breach to its TrainingRun created.",
            buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.retrainings = Counter(
            "modelloop_retrainings", "Retrainings a DriftPolicy started or skipped, by result and reason.",
            ("result", "reason"), registry=registry,
        )  # fmt: skip

    def by_name(self) -> dict[str, Counter | Histogram]:
        """The collectors by the names this module gives the process's own."""
        return {
            "RECONCILES": self.reconciles,
            "RECONCILE_SECONDS": self.reconcile_seconds,
            "QUEUE_WAIT_SECONDS": self.queue_wait_seconds,
            "API_REQUESTS": self.api_requests,
            "API_SECONDS": self.api_seconds,
            "DRIFT_EVALUATION_LAG": self.drift_evaluation_lag,
            "RETRAINING_START_SECONDS": self.retraining_start_seconds,
            "RETRAININGS": self.retrainings,
        }


# The process's collectors, which the work queue, the client and the controllers write to.
_PROCESS = OperatorMetrics(REGISTRY)
RECONCILES = _PROCESS.reconciles
RECONCILE_SECONDS = _PROCESS.reconcile_seconds
QUEUE_WAIT_SECONDS = _PROCESS.queue_wait_seconds
API_REQUESTS = _PROCESS.api_requests
API_SECONDS = _PROCESS.api_seconds
DRIFT_EVALUATION_LAG = _PROCESS.drift_evaluation_lag
RETRAINING_START_SECONDS = _PROCESS.retraining_start_seconds
RETRAININGS = _PROCESS.retrainings


def observe_api_request(verb: str, code: int, seconds: float) -> None:
    """Count one request of the operator's client (``KubeClient``'s ``observe``)."""
    API_REQUESTS.labels(verb, str(code)).inc()
    API_SECONDS.labels(verb).observe(seconds)


class QueueDepth(Collector):
    """Reads each work queue's depth when scraped: keys due and waiting, and keys with a timer.
    ``queues`` gives (kind, depth, scheduled) of every queue. The controller manager registers one for its
    queues at start-up and unregisters it at clean-up."""

    def __init__(self, queues: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        due = GaugeMetricFamily(
            "modelloop_queue_depth", "Keys due and waiting for a worker, by kind.", labels=["kind"]
        )
        timers = GaugeMetricFamily(
            "modelloop_queue_scheduled",
            "Keys waiting for their time (requeue-after, back-off), by kind.",
            labels=["kind"],
        )
        for kind, depth, scheduled in self.queues():
            due.add_metric([kind], depth)
            timers.add_metric([kind], scheduled)
        yield due
        yield timers


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The metrics of ``registry`` (the process's unless given) in Prometheus's text format."""
    return generate_latest(registry)


async def serve(address: str) -> web.AppRunner:
    """Serve /metrics on ``address`` (``host:port``); the caller cleans the runner up at shut-down."""
    host, _, port = address.rpartition(":")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner
