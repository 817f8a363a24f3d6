"""ModelVersion and ModelPolicy: the model registry, reconciled one model at a time.

Any event of a model's versions, of its ModelPolicy, or of an InferenceService that serves it reconciles
the whole model from kopf's in-memory indexes: new versions are validated (against the champion, too),
stage requests are applied, labels follow the stage, retention removes what it may, and the ModelPolicy's
status summarizes the model. The decisions are pure (``modelloop.registry.plan``); this module reads,
applies the plan, and reports. Neither kind gets kopf's annotations or finalizers: the objects stay as
their authors wrote them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from modelloop import kube
from modelloop.api import GROUP, INFERENCE_SERVICE, MODEL_POLICY, MODEL_VERSION, VERSION, ModelStage
from modelloop.conditions import utc_now
from modelloop.controllers.reporting import post_event
from modelloop.controllers.scheduling import KeyedReconciler
from modelloop.naming import ANNOTATION_REQUESTED_STAGE, ANNOTATION_STAGE_REASON
from modelloop.objects import slim_object
from modelloop.registry.plan import RETENTION, ModelPlan, plan_model
from modelloop.registry.stages import StageChange
from modelloop.settings import Settings

ModelKey = tuple[str, str]  # (namespace, model name)
ObjectKey = tuple[str, str]  # (namespace, object name)

logger = logging.getLogger(__name__)
# What this process last wrote into each object's status, with the object's uid: the indexes may not show
# our own last write yet, and the operator is the only writer of these statuses.
_written: dict[ObjectKey, tuple[str, dict[str, Any]]] = {}
# Stage changes asked for by the serving controller, applied by the model's next reconcile.
_requests: dict[ModelKey, list[StageChange]] = {}
_ANNOTATIONS = (ANNOTATION_REQUESTED_STAGE, ANNOTATION_STAGE_REASON)


@kopf.index(GROUP, VERSION, MODEL_VERSION.plural)
async def model_versions(namespace: str | None, body: kopf.Body, **_: Any) -> dict[ModelKey, dict[str, Any]]:
    """Every ModelVersion, by (namespace, model name)."""
    return {(namespace or "", str(body["spec"]["modelName"])): slim_object(body, _ANNOTATIONS)}


@kopf.index(GROUP, VERSION, MODEL_POLICY.plural)
async def model_policies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[ModelKey, dict[str, Any]]:
    """Every ModelPolicy, by (namespace, model name): a policy is named after its model."""
    return {(namespace or "", name): slim_object(body, _ANNOTATIONS)}


@kopf.index(GROUP, VERSION, INFERENCE_SERVICE.plural)
async def served_versions(
    namespace: str | None, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[ModelKey, list[int]]:
    """The version numbers each InferenceService serves or names, by (namespace, model name)."""
    model = spec.get("model") or {}
    numbers = [model.get("version"), status.get("stableVersion"), status.get("canaryVersion")]
    return {(namespace or "", str(model.get("name"))): [int(n) for n in numbers if n]}


@kopf.on.event(GROUP, VERSION, MODEL_VERSION.plural)
async def on_model_version(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **kwargs: Any
) -> None:
    if type == "DELETED":
        _written.pop((namespace or "", name), None)
    reconciler.schedule((namespace or "", str(body["spec"]["modelName"])), memo, kwargs)


@kopf.on.event(GROUP, VERSION, MODEL_POLICY.plural)
async def on_model_policy(type: str, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    if type == "DELETED":
        _written.pop((namespace or "", name), None)
    reconciler.schedule((namespace or "", name), memo, kwargs)


@kopf.on.event(GROUP, VERSION, INFERENCE_SERVICE.plural)
async def on_inference_service(namespace: str | None, spec: kopf.Spec, memo: Any, **kwargs: Any) -> None:
    # What it serves is protected from retention: a change may free, or pin, versions.
    model = (spec.get("model") or {}).get("name")
    if model:
        reconciler.schedule((namespace or "", str(model)), memo, kwargs)


def request_stage(
    namespace: str,
    model: str,
    version_name: str,
    stage: ModelStage,
    reason: str,
    message: str,
    memo: Any,
    indexes: Mapping[str, Any],
) -> None:
    """Move a version to ``stage`` (for the serving controller: e.g. Champion when a rollout promotes it).
    ``reason`` is CamelCase and goes into the version's history with ``message``."""
    _requests.setdefault((namespace, model), []).append(StageChange(version_name, stage, reason, message))
    reconciler.schedule((namespace, model), memo, indexes)


async def _reconcile(key: ModelKey, memo: Any, indexes: Mapping[str, Any]) -> None:
    settings: Settings = memo.settings
    namespace = key[0]
    versions = [_as_written(namespace, v) for v in indexes["model_versions"].get(key, ())]
    policy = next(iter(indexes["model_policies"].get(key, ())), None)
    if policy is not None:
        policy = _as_written(namespace, policy)
    serving = {n for numbers in indexes["served_versions"].get(key, ()) for n in numbers}
    requests = _requests.pop(key, [])
    try:
        plan = plan_model(versions, policy, serving, requests, settings.keep_archived, utc_now())
        await _apply(namespace, plan, {v["metadata"]["name"]: v for v in versions}, policy)
    except Exception:
        # The retry must still see them (ahead of any that came since).
        _requests[key] = [*requests, *_requests.get(key, [])]
        raise


async def _apply(
    namespace: str, plan: ModelPlan, versions: Mapping[str, dict[str, Any]], policy: dict[str, Any] | None
) -> None:

    async def write(name: str) -> None:
        try:
            # Status first: it is the truth that the labels and events report.
            if (status := plan.statuses.get(name)) is not None:
                await asyncio.to_thread(kube.patch_status, MODEL_VERSION.plural, namespace, name, status)
                _written[(namespace, name)] = (versions[name]["metadata"]["uid"], status)
            if (labels := plan.labels.get(name)) is not None:
                await asyncio.to_thread(kube.patch_labels, MODEL_VERSION.plural, namespace, name, labels)
        except kube.ApiException as error:
            if error.status != 404:  # deleted meanwhile: its DELETED event reconciles the model again
                raise

    # Versions are written side by side (as many at once as the executor has threads): a burst of new
    # versions is then validated in a fraction of the time one-by-one writes would take.
    await asyncio.gather(*(write(name) for name in {**plan.statuses, **plan.labels}))
    # A retention event is posted once its deletion has happened.
    retention = {e.name: e for e in plan.events if e.reason == RETENTION}
    for event in plan.events:
        obj = versions.get(event.name) if event.kind == MODEL_VERSION.kind else policy
        if obj is not None and event.reason != RETENTION:
            post_event(obj, event.type, event.reason, event.message)
    for version in plan.deletions:
        meta = version["metadata"]
        # Not deleted when it changed since it was read (resourceVersion): the next reconcile decides again.
        deleted = await asyncio.to_thread(
            kube.delete_object,
            MODEL_VERSION.plural,
            namespace,
            meta["name"],
            meta["uid"],
            meta["resourceVersion"],
        )
        if deleted:
            logger.info("retention deleted ModelVersion %s/%s", namespace, meta["name"])
            event = retention[meta["name"]]
            post_event(version, event.type, event.reason, event.message)
    if policy is not None and plan.policy_status is not None:
        name = policy["metadata"]["name"]
        await asyncio.to_thread(kube.patch_status, MODEL_POLICY.plural, namespace, name, plan.policy_status)
        _written[(namespace, name)] = (policy["metadata"]["uid"], plan.policy_status)


def _as_written(namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the status this process last wrote, when the index does not show it yet."""
    written = _written.get((namespace, obj["metadata"]["name"]))
    if written is None or written[0] != obj["metadata"]["uid"]:
        return dict(obj)
    return {**obj, "status": written[1]}


reconciler = KeyedReconciler("model", _reconcile)
