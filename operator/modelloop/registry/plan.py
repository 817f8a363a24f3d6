"""One model's reconcile, decided: validate new versions, apply stage requests, label, retain, summarize.

The controller hands in what it observed of one model (its versions, each status parsed once, its
ModelPolicy, what its InferenceServices serve and roll out) and applies the plan that comes out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from modelloop.api import (
    ModelPolicyPhase,
    ModelPolicySpec,
    ModelPolicyStatus,
    ModelStage,
    ModelVersionPhase,
    ModelVersionSpec,
    ModelVersionStatus,
    StageRequest,
    StageRequestResult,
)
from modelloop.api.meta import Condition
from modelloop.conditions import ConditionValue, with_condition
from modelloop.naming import ANNOTATION_REQUESTED_STAGE, ANNOTATION_STAGE_REASON, LABEL_MODEL, LABEL_STAGE
from modelloop.reasons import INVALID_SPEC, READY, describe_validation_error
from modelloop.registry.retention import versions_to_delete
from modelloop.registry.serving import ServedModel, serving_changes
from modelloop.registry.stages import StageChange, champion_among, change_stage, enter_stage, parse_stage
from modelloop.registry.validation import Champion, format_key_metric, validate_version, validation_metrics

RETENTION = "Retention"  # the reason of the event that reports a deletion by retention
_DECIDED = (ModelVersionPhase.VALIDATED, ModelVersionPhase.REJECTED)
_SHORT_TEXT = 1024  # the CRD's bound on a stage request's fields


@dataclass(frozen=True)
class PlannedEvent:
    """An event to post on one of the model's objects."""

    kind: str
    name: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class ParsedVersion:
    """One ModelVersion as a pass reads it: the object as stored (its metadata and spec are read from it)
    and its status, parsed once."""

    obj: Mapping[str, Any]
    status: ModelVersionStatus

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def number(self) -> int:
        return int(self.obj["spec"]["version"])


@dataclass
class ModelPlan:
    """What to write for one model; each field holds only what changed."""

    statuses: dict[str, ModelVersionStatus] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    deletions: list[Mapping[str, Any]] = field(default_factory=list)
    events: list[PlannedEvent] = field(default_factory=list)
    policy_status: ModelPolicyStatus | None = None


def plan_model(
    versions: Sequence[ParsedVersion],
    policy: Mapping[str, Any] | None,
    serving: Collection[int],
    served: Sequence[ServedModel],
    keep_archived_default: int,
    now: datetime,
    unreadable: Sequence[Mapping[str, Any]] = (),
) -> ModelPlan:
    """Decide one model's writes.

    ``versions`` are the model's ModelVersions as last written, with their statuses parsed; ``serving`` the
    version numbers InferenceServices serve or name (kept by retention); ``served`` what each
    InferenceService reports serving, from which the stages a rollout implies are derived (after the
    users' annotation requests). ``unreadable`` are the model's versions whose status cannot be read (the
    controller refuses them): left as they are, never taken for the Champion nor deleted, but counted.
    """
    now = now.replace(microsecond=0)  # status times are whole seconds, as Kubernetes writes them
    plan = ModelPlan()
    ordered = sorted(versions, key=lambda v: v.number)
    # Statuses are replaced, never changed in place: what a pass leaves as it was stays the very object.
    statuses = {v.name: v.status for v in ordered}
    metrics = {v.name: v.obj["spec"].get("metrics") or {} for v in ordered}
    policy_spec, policy_problem = _policy_spec(policy)

    for version in ordered:
        if statuses[version.name].phase not in _DECIDED:
            statuses[version.name] = _validated(
                version, statuses, metrics, policy_spec, policy_problem, plan, now
            )

    for change, name, value in _annotation_requests(ordered, statuses):
        if change is None:
            refused, message = (
                True,
                f"{value!r} is not a stage: use Candidate, Challenger, Champion or Archived",
            )
            plan.events.append(PlannedEvent("ModelVersion", name, "Warning", "StageRefused", message))
        else:
            refused, message = _change_stage(change, statuses, plan, now)
        requested = statuses[name].model_copy()
        requested.stage_request = StageRequest(
            stage=value[:_SHORT_TEXT],
            result=StageRequestResult.REFUSED if refused else StageRequestResult.APPLIED,
            message=message[:_SHORT_TEXT],
            time=now,
        )
        statuses[name] = requested
    names = {v.number: v.name for v in ordered}
    for implied in serving_changes(served, names, statuses):
        if implied.change is not None:
            _change_stage(implied.change, statuses, plan, now)
        recorded = statuses[implied.name].model_copy()
        recorded.serving_stage = implied.record
        statuses[implied.name] = recorded

    keep = _keep_archived(policy_spec, keep_archived_default)
    objects = [*(v.obj for v in ordered), *unreadable]
    plan.deletions = versions_to_delete(objects, statuses, keep, serving)
    for gone in plan.deletions:
        name, model = gone["metadata"]["name"], gone["spec"]["modelName"]
        message = f"Deleted {name}: model {model} keeps its {keep} newest archived versions."
        plan.events.append(PlannedEvent("ModelVersion", name, "Normal", RETENTION, message))

    for version in ordered:
        status = statuses[version.name]
        if status is not version.status and status != version.status:
            plan.statuses[version.name] = status
        wanted = _labels(version.obj, status)
        labels = version.obj["metadata"].get("labels") or {}
        if any(labels.get(key) != value for key, value in wanted.items()):
            plan.labels[version.name] = wanted

    if policy is not None:
        deleted = {v["metadata"]["name"] for v in plan.deletions}
        previous_policy = _policy_status_as_read(policy)
        policy_status = _policy_status(
            policy, previous_policy, objects, statuses, deleted, policy_problem, now
        )
        if policy_status != previous_policy:
            plan.policy_status = policy_status
        if previous_policy.phase != policy_status.phase:
            [ready] = [c for c in policy_status.conditions if c.type == READY]
            event_type = "Normal" if policy_problem is None else "Warning"
            name = policy["metadata"]["name"]
            plan.events.append(
                PlannedEvent("ModelPolicy", name, event_type, ready.reason, ready.message or "")
            )
    return plan


def _change_stage(
    change: StageChange, statuses: dict[str, ModelVersionStatus], plan: ModelPlan, now: datetime
) -> tuple[bool, str]:
    """Apply one stage change to ``statuses``, with its events; return (refused, message)."""
    outcome = change_stage(statuses, change, now)
    statuses.update(outcome.statuses)
    if outcome.refused:
        plan.events.append(
            PlannedEvent("ModelVersion", change.name, "Warning", "StageRefused", outcome.message)
        )
    for name, status in outcome.statuses.items():
        entry = status.history[-1]
        message = f"{entry.stage.value}: {entry.message}" if name != change.name else outcome.message
        plan.events.append(PlannedEvent("ModelVersion", name, "Normal", "StageChanged", message))
    return outcome.refused, outcome.message


def _validated(
    version: ParsedVersion,
    statuses: Mapping[str, ModelVersionStatus],
    metrics: Mapping[str, Mapping[str, float]],
    policy_spec: ModelPolicySpec | None,
    policy_problem: str | None,
    plan: ModelPlan,
    now: datetime,
) -> ModelVersionStatus:
    """The status of a version validated now (or still Pending, with the reason it cannot be)."""
    name = version.name
    status = statuses[name]
    generation = int(version.obj["metadata"].get("generation") or 1)
    try:
        spec = ModelVersionSpec.model_validate(version.obj["spec"], context={"name": name})
    except pydantic.ValidationError as error:
        return _pending(status, name, generation, INVALID_SPEC, describe_validation_error(error), plan, now)
    if policy_problem is not None:
        return _pending(status, name, generation, "InvalidModelPolicy", policy_problem, plan, now)
    if status.stage is None:
        by = f" by {spec.created_by}" if spec.created_by else ""
        status = enter_stage(status, ModelStage.CANDIDATE, "Registered", f"Registered{by}.", now)

    champion_name = champion_among({n: s for n, s in statuses.items() if n != name})
    champion = None if champion_name is None else Champion(champion_name, metrics.get(champion_name) or {})
    policy_validation = policy_spec.validation if policy_spec else None
    verdict = validate_version(
        spec.metrics, spec.validation, policy_validation, champion, spec.champion_evaluation
    )
    validated = verdict.phase == ModelVersionPhase.VALIDATED
    decided = status.model_copy()
    decided.phase, decided.reason, decided.message = verdict.phase, verdict.reason, verdict.message
    decided.checks = verdict.checks
    decided.validation_time = now
    decided.compared_with = verdict.compared_with
    decided.key_metric = format_key_metric(
        [*validation_metrics(spec.validation), *validation_metrics(policy_validation)], spec.metrics
    )
    decided.observed_generation = generation
    decided.conditions = _ready(
        status, "True" if validated else "False", verdict.reason, verdict.message, generation, now
    )
    event_type = "Normal" if validated else "Warning"
    plan.events.append(PlannedEvent("ModelVersion", name, event_type, verdict.reason, verdict.message))
    return decided


def _pending(
    status: ModelVersionStatus,
    name: str,
    generation: int,
    reason: str,
    message: str,
    plan: ModelPlan,
    now: datetime,
) -> ModelVersionStatus:
    """A version that cannot be validated yet: Pending, Ready False, saying what to fix."""
    pending = status.model_copy()
    pending.phase, pending.reason, pending.message = ModelVersionPhase.PENDING, reason, message
    pending.observed_generation = generation
    pending.conditions = _ready(status, "False", reason, message, generation, now)
    if status.reason != reason or status.message != message:
        plan.events.append(PlannedEvent("ModelVersion", name, "Warning", reason, message))
    return pending


def _ready(
    status: ModelVersionStatus,
    ready: ConditionValue,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    return with_condition(
        status.conditions,
        type_=READY,
        status=ready,
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )


def _annotation(version: Mapping[str, Any], key: str) -> str | None:
    value = (version["metadata"].get("annotations") or {}).get(key)
    return None if value is None else str(value).strip()


def _annotation_requests(
    versions: Sequence[ParsedVersion], statuses: dict[str, ModelVersionStatus]
) -> list[tuple[StageChange | None, str, str]]:
    """The stage requests users made through annotations and that were not handled yet, oldest version
    first (so that, were several versions asked to be Champion at once, the newest ends up Champion).

    A request is handled once per value: when the annotation is removed, its record goes too, so that
    setting the same value again is a new request. Returns (change or None when the value names no
    stage, the version's name, the annotation's value).
    """
    requests: list[tuple[StageChange | None, str, str]] = []
    for version in versions:
        name = version.name
        value = _annotation(version.obj, ANNOTATION_REQUESTED_STAGE)
        handled = statuses[name].stage_request
        if value is None:
            if handled is not None:
                cleared = statuses[name].model_copy()
                cleared.stage_request = None
                statuses[name] = cleared
            continue
        if (handled is not None and handled.stage == value) or statuses[name].phase not in _DECIDED:
            continue  # handled already, or wait: a version is promoted only once it is validated
        stage = parse_stage(value)
        why = _annotation(version.obj, ANNOTATION_STAGE_REASON)
        message = f"Requested through the {ANNOTATION_REQUESTED_STAGE} annotation" + (
            f": {why}" if why else "."
        )
        change = None if stage is None else StageChange(name, stage, "Requested", message)
        requests.append((change, name, value))
    return requests


def _labels(version: Mapping[str, Any], status: ModelVersionStatus) -> dict[str, str]:
    """The labels that make a model's versions easy to select, e.g. modelloop.dev/stage=champion."""
    wanted = {LABEL_MODEL: str(version["spec"]["modelName"])}
    if status.stage is not None:
        wanted[LABEL_STAGE] = status.stage.value.lower()
    return wanted


def _policy_spec(policy: Mapping[str, Any] | None) -> tuple[ModelPolicySpec | None, str | None]:
    if policy is None:
        return None, None
    try:
        return ModelPolicySpec.model_validate(
            policy.get("spec") or {}, context={"name": policy["metadata"]["name"]}
        ), None
    except pydantic.ValidationError as error:
        name = policy["metadata"]["name"]
        return None, f"ModelPolicy {name} is invalid: {describe_validation_error(error)}"


def _keep_archived(policy_spec: ModelPolicySpec | None, default: int) -> int:
    if policy_spec is not None and policy_spec.retention is not None:
        return policy_spec.retention.keep_archived
    return default


def _policy_status_as_read(policy: Mapping[str, Any]) -> ModelPolicyStatus:
    """The ModelPolicy's status as read; one that cannot be read is replaced whole (the operator derives
    all of it, from the model's versions)."""
    try:
        return ModelPolicyStatus.model_validate(policy.get("status") or {})
    except pydantic.ValidationError:
        return ModelPolicyStatus()


def _policy_status(
    policy: Mapping[str, Any],
    previous: ModelPolicyStatus,
    versions: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, ModelVersionStatus],
    deleted: Collection[str],
    problem: str | None,
    now: datetime,
) -> ModelPolicyStatus:
    """The ModelPolicy's status: the model at a glance."""
    generation = int(policy["metadata"].get("generation") or 1)
    kept = [v for v in versions if v["metadata"]["name"] not in deleted]
    if problem is None:
        reason = "Active"
        message = f"Applies to the {len(kept)} versions of model {policy['metadata']['name']}."
    else:
        reason, message = INVALID_SPEC, problem
    return ModelPolicyStatus(
        phase=ModelPolicyPhase.ACTIVE if problem is None else ModelPolicyPhase.INVALID,
        champion=champion_among({n: s for n, s in statuses.items() if n not in deleted}),
        versions=len(kept),
        latest_version=max((int(v["spec"]["version"]) for v in versions), default=0),
        observed_generation=generation,
        conditions=with_condition(
            previous.conditions,
            type_=READY,
            status="True" if problem is None else "False",
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        ),
    )
