"""InferenceService: a served model, rolled out version by version behind a canary.

Each pass reads the object (from kopf's index), the model's versions (the registry's index) and what the
backend reports (a GET of each object it owns), measures the analysis metrics when they are due, lets the
pure state machine (``modelloop.serving.rollout.decide``) decide, writes the status first (so that a
restarted operator renders exactly the traffic it decided) and then server-side applies what the backend
should serve. Timed steps come back through the work queue's requeue-after.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import kopf
import pydantic

from modelloop import kube
from modelloop.api import (
    GROUP,
    INFERENCE_SERVICE,
    MODEL_VERSION,
    VERSION,
    Backend,
    DeploymentMode,
    InferenceServicePhase,
    InferenceServiceSpec,
)
from modelloop.api.inferenceservice import InferenceServiceStatus
from modelloop.conditions import refusal_status
from modelloop.controllers.reporting import post_event
from modelloop.objects import slim_object
from modelloop.review import INVALID_SPEC, describe_validation_error
from modelloop.runtime.status import ObjectKey, StatusWriter
from modelloop.runtime.workqueue import WorkQueue
from modelloop.serving.analysis import Prometheus, QueryContext
from modelloop.serving.backend import LABEL_INFERENCE_SERVICE, ServiceContext, ServingBackend
from modelloop.serving.kserve import KServeBackend
from modelloop.serving.plan import backend_change, plan_service, version_infos
from modelloop.serving.rollout import (
    ANNOTATION_ROLLOUT_ACTION,
    Decision,
    MetricResult,
    Observed,
    measurement_due,
    parse_action,
    serving_of,
)
from modelloop.serving.seldon import SeldonBackend
from modelloop.settings import Settings

PLURAL = INFERENCE_SERVICE.plural
WORKERS = 32
# A settled service is looked at again this often, to notice a backend that stopped serving.
RESYNC_SECONDS = 60.0
PLURALS = {
    "InferenceService": "inferenceservices",
    "HTTPRoute": "httproutes",
    "SeldonDeployment": "seldondeployments",
}

logger = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, PLURAL)
async def inference_services(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[ObjectKey, Any]:
    """Every InferenceService by (namespace, name), with its rollout-action annotation."""
    return {(namespace or "", name): slim_object(body, (ANNOTATION_ROLLOUT_ACTION,))}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_inference_service(
    type: str, namespace: str | None, name: str, meta: kopf.Meta, memo: Any, **_: Any
) -> None:
    controller: InferenceServiceController = memo.runtime.inference_services
    key = (namespace or "", name)
    if type == "DELETED":
        controller.forget(key)
    elif not controller.writer.wrote(key, meta.get("resourceVersion")):
        controller.queue.add(key)  # the event of our own status write brings nothing new


@kopf.on.event(
    "serving.kserve.io", "v1beta1", "inferenceservices", labels={LABEL_INFERENCE_SERVICE: kopf.PRESENT}
)
async def on_kserve_service(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """What KServe reports (readiness, traffic) moves the rollout on: look at its owner again."""
    memo.runtime.inference_services.queue.add((namespace or "", str(labels[LABEL_INFERENCE_SERVICE])))


@kopf.on.event(
    "machinelearning.seldon.io", "v1", "seldondeployments", labels={LABEL_INFERENCE_SERVICE: kopf.PRESENT}
)
async def on_seldon_deployment(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """What Seldon reports (its state, replicas) moves the rollout on: look at its owner again."""
    memo.runtime.inference_services.queue.add((namespace or "", str(labels[LABEL_INFERENCE_SERVICE])))


@kopf.on.event(GROUP, VERSION, MODEL_VERSION.plural)
async def on_model_version_served(namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    """A version registered, validated or removed may change what the model's InferenceServices serve."""
    controller: InferenceServiceController = memo.runtime.inference_services
    for served in controller.indexes["served_versions"].get(
        (namespace or "", str(spec.get("modelName"))), ()
    ):
        controller.queue.add((namespace or "", served["served"].service))


class InferenceServiceController:
    """Reconciles InferenceServices through a serving backend."""

    def __init__(
        self,
        settings: Settings,
        indexes: Mapping[str, Any],
        client: kube.KubeClient,
        queries: Executor | None = None,
        workers: int = WORKERS,
    ) -> None:
        self.settings = settings
        self.indexes = indexes
        self.client = client
        self.writer = StatusWriter(PLURAL, client, (ANNOTATION_ROLLOUT_ACTION,))
        self.kserve = KServeBackend(DeploymentMode(settings.kserve_mode), settings.gateway)
        self.backends: dict[Backend, ServingBackend] = {
            Backend.KSERVE: self.kserve,
            Backend.SELDON: SeldonBackend(),
        }
        self.prometheus = Prometheus(settings.prometheus_url, executor=queries)
        self.queue = WorkQueue(
            "InferenceService", self.reconcile, workers=workers, on_failure=self.report_failure
        )
        # What this process last applied of each owned object: by our object, for its uid, by the owned
        # object's name, the generation after the apply and the manifest. A pass that renders the same
        # again, on an object still at that generation, has nothing to write.
        self._applied: dict[ObjectKey, tuple[str, dict[str, tuple[int, str]]]] = {}

    def known_keys(self) -> list[ObjectKey]:
        return list(self.indexes["inference_services"].keys())

    def forget(self, key: ObjectKey) -> None:
        self.queue.forget(key)
        self.writer.forget(key)
        self._applied.pop(key, None)

    def _service(self, key: ObjectKey) -> dict[str, Any] | None:
        return self.writer.current(self.indexes["inference_services"], key)

    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = self._service(key)
        if obj is None:
            return None
        return await self.writer.reconcile(obj, self._reconcile, f"InferenceService {key[0]}/{key[1]}")

    async def _reconcile(self, obj: dict[str, Any]) -> float | None:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 1)
        try:
            spec = InferenceServiceSpec.model_validate(obj["spec"])
        except pydantic.ValidationError as error:
            await self._write_refusal(obj, INVALID_SPEC, describe_validation_error(error))
            return None
        try:
            previous = InferenceServiceStatus.model_validate(obj.get("status") or {})
        except pydantic.ValidationError as error:
            message = f"status cannot be read, left as it is: {describe_validation_error(error)}"
            await self._write_refusal(obj, "InvalidStatus", message, InferenceServicePhase.DEGRADED)
            return None
        refusal = backend_change(spec, previous)
        if refusal is not None:
            await self._write_refusal(obj, "BackendChanged", refusal, InferenceServicePhase.DEGRADED)
            return None
        backend = self.backends[spec.backend]

        versions = self.indexes["model_versions"].get((namespace, spec.model.name), ())
        context = ServiceContext(namespace, name, meta["uid"], spec, version_infos(versions))
        now = datetime.now(UTC)
        serving_now = serving_of(previous)
        current = await self._current(backend, context)
        observed = backend.observe(context, serving_now, current) if serving_now else Observed()
        measurements: list[MetricResult] = []
        analysis = spec.rollout.analysis if spec.rollout else None
        if analysis and previous.canary_version and measurement_due(spec, previous, observed, now):
            query = QueryContext(namespace, name, previous.canary_version, previous.stable_version)
            measurements = await self.prometheus.measure(analysis, query)
        plan = plan_service(
            spec,
            previous,
            versions,
            context,
            backend,
            current,
            observed,
            parse_action(meta.get("annotations")),
            measurements,
            now,
            generation,
            self.kserve.mode(context) if spec.backend == Backend.KSERVE else None,
        )
        status, decision, manifests = plan.status, plan.decision, plan.manifests

        await self.writer.write(obj, status)
        self._post(obj, decision)
        if manifests:
            await self._apply(obj, context, manifests, current)
        if decision.requeue_after is None:
            return RESYNC_SECONDS
        # The wait counts from the moment decided on, not from the end of this pass.
        return max(0.0, decision.requeue_after - (datetime.now(UTC) - now).total_seconds())

    async def _current(
        self, backend: ServingBackend, context: ServiceContext
    ) -> dict[str, dict[str, Any] | None]:
        """The objects the backend owns for ``context``, read at once (None: absent)."""
        owned = backend.owned(context)
        read = await asyncio.gather(
            *(self.client.get_object(o.plural, context.namespace, o.name, o.api_version) for o in owned)
        )
        return {o.name: obj for o, obj in zip(owned, read, strict=True)}

    async def _apply(
        self,
        obj: Mapping[str, Any],
        context: ServiceContext,
        manifests: list[dict[str, Any]],
        current: Mapping[str, Any],
    ) -> None:
        key = (context.namespace, context.name)
        uid, applied_before = self._applied.get(key, (context.uid, {}))
        if uid != context.uid:
            applied_before = {}
        self._applied[key] = (context.uid, applied_before)
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            rendered = json.dumps(manifest, sort_keys=True)
            existing = current.get(name)
            if existing is not None and applied_before.get(name) == (_generation(existing), rendered):
                continue  # applied already, and nobody changed its spec since
            try:
                applied = await self.client.server_side_apply(PLURALS[manifest["kind"]], manifest)
            except kube.ApiException as error:
                if error.status == 404:
                    what = f"{manifest['kind']} ({manifest['apiVersion']})"
                    raise kube.ApiException(
                        404, f"the API server does not serve {what}: install it", None
                    ) from error
                raise
            if applied.obj is not None:
                applied_before[name] = (_generation(applied.obj), rendered)
            if applied.conflict is not None:
                what = f"{manifest['kind']} {manifest['metadata']['name']}"
                message = f"Another field manager owns fields of {what}, left as they are: {applied.conflict}"
                post_event(obj, "Warning", "FieldConflict", message)

    def _post(self, obj: Mapping[str, Any], decision: Decision) -> None:
        for event in decision.events:
            post_event(obj, event.type, event.reason, event.message)
        phase = decision.status.phase
        if phase is not None and phase != (obj.get("status") or {}).get("phase"):
            meta = obj["metadata"]
            logger.info("InferenceService %s/%s is %s", meta["namespace"], meta["name"], phase)

    async def _write_refusal(
        self, obj: dict[str, Any], reason: str, message: str, phase: InferenceServicePhase | None = None
    ) -> None:
        previous = obj.get("status") or {}
        generation = int(obj["metadata"].get("generation") or 1)
        status = refusal_status(
            previous,
            generation,
            str(phase or previous.get("phase") or InferenceServicePhase.PENDING),
            reason,
            message,
            "False" if previous.get("stableVersion") is None else "Unknown",
        )
        if previous.get("message") != message:
            post_event(obj, "Warning", reason, message)
        await self.writer.write(obj, status)

    async def report_failure(self, key: ObjectKey, error: BaseException, failures: int) -> None:
        """A request the API server refuses for good (KServe's webhook refusing the object, KServe not
        installed) reaches the status and an event, once per message; the queue backs off."""
        if not (isinstance(error, kube.ApiException) and error.status in (*kube.PERMANENT_STATUSES, 404)):
            return
        obj = self._service(key)
        if obj is None:
            return
        message = kube.api_message(error)
        if (obj.get("status") or {}).get("message") == message:
            return
        try:
            await self._write_refusal(obj, "ApiRequestRefused", message, InferenceServicePhase.DEGRADED)
        except (kube.Conflict, kube.ApiException):
            return


def _generation(obj: Mapping[str, Any]) -> int:
    return int(obj["metadata"].get("generation") or 0)
