"""TrainingRun: one training attempt (or sweep) as Kubernetes Jobs, followed to the end.

Level-triggered: any event of a run, of its Jobs or of their pods reconciles the run from kopf's
in-memory indexes (no list calls per event); a reconcile that fails is retried after a delay. The
decisions are pure (``modelloop.training.plan``); this module reads, applies the plan, and reports.
Reconciles of one run are serialized and coalesced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from modelloop import kube
from modelloop.api import GROUP, TRAINING_RUN, VERSION, TrainingRunPhase, TrainingRunSpec
from modelloop.conditions import ConditionStatus, set_condition
from modelloop.controllers.reporting import post_event
from modelloop.controllers.scheduling import KeyedReconciler
from modelloop.naming import ANNOTATION_RUN_UID, LABEL_TRAINING_RUN
from modelloop.objects import slim_object
from modelloop.review import INVALID_SPEC, describe_validation_error
from modelloop.settings import Settings
from modelloop.training.observe import IMAGE_PROBLEMS, slim_job, slim_pod
from modelloop.training.plan import RunPlan, plan_run
from modelloop.training.register import render_model_version

RunKey = tuple[str, str]
PLURAL = TRAINING_RUN.plural
_WARNING_REASONS = {INVALID_SPEC, "Unschedulable", "ResultMissing", *IMAGE_PROBLEMS}
_STATUS_KEYS = (
    "phase", "jobName", "startTime", "completionTime", "metrics", "keyMetric", "artifactUri", "datasetHash",
    "modelVersion", "trials", "bestTrial", "reason", "message", "observedGeneration", "conditions",
)  # fmt: skip

logger = logging.getLogger(__name__)
# Jobs created but not yet seen in the index: a reconcile right after a create must not plan them again.
_created: dict[RunKey, dict[str, dict[str, Any]]] = {}
# The status each run was last given by this process.
_written: dict[RunKey, dict[str, Any]] = {}
RETRY_SECONDS = 10.0
DEBOUNCE_SECONDS = 0.2


# Index functions are async: kopf would run plain functions in a thread, once per event.
@kopf.index(GROUP, VERSION, PLURAL)
async def training_runs(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """Every TrainingRun by (namespace, name)."""
    return {(namespace or "", name): slim_object(body)}


@kopf.index("batch", "v1", "jobs", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def training_jobs(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """The Jobs of each TrainingRun."""
    return {(namespace or "", labels[LABEL_TRAINING_RUN]): slim_job(body)}


@kopf.index("v1", "pods", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def training_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """The pods of each TrainingRun's Jobs."""
    return {(namespace or "", labels[LABEL_TRAINING_RUN]): slim_pod(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_training_run(type: str, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    if type == "DELETED":
        _forget((namespace or "", name))
        return
    schedule_reconcile((namespace or "", name), memo, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
@kopf.on.event("v1", "pods", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def on_training_workload(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    schedule_reconcile((namespace or "", labels[LABEL_TRAINING_RUN]), memo, kwargs)


async def _reconcile(key: RunKey, memo: Any, indexes: Mapping[str, Any]) -> None:
    run = _one(indexes["training_runs"], key)
    if run is None or run["metadata"].get("deletionTimestamp"):
        return
    settings: Settings = memo.settings
    await _reconcile_run(key, run, indexes, settings)


reconciler = KeyedReconciler("TrainingRun", _reconcile, debounce=DEBOUNCE_SECONDS, retry=RETRY_SECONDS)


def schedule_reconcile(key: RunKey, memo: Any, indexes: Mapping[str, Any], delay: float = 0.0) -> None:
    """Reconcile a run soon, in the background (see ``KeyedReconciler``)."""
    reconciler.schedule(key, memo, indexes, delay)


async def _reconcile_run(
    key: RunKey, run: dict[str, Any], indexes: Mapping[str, Any], settings: Settings
) -> None:
    # The index may not show our own last write yet: what we wrote last is the newer truth (the operator is
    # status's only writer). Without this, a reconcile racing its own write would write the same again.
    previous = _written.get(key) or run.get("status") or {}
    generation = int(run["metadata"].get("generation") or 1)
    try:
        spec = TrainingRunSpec.model_validate(run["spec"])
    except pydantic.ValidationError as error:
        status = {
            "phase": previous.get("phase") or TrainingRunPhase.PENDING.value,
            "reason": INVALID_SPEC,
            "message": describe_validation_error(error),
        }
        await _write_status(key, run, previous, status, generation)
        return

    uid = run["metadata"]["uid"]
    jobs = {
        job["metadata"]["name"]: job
        for job in _all(indexes["training_jobs"], key)
        if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_UID) == uid
    }
    created = _created.setdefault(key, {})
    for name in [n for n in created if n in jobs]:
        del created[name]
    pods = [
        pod
        for pod in _all(indexes["training_pods"], key)
        if (pod["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_UID) == uid
    ]
    plan = plan_run(run, spec, {**created, **jobs}, pods, settings.artifact_root)

    for manifest in plan.jobs_to_create:
        # A new single-run Job is announced by the status transition (reason JobCreated); trial Jobs by an
        # event each.
        if await asyncio.to_thread(kube.create_job, manifest) and spec.sweep is not None:
            post_event(run, "Normal", "TrialStarted", f"Created Job {manifest['metadata']['name']}.")
        created[manifest["metadata"]["name"]] = manifest

    status = dict(plan.status)
    if previous.get("modelVersion"):
        status["modelVersion"] = previous["modelVersion"]
    elif plan.registration is not None:
        status["modelVersion"] = await _register(run, spec, plan)
    await _write_status(key, run, previous, status, generation)


async def _register(run: Mapping[str, Any], spec: TrainingRunSpec, plan: RunPlan) -> str:
    """The name of the run's ModelVersion, registering it unless an earlier pass already did."""
    assert plan.registration is not None
    meta = run["metadata"]
    existing = [
        mv
        for mv in await asyncio.to_thread(
            kube.list_objects, "modelversions", meta["namespace"], f"{LABEL_TRAINING_RUN}={meta['name']}"
        )
        if (mv["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_UID) == meta["uid"]
    ]
    if existing:
        return str(existing[0]["metadata"]["name"])
    registration = plan.registration
    created = await asyncio.to_thread(
        kube.register_model_version,
        meta["namespace"],
        spec.output.model_name,
        lambda version: render_model_version(
            run, spec, registration.result, version, registration.params, registration.image_digest
        ),
    )
    name = str(created["metadata"]["name"])
    post_event(run, "Normal", "ModelRegistered", f"Registered ModelVersion {name}.")
    return name


async def _write_status(
    key: RunKey, run: Mapping[str, Any], previous: Mapping[str, Any], status: dict[str, Any], generation: int
) -> None:
    phase = status["phase"]
    ready: ConditionStatus = "True" if phase == TrainingRunPhase.SUCCEEDED.value else "False"
    status["observedGeneration"] = generation
    status["conditions"] = set_condition(
        previous.get("conditions"),
        type_="Ready",
        status=ready,
        reason=str(status.get("reason") or phase),
        message=str(status.get("message") or ""),
        observed_generation=generation,
    )
    desired = {k: status.get(k) for k in _STATUS_KEYS}
    if all(previous.get(k) == v for k, v in desired.items()):
        return
    await asyncio.to_thread(kube.patch_status, PLURAL, key[0], key[1], desired)
    _written[key] = desired
    # Events mark what a person reading `kubectl describe` needs: how the run ended, or why it is stuck.
    # (Its start is in status and in the Job's and pod's own events: one write fewer per run.)
    reason = str(status.get("reason") or phase)
    warning = phase == TrainingRunPhase.FAILED.value or reason in _WARNING_REASONS
    ended = previous.get("phase") != phase and phase in (
        TrainingRunPhase.SUCCEEDED.value,
        TrainingRunPhase.FAILED.value,
    )
    if ended or (warning and previous.get("reason") != reason):
        post_event(run, "Warning" if warning else "Normal", reason, str(status.get("message") or phase))


def _one(index: Any, key: RunKey) -> dict[str, Any] | None:
    return next(iter(index.get(key, ())), None)


def _all(index: Any, key: RunKey) -> list[dict[str, Any]]:
    return list(index.get(key, ()))


def _forget(key: RunKey) -> None:
    _created.pop(key, None)
    _written.pop(key, None)
    reconciler.forget(key)
