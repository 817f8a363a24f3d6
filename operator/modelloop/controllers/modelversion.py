"""ModelVersion and ModelPolicy: the model registry, reconciled one model at a time.

Any event of a model's versions, of its ModelPolicy, or of an InferenceService that serves it queues the
model, and the work queue reconciles the whole model from kopf's in-memory indexes: new versions are
validated (against the champion, too), stage requests (users' annotations, and the stages rollouts imply,
from the InferenceServices' status) are applied, labels follow the stage, retention removes what it may,
and the ModelPolicy's status summarizes the model. The decisions are pure (``modelloop.registry.plan``);
this module reads (parsing each version's status once: one that cannot be read is refused in its status,
as every controller refuses it, and left out of the model's pass), applies the plan and writes through the
one status writer. Neither kind gets kopf's annotations or finalizers: the objects stay as their authors
wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import pydantic

from modelloop import kube
from modelloop.api import (
    GROUP,
    INFERENCE_SERVICE,
    MODEL_POLICY,
    MODEL_VERSION,
    VERSION,
    ModelVersionPhase,
    ModelVersionStatus,
)
from modelloop.conditions import refusal_status
from modelloop.machinery import events
from modelloop.machinery.reconcile import unreadable_status_message, write_refusal
from modelloop.machinery.status import ObjectGone, StatusWriter, retry_on_conflict
from modelloop.machinery.workqueue import WorkQueue
from modelloop.naming import ANNOTATION_REQUESTED_STAGE, ANNOTATION_STAGE_REASON
from modelloop.reasons import INVALID_STATUS
from modelloop.registry.plan import RETENTION, ModelPlan, ParsedVersion, plan_model
from modelloop.registry.serving import ServedModel, served_model
from modelloop.settings import Settings
from modelloop.slim import slim_object

ModelKey = tuple[str, str]  # (namespace, model name)

logger = logging.getLogger(__name__)
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
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[ModelKey, dict[str, Any]]:
    """What each InferenceService names (spec) and serves (status), by (namespace, model name)."""
    model = spec.get("model") or {}
    pinned = model.get("version")
    return {
        (namespace or "", str(model.get("name"))): {
            "served": served_model(name, status),
            "pinned": int(pinned) if isinstance(pinned, int) else None,
        }
    }


def on_model_version(
    registry: ModelRegistry, type: str, namespace: str, name: str, spec: Mapping[str, Any]
) -> None:
    """An event of a ModelVersion (called for every one: see ``modelloop.controllers.manager``)."""
    if type == "DELETED":
        registry.versions.forget((namespace, name))
    registry.queue.add((namespace, str(spec["modelName"])))


@kopf.on.event(GROUP, VERSION, MODEL_POLICY.plural)
async def on_model_policy(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    registry: ModelRegistry = memo.manager.registry
    if type == "DELETED":
        registry.policies.forget((namespace or "", name))
    registry.queue.add((namespace or "", name))


def on_served_model(registry: ModelRegistry, namespace: str, spec: Mapping[str, Any]) -> None:
    """What an InferenceService serves is protected from retention and sets stages: a change may free,
    pin or promote versions (called for every event of an InferenceService: see
    ``modelloop.controllers.manager``)."""
    model = (spec.get("model") or {}).get("name")
    if model:
        registry.queue.add((namespace, str(model)))


class ModelRegistry:
    """Reconciles models: their ModelVersions and ModelPolicy, one model at a time."""

    def __init__(
        self, settings: Settings, indexes: Mapping[str, Any], client: kube.KubeClient, workers: int = 8
    ) -> None:
        self.settings = settings
        self.indexes = indexes
        self.client = client
        self.versions = StatusWriter(MODEL_VERSION.plural, client, _ANNOTATIONS)
        self.policies = StatusWriter(MODEL_POLICY.plural, client, _ANNOTATIONS)
        self.queue = WorkQueue("model", self.reconcile, workers=workers)

    def known_keys(self) -> list[ModelKey]:
        return list({*self.indexes["model_versions"].keys(), *self.indexes["model_policies"].keys()})

    async def reconcile(self, key: ModelKey) -> float | None:
        # Fresh copies read after a conflict, by (namespace, name): they stand in for the index's.
        async def attempt() -> None:
            await self._reconcile_model(key)

        async def reread(conflict: kube.Conflict) -> None:
            # A model's policy is named after the model; its versions are <model>-v<N>.
            writer = self.policies if conflict.key[1] == key[1] else self.versions
            with contextlib.suppress(ObjectGone):  # its DELETED event reconciles the model again
                await writer.refresh(*conflict.key)

        await retry_on_conflict(attempt, reread, f"model {key[0]}/{key[1]}")
        return None

    def _policy(self, key: ModelKey) -> dict[str, Any] | None:
        policy = next(iter(self.indexes["model_policies"].get(key, ())), None)
        return None if policy is None else self.policies.view(policy)

    async def _reconcile_model(self, key: ModelKey) -> None:
        versions: list[ParsedVersion] = []
        unreadable: list[dict[str, Any]] = []
        for obj in (self.versions.view(v) for v in self.indexes["model_versions"].get(key, ())):
            try:
                status = ModelVersionStatus.model_validate(obj.get("status") or {})
            except pydantic.ValidationError as error:
                unreadable.append(obj)
                await self._refuse(obj, unreadable_status_message(error))
                continue
            versions.append(ParsedVersion(obj, status))
        policy = self._policy(key)
        serving: set[int] = set()
        served: list[ServedModel] = []
        for entry in self.indexes["served_versions"].get(key, ()):
            model: ServedModel = entry["served"]
            served.append(model)
            serving.update(n for n in (entry["pinned"], model.stable, model.canary) if n)
        now = datetime.now(UTC)
        plan = plan_model(versions, policy, serving, served, self.settings.keep_archived, now, unreadable)
        await self._apply_plan(key[0], plan, {v.name: v.obj for v in versions}, policy)

    async def _refuse(self, obj: dict[str, Any], message: str) -> None:
        """Say in a version's status that it cannot be read (its phase kept, Ready False), and post a
        Warning event when the message is new; a version being deleted is left alone."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        previous = obj.get("status") or {}
        phase = previous.get("phase")
        if phase not in {p.value for p in ModelVersionPhase}:
            phase = ModelVersionPhase.PENDING.value
        generation = int(meta.get("generation") or 1)
        status = refusal_status(previous, generation, str(phase), INVALID_STATUS, message, "False")
        try:
            await write_refusal(self.versions, obj, status, INVALID_STATUS, message)
        except kube.ApiException as error:
            if error.status != 404:  # deleted meanwhile: its DELETED event reconciles the model again
                raise

    async def _apply_plan(
        self,
        namespace: str,
        plan: ModelPlan,
        versions: Mapping[str, Mapping[str, Any]],
        policy: dict[str, Any] | None,
    ) -> None:
        retention = {e.name: e for e in plan.events if e.reason == RETENTION}
        pending = [e for e in plan.events if e.reason != RETENTION]

        def post(kind: str, name: str) -> None:
            obj = versions.get(name) if kind == MODEL_VERSION.kind else policy
            for event in [e for e in pending if e.kind == kind and e.name == name]:
                pending.remove(event)
                if obj is not None:
                    events.post_event(obj, event.type, event.reason, event.message)

        async def write(name: str) -> None:
            version = versions[name]
            try:
                # Status first: it is the truth that the labels and events report.
                if (status := plan.statuses.get(name)) is not None:
                    version = await self.versions.write(version, status)
                if (labels := plan.labels.get(name)) is not None:
                    await self.versions.write_labels(version, labels)
            except kube.ApiException as error:
                if error.status != 404:  # deleted meanwhile: its DELETED event reconciles the model again
                    raise
                # Nothing is told of a version that is gone.
                pending[:] = [e for e in pending if (e.kind, e.name) != (MODEL_VERSION.kind, name)]
                return
            post(MODEL_VERSION.kind, name)

        # Versions are written side by side (as many at once as the API pool has threads): a burst of new
        # versions is then validated in a fraction of the time one-by-one writes would take. A conflict in
        # one of them re-plans the model; the writes that succeeded are remembered (and their events
        # posted), so the next plan neither repeats nor loses them.
        results = await asyncio.gather(
            *(write(name) for name in {**plan.statuses, **plan.labels}), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if policy is not None and plan.policy_status is not None:
            await self.policies.write(policy, plan.policy_status)
        for event in list(pending):
            post(event.kind, event.name)
        # A retention event is posted once its deletion has happened.
        for version in plan.deletions:
            meta = version["metadata"]
            # Not deleted when it changed since it was read (resourceVersion): the next reconcile decides.
            deleted = await self.client.delete_object(
                MODEL_VERSION.plural,
                namespace,
                meta["name"],
                meta["uid"],
                meta["resourceVersion"],
            )
            if deleted:
                logger.info("retention deleted ModelVersion %s/%s", namespace, meta["name"])
                event = retention[meta["name"]]
                events.post_event(version, event.type, event.reason, event.message)
