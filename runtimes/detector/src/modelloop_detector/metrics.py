"""The detector's Prometheus metrics, in a registry of its own.

The counters of dropped events, refusals and ignored probabilities and the verdict-time histogram are
ordinary metrics. The received-events counter, counted at every event, is a plain int per type that
the HTTP application adds to and :class:`ReceivedEvents` exports at scrape time (a prometheus_client
counter takes a lock at each increment). The per-version gauges are read from :class:`DriftService` at
scrape time, so a forgotten version's series disappear with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelloop_detector.detectors import Verdict
from modelloop_detector.events import EVENT_KINDS, DropReason, EventKind
from modelloop_detector.limits import RefusalReason
from modelloop_detector.payloads import ProbabilitiesIgnored
from modelloop_detector.service import DriftService

VERSION_LABELS = ["namespace", "service", "model", "version"]
VERDICT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class DetectorMetrics:
    """The metrics of one detector process (and of one test's in-process server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = ReceivedEvents()
        self.registry.register(self.events)
        self.dropped = Counter(
            "modelloop_detector_events_dropped",
            "Inference CloudEvents that did not become window rows, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.refused = Counter(
            "modelloop_detector_refused",
            "Requests refused by a limit, the artifact roots, the namespace or authentication, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "modelloop_detector_probabilities_ignored",
            "Responses whose class probabilities were ignored (their predictions still count), by reason: "
            "shape (not rows of numbers of one length), rows (not one row per prediction), range (not "
            "finite, or outside [0, 1]), classes (not as many as the version's classes).",
            ["reason"],
            registry=self.registry,
        )
        self.verdict_seconds = Histogram(
            "modelloop_drift_verdict_seconds",
            "Time to judge one window, by detector.",
            ["detector"],
            buckets=VERDICT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        for reason in DropReason:
            self.dropped.labels(reason.value)
        for refusal in RefusalReason:
            self.refused.labels(refusal.value)
        for ignored in ProbabilitiesIgnored:
            self.ignored.labels(ignored.value)

    def watch(self, service: DriftService) -> None:
        """Export ``service``'s per-version gauges."""
        self.registry.register(DriftCollector(service))

    def count_drop(self, reason: DropReason, count: int = 1) -> None:
        """Count ``count`` dropped events."""
        self.dropped.labels(reason.value).inc(count)

    def count_refusal(self, reason: RefusalReason) -> None:
        """Count one refused request."""
        self.refused.labels(reason.value).inc()

    def count_ignored(self, reason: ProbabilitiesIgnored) -> None:
        """Count one response whose probabilities were ignored."""
        self.ignored.labels(reason.value).inc()

    def observe_verdict(self, verdict: Verdict, seconds: float) -> None:
        """Record how long a verdict took."""
        self.verdict_seconds.labels(verdict.detector).observe(seconds)


class ReceivedEvents(Collector):
    """``modelloop_detector_events_total{type}``: :attr:`counts`, one int per event kind, exported at
    scrape time. Only the HTTP application adds to them, from its event loop's one thread: ``+= 1``
    on a dict entry, the cheapest count there is, needs no lock with a single writer."""

    NAME = "modelloop_detector_events"
    HELP = "Inference CloudEvents received, by type (request|response)."

    def __init__(self) -> None:
        self.counts: dict[EventKind, int] = dict.fromkeys(EVENT_KINDS.values(), 0)
        self._created = time.time()

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.NAME, self.HELP, labels=["type"])]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["type"])
        for kind, count in list(self.counts.items()):
            family.add_metric([kind], count, created=self._created)
        yield family


class DriftCollector(Collector):
    """The per-version gauges, from the service's current state."""

    def __init__(self, service: DriftService) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        detail = [*VERSION_LABELS, "detector", "feature"]
        score = GaugeMetricFamily(
            "modelloop_drift_score",
            "A drift test's statistic on the window (KS and Chi-square per feature, "
            'feature="" the largest; MMD^2; the prediction check).',
            labels=detail,
        )
        p_value = GaugeMetricFamily(
            "modelloop_drift_p_value", "A drift test's p-value on the window.", labels=detail
        )
        verdict = GaugeMetricFamily(
            "modelloop_drift_verdict",
            "1 when a detector finds drift in the window, else 0 "
            "(per-feature tests combined by the correction).",
            labels=[*VERSION_LABELS, "detector"],
        )
        rows = GaugeMetricFamily("modelloop_drift_window_rows", "Rows in the window.", labels=VERSION_LABELS)
        accuracy = GaugeMetricFamily(
            "modelloop_feedback_accuracy",
            "Fraction of the last labelled predictions equal to their label (classifiers).",
            labels=VERSION_LABELS,
        )
        mae = GaugeMetricFamily(
            "modelloop_feedback_mae",
            "Mean absolute error of the last labelled predictions (regressors).",
            labels=VERSION_LABELS,
        )
        labels_total = CounterMetricFamily(
            "modelloop_feedback_labels", "Labels joined to a predicted row.", labels=VERSION_LABELS
        )
        inconclusive = GaugeMetricFamily(
            "modelloop_drift_inconclusive",
            "1 until the window has been full once since the version was registered with this detector "
            "process (after a restart too): its verdicts are then inconclusive; else 0.",
            labels=VERSION_LABELS,
        )
        performance = [*VERSION_LABELS, "metric"]
        estimated = GaugeMetricFamily(
            "modelloop_estimated_performance",
            "The version's performance on its window estimated before labels arrive, calibrated on its "
            "holdout: a classifier's accuracy and macro F1 from the served class probabilities (CBPE), a "
            "regressor's mean absolute error (mae) from its features and predictions (DLE); by metric.",
            labels=performance,
        )
        lower = GaugeMetricFamily(
            "modelloop_estimated_performance_lower",
            "The lower bound of the estimate's 95% confidence band.",
            labels=performance,
        )
        upper = GaugeMetricFamily(
            "modelloop_estimated_performance_upper",
            "The upper bound of the estimate's 95% confidence band.",
            labels=performance,
        )
        estimated_rows = GaugeMetricFamily(
            "modelloop_estimated_performance_rows",
            "The window rows the last estimate used (rows with class probabilities, for a classifier).",
            labels=VERSION_LABELS,
        )
        realised = GaugeMetricFamily(
            "modelloop_realised_performance",
            "The version's performance measured on its window's rows whose labels arrived, by metric (the "
            "estimate's metrics), once enough of them have.",
            labels=performance,
        )
        realised_rows = GaugeMetricFamily(
            "modelloop_realised_performance_rows",
            "The labelled window rows the realised performance was measured on.",
            labels=VERSION_LABELS,
        )
        services = self.service.services()
        halves, pending_bytes = self.service.pending()
        state_gauges = [
            GaugeMetricFamily("modelloop_detector_services", "Registered services.", value=len(services)),
            GaugeMetricFamily(
                "modelloop_detector_unpaired_halves",
                "Requests and responses waiting for their other half.",
                value=halves,
            ),
            GaugeMetricFamily(
                "modelloop_detector_unpaired_bytes",
                "The bodies' bytes of the unpaired halves.",
                value=pending_bytes,
            ),
        ]
        for state in services:
            with state.lock:
                versions = [
                    (
                        version.name,
                        len(version.window),
                        list(version.verdicts.values()),
                        version.feedback.accuracy(),
                        version.feedback.mae(),
                        version.feedback.labels_total,
                        version.complete,
                        version.estimates,
                        version.realised,
                    )
                    for version in state.versions.values()
                ]
            for (
                name,
                window_rows,
                verdicts,
                version_accuracy,
                version_mae,
                labelled,
                complete,
                estimates,
                measured,
            ) in versions:
                base = [state.namespace, state.name, state.model, name]
                for estimate in estimates:
                    estimated.add_metric([*base, estimate.metric], estimate.value)
                    lower.add_metric([*base, estimate.metric], estimate.lower)
                    upper.add_metric([*base, estimate.metric], estimate.upper)
                if estimates:
                    estimated_rows.add_metric(base, max(estimate.rows for estimate in estimates))
                if measured is not None:
                    for metric, value in measured.values.items():
                        realised.add_metric([*base, metric], value)
                    realised_rows.add_metric(base, measured.rows)
                rows.add_metric(base, window_rows)
                inconclusive.add_metric(base, 0.0 if complete else 1.0)
                labels_total.add_metric(base, labelled)
                if version_accuracy is not None:
                    accuracy.add_metric(base, version_accuracy)
                if version_mae is not None:
                    mae.add_metric(base, version_mae)
                for judged in verdicts:
                    verdict.add_metric([*base, judged.detector], 1.0 if judged.drift else 0.0)
                    if judged.detector != "chi2" or not judged.features:
                        overall = "prediction" if judged.detector == "prediction" else ""
                        score.add_metric([*base, judged.detector, overall], judged.score)
                        p_value.add_metric([*base, judged.detector, overall], judged.p_value)
                    if judged.detector in ("ks", "chi2"):
                        for feature in judged.features:
                            score.add_metric([*base, judged.detector, feature.feature], feature.score)
                            p_value.add_metric([*base, judged.detector, feature.feature], feature.p_value)
        yield from (
            score,
            p_value,
            verdict,
            rows,
            inconclusive,
            accuracy,
            mae,
            labels_total,
            estimated,
            lower,
            upper,
            estimated_rows,
            realised,
            realised_rows,
            *state_gauges,
        )
