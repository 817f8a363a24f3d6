"""A ModelVersion's lineage: the version ← the TrainingRun that produced it ← what started that run.

Built from the objects as the API server returns them (plain dicts). The run and the DriftPolicy may be
gone by now; the version's own ``spec.lineage``, recorded when it was registered, then stands in for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

from modelloop.api import TriggerKind
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


class Lineage(TypedDict):
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


def build_lineage(version: Object, run: Object | None, policy: Object | None) -> Lineage:
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
            "phase": _str(_get(version, "status", "phase")),
            "stage": _str(_get(version, "status", "stage")),
            "keyMetric": _str(_get(version, "status", "keyMetric")),
            "created": _str(_get(version, "metadata", "creationTimestamp")),
            "createdBy": _str(_get(version, "spec", "createdBy")),
            # Set by the API server itself (manifests/admission/registered-by.yaml): the authenticated user.
            "registeredBy": _str(_get(version, "metadata", "annotations", ANNOTATION_REGISTERED_BY)),
        },
        "trainingRun": run_link,
        "trigger": trigger_link,
    }


def render_lineage(lineage: Lineage) -> str:
    """The lineage as text: one indented block per link, newest first; unknown values as ``-``."""
    mv = lineage["modelVersion"]
    where = f"  (namespace {mv['namespace']})" if mv["namespace"] else ""
    lines = [f"ModelVersion {mv['name']}{where}"]
    lines += _fields(
        ("model", _joined(mv["model"], f"version {mv['version']}" if mv["version"] is not None else None)),
        ("artifact", _joined(mv["artifact"]["uri"], _parenthesized(mv["artifact"]["digest"]))),
        ("framework", _joined(mv["framework"]["name"], mv["framework"]["version"])),
        ("metrics", _pairs(mv["metrics"])),
        ("phase", mv["phase"]),
        ("stage", mv["stage"]),
        ("created", _joined(mv["created"], f"by {mv['createdBy']}" if mv["createdBy"] else None)),
        (
            "registered",
            mv["registeredBy"] and f"by {mv['registeredBy']} (as the API server authenticated it)",
        ),
    )
    run = lineage["trainingRun"]
    if run is None:
        lines.append("← TrainingRun: not recorded")
    else:
        deleted = "" if run["found"] else "  (deleted; as recorded by the ModelVersion)"
        image = run["image"] and (
            f"{run['image']}@{run['imageDigest']}" if run["imageDigest"] else run["image"]
        )
        lines.append(f"← TrainingRun {run['name']}{deleted}")
        lines += _fields(
            ("phase", run["phase"] if run["found"] else "not found"),
            ("image", image),
            ("code", run["codeVersion"]),
            ("dataset", _joined(run["datasetUri"], _parenthesized(run["datasetHash"]))),
            ("params", _pairs(run["params"])),
            ("started", run["startTime"]),
            ("completed", run["completionTime"]),
        )
    trigger = lineage["trigger"]
    if trigger is None:
        lines.append("← triggered by: not recorded")
        return "\n".join(lines) + "\n"
    policy = trigger["policy"]
    deleted = "  (deleted)" if policy is not None and not policy["found"] else ""
    lines.append(f"← triggered by {_joined(trigger['kind'], trigger['name'])}{deleted}")
    lines += _fields(("evidence", _pairs(trigger["evidence"])))
    if policy is not None:
        lines += _fields(("policy", policy["phase"] if policy["found"] else "not found"))
    return "\n".join(lines) + "\n"


def _fields(*pairs: tuple[str, str | None]) -> list[str]:
    return [f"    {f'{label}:':<11} {value or '-'}" for label, value in pairs]


def _joined(*parts: str | None) -> str | None:
    present = [part for part in parts if part]
    return " ".join(present) if present else None


def _parenthesized(text: str | None) -> str | None:
    return f"({text})" if text else None


def _pairs(values: Mapping[str, Any]) -> str | None:
    """``a=1, b=x``, sorted by key; values other than strings as JSON (true, 0.95)."""
    shown = (
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in sorted(values.items())
    )
    return ", ".join(shown) or None


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
