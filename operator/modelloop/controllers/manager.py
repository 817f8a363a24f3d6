"""The controllers of one operator process, made at start-up and stopped at clean-up.

kopf hands every handler the same memo: the controllers (each with its work queue and status writer)
live there, not in module globals, so that what the operator remembers lives exactly as long as the
operator. With peering, a gate pauses every queue while another replica is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client.registry import Collector

from modelloop.api import GROUP, INFERENCE_SERVICE, MODEL_VERSION, VERSION
from modelloop.controllers.driftpolicy import DriftPolicyController, on_target_service
from modelloop.controllers.inferenceservice import (
    InferenceServiceController,
    on_inference_service,
    on_model_version_served,
)
from modelloop.controllers.modelversion import ModelRegistry, on_model_version, on_served_model
from modelloop.controllers.state_metrics import ObjectStates
from modelloop.controllers.trainingrun import TrainingRunController
from modelloop.kube import KubeClient
from modelloop.machinery import metrics
from modelloop.machinery.executors import query_pool
from modelloop.machinery.peering import PeeringGate
from modelloop.machinery.workqueue import WorkQueue
from modelloop.settings import Settings

logger = logging.getLogger(__name__)
SHUTDOWN_SECONDS = 10.0


# The kinds that several controllers follow get one kopf handler each, which calls every controller's own:
# kopf's cost is per handler and event.


@kopf.on.event(GROUP, VERSION, INFERENCE_SERVICE.plural)
async def on_inference_service_event(
    type: str, namespace: str | None, name: str, meta: kopf.Meta, spec: kopf.Spec, memo: Any, **_: Any
) -> None:
    """Every event of an InferenceService, for the three controllers that follow the kind: its own, the
    registry (what it serves sets stages) and the drift policies that watch it. One kopf handler, not
    three (a rollout step changes a service twice)."""
    manager: ControllerManager = memo.manager
    namespace = namespace or ""
    on_inference_service(manager.inference_services, type, (namespace, name), meta.get("resourceVersion"))
    on_served_model(manager.registry, namespace, spec)
    on_target_service(manager.drift_policies, namespace, name)


@kopf.on.event(GROUP, VERSION, MODEL_VERSION.plural)
async def on_model_version_event(
    type: str, namespace: str | None, name: str, spec: kopf.Spec, memo: Any, **_: Any
) -> None:
    """Every event of a ModelVersion, for the registry (its model's pass) and the InferenceServices that
    serve the model (a version registered, validated or removed may change what they serve)."""
    manager: ControllerManager = memo.manager
    namespace = namespace or ""
    on_model_version(manager.registry, type, namespace, name, spec)
    on_model_version_served(manager.inference_services, namespace, spec)


@dataclass
class ControllerManager:
    """Every controller of this operator process."""

    training_runs: TrainingRunController
    registry: ModelRegistry
    inference_services: InferenceServiceController
    drift_policies: DriftPolicyController
    client: KubeClient
    queries: Executor
    gate: asyncio.Task[None] | None = None
    metrics_server: Any = None
    collectors: tuple[Collector, ...] = ()
    """This manager's scrape-time metrics (queue depths, object states), registered while it runs."""
    active: bool = True
    """False while the peering gate holds this replica as a standby (its watches, and indexes, stop)."""

    def controllers(
        self,
    ) -> tuple[
        TrainingRunController | ModelRegistry | InferenceServiceController | DriftPolicyController, ...
    ]:
        return (self.training_runs, self.registry, self.inference_services, self.drift_policies)

    def queues(self) -> Iterator[WorkQueue[Any]]:
        for controller in self.controllers():
            yield controller.queue

    def pause(self) -> None:
        self.active = False
        for queue in self.queues():
            queue.pause()

    async def resume(self) -> None:
        """Go on, with every object the indexes hold queued once: what the other replica did meanwhile is
        in the indexes (kopf re-lists on resume), and each reconcile starts from there."""
        self.active = True
        for controller in self.controllers():
            for key in controller.known_keys():
                controller.queue.add(key)
            controller.queue.resume()


@kopf.on.startup()
async def start_controllers(memo: kopf.Memo, **kwargs: Any) -> None:
    """Make the controllers (kopf passes the indexes to start-up handlers too) and, with peering, the
    gate that pauses them while another replica is active."""
    settings: Settings = memo.settings
    indexes: Mapping[str, Any] = kwargs
    # The one client of this process: every controller's calls, with the operator's request metrics.
    client = KubeClient(observe=metrics.observe_api_request)
    # Blocking queries of Prometheus, for the rollouts' analysis and the drift policies.
    queries = query_pool()
    manager = ControllerManager(
        training_runs=TrainingRunController(settings, indexes, client),
        registry=ModelRegistry(settings, indexes, client),
        inference_services=InferenceServiceController(settings, indexes, client, queries),
        drift_policies=DriftPolicyController(settings, indexes, client, queries),
        client=client,
        queries=queries,
    )
    if settings.peering is not None and settings.priority is not None:
        gate = PeeringGate(
            client,
            settings.peering,
            settings.namespaces,
            memo.identity,
            settings.priority,
            on_pause=manager.pause,
            on_resume=manager.resume,
        )
        manager.gate = asyncio.get_running_loop().create_task(gate.run(), name="peering gate")
    manager.collectors = (
        metrics.QueueDepth(lambda: [(q.name, q.depth(), q.scheduled()) for q in manager.queues()]),
        # A standby's indexes are frozen: it reports no object states, so alerts see the active replica's.
        ObjectStates(lambda: indexes if manager.active else {}),
    )
    if settings.metrics_address is not None:
        manager.metrics_server = await metrics.serve(settings.metrics_address)
    # Last: a start-up that failed before (and that kopf retries) has registered nothing.
    for collector in manager.collectors:
        metrics.REGISTRY.register(collector)
    memo.manager = manager


@kopf.on.cleanup()
async def stop_controllers(memo: kopf.Memo, **_: Any) -> None:
    """Stop taking work and let the reconciles in flight finish (a bounded wait)."""
    manager: ControllerManager | None = getattr(memo, "manager", None)
    if manager is None:
        return
    if manager.gate is not None:
        manager.gate.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await manager.gate
    await asyncio.gather(*(queue.shutdown(SHUTDOWN_SECONDS) for queue in manager.queues()))
    logger.info("every work queue is drained")
    manager.training_runs.close()
    await manager.drift_policies.detector.close()
    if manager.metrics_server is not None:
        await manager.metrics_server.cleanup()
    await manager.client.close()
    for collector in manager.collectors:
        metrics.REGISTRY.unregister(collector)
    manager.queries.shutdown(wait=False, cancel_futures=True)
