"""TrainingRun: one training attempt (or sweep) as Kubernetes Jobs, followed to the end.

Level-triggered: any event of a run, of its Jobs or of their pods queues the run's key, and the work queue
reconciles it from kopf's in-memory indexes (no list calls per event). The decisions are pure
(``modelloop.training.plan`` and ``report``), from the run's status parsed once as it is read; this module
reads, applies the plan and writes status through the one status writer, which dumps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
import pydantic

from modelloop import kube
from modelloop.api import (
    GROUP,
    MODEL_VERSION,
    TRAINING_RUN,
    VERSION,
    TrainingRunPhase,
    TrainingRunSpec,
    TrainingRunStatus,
)
from modelloop.conditions import refusal_status
from modelloop.machinery import events
from modelloop.machinery.reconcile import ObjectReconciler, Parsed, Refused
from modelloop.machinery.status import StatusWriter, status_json
from modelloop.machinery.workqueue import WorkQueue
from modelloop.naming import ANNOTATION_RUN_UID, LABEL_TRAINING_RUN, label_value, run_of
from modelloop.reasons import API_REFUSED, INVALID_SPEC, describe_validation_error
from modelloop.settings import Settings
from modelloop.slim import slim_object
from modelloop.training import search
from modelloop.training.gang import TRAINJOB_API_VERSION, TRAINJOB_GROUP, TRAINJOB_PLURAL, TRAINJOB_VERSION
from modelloop.training.job import CONTAINER, ChampionModel, current_champion, trial_index
from modelloop.training.observe import slim_job, slim_pod, slim_queued
from modelloop.training.plan import GangContext, RunPlan, plan_run
from modelloop.training.progress import LOG_LIMIT_BYTES, LOG_TAIL_LINES, Point, parse_progress
from modelloop.training.register import render_model_version
from modelloop.training.report import report_refusal, report_run
from modelloop.training.sweep import FINAL_TRIAL_PHASES

RunKey = tuple[str, str]  # (namespace, run name)
PLURAL = TRAINING_RUN.plural
DEBOUNCE_SECONDS = 0.2
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
# How long the answer to "does the API server serve Kubeflow Trainer's TrainJobs?" is trusted.
DISCOVERY_SECONDS = 30.0

logger = logging.getLogger(__name__)


# What one run's spec may take in the operator's memory, serialised: more than the largest spec admission
# lets through (every field is bounded), so a spec over it was admitted without modelloop's admission policy
# or CRD; it is refused with InvalidSpec and the index keeps none of it.
MAX_SPEC_BYTES = 1024 * 1024
OVERSIZED = "oversizedSpec"
SPEC_JSON = "specJson"
TRIALS_JSON = "trialsJson"


# Index functions are async: kopf would run plain functions in a thread, once per event.
async def register_next_version(
    client: kube.KubeClient,
    namespace: str,
    model_name: str,
    render: Callable[[int], dict[str, Any]],
    attempts: int = 100,
) -> str:
    """Create the next version of a model, one more than the highest registered, and return its name. The
    version is part of the object's name, so when two runs finish at once the API server refuses the
    second create, which then takes the next number."""
    # By spec, not by label: a user may register versions by hand, with labels or without.
    existing = [
        mv
        for mv in await client.list_objects(MODEL_VERSION.plural, namespace)
        if (mv.get("spec") or {}).get("modelName") == model_name
    ]
    version = max((int(mv["spec"]["version"]) for mv in existing), default=0)
    for _ in range(attempts):
        # Each refusal means that number was just taken: the next one is tried, so that numbers stay
        # consecutive however many registrations race.
        version += 1
        manifest = render(version)
        if await client.create_object(MODEL_VERSION.plural, manifest):
            return str(manifest["metadata"]["name"])
    raise RuntimeError(f"could not register a version of {model_name} after {attempts} attempts")


@kopf.index(GROUP, VERSION, PLURAL)
async def training_runs(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """Every TrainingRun by (namespace, name), in the form ``compact_run`` keeps it."""
    return {(namespace or "", name): compact_run(slim_object(body))}


def compact_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as the operator keeps it in memory (its index, and the status writer's copy of what it
    wrote): the spec and a sweep's status.trials as their compact JSON text, parsed again by
    ``with_spec`` when the run is reconciled (a quarter to a third of the memory of their Python
    objects, and one object for the collector instead of thousands). Of a spec too large to keep, only
    its size."""
    compact = {k: v for k, v in run.items() if k not in ("spec", "status")}
    if "spec" in run:
        text = json.dumps(run["spec"], separators=(",", ":"))
        compact.pop(SPEC_JSON, None)
        if len(text) > MAX_SPEC_BYTES:
            compact[OVERSIZED] = len(text)
        else:
            compact[SPEC_JSON] = text
    status = dict(run.get("status") or {})
    trials = status.pop("trials", None)
    compact["status"] = status
    compact.pop(TRIALS_JSON, None)
    if trials:
        compact[TRIALS_JSON] = json.dumps(trials, separators=(",", ":"))
    elif TRIALS_JSON in run and "trials" not in (run.get("status") or {}):
        compact[TRIALS_JSON] = run[TRIALS_JSON]
    return compact


def with_spec(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run as the index keeps it, with its spec and status.trials parsed again."""
    parsed = {k: v for k, v in run.items() if k not in (SPEC_JSON, TRIALS_JSON)}
    if SPEC_JSON in run:
        parsed["spec"] = json.loads(run[SPEC_JSON])
    parsed.setdefault("spec", {})
    if TRIALS_JSON in run:
        parsed["status"] = {**(run.get("status") or {}), "trials": json.loads(run[TRIALS_JSON])}
    return parsed


@kopf.index("batch", "v1", "jobs", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def training_jobs(
    namespace: str | None, meta: kopf.Meta, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """The Jobs of each TrainingRun."""
    return {(namespace or "", run_of(meta) or ""): slim_job(body)}


@kopf.index(TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL, labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def training_trainjobs(
    namespace: str | None, meta: kopf.Meta, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """The Kubeflow Trainer TrainJobs of each distributed TrainingRun (where Trainer is installed)."""
    return {(namespace or "", run_of(meta) or ""): slim_job(body)}


@kopf.index(KUEUE_GROUP, KUEUE_VERSION, "workloads")
async def queued_workloads(
    namespace: str | None, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Kueue's Workloads, by (namespace, the name of the Job or TrainJob each queues): why a run waits."""
    queued = slim_queued(body)
    return {(namespace or "", str(queued["owner"] or "")): queued}


@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "workloads")
async def on_queued_workload(namespace: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Kueue admitted a Job or gang, or says something new of why it waits: look at its run again."""
    owner = slim_queued(body)["owner"]
    key = memo.manager.training_runs.queued_runs.get((namespace or "", str(owner or "")))
    if key is not None:
        memo.manager.training_runs.queue.add(key)


@kopf.index("v1", "pods", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def training_pods(
    namespace: str | None, meta: kopf.Meta, body: kopf.Body, **_: Any
) -> dict[RunKey, dict[str, Any]]:
    """The pods of each TrainingRun's Jobs."""
    return {(namespace or "", run_of(meta) or ""): slim_pod(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_training_run(
    type: str, namespace: str | None, name: str, status: kopf.Status, memo: Any, **_: Any
) -> None:
    controller: TrainingRunController = memo.manager.training_runs
    if type == "DELETED":
        controller.forget((namespace or "", name))
    else:
        # A new run has nothing that could come in a burst yet: its Job is created at once.
        controller.queue.add((namespace or "", name), debounce=bool(status))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
@kopf.on.event(TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL, labels={LABEL_TRAINING_RUN: kopf.PRESENT})
@kopf.on.event("v1", "pods", labels={LABEL_TRAINING_RUN: kopf.PRESENT})
async def on_training_workload(namespace: str | None, meta: kopf.Meta, memo: Any, **_: Any) -> None:
    run = run_of(meta)
    if run:
        memo.manager.training_runs.queue.add((namespace or "", run))


# Reconciles of runs at once. Each is mostly waiting on the API server (a Job created, a status written):
# under load a request takes tens of milliseconds, and 16 reconciles at once could not keep up with 16
# clients creating runs (bench/trainingruns.py); the API server serves many more at once.
WORKERS = 48
# Sweeps whose planning asks Optuna (a suggestion, a pruning verdict) plan in this many threads, so that
# no search holds up the event loop and other objects' reconciles.
SEARCH_THREADS = 2
# Passes of sweeps at once (each holds its sweep's history, parsed): twice the search threads, so that one
# writes while another plans.
SWEEP_PASSES = 2 * SEARCH_THREADS
# Trial logs read at once, over all runs, and how long one read may take.
LOG_READS = 8
LOG_READ_SECONDS = 5.0


class TrainingRunController:
    """Reconciles TrainingRuns; what it remembers of a run is valid for that run's uid only."""

    def __init__(
        self, settings: Settings, indexes: Mapping[str, Any], client: kube.KubeClient, workers: int = WORKERS
    ) -> None:
        self.settings = settings
        self.indexes = indexes
        self.client = client
        self.writer = StatusWriter(PLURAL, client, compact=compact_run)
        # Jobs created but not yet seen in the index, by run: (the run's uid, {Job name: manifest}). A
        # reconcile right after a create must not plan them again.
        self._created: dict[RunKey, tuple[str, dict[str, dict[str, Any]]]] = {}
        # Jobs deleted (finished or pruned trials) that the index still shows, by run: (uid, names). A
        # reconcile before their DELETED events neither plans on them nor deletes them again.
        self._deleted: dict[RunKey, tuple[str, set[str]]] = {}
        # When each run's trial logs were last read: (the run's uid, monotonic time).
        self._progress_read: dict[RunKey, tuple[str, float]] = {}
        # The run of each Job, TrainJob or gang of a queued or distributed run, by (namespace, name), for
        # Kueue's Workload events.
        self.queued_runs: dict[tuple[str, str], RunKey] = {}
        # Whether Kubeflow Trainer's TrainJobs are served, and when that was asked (monotonic time).
        self._trainer_served: tuple[bool, float] | None = None
        self._search_pool: ThreadPoolExecutor | None = None
        self._log_reads = asyncio.Semaphore(LOG_READS)
        self._sweep_passes = asyncio.Semaphore(SWEEP_PASSES)
        self.objects: ObjectReconciler[TrainingRunSpec, TrainingRunStatus] = ObjectReconciler(
            "TrainingRun",
            "training_runs",
            indexes,
            self.writer,
            _parse_spec,
            TrainingRunStatus.model_validate,
            self._reconcile_run,
            _refusal,
            view=with_spec,
            failure_message=lambda error: (
                f"The API server refused the operator's request: {kube.api_message(error)}"
            ),
        )
        self.queue = WorkQueue(
            "TrainingRun",
            self.reconcile,
            workers=workers,
            debounce=DEBOUNCE_SECONDS,
            on_failure=self.objects.report_failure,
        )

    def known_keys(self) -> list[RunKey]:
        """Every run the index holds (to pick all of them up after a handover)."""
        return list(self.indexes["training_runs"].keys())

    def forget(self, key: RunKey) -> None:
        self.queue.forget(key)
        self.writer.forget(key)
        self._created.pop(key, None)
        self._deleted.pop(key, None)
        self._progress_read.pop(key, None)
        for gang in [gang for gang, run in self.queued_runs.items() if run == key]:
            del self.queued_runs[gang]

    def close(self) -> None:
        """Let the search threads go (at shut-down)."""
        if self._search_pool is not None:
            self._search_pool.shutdown(wait=False, cancel_futures=True)
            self._search_pool = None

    def _is_sweep(self, key: RunKey) -> bool:
        """Whether the run ``key`` has a sweep, from its spec's text (without parsing it)."""
        run = next(iter(self.indexes["training_runs"].get(key, ())), None)
        return run is not None and '"sweep":' in run.get(SPEC_JSON, "")

    async def reconcile(self, key: RunKey) -> float | None:
        # A sweep's pass holds its whole history parsed (and a study while it plans): only a few at once,
        # however many of the workers hold sweeps.
        slot = self._sweep_passes if self._is_sweep(key) else contextlib.nullcontext()
        async with slot:
            return await self.objects.reconcile(key)

    async def _reconcile_run(self, parsed: Parsed[TrainingRunSpec, TrainingRunStatus]) -> float | None:
        run, spec, previous, generation = parsed.obj, parsed.spec, parsed.status, parsed.generation
        key = parsed.key
        uid = run["metadata"]["uid"]
        owned = self._owned(self.indexes["training_jobs"], key, uid)
        if spec.distributed is not None:
            owned += self._owned(self.indexes["training_trainjobs"], key, uid)
        jobs = {job["metadata"]["name"]: job for job in owned}
        deleted_uid, deleted = self._deleted.get(key, (uid, set()))
        deleted = {name for name in deleted if name in jobs} if deleted_uid == uid else set()
        if deleted:
            self._deleted[key] = (uid, deleted)
            jobs = {name: job for name, job in jobs.items() if name not in deleted}
        else:
            self._deleted.pop(key, None)
        remembered_uid, created = self._created.get(key, (uid, {}))
        if remembered_uid != uid:  # another run of the same name: nothing of the old one applies
            created = {}
        created = {name: job for name, job in created.items() if name not in jobs}
        self._created[key] = (uid, created)
        pods = self._owned(self.indexes["training_pods"], key, uid)
        progress = await self._progress(key, run, spec, previous, jobs, pods)
        gangs = await self._gangs(key, spec, previous, jobs)
        planning = functools.partial(
            plan_run,
            run,
            spec,
            previous,
            {**created, **jobs},
            pods,
            self.settings.artifact_root,
            self._champion(key[0], spec),
            progress,
            gangs,
        )
        if spec.sweep is not None and (search.uses_optuna(spec.sweep) or spec.sweep.early_stopping):
            plan = await asyncio.get_running_loop().run_in_executor(self._searches(), planning)
        else:
            plan = planning()

        for manifest in plan.jobs_to_create:
            # A new single-run Job is announced by the status transition (reason JobCreated); trial Jobs by
            # an event each.
            if await self.client.create_job(manifest) and spec.sweep is not None:
                events.post_event(
                    run, "Normal", "TrialStarted", f"Created Job {manifest['metadata']['name']}."
                )
            created[manifest["metadata"]["name"]] = manifest

        status = plan.status
        if previous.model_version:
            status = status.model_copy(update={"model_version": previous.model_version})
        elif plan.registration is not None:
            status = status.model_copy(update={"model_version": await self._register(run, spec, plan)})
        await self._write(run, previous, status, generation)
        # Only once status records why: a pruned trial's Job deleted before would be taken, on the next
        # pass, for one never created, and a finished trial's result would be lost with its Job.
        for name in plan.jobs_to_delete:
            kind = (jobs.get(name) or {}).get("kind")
            if kind == "TrainJob":
                await self.client.delete_job(key[0], name, TRAINJOB_API_VERSION, kind)
            else:
                await self.client.delete_job(key[0], name)
            deleted.add(name)
            self._deleted[key] = (uid, deleted)
        for type_, reason, message in plan.events:
            events.post_event(run, type_, reason, message)
        read = self._progress_read.get(key)
        if read is None or read[0] != uid:
            return None
        # A sweep with early stopping has trials running: read their progress again in a while.
        return max(0.0, read[1] + self.settings.trial_progress_seconds - time.monotonic())

    async def _gangs(
        self,
        key: RunKey,
        spec: TrainingRunSpec,
        previous: TrainingRunStatus,
        jobs: Mapping[str, Mapping[str, Any]],
    ) -> GangContext | None:
        """For a distributed run, whether Kubeflow Trainer may run it (asked only until the run has an
        engine); for a run in a queue, what Kueue says of its Jobs (or gangs) that wait."""
        if spec.distributed is None and spec.queue_name is None:
            return None
        namespace = key[0]
        queued = {}
        for name, job in jobs.items():
            self.queued_runs[(namespace, name)] = key
            for workload in self.indexes["queued_workloads"].get((namespace, name), ()):
                if workload.get("ownerUid") == job["metadata"].get("uid"):
                    queued[name] = workload
        installed = (
            spec.distributed is not None and previous.engine is None and await self._trainer_installed()
        )
        return GangContext(
            trainer_installed=installed, default_runtime=self.settings.training_runtime, queued=queued
        )

    async def _trainer_installed(self) -> bool:
        """Whether distributed runs go to Kubeflow Trainer: as the operator is configured, or (``auto``)
        whether the API server serves TrainJobs, asked at most every ``DISCOVERY_SECONDS``."""
        engine = self.settings.training_engine
        if engine != "auto":
            return engine == "KubeflowTrainer"
        now = time.monotonic()
        if self._trainer_served is None or now - self._trainer_served[1] > DISCOVERY_SECONDS:
            served = await self.client.serves(f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}", TRAINJOB_PLURAL)
            self._trainer_served = (served, now)
        return self._trainer_served[0]

    def _searches(self) -> ThreadPoolExecutor:
        if self._search_pool is None:
            self._search_pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="modelloop-search")
        return self._search_pool

    async def _progress(
        self,
        key: RunKey,
        run: Mapping[str, Any],
        spec: TrainingRunSpec,
        status: TrainingRunStatus,
        jobs: Mapping[str, Mapping[str, Any]],
        pods: Sequence[Mapping[str, Any]],
    ) -> dict[int, list[Point]]:
        """What the unfinished trials of a sweep with early stopping reported, read from their pods' logs
        at most once per ``trial_progress_seconds``; {} otherwise."""
        uid = run["metadata"]["uid"]
        if spec.sweep is None or spec.sweep.early_stopping is None:
            return {}
        final = {t.index for t in status.trials if t.phase in FINAL_TRIAL_PHASES}
        started_pods = {
            (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name"): pod["metadata"]["name"]
            for pod in pods
            if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
        }
        reading: dict[int, str] = {}
        for name, job in jobs.items():
            index = trial_index(job)
            if index is not None and index not in final and name in started_pods:
                reading[index] = started_pods[name]
        if not reading:
            self._progress_read.pop(key, None)
            return {}
        last = self._progress_read.get(key)
        now = time.monotonic()
        if last is not None and last[0] == uid and now - last[1] < self.settings.trial_progress_seconds:
            return {}
        self._progress_read[key] = (uid, now)
        logs = await asyncio.gather(*(self._read_log(key[0], pod) for pod in reading.values()))
        return {index: parse_progress(log) for index, log in zip(reading, logs, strict=True) if log}

    async def _read_log(self, namespace: str, pod: str) -> str | None:
        """A trial pod's recent log; None when it cannot be read now (the next poll tries again)."""
        async with self._log_reads:
            try:
                return await self.client.pod_log(
                    namespace,
                    pod,
                    CONTAINER,
                    tail_lines=LOG_TAIL_LINES,
                    limit_bytes=LOG_LIMIT_BYTES,
                    timeout=LOG_READ_SECONDS,
                )
            except (kube.ApiException, TimeoutError, OSError) as error:
                logger.debug("cannot read the log of pod %s/%s: %s", namespace, pod, error)
                return None

    def _champion(self, namespace: str, spec: TrainingRunSpec) -> ChampionModel | None:
        """The run's model's current Champion, from the registry's index: a Job created now evaluates it."""
        return current_champion(self.indexes["model_versions"].get((namespace, spec.output.model_name), ()))

    async def _write(
        self, run: dict[str, Any], previous: TrainingRunStatus, status: TrainingRunStatus, generation: int
    ) -> None:
        try:
            report = report_run(previous, status, generation, datetime.now(UTC))
        except pydantic.ValidationError as error:
            # What the CRD's schema refuses, such as a trainer's own failure reason that is no condition
            # reason: the run says so, as it did when the API server refused the write.
            problem = describe_validation_error(error, prefix="status.conditions[Ready]")
            raise Refused(API_REFUSED, f"The run's status cannot be written: {problem}") from error
        await self.writer.write(run, report.status)
        phase = report.status.phase
        if phase is not None and previous.phase != phase:
            meta = run["metadata"]
            logger.info("TrainingRun %s/%s is %s", meta["namespace"], meta["name"], phase.value)
        if report.event is not None:
            events.post_event(run, report.event.type, report.event.reason, report.event.message)

    async def _register(self, run: Mapping[str, Any], spec: TrainingRunSpec, plan: RunPlan) -> str:
        """The name of the run's ModelVersion, registering it unless an earlier pass already did."""
        assert plan.registration is not None
        meta = run["metadata"]
        selector = f"{LABEL_TRAINING_RUN}={label_value(meta['name'])}"
        existing = [
            mv
            for mv in await self.client.list_objects(MODEL_VERSION.plural, meta["namespace"], selector)
            if (mv["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_UID) == meta["uid"]
        ]
        if existing:
            return str(existing[0]["metadata"]["name"])
        registration = plan.registration
        name = await register_next_version(
            self.client,
            meta["namespace"],
            spec.output.model_name,
            lambda version: render_model_version(
                run, spec, registration.result, version, registration.params, registration.image_digest
            ),
        )
        events.post_event(run, "Normal", "ModelRegistered", f"Registered ModelVersion {name}.")
        return name

    @staticmethod
    def _owned(index: Any, key: RunKey, uid: str) -> list[dict[str, Any]]:
        """What the index holds for the run ``key`` that belongs to this very run (by uid)."""
        return [
            obj
            for obj in index.get(key, ())
            if (obj["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_UID) == uid
        ]


def _parse_spec(run: dict[str, Any]) -> TrainingRunSpec:
    """The run's spec; a spec larger than the operator takes is refused before it is parsed."""
    if run.get(OVERSIZED):
        raise Refused(
            INVALID_SPEC,
            f"spec is {run[OVERSIZED]} bytes serialised; the operator takes at most {MAX_SPEC_BYTES} "
            "(install modelloop's CRDs and admission policies, which bound every field)",
        )
    return TrainingRunSpec.model_validate(run["spec"])


def _refusal(previous: Mapping[str, Any], generation: int, reason: str, message: str) -> dict[str, Any]:
    """A run the operator cannot act on keeps its phase and the rest; Ready turns False with the reason.
    A status that cannot be read is left as it is but for those."""
    try:
        status = TrainingRunStatus.model_validate(previous)
    except pydantic.ValidationError:
        phase = str(previous.get("phase") or TrainingRunPhase.PENDING.value)
        return refusal_status(previous, generation, phase, reason, message, "False")
    return status_json(report_refusal(status, reason, message, generation, datetime.now(UTC)).status)
