"""DriftPolicy: watches a served model's metrics and retrains it when drift is confirmed.

Each pass reads the policy (from kopf's index), its target InferenceService, the model's versions and its
last TrainingRun (the indexes), queries Prometheus when an evaluation is due (in the query pool, each query
with its deadline), lets the pure ``modelloop.drift.policy.decide`` decide, creates the TrainingRun it asks
for, and writes the whole status once. The next evaluation comes back through the work queue's
requeue-after; a run, version or service that changes wakes the policy at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import kopf

from modelloop import kube
from modelloop.api import (
    DRIFT_POLICY,
    GROUP,
    MODEL_VERSION,
    TRAINING_RUN,
    VERSION,
    DriftMetric,
    DriftPolicyPhase,
    DriftPolicySpec,
    DriftPolicyStatus,
)
from modelloop.api.inferenceservice import rollout_versions
from modelloop.conditions import refusal_status
from modelloop.drift.detector import DetectorClient, DetectorError, detector_versions, reads_mmd
from modelloop.drift.policy import Measurement, PolicyDecision, decide, evaluation_due, evaluation_lag
from modelloop.drift.training_run import render_training_run, retraining_in_flight
from modelloop.machinery import events, metrics
from modelloop.machinery.reconcile import ObjectReconciler, Parsed, Refused
from modelloop.machinery.status import ObjectKey, StatusWriter
from modelloop.machinery.workqueue import WorkQueue
from modelloop.naming import LABEL_DRIFT_POLICY, LABEL_TRAINING_RUN
from modelloop.serving.analysis import Prometheus, PrometheusRefused, PrometheusUnreachable, QueryContext
from modelloop.settings import URL_NOT_ALLOWED, Settings
from modelloop.slim import slim_object

PLURAL = DRIFT_POLICY.plural
# Evaluations at once: each mostly waits on Prometheus (in the query pool) and the API server.
WORKERS = 32

logger = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, PLURAL)
async def drift_policies(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[ObjectKey, Any]:
    """Every DriftPolicy by (namespace, name)."""
    return {(namespace or "", name): slim_object(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_drift_policy(
    type: str, namespace: str | None, name: str, meta: kopf.Meta, memo: Any, **_: Any
) -> None:
    controller: DriftPolicyController = memo.manager.drift_policies
    key = (namespace or "", name)
    if type == "DELETED":
        controller.forget(key)
    elif not controller.writer.wrote(key, meta.get("resourceVersion")):
        controller.queue.add(key)


@kopf.on.event(GROUP, VERSION, TRAINING_RUN.plural, labels={LABEL_DRIFT_POLICY: kopf.PRESENT})
async def on_retraining_run(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """A retraining that moves on (trains, succeeds, fails) changes its policy's phase."""
    memo.manager.drift_policies.queue.add((namespace or "", str(labels[LABEL_DRIFT_POLICY])))


@kopf.on.event(GROUP, VERSION, MODEL_VERSION.plural, labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def on_retrained_version(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """A retrained version validated, rejected, in canary or promoted: its policy's phase follows."""
    controller: DriftPolicyController = memo.manager.drift_policies
    run = next(
        iter(controller.indexes["training_runs"].get((namespace or "", labels[LABEL_TRAINING_RUN]), ())), None
    )
    policy = ((run or {}).get("metadata", {}).get("labels") or {}).get(LABEL_DRIFT_POLICY)
    if policy:
        controller.queue.add((namespace or "", str(policy)))


def on_target_service(controller: DriftPolicyController, namespace: str, name: str) -> None:
    """A target that serves another version has the detector told at once (called for every event of an
    InferenceService: see ``modelloop.controllers.manager``)."""
    for key in controller.policies_of((namespace, name)):
        controller.queue.add(key)


class DriftPolicyController:
    """Evaluates DriftPolicies and starts their retrainings."""

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
        self.writer = StatusWriter(PLURAL, client)
        self.prometheus = Prometheus(settings.prometheus_url, executor=queries)
        self.detector = DetectorClient(token_file=settings.detector_token_file)
        self.objects: ObjectReconciler[DriftPolicySpec, DriftPolicyStatus] = ObjectReconciler(
            "DriftPolicy",
            "drift_policies",
            indexes,
            self.writer,
            self._parse_spec,
            DriftPolicyStatus.model_validate,
            self._reconcile,
            _refusal,
            failure_message=lambda error: (
                f"cannot create the retraining's TrainingRun: {kube.api_message(error)}"
            ),
        )
        self.queue = WorkQueue(
            "DriftPolicy", self.objects.reconcile, workers=workers, on_failure=self.objects.report_failure
        )
        # The served versions last registered with each policy's detector, for its uid: to log changes only.
        self._registered: dict[ObjectKey, tuple[str, Any]] = {}

    def _parse_spec(self, obj: Mapping[str, Any]) -> DriftPolicySpec:
        """The spec, refused (before any request) when it names a URL the operator must not call."""
        spec = DriftPolicySpec.model_validate(obj["spec"])
        refusal = self.settings.urls_refusal(spec.outbound_urls(), str(obj["metadata"]["namespace"]))
        if refusal is not None:
            raise Refused(URL_NOT_ALLOWED, refusal)
        return spec

    def known_keys(self) -> list[ObjectKey]:
        return list(self.indexes["drift_policies"].keys())

    def forget(self, key: ObjectKey) -> None:
        self.queue.forget(key)
        self.writer.forget(key)
        self._registered.pop(key, None)

    def policies_of(self, service: ObjectKey) -> list[ObjectKey]:
        """The policies whose target is ``service``."""
        return [
            key
            for key, store in self.indexes["drift_policies"].items()
            if key[0] == service[0]
            for policy in store
            if ((policy.get("spec") or {}).get("target") or {}).get("inferenceService") == service[1]
        ]

    async def _reconcile(self, policy: Parsed[DriftPolicySpec, DriftPolicyStatus]) -> float | None:
        obj, spec, previous, generation = policy.obj, policy.spec, policy.status, policy.generation
        namespace, name = policy.key
        now = datetime.now(UTC)
        service = next(
            iter(self.indexes["inference_services"].get((namespace, spec.target.inference_service), ())), None
        )
        service_status = (service or {}).get("status") or {}
        model = str(
            ((service or {}).get("spec") or {}).get("model", {}).get("name")
            or spec.retrain.training_run_template.output.model_name
        )
        versions = list(self.indexes["model_versions"].get((namespace, model), ()))

        measurements: list[Measurement] | None = None
        if evaluation_due(spec, previous, generation, now):
            lag = evaluation_lag(spec, previous, generation, now)
            if lag is not None:
                metrics.DRIFT_EVALUATION_LAG.observe(lag)
            if spec.detector is not None and service is not None:
                await self._register(obj, spec, model, versions, service_status)
            stable = rollout_versions(service_status).stable
            context = QueryContext(namespace, spec.target.inference_service, stable or 0)
            url = (spec.prometheus.url if spec.prometheus else None) or self.settings.prometheus_url
            measurements = list(
                await asyncio.gather(*(self._measure(url, m, context, model, now) for m in spec.metrics))
            )

        last_run_name = previous.last_training_run
        run = (
            next(iter(self.indexes["training_runs"].get((namespace, last_run_name), ())), None)
            if last_run_name
            else None
        )
        in_flight = retraining_in_flight(run, versions)
        trained = ((run or {}).get("status") or {}).get("modelVersion") or None
        decision = decide(name, spec, previous, measurements, in_flight, now, generation, trained)
        if decision.start_run is not None:
            await self._confirm_current(obj)
            await self._start_run(obj, spec, decision, model)
            metrics.RETRAINING_START_SECONDS.observe((datetime.now(UTC) - now).total_seconds())
        if decision.skipped is not None:
            metrics.RETRAININGS.labels("skipped", decision.skipped).inc()
        await self.writer.write(obj, decision.status)
        self._post(obj, decision)
        return decision.requeue_after

    async def _measure(
        self, url: str | None, metric: DriftMetric, context: QueryContext, model: str, now: datetime
    ) -> Measurement:
        """Run the metric's query, and its band's two queries when it is an estimate, at the same time; each
        takes its own turn at its host and has its own deadline, as every query does."""
        query = _rendered(metric.query, context, model)
        if url is None:
            error = "no Prometheus to ask: set spec.prometheus.url or MODELLOOP_PROMETHEUS_URL"
            return Measurement(metric, query, now, error=error)
        queries = {"query": query}
        if metric.estimate is not None:
            queries["estimate.lowerQuery"] = _rendered(metric.estimate.lower_query, context, model)
            queries["estimate.upperQuery"] = _rendered(metric.estimate.upper_query, context, model)
        answers = dict(
            zip(queries, await asyncio.gather(*(self._answer(url, q) for q in queries.values())), strict=True)
        )
        for field, (_, problem) in answers.items():
            if isinstance(problem, PrometheusRefused):
                told = str(problem) if field == "query" else f"{field}: {problem}"
                return Measurement(metric, query, now, error=told, refused=True)
        value, problem = answers["query"]
        if problem is not None:
            return Measurement(metric, query, now, error=str(problem))
        # A band Prometheus cannot answer is a band without data: the estimate itself still counts.
        lower = answers.get("estimate.lowerQuery", (None, None))[0]
        upper = answers.get("estimate.upperQuery", (None, None))[0]
        return Measurement(metric, query, now, value=value, lower=lower, upper=upper)

    async def _answer(self, url: str, query: str) -> tuple[float | None, PrometheusUnreachable | None]:
        """What Prometheus answered to ``query``, or why it did not."""
        try:
            return await self.prometheus.run_query(url, query), None
        except PrometheusUnreachable as error:  # PrometheusRefused too
            return None, error

    async def _register(
        self,
        obj: Mapping[str, Any],
        spec: DriftPolicySpec,
        model: str,
        versions: list[dict[str, Any]],
        service_status: Mapping[str, Any],
    ) -> None:
        """Tell the detector what the target serves; a detector that cannot be told is an event, never a
        breach: the metrics it would have made are missing, which the evaluation reads as inconclusive."""
        assert spec.detector is not None
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        served = detector_versions(versions, rollout_versions(service_status))
        if not served:
            return
        target = spec.retrain.training_run_template.dataset.target_column
        try:
            await self.detector.register(
                spec.detector.url,
                meta["namespace"],
                spec.target.inference_service,
                model,
                served,
                target,
                mmd=reads_mmd(metric.query for metric in spec.metrics),
            )
        except DetectorError as error:
            events.post_event(obj, "Warning", "DetectorUnreachable", str(error))
            self._registered.pop(key, None)
            return
        if self._registered.get(key) != (meta["uid"], served):
            logger.info("DriftPolicy %s/%s: detector serves versions %s", *key, ", ".join(served))
            self._registered[key] = (meta["uid"], served)

    async def _confirm_current(self, obj: Mapping[str, Any]) -> None:
        """Raise a conflict (the reconcile reads the policy again and decides again) unless ``obj`` is the
        policy as the API server has it now.

        A retraining is the one thing a pass does that a conflicting status write cannot undo, and its name
        comes from the breach in the status the pass decided on. The index can be behind the API server:
        a replica that has just taken over from another still holds what it saw before it stood by, and a
        breach there may have been acted on since (its status written, the breach cleared) by the replica
        it replaces. Acting on that copy started a second retraining for one breach, named after the old
        breach's start. So the policy is read once more before the run is created: a quorum read, once per
        retraining, never per pass."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        fresh = await self.writer.refresh(*key)
        current = fresh["metadata"].get("resourceVersion")
        if current != meta.get("resourceVersion"):
            raise kube.Conflict(
                f"DriftPolicy {key[0]}/{key[1]} is at resourceVersion {current}, not the "
                f"{meta.get('resourceVersion')} this pass decided on",
                key,
            )

    async def _start_run(
        self, obj: Mapping[str, Any], spec: DriftPolicySpec, decision: PolicyDecision, model: str
    ) -> None:
        assert decision.start_run is not None
        meta = obj["metadata"]
        evidence = dict(decision.evidence)
        recent = None
        if spec.retrain.recent_data is not None and spec.detector is not None:
            target = spec.retrain.training_run_template.dataset.target_column
            try:
                exported = await self.detector.export(
                    spec.detector.url,
                    meta["namespace"],
                    spec.target.inference_service,
                    spec.retrain.recent_data.uri_prefix,
                    target,
                )
            except DetectorError as error:
                # The retraining goes on with the template's data: drift confirmed is reason enough.
                evidence["recentData"] = f"unavailable: {error}"[:1024]
                events.post_event(obj, "Warning", "RecentDataUnavailable", str(error))
            else:
                recent = {"uri": exported.uri, "format": "csv", "hash": exported.hash}
                evidence["recentData"] = (
                    f"{exported.uri} ({exported.hash}): {exported.rows} rows, {exported.labelled} labelled"
                )[:1024]
        run = render_training_run(obj, spec, decision.start_run, evidence, recent)
        created = await self.client.create_object(TRAINING_RUN.plural, run)
        if created:
            metrics.RETRAININGS.labels("started", "DriftConfirmed").inc()
            logger.info(
                "DriftPolicy %s/%s started TrainingRun %s",
                meta["namespace"],
                meta["name"],
                decision.start_run,
            )

    def _post(self, obj: Mapping[str, Any], decision: PolicyDecision) -> None:
        for event in decision.events:
            events.post_event(obj, event.type, event.reason, event.message)
        phase = decision.status.phase
        if phase is not None and phase != (obj.get("status") or {}).get("phase"):
            meta = obj["metadata"]
            logger.info("DriftPolicy %s/%s is %s", meta["namespace"], meta["name"], phase)


def _rendered(template: str, context: QueryContext, model: str) -> str:
    """A metric's query with its placeholders substituted."""
    return context.render(template).replace("{{model}}", model).replace("{{ model }}", model)


def _refusal(previous: Mapping[str, Any], generation: int, reason: str, message: str) -> dict[str, Any]:
    """A policy the operator cannot act on is Degraded, and not Ready."""
    return refusal_status(previous, generation, DriftPolicyPhase.DEGRADED.value, reason, message, "False")
