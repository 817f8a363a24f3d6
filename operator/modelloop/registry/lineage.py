"""A ModelVersion's lineage: the version ← the TrainingRun that produced it ← what started that run.

Built from the objects as the API server returns them (plain dicts; the version's status is read through
its model, and one that cannot be read shows nothing of it). The run and the DriftPolicy may be gone by
now; the version's own ``spec.lineage``, recorded when it was registered, then stands in for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import pydantic

from modelloop.api import ModelVersionStatus, TriggerKind
from modelloop.naming import ANNOTATION_REGISTERED_BY

Object = Mapping[str, Any]


class VersionLink(TypedDict):
    """The ModelVersion itself."""

    name: str
    namespace: str | None
    model: str | None
    version: int | None
    artifact: dict[str, str | None]
    framework: dict[str, str | None]
    metrics: dict[str, Any]
    phase: str | None
    stage: str | None
    keyMetric: str | None
    created: str | None
    createdBy: str | None
    registeredBy: str | None


class RunLink(TypedDict):
    """The TrainingRun that produced the version; ``found`` is False when it has been deleted."""

    name: str
    found: bool
    phase: str | None
    image: str | None
    imageDigest: str | None
    codeVersion: str | None
    datasetUri: str | None
    datasetHash: str | None
    params: dict[str, Any]
    startTime: str | None
    completionTime: str | None


class PolicyLink(TypedDict):
    """The DriftPolicy that started the run; ``found`` is False when it has been deleted."""

    found: bool
    phase: str | None


class TriggerLink(TypedDict):
    """What started the run; ``policy`` only for a named DriftPolicy trigger."""

    kind: str | None
    name: str | None
    evidence: dict[str, Any]
    policy: PolicyLink | None


class LineageReport(TypedDict):
    """The whole chain, ready for ``json.dumps``; a link is None when the version recorded none."""

    modelVersion: VersionLink
    trainingRun: RunLink | None
    trigger: TriggerLink | None


def training_run_name(version: Object) -> str | None:
    """The TrainingRun the version's lineage names, if any."""
    return _str(_get(version, "spec", "lineage", "trainingRun"))


def trigger_of(version: Object, run: Object | None) -> Object | None:
    """What started the run: as the version recorded it, else as the run says."""
    trigger = _get(version, "spec", "lineage", "trigger") or _get(run, "spec", "triggeredBy")
    return trigger if isinstance(trigger, Mapping) else None


def drift_policy_name(version: Object, run: Object | None) -> str | None:
    """The DriftPolicy to look up: the trigger's name when a DriftPolicy started the run."""
    trigger = trigger_of(version, run)
    if trigger is None or trigger.get("kind") != TriggerKind.DRIFT_POLICY:
        return None
    return _str(trigger.get("name"))


def build_lineage(version: Object, run: Object | None, policy: Object | None) -> LineageReport:
    """The lineage of ``version``, given its TrainingRun and DriftPolicy as read (None when not found)."""
    recorded = _get(version, "spec", "lineage") or {}
    run_name = training_run_name(version)
    run_link: RunLink | None = None
    if run_name is not None:
        run_link = {
            "name": run_name,
            "found": run is not None,
            "phase": _str(_get(run, "status", "phase")),
            "image": _str(recorded.get("image") or _get(run, "spec", "image")),
            "imageDigest": _str(recorded.get("imageDigest")),
            "codeVersion": _str(recorded.get("codeVersion")),
            "datasetUri": _str(recorded.get("datasetUri") or _get(run, "spec", "dataset", "uri")),
            "datasetHash": _str(
                recorded.get("datasetHash")
                or _get(run, "status", "datasetHash")
                or _get(run, "spec", "dataset", "hash")
            ),
            # The version's params are the ones it was trained with (a sweep's best trial), not the run's.
            "params": dict(recorded.get("params") or _get(run, "spec", "params") or {}),
            "startTime": _str(_get(run, "status", "startTime")),
            "completionTime": _str(_get(run, "status", "completionTime")),
        }
    trigger = trigger_of(version, run)
    status = _version_status(version)
    trigger_link: TriggerLink | None = None
    if trigger is not None:
        named_policy = drift_policy_name(version, run) is not None
        trigger_link = {
            "kind": _str(trigger.get("kind")),
            "name": _str(trigger.get("name")),
            "evidence": dict(trigger.get("evidence") or {}),
            "policy": (
                {"found": policy is not None, "phase": _str(_get(policy, "status", "phase"))}
                if named_policy
                else None
            ),
        }
    return {
        "modelVersion": {
            "name": str(_get(version, "metadata", "name")),
            "namespace": _str(_get(version, "metadata", "namespace")),
            "model": _str(_get(version, "spec", "modelName")),
            "version": _get(version, "spec", "version"),
            "artifact": {
                "uri": _str(_get(version, "spec", "artifact", "uri")),
                "digest": _str(_get(version, "spec", "artifact", "digest")),
            },
            "framework": {
                "name": _str(_get(version, "spec", "framework", "name")),
                "version": _str(_get(version, "spec", "framework", "version")),
            },
            "metrics": dict(_get(version, "spec", "metrics") or {}),
            "phase": _str(status.phase),
            "stage": _str(status.stage),
            "keyMetric": _str(status.key_metric),
            "created": _str(_get(version, "metadata", "creationTimestamp")),
            "createdBy": _str(_get(version, "spec", "createdBy")),
            # Set by the API server itself (manifests/admission/registered-by.yaml): the authenticated user.
            "registeredBy": _str(_get(version, "metadata", "annotations", ANNOTATION_REGISTERED_BY)),
        },
        "trainingRun": run_link,
        "trigger": trigger_link,
    }


def _version_status(version: Object) -> ModelVersionStatus:
    """The version's status, parsed; an empty one when it has none or it cannot be read."""
    try:
        return ModelVersionStatus.model_validate(version.get("status") or {})
    except pydantic.ValidationError:
        return ModelVersionStatus()


def _get(obj: Object | None, *path: str) -> Any:
    """The value at ``path`` in nested mappings, or None where any step is missing."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
