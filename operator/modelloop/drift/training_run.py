"""The retraining a DriftPolicy starts: its TrainingRun, and how far the last one has come."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modelloop.api import (
    API_VERSION,
    TRAINING_RUN,
    DriftPolicySpec,
    ModelStage,
    ModelVersionPhase,
    TrainingRunPhase,
    TriggerKind,
)
from modelloop.drift.policy import InFlight
from modelloop.naming import ANNOTATION_DRIFT_POLICY_UID, LABEL_DRIFT_POLICY, label_value, standard_labels

MAX_EVIDENCE = 32


def render_training_run(
    policy: Mapping[str, Any],
    spec: DriftPolicySpec,
    name: str,
    evidence: Mapping[str, str],
    recent_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The TrainingRun of ``policy``'s template, with the trigger (the policy and its evidence) recorded,
    and the detector's recent data added to its dataset when there is some."""
    meta = policy["metadata"]
    run_spec = spec.retrain.training_run_template.model_dump(mode="json", by_alias=True, exclude_none=True)
    run_spec["triggeredBy"] = {
        "kind": TriggerKind.DRIFT_POLICY.value,
        "name": meta["name"],
        "evidence": dict(list(evidence.items())[:MAX_EVIDENCE]),
    }
    if recent_data is not None:
        dataset = run_spec["dataset"]
        dataset["additional"] = [*dataset.get("additional", ()), dict(recent_data)][-8:]
    return {
        "apiVersion": API_VERSION,
        "kind": TRAINING_RUN.kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                **spec.retrain.labels,
                **standard_labels("retraining", meta["name"]),
                LABEL_DRIFT_POLICY: label_value(meta["name"]),
            },
            # The policy's uid: a policy deleted and made again under the same name is another policy.
            "annotations": {ANNOTATION_DRIFT_POLICY_UID: str(meta["uid"])},
        },
        "spec": run_spec,
    }


def retraining_in_flight(
    run: Mapping[str, Any] | None, versions: Iterable[Mapping[str, Any]]
) -> InFlight | None:
    """What the policy's last retraining is doing while it still is on its way, else None: its run trains,
    its version waits for validation, or it is the challenger in a canary. A failed or deleted run, a
    rejected version and a version that is champion (or was rolled back) are over."""
    if run is None:
        return None
    run_name = run["metadata"]["name"]
    run_status = run.get("status") or {}
    phase = run_status.get("phase") or TrainingRunPhase.PENDING.value
    if phase == TrainingRunPhase.FAILED:
        return None
    if phase != TrainingRunPhase.SUCCEEDED:
        return InFlight(f"TrainingRun {run_name} is {phase}")
    version_name = run_status.get("modelVersion")
    if not version_name:
        return InFlight(f"TrainingRun {run_name} succeeded; its ModelVersion is being registered")
    version = next((v for v in versions if v["metadata"]["name"] == version_name), None)
    if version is None:
        return None
    version_status = version.get("status") or {}
    if version_status.get("phase") in (None, ModelVersionPhase.PENDING):
        return InFlight(f"ModelVersion {version_name} of TrainingRun {run_name} is being validated")
    if version_status.get("phase") == ModelVersionPhase.REJECTED:
        return None
    if version_status.get("stage") == ModelStage.CHALLENGER:
        return InFlight(
            f"ModelVersion {version_name} of TrainingRun {run_name} is the challenger in a canary"
        )
    return None
