"""The state of modelloop's objects as Prometheus gauges, read from the controllers' indexes when scraped.

What a dashboard and the alerts need to see of the models the operator runs: objects by kind and phase,
model versions by stage, the champion of each model, rollouts by phase and step, and the age of the
oldest thing that waits (a rollout step, a Pending run, an inconclusive drift policy). Label values come
from fixed sets (kinds, phases, stages, steps), except the champion gauge's namespace and model: one
series per model that has a champion, as kube-state-metrics has one per object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelloop.api import InferenceServicePhase
from modelloop.conditions import parse_time

Indexes = Mapping[str, Any]
# The index of each kind, as the controllers register them.
KIND_INDEXES = {
    "TrainingRun": "training_runs",
    "ModelVersion": "model_versions",
    "ModelPolicy": "model_policies",
    "InferenceService": "inference_services",
    "DriftPolicy": "drift_policies",
}
IN_STEP = (InferenceServicePhase.PROGRESSING, InferenceServicePhase.PAUSED)


def objects_of(indexes: Indexes, index: str) -> Iterator[Mapping[str, Any]]:
    """Every object of one index (an index maps keys to the objects under them)."""
    for objects in (indexes.get(index) or {}).values():
        yield from objects


def gauges(indexes: Indexes, now: datetime) -> list[GaugeMetricFamily]:
    """Every gauge, from the indexes as they are at ``now``."""
    by_phase = GaugeMetricFamily(
        "modelloop_objects", "modelloop objects by kind and phase.", labels=["kind", "phase"]
    )
    for kind, index in KIND_INDEXES.items():
        phases = Counter(str(_status(o).get("phase") or "None") for o in objects_of(indexes, index))
        for phase, count in sorted(phases.items()):
            by_phase.add_metric([kind, phase], count)

    versions = list(objects_of(indexes, "model_versions"))
    by_stage = GaugeMetricFamily(
        "modelloop_model_versions", "Model versions by registry stage.", labels=["stage"]
    )
    for stage, count in sorted(Counter(str(_status(v).get("stage") or "None") for v in versions).items()):
        by_stage.add_metric([stage], count)
    champions = GaugeMetricFamily(
        "modelloop_champion_version",
        "The version number of each model's Champion.",
        labels=["namespace", "model"],
    )
    for version in versions:
        if _status(version).get("stage") == "Champion":
            spec = version.get("spec") or {}
            champions.add_metric(
                [version["metadata"].get("namespace", ""), str(spec.get("modelName"))],
                float(spec.get("version") or 0),
            )

    services = [s for s in objects_of(indexes, "inference_services") if _status(s).get("canaryVersion")]
    rollouts = GaugeMetricFamily(
        "modelloop_rollouts",
        "InferenceServices with a canary, by phase and step (1-based, or shadow).",
        labels=["phase", "step"],
    )
    steps = Counter((str(_status(s).get("phase")), _step(_status(s))) for s in services)
    for (phase, step), count in sorted(steps.items()):
        rollouts.add_metric([phase, step], count)
    in_step = [_status(s).get("stepStartTime") for s in services if _status(s).get("phase") in IN_STEP]
    oldest_step = _oldest(
        "modelloop_rollout_oldest_step_seconds",
        "Seconds the longest-running current rollout step has lasted (0: none).",
        in_step,
        now,
    )

    pending = [
        r["metadata"].get("creationTimestamp")
        for r in objects_of(indexes, "training_runs")
        if _status(r).get("phase") in (None, "Pending")
    ]
    oldest_pending = _oldest(
        "modelloop_training_run_oldest_pending_seconds",
        "Seconds the oldest Pending TrainingRun has waited since it was created (0: none).",
        pending,
        now,
    )
    inconclusive = [
        _ready_since(p)
        for p in objects_of(indexes, "drift_policies")
        if _status(p).get("phase") == "Inconclusive"
    ]
    oldest_inconclusive = _oldest(
        "modelloop_drift_policy_oldest_inconclusive_seconds",
        "Seconds the longest-inconclusive DriftPolicy has been so (0: none).",
        inconclusive,
        now,
    )
    return [by_phase, by_stage, champions, rollouts, oldest_step, oldest_pending, oldest_inconclusive]


class ObjectStates(Collector):
    """The gauges above, collected at scrape time from the controllers' indexes (``indexes``). The
    operator's runtime registers one at start-up and unregisters it at clean-up."""

    def __init__(
        self, indexes: Callable[[], Indexes], clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.indexes = indexes
        self.clock = clock

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return gauges(self.indexes(), self.clock())


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _step(status: Mapping[str, Any]) -> str:
    if status.get("shadow"):
        return "shadow"
    index = status.get("stepIndex")
    return "none" if index is None else str(int(index) + 1)


def _ready_since(obj: Mapping[str, Any]) -> Any:
    conditions: list[Mapping[str, Any]] = list(_status(obj).get("conditions") or ())
    ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    return ready.get("lastTransitionTime") or obj["metadata"].get("creationTimestamp")


def _oldest(name: str, documentation: str, times: Iterable[Any], now: datetime) -> GaugeMetricFamily:
    ages = [(now - parsed).total_seconds() for parsed in map(parse_time, times) if parsed is not None]
    return GaugeMetricFamily(name, documentation, value=max([0.0, *ages]))
