"""The reconcile of an InferenceService as a pure function: from its spec, its status, the model's
versions and what the backend reports, the status to write and the objects to apply.

``plan_service`` decides; ``modelloop.controllers.inferenceservice`` reads the cluster (the backend's
objects, Prometheus), calls it, writes the status once and applies the manifests. Every outcome the
controller once decided itself (a backend that cannot change, a version that is gone, a traffic split a
backend cannot route) is decided here and unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelloop.api import InferenceServicePhase, InferenceServiceSpec, PauseReason
from modelloop.api.inferenceservice import BackendState, InferenceServiceStatus
from modelloop.conditions import ConditionValue, with_condition
from modelloop.serving.backend import InvalidTraffic, ServiceContext, ServingBackend, VersionInfo
from modelloop.serving.rollout import Decision, MetricResult, Observed, Serving, decide, target_version


@dataclass(frozen=True)
class ServicePlan:
    """What the controller does now: write ``status`` (once), then apply ``manifests``; post
    ``decision``'s events; look again after ``decision.requeue_after``."""

    status: InferenceServiceStatus
    decision: Decision
    manifests: list[dict[str, Any]] = field(default_factory=list)


def backend_change(spec: InferenceServiceSpec, previous: InferenceServiceStatus) -> str | None:
    """Why the service cannot follow its spec when spec.backend changed from the one it is deployed on
    (the CRD refuses the change; a CRD without that rule must not leave two backends serving); None when
    it did not change."""
    deployed_on = previous.backend
    if deployed_on is None or deployed_on == spec.backend:
        return None
    return (
        f"spec.backend changed from {deployed_on.value} to {spec.backend.value}, which this service cannot "
        f"follow: it goes on serving on {deployed_on.value}. Create a new InferenceService instead."
    )


def plan_service(
    spec: InferenceServiceSpec,
    previous: InferenceServiceStatus,
    versions: Iterable[Mapping[str, Any]],
    context: ServiceContext,
    backend: ServingBackend,
    current: Mapping[str, Any],
    observed: Observed,
    action: str | None,
    measurements: list[MetricResult],
    now: datetime,
    generation: int,
    backend_status: Mapping[str, Any] | None = None,
) -> ServicePlan:
    """Decide one pass of the service ``context`` on ``backend``.

    ``versions`` are the model's ModelVersions, ``current`` the backend's objects as read (by name; None:
    absent), ``observed`` what the backend reports of them, ``action`` the rollout-action annotation as
    written, ``measurements`` the analysis measured for this pass (if it was due) and ``backend_status``
    the status fields the backend sets itself (``ServingBackend.own_status``, e.g. KServe's deployment
    mode).
    """
    new_action = action if action is not None and action != previous.action else None
    decision = decide(
        spec, previous, target_version(spec, list(versions)), observed, now, new_action, measurements
    )
    status = decision.status.model_copy()
    if action is None and previous.action:
        status.action = None  # the annotation is gone: the same value again is a new request
    manifests: list[dict[str, Any]] = []
    missing = missing_version(decision.serving, context)
    if missing is not None:
        status.phase, status.reason = InferenceServicePhase.DEGRADED, "VersionMissing"
        status.message = (
            f"ModelVersion {missing} of model {spec.model.name} no longer exists: register it again."
        )
    elif decision.serving is not None:
        try:
            manifests = backend.render(context, decision.serving, current)
        except InvalidTraffic as error:  # checked before every write; a bug, never a half-routed write
            status.phase, status.reason = InferenceServicePhase.DEGRADED, "InvalidTraffic"
            status.message = f"{error}; nothing was written."
    status.backend = spec.backend
    status.backend_state = backend_state(observed)
    status = status.model_copy(update=dict(backend_status or {}))
    return ServicePlan(with_conditions(status, observed, generation, now), decision, manifests)


def version_infos(versions: Iterable[Mapping[str, Any]]) -> dict[int, VersionInfo]:
    """What a backend needs of each ModelVersion (by version number); objects without a number are
    skipped."""
    infos: dict[int, VersionInfo] = {}
    for version in versions:
        spec = version.get("spec") or {}
        number = spec.get("version")
        if not isinstance(number, int):
            continue
        artifact = spec.get("artifact") or {}
        infos[number] = VersionInfo(
            number,
            str(spec.get("modelName")),
            str(artifact.get("uri")),
            str((spec.get("framework") or {}).get("name") or "sklearn"),
            str(artifact["digest"]) if artifact.get("digest") else None,
        )
    return infos


def backend_state(observed: Observed) -> BackendState | None:
    if observed.state is None and observed.replicas is None and observed.available_replicas is None:
        return None
    return BackendState(
        state=observed.state, replicas=observed.replicas, available_replicas=observed.available_replicas
    )


def missing_version(serving: Serving | None, context: ServiceContext) -> int | None:
    """A version to serve that no ModelVersion records any more, if any."""
    if serving is None:
        return None
    for number in (serving.stable, serving.canary):
        if number is not None and number not in context.versions:
            return number
    return None


def with_conditions(
    status: InferenceServiceStatus, observed: Observed, generation: int, now: datetime
) -> InferenceServiceStatus:
    """Ready says whether the backend serves the stable version; Progressing whether a rollout moves
    (False with the reason while it is paused, held for good or over); observedGeneration the spec
    acted on. ``status`` keeps its conditions from before this pass; a new status is returned."""
    ready: ConditionValue
    if observed.ready:
        ready, reason, message = "True", "Serving", f"Serving version {status.stable_version}."
    elif status.stable_version is None:
        ready, reason, message = "False", status.reason or "Pending", status.message or ""
    else:
        ready, reason = "False", "BackendNotReady"
        message = observed.message or "The backend does not report the service ready yet."
    conditions = with_condition(
        status.conditions,
        type_="Ready",
        status=ready,
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    phase = status.phase
    progressing: ConditionValue = "True" if phase == InferenceServicePhase.PROGRESSING else "False"
    why = status.reason or (phase.value if phase else "Pending")
    if phase == InferenceServicePhase.PAUSED:
        why = "AnalysisInconclusive" if status.pause_reason == PauseReason.INCONCLUSIVE else "Paused"
    conditions = with_condition(
        conditions,
        type_="Progressing",
        status=progressing,
        reason=why,
        message=status.message or "",
        observed_generation=generation,
        now=now,
    )
    return status.model_copy(update={"conditions": conditions, "observed_generation": generation})
