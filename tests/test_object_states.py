"""The object-state gauges: read from the controllers' indexes, bounded labels, the ages alerts use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelloop.controllers.state_metrics import ObjectStates

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def obj(name: str, status: dict[str, Any], created: str = "2026-11-27T11:00:00Z", **spec: Any) -> Any:
    meta = {"name": name, "namespace": "ml", "creationTimestamp": created}
    return {"metadata": meta, "spec": spec, "status": status}


def scrape(indexes: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    states = ObjectStates(lambda: indexes, clock=lambda: NOW)
    registry = CollectorRegistry()
    registry.register(states)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


INDEXES = {
    "training_runs": {
        ("ml", "a"): [obj("a", {"phase": "Succeeded"})],
        ("ml", "b"): [obj("b", {"phase": "Pending"}, created="2026-11-27T11:30:00Z")],
        ("ml", "c"): [obj("c", {}, created="2026-11-27T11:50:00Z")],
    },
    "model_versions": {
        ("ml", "iris"): [
            obj("iris-v1", {"phase": "Validated", "stage": "Archived"}, modelName="iris", version=1),
            obj("iris-v2", {"phase": "Validated", "stage": "Champion"}, modelName="iris", version=2),
            obj("iris-v3", {"phase": "Validated", "stage": "Challenger"}, modelName="iris", version=3),
        ],
        ("ml", "wine"): [
            obj("wine-v4", {"phase": "Rejected", "stage": "Candidate"}, modelName="wine", version=4)
        ],
    },
    "inference_services": {
        ("ml", "iris"): [
            obj(
                "iris",
                {
                    "phase": "Progressing",
                    "canaryVersion": 3,
                    "stepIndex": 1,
                    "stepStartTime": "2026-11-27T11:45:00.000Z",
                },
            )
        ],
        ("ml", "shadowed"): [
            obj(
                "shadowed", {"phase": "Progressing", "canaryVersion": 2, "shadow": True, "stepStartTime": "x"}
            )
        ],
        ("ml", "stable"): [obj("stable", {"phase": "Stable", "stableVersion": 1})],
    },
    "drift_policies": {
        ("ml", "d"): [
            obj(
                "d",
                {
                    "phase": "Inconclusive",
                    "conditions": [{"type": "Ready", "lastTransitionTime": "2026-11-27T10:00:00Z"}],
                },
            )
        ],
    },
}


def test_objects_are_counted_by_kind_and_phase() -> None:
    samples = scrape(INDEXES)
    assert samples[("modelloop_objects", (("kind", "TrainingRun"), ("phase", "Pending")))] == 1
    assert samples[("modelloop_objects", (("kind", "TrainingRun"), ("phase", "None")))] == 1
    assert samples[("modelloop_objects", (("kind", "ModelVersion"), ("phase", "Validated")))] == 3
    assert samples[("modelloop_objects", (("kind", "InferenceService"), ("phase", "Progressing")))] == 2


def test_versions_by_stage_and_the_champion_of_each_model() -> None:
    samples = scrape(INDEXES)
    assert samples[("modelloop_model_versions", (("stage", "Champion"),))] == 1
    assert samples[("modelloop_model_versions", (("stage", "Candidate"),))] == 1
    assert samples[("modelloop_champion_version", (("model", "iris"), ("namespace", "ml")))] == 2
    assert not any(
        name == "modelloop_champion_version" and ("model", "wine") in labels for name, labels in samples
    )


def test_rollouts_by_phase_and_step_with_shadow_and_the_oldest_step() -> None:
    samples = scrape(INDEXES)
    assert samples[("modelloop_rollouts", (("phase", "Progressing"), ("step", "2")))] == 1
    assert samples[("modelloop_rollouts", (("phase", "Progressing"), ("step", "shadow")))] == 1
    # 11:45 to 12:00; an unreadable step time is left out rather than failing the scrape.
    assert samples[("modelloop_rollout_oldest_step_seconds", ())] == 15 * 60


def test_the_oldest_pending_run_and_the_longest_inconclusive_policy() -> None:
    samples = scrape(INDEXES)
    assert samples[("modelloop_training_run_oldest_pending_seconds", ())] == 30 * 60
    assert samples[("modelloop_drift_policy_oldest_inconclusive_seconds", ())] == 2 * 3600


def test_before_the_controllers_start_every_gauge_is_empty_or_zero() -> None:
    samples = scrape({})
    assert samples[("modelloop_rollout_oldest_step_seconds", ())] == 0
    assert not any(name == "modelloop_objects" for name, _ in samples)
