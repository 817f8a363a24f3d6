"""InferenceService: a served model, rolled out version by version behind a canary.

Each pass reads the object (from kopf's index), the model's versions (the registry's index) and what the
backend reports (the watch's index of each object it owns), measures the analysis metrics when they are
due, lets the pure state machine (``modelloop.serving.rollout.decide``) decide, server-side applies what
the backend should serve, writes the status, then posts the decision's events. Timed steps come back
through the work queue's requeue-after; a change of an owned object queues its service, except the echo
of this process's own apply.

One status write per decision. A pass whose apply changed what the backend serves keeps its decided
status in memory (``pending``) instead of writing it: the backend's report of that apply queues the next
pass, which plans on the pending status and writes it together with what the backend reports, in one
write instead of two. A pending status waits at most ``REPORT_WAIT_SECONDS``, then is written as it is.

A restart loses a pending status, and the restarted operator plans on the status written before it,
while the backend already serves the decision. For a decision that gives the canary more traffic (a
first deployment, a canary started, a step up, a promotion) the state machine takes a backend at the next
step's weight as converged (``modelloop.serving.rollout._converged``): the step is due, so it decides it
again and asks for what the backend serves. A decision that takes traffic from a canary (a rollback, an
abort, another canary) is written before its apply, as the status is the record that a restarted
operator must not undo: a canary never gets more traffic than a written decision gave it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import kopf

from modelloop import kube
from modelloop.api import (
    GROUP,
    INFERENCE_SERVICE,
    VERSION,
    InferenceServicePhase,
    InferenceServiceSpec,
)
from modelloop.api.inferenceservice import InferenceServiceStatus
from modelloop.conditions import ConditionValue, refusal_status
from modelloop.machinery import events
from modelloop.machinery.reconcile import ObjectReconciler, Parsed, Refused
from modelloop.machinery.status import ObjectKey, StatusWriter, is_newer
from modelloop.machinery.workqueue import WorkQueue
from modelloop.naming import LABEL_INFERENCE_SERVICE
from modelloop.reasons import INVALID_SPEC
from modelloop.serving import backends
from modelloop.serving.analysis import Prometheus, QueryContext
from modelloop.serving.backend import (
    BackendPlugin,
    OwnedKind,
    ServiceContext,
    ServingBackend,
)
from modelloop.serving.plan import backend_change, plan_service, version_infos
from modelloop.serving.rollout import (
    ANNOTATION_ROLLOUT_ACTION,
    Decision,
    MetricResult,
    Observed,
    Serving,
    measurement_due,
    parse_action,
    serving_of,
)
from modelloop.settings import URL_NOT_ALLOWED, Settings
from modelloop.slim import slim_object

PLURAL = INFERENCE_SERVICE.plural
BACKEND_CHANGED = "BackendChanged"
WORKERS = 32
# A settled service is looked at again this often, to notice a backend that stopped serving.
RESYNC_SECONDS = 60.0
# How long a decided status waits in memory for the backend's report of its apply, at most.
REPORT_WAIT_SECONDS = 2.0

logger = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, PLURAL)
async def inference_services(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[ObjectKey, Any]:
    """Every InferenceService by (namespace, name), with its rollout-action annotation."""
    return {(namespace or "", name): slim_object(body, (ANNOTATION_ROLLOUT_ACTION,))}


def on_inference_service(
    controller: InferenceServiceController, type: str, key: ObjectKey, resource_version: str | None
) -> None:
    """An event of an InferenceService (called for every one: see ``modelloop.controllers.manager``)."""
    if type == "DELETED":
        controller.forget(key)
    elif not controller.writer.wrote(key, resource_version):
        controller.queue.add(key)  # the event of our own status write brings nothing new


async def on_backend_object(
    namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta, memo: Any, **_: Any
) -> None:
    """What the platform reports on an object a backend owns (KServe's readiness and traffic, Seldon's
    state) moves the rollout on: look at its owner again. The echo of this process's own apply brings
    nothing new."""
    controller: InferenceServiceController = memo.manager.inference_services
    key = (namespace or "", str(labels[LABEL_INFERENCE_SERVICE]))
    if not controller.applied_by_me(key, name, meta.get("resourceVersion")):
        controller.queue.add(key)


async def backend_objects(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[ObjectKey, Any]:
    """The objects of one watched backend kind that modelloop owns, by (namespace, name): a pass reads
    them here instead of asking the API server."""
    return {(namespace or "", name): slim_object(body)}


def backend_index(kind: OwnedKind) -> str:
    """The name of the index of a watched backend kind (kopf hands indexes to handlers by name)."""
    return "backend_" + re.sub(r"\W", "_", f"{kind.plural}_{kind.group}")


def watch_backend_kinds(
    plugins: Sequence[BackendPlugin] = backends.BACKENDS, registry: kopf.OperatorRegistry | None = None
) -> None:
    """Watch and index every kind a backend declares watched, for the objects modelloop owns (kopf's
    default registry unless one is given)."""
    for kind in backends.watched_kinds(plugins):
        selected = {LABEL_INFERENCE_SERVICE: kopf.PRESENT}
        kopf.on.event(
            kind.group,
            kind.version,
            kind.plural,
            id=f"on_backend_object/{kind.plural}.{kind.group}",
            labels=selected,
            registry=registry,
        )(on_backend_object)
        kopf.index(
            kind.group, kind.version, kind.plural, id=backend_index(kind), labels=selected, registry=registry
        )(backend_objects)


watch_backend_kinds()


def on_model_version_served(
    controller: InferenceServiceController, namespace: str, spec: Mapping[str, Any]
) -> None:
    """A version registered, validated or removed may change what the model's InferenceServices serve
    (called for every event of a ModelVersion: see ``modelloop.controllers.manager``)."""
    for served in controller.indexes["served_versions"].get((namespace, str(spec.get("modelName"))), ()):
        controller.queue.add((namespace, served["served"].service))


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
        self.backends: dict[str, ServingBackend] = backends.create_backends(settings)
        # Where a pass reads the objects of each watched backend kind: (API version, plural) → index.
        self._backend_indexes = {
            (kind.api_version, kind.plural): backend_index(kind) for kind in backends.watched_kinds()
        }
        self.prometheus = Prometheus(settings.prometheus_url, executor=queries)
        self.objects: ObjectReconciler[InferenceServiceSpec, InferenceServiceStatus] = ObjectReconciler(
            "InferenceService",
            "inference_services",
            indexes,
            self.writer,
            self._parse_spec,
            InferenceServiceStatus.model_validate,
            self._reconcile,
            _refusal,
        )
        self.queue = WorkQueue(
            "InferenceService",
            self.objects.reconcile,
            workers=workers,
            on_failure=self.objects.report_failure,
        )
        # What this process last applied of each owned object: by our object, for its uid, by the owned
        # object's name, the generation after the apply and the manifest. A pass that renders the same
        # again, on an object still at that generation, has nothing to write.
        self._applied: dict[ObjectKey, tuple[str, dict[str, tuple[int, str]]]] = {}
        # The owned objects as this process last applied them, by our object and the owned object's name:
        # until the index shows that resourceVersion or a newer one, a pass reads them from here.
        self._written: dict[ObjectKey, dict[str, dict[str, Any]]] = {}
        # Decided statuses waiting for the backend's report of their apply (see the module's docstring), by
        # our object: its uid, the status, and the loop time since which it waits.
        self._pending: dict[ObjectKey, tuple[str, InferenceServiceStatus, float]] = {}

    def applied_by_me(self, key: ObjectKey, name: str, resource_version: str | None) -> bool:
        """Whether ``resource_version`` of the owned object ``name`` is the one this process's last apply
        of it returned."""
        mine = self._written.get(key, {}).get(name)
        return (
            mine is not None
            and resource_version is not None
            and (mine["metadata"].get("resourceVersion") == resource_version)
        )

    def _parse_spec(self, obj: Mapping[str, Any]) -> InferenceServiceSpec:
        """The spec, refused (before any request) when it names a URL the operator must not call."""
        spec = InferenceServiceSpec.model_validate(obj["spec"])
        refusal = self.settings.urls_refusal(spec.outbound_urls(), str(obj["metadata"]["namespace"]))
        if refusal is not None:
            raise Refused(URL_NOT_ALLOWED, refusal)
        return spec

    def known_keys(self) -> list[ObjectKey]:
        return list(self.indexes["inference_services"].keys())

    def forget(self, key: ObjectKey) -> None:
        self.queue.forget(key)
        self.writer.forget(key)
        self._applied.pop(key, None)
        self._written.pop(key, None)
        self._pending.pop(key, None)

    def pending(self, key: ObjectKey) -> InferenceServiceStatus | None:
        """The status decided for ``key`` and not written yet (waiting for the backend's report)."""
        held = self._pending.get(key)
        return held[1] if held is not None else None

    async def reconcile(self, key: ObjectKey) -> float | None:
        return await self.objects.reconcile(key)

    async def _reconcile(self, parsed: Parsed[InferenceServiceSpec, InferenceServiceStatus]) -> float | None:
        obj, spec, generation = parsed.obj, parsed.spec, parsed.generation
        meta = obj["metadata"]
        namespace, name = key = parsed.key
        held = self._pending.get(key)
        previous = held[1] if held is not None and held[0] == meta["uid"] else parsed.status
        refusal = backend_change(spec, previous)
        if refusal is not None:
            self._pending.pop(key, None)
            raise Refused(BACKEND_CHANGED, refusal)
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
            backend.own_status(context),
        )
        status, decision, manifests = plan.status, plan.decision, plan.manifests

        # A decision that takes traffic from a canary is written before its apply (see the docstring).
        first = not _may_hold(serving_of(previous), serving_of(status))
        if first:
            await self.writer.write(obj, status)
            self._pending.pop(key, None)
        reported = False  # whether the backend will report on what this pass applied
        wait: float | None = None
        try:
            if manifests:
                reported = await self._apply(obj, context, manifests, current)
        finally:
            # Also when the apply fails: the decision stands in status, and the failure beside it.
            try:
                if not first:
                    wait = await self._record(obj, key, status, reported)
            finally:
                # After the apply, so that a burst of decisions reaches the backend before their events.
                self._post(obj, previous, decision)
        if decision.requeue_after is None:
            return min(RESYNC_SECONDS, wait) if wait is not None else RESYNC_SECONDS
        # The wait counts from the moment decided on, not from the end of this pass.
        due = max(0.0, decision.requeue_after - (datetime.now(UTC) - now).total_seconds())
        return min(due, wait) if wait is not None else due

    async def _record(
        self, obj: Mapping[str, Any], key: ObjectKey, status: InferenceServiceStatus, reported: bool
    ) -> float | None:
        """Write ``status``, or, when the backend will report on this pass's apply, hold it until that
        report (for ``REPORT_WAIT_SECONDS`` at most): return the seconds left to wait for it, or None
        when written."""
        clock = asyncio.get_running_loop().time()
        uid = str(obj["metadata"]["uid"])
        held = self._pending.get(key)
        since = held[2] if held is not None and held[0] == uid else clock
        if reported and clock - since < REPORT_WAIT_SECONDS:
            self._pending[key] = (uid, status, since)
            return REPORT_WAIT_SECONDS - (clock - since)
        await self.writer.write(obj, status)
        self._pending.pop(key, None)
        return None

    async def _current(
        self, backend: ServingBackend, context: ServiceContext
    ) -> dict[str, dict[str, Any] | None]:
        """The objects the backend owns for ``context`` (None: absent): those of a watched kind from its
        index (or this process's newer copy), the others read from the API server, at once."""
        owned = backend.owned(context)
        key = (context.namespace, context.name)
        current: dict[str, dict[str, Any] | None] = {}
        reads = []
        for o in owned:
            index = self._backend_indexes.get((o.api_version, o.plural))
            if index is None or index not in self.indexes:
                reads.append(o)
                continue
            indexed = next(iter(self.indexes[index].get((context.namespace, o.name), ())), None)
            mine = self._written.get(key, {}).get(o.name)
            if indexed is not None and mine is not None:
                if is_newer(
                    str(mine["metadata"].get("resourceVersion") or ""),
                    str(indexed["metadata"].get("resourceVersion") or ""),
                ):
                    indexed = mine
                else:  # the index has caught up: it alone holds the object from now on
                    del self._written[key][o.name]
            current[o.name] = indexed
        read = await asyncio.gather(
            *(self.client.get_object(o.plural, context.namespace, o.name, o.api_version) for o in reads)
        )
        current.update({o.name: obj for o, obj in zip(reads, read, strict=True)})
        return current

    async def _apply(
        self,
        obj: Mapping[str, Any],
        context: ServiceContext,
        manifests: list[dict[str, Any]],
        current: Mapping[str, Any],
    ) -> bool:
        """Apply what changed of ``manifests``; return whether the spec of an object of a watched kind
        changed (the backend reports on it, and its watch queues this service again)."""
        key = (context.namespace, context.name)
        reported = False
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
            plural = backends.plural_of(manifest["apiVersion"], manifest["kind"])
            try:
                applied = await self.client.server_side_apply(plural, manifest)
            except kube.ApiException as error:
                if error.status == 404:
                    what = f"{manifest['kind']} ({manifest['apiVersion']})"
                    raise kube.ApiException(
                        404, f"the API server does not serve {what}: install it", None
                    ) from error
                raise
            if applied.obj is not None:
                applied_before[name] = (_generation(applied.obj), rendered)
                self._written.setdefault(key, {})[name] = slim_object(applied.obj)
                watched = (manifest["apiVersion"], plural) in self._backend_indexes
                if watched and (existing is None or _generation(applied.obj) != _generation(existing)):
                    reported = True
            if applied.conflict is not None:
                what = f"{manifest['kind']} {manifest['metadata']['name']}"
                message = f"Another field manager owns fields of {what}, left as they are: {applied.conflict}"
                events.post_event(obj, "Warning", "FieldConflict", message)
        return reported

    def _post(self, obj: Mapping[str, Any], previous: InferenceServiceStatus, decision: Decision) -> None:
        for event in decision.events:
            events.post_event(obj, event.type, event.reason, event.message)
        phase = decision.status.phase
        if phase is not None and phase != previous.phase:
            meta = obj["metadata"]
            logger.info("InferenceService %s/%s is %s", meta["namespace"], meta["name"], phase)


def _may_hold(before: Serving | None, after: Serving | None) -> bool:
    """Whether a decision from ``before`` to ``after`` may wait in memory for the backend's report: unless
    it takes traffic from a canary (see the module's docstring)."""
    if before is None or before.canary is None:
        return True  # no canary gets less: a first deployment, a canary started, a settled service
    if after is None:
        return False
    if after.canary is None:
        return after.stable == before.canary  # promoted: the canary takes all the traffic
    return after.canary == before.canary and after.weight >= before.weight


def _refusal(previous: Mapping[str, Any], generation: int, reason: str, message: str) -> dict[str, Any]:
    """A service the operator cannot act on: an invalid spec leaves its phase as it was, anything else
    (a backend that cannot change, a request refused for good) degrades it; Ready is False before any
    version is served, Unknown after (the backend may still serve the last one)."""
    phase = previous.get("phase") or InferenceServicePhase.PENDING.value
    if reason != INVALID_SPEC:
        phase = InferenceServicePhase.DEGRADED.value
    ready: ConditionValue = "False" if previous.get("stableVersion") is None else "Unknown"
    return refusal_status(previous, generation, str(phase), reason, message, ready)


def _generation(obj: Mapping[str, Any]) -> int:
    return int(obj["metadata"].get("generation") or 0)
