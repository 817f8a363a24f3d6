"""The reconcile of a TrainingRun as a pure function: from the run, its status and what exists, what to
do next.

``plan_run`` decides, from the run's status as parsed (a ``TrainingRunStatus``) to the status to write;
``modelloop.controllers.trainingrun`` reads the cluster, calls it, and applies the plan (creates Jobs,
registers the ModelVersion, writes status).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelloop.api import (
    EarlyStoppingRule,
    Pruning,
    Sweep,
    TrainingEngine,
    TrainingRunPhase,
    TrainingRunSpec,
    TrainingRunStatus,
    Trial,
    TrialPhase,
)
from modelloop.api.meta import ParamValue
from modelloop.conditions import parse_time
from modelloop.naming import LABEL_ATTEMPT, LABEL_GANG, gang_name, job_name
from modelloop.training.gang import DEFAULT_RUNTIME, engine_for, render_gang
from modelloop.training.job import (
    ChampionModel,
    TrialPlan,
    job_trial_params,
    output_uri,
    render_job,
    trial_index,
)
from modelloop.training.observe import (
    GANG_CREATED_MESSAGE,
    JOB_CREATED_MESSAGE,
    JobObservation,
    observe_gang,
    observe_job,
)
from modelloop.training.register import RESULT_MISSING, registration_problem, run_key_metric
from modelloop.training.result import TrainerResult
from modelloop.training.search import judge_all
from modelloop.training.sweep import (
    FINAL_TRIAL_PHASES as FINAL_TRIAL,
)
from modelloop.training.sweep import (
    best_trial,
    compact_trials,
    merge_curve,
    record_of,
    trial_params,
)

FINISHED = (TrainingRunPhase.SUCCEEDED, TrainingRunPhase.FAILED)


@dataclass(frozen=True)
class Registration:
    """A finished run's model, to be registered as a ModelVersion."""

    result: TrainerResult
    params: dict[str, ParamValue]
    image_digest: str | None


@dataclass(frozen=True)
class GangContext:
    """What planning a distributed run needs to know of the cluster."""

    trainer_installed: bool = False
    """Whether the API server serves Kubeflow Trainer's TrainJob."""
    default_runtime: str = DEFAULT_RUNTIME
    queued: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Kueue's Workloads of the run's Jobs, TrainJobs and gangs, by the name of what each queues (as
    ``slim_queued`` keeps them)."""

    def engine(self, spec: TrainingRunSpec, previous: TrainingRunStatus) -> TrainingEngine:
        """The run's engine: the one it started on (status.engine), else what the cluster offers now."""
        if previous.engine in (TrainingEngine.INDEXED_JOB, TrainingEngine.KUBEFLOW_TRAINER):
            return previous.engine
        return engine_for(spec, self.trainer_installed)


@dataclass(frozen=True)
class RunPlan:
    """What the controller should do now. ``status`` lacks modelVersion, which registration fills in, and
    the Ready condition and observedGeneration, which ``modelloop.training.report`` adds."""

    jobs_to_create: list[dict[str, Any]] = field(default_factory=list)
    """The objects to create, in order: Jobs, and for a distributed run the Services and TrainJobs of its
    gangs."""
    jobs_to_delete: list[str] = field(default_factory=list)
    """Jobs (by name) of trials stopped early and, unless the sweep retains them, of finished trials that
    status recorded before, except the best one's; deleted once this plan's status is written."""
    registration: Registration | None = None
    status: TrainingRunStatus = field(default_factory=TrainingRunStatus)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """Events to post once the status is written: (type, reason, message)."""

    @property
    def phase(self) -> TrainingRunPhase | None:
        return self.status.phase


def plan_run(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    previous: TrainingRunStatus,
    jobs: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    artifact_root: str,
    champion: ChampionModel | None = None,
    progress: Mapping[int, Sequence[tuple[int, Mapping[str, float]]]] | None = None,
    gangs: GangContext | None = None,
) -> RunPlan:
    """Decide the next step of ``run``, whose status is ``previous``, given its Jobs (by name; for a
    distributed run its Indexed Jobs or TrainJobs) and their pods.

    ``gangs`` says, for a distributed run, whether Kubeflow Trainer is installed and its default runtime,
    and for any run in a queue what Kueue says of each of its Jobs (or gangs) that waits.

    ``progress`` holds what a sweep's running trials reported since (by trial index: (step, metrics)),
    read from their pods' logs; early stopping judges the curves it adds to.

    ``champion`` is the model's current Champion: a Job created now evaluates it too, and the status
    records its name (``status.champion``), which the trainer's own report confirms once it finishes.
    """
    gangs = gangs or GangContext()
    if spec.sweep is not None:
        return _plan_sweep(run, spec, previous, jobs, pods, artifact_root, champion, progress or {}, gangs)
    if spec.distributed is not None:
        return _plan_gang(run, spec, previous, jobs, pods, artifact_root, champion, gangs)
    meta = run["metadata"]
    name = job_name(meta["name"], meta["uid"])
    job = jobs.get(name)
    if job is None:
        if previous.phase in FINISHED:
            # Finished and the Job is gone (ttlSecondsAfterFinished): the status already tells the story.
            return RunPlan(status=_carry(previous))
        return RunPlan(
            jobs_to_create=[render_job(run, spec, artifact_root, champion=champion)],
            status=TrainingRunStatus(
                phase=TrainingRunPhase.PENDING,
                job_name=name,
                reason="JobCreated",
                message=JOB_CREATED_MESSAGE,
                champion=None if champion is None else champion.name,
                engine=TrainingEngine.JOB,
            ),
        )
    observation = observe_job(job, _pods_of(pods, name), gangs.queued.get(name))
    status = _status_of(spec, observation, name)
    status.champion, status.engine = previous.champion, TrainingEngine.JOB
    registration = None
    if observation.phase == TrainingRunPhase.SUCCEEDED:
        folder = output_uri(spec, run, artifact_root)
        status, registration = _registration(spec, observation, spec.params, status, folder)
    return RunPlan(registration=registration, status=status)


def _plan_sweep(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    previous: TrainingRunStatus,
    jobs: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    artifact_root: str,
    champion: ChampionModel | None,
    progress: Mapping[int, Sequence[tuple[int, Mapping[str, float]]]],
    gangs: GangContext,
) -> RunPlan:
    sweep = spec.sweep
    assert sweep is not None
    meta = run["metadata"]
    engine = gangs.engine(spec, previous)

    def trial_name(index: int) -> str:
        return _workload_name(spec, meta, index)

    def observe(job: Mapping[str, Any], name: str) -> JobObservation:
        return _observe(spec, job, pods, name, gangs)

    metric = sweep.objective.metric
    seed = _seed(spec)
    total = sweep.trial_count()
    dropped = previous.trials_dropped or 0
    # Trials recorded with a phase; an operator before 0.2 also listed the trials not started yet. Copies:
    # this pass updates them, the status as read stays as it was.
    trials: dict[int, Trial] = {t.index: t.model_copy() for t in previous.trials if t.phase is not None}
    # Trials started before and no longer in status were dropped from it (compact_trials): their Jobs
    # may linger, but they are done with. Every other Job of the run is a trial to follow.
    recorded_started = previous.trials_started
    started = recorded_started if recorded_started is not None else len(trials) + dropped
    # What status recorded as final before this pass: those trials' results are safe in etcd.
    recorded_final = {index for index, t in trials.items() if t.phase in FINAL_TRIAL}
    by_index: dict[int, Mapping[str, Any]] = {}
    lingering: list[str] = []
    for name, trial_job in jobs.items():
        index = trial_index(trial_job)
        if index is None or name != trial_name(index):
            continue
        if index < started and index not in trials:
            lingering.append(name)
            continue
        by_index[index] = trial_job
    started = max(started, max(by_index, default=-1) + 1)
    finished_count = sum(1 for t in trials.values() if t.finished_order is not None)
    observations: dict[int, JobObservation] = {}
    to_create: list[TrialPlan] = []
    events: list[tuple[str, str, str]] = []

    for index in sorted({*trials, *by_index}):
        entry = trials.setdefault(index, Trial(index=index))
        entry.job_name = name = trial_name(index)
        job = by_index.get(index)
        if not entry.params and job is not None:
            entry.params = job_trial_params(job)
        if entry.phase in FINAL_TRIAL:
            continue  # a finished (or pruned) trial's record is final; its Job may linger or be gone
        if job is None:
            # Suggested and recorded, but its Job was never created (or the pass died before it was).
            entry.phase = TrialPhase.PENDING
            to_create.append(TrialPlan(index, dict(entry.params)))
            continue
        observation = observe(job, name)
        observations[index] = observation
        entry.phase = TrialPhase(observation.phase.value)
        if sweep.early_stopping is not None:
            curve = merge_curve(entry.curve, progress.get(index, ()), metric)
            if curve is not None:
                entry.curve = curve
        if observation.result is not None and observation.result.metrics:
            entry.metrics = observation.result.metrics
        if observation.finished:
            entry.finished_order = finished_count
            finished_count += 1
            if observation.phase == TrainingRunPhase.FAILED:
                # Its Job (and the pod's log) goes once status records it: say why it failed while it can.
                events.append(
                    (
                        "Warning",
                        "TrialFailed",
                        f"Trial {index} failed: {observation.reason}: {observation.message}",
                    )
                )

    if sweep.early_stopping is not None:
        judged = [i for i in sorted(trials) if trials[i].phase == TrialPhase.RUNNING]
        records = [record_of(t, metric) for t in trials.values()]
        for index, verdict in judge_all(sweep, records, judged).items():
            entry = trials[index]
            if verdict.rungs:
                entry.rungs = list(verdict.rungs)
            if verdict.pruning is None:
                continue
            entry.phase, entry.pruning = TrialPhase.PRUNED, verdict.pruning
            entry.finished_order = finished_count
            finished_count += 1
            events.append(("Normal", "TrialPruned", prune_message(index, verdict.pruning, metric)))

    running = sum(1 for t in trials.values() if t.phase not in FINAL_TRIAL)
    records = [record_of(t, metric) for t in trials.values()]
    while running < sweep.parallelism and started < total:
        params = trial_params(sweep, started, records, seed)
        trials[started] = Trial(
            index=started,
            params=params,
            phase=TrialPhase.PENDING,
            job_name=trial_name(started),
            suggested_after=finished_count,
        )
        records.append(record_of(trials[started], metric))  # the next suggestion sees this one running
        to_create.append(TrialPlan(started, params))
        started += 1
        running += 1

    ordered = [trials[i] for i in sorted(trials)]
    done = sum(1 for t in ordered if t.phase in FINAL_TRIAL) + dropped
    best = best_trial(ordered, metric, sweep.objective.direction)
    if best is None:
        best = previous.best_trial if previous.best_trial in trials else None
    kept, newly_dropped = compact_trials(ordered, keep={best} if best is not None else set())
    status = TrainingRunStatus(trials=kept, trials_started=started, trials_dropped=dropped + newly_dropped)
    status.champion = previous.champion or (champion.name if champion and to_create else None)
    pruned = sum(1 for t in ordered if t.phase == TrialPhase.PRUNED)
    registration = None
    if done < total or running:
        status.phase = (
            TrainingRunPhase.RUNNING
            if done or any(o.phase == TrainingRunPhase.RUNNING for o in observations.values())
            else TrainingRunPhase.PENDING
        )
        status.reason = "SweepRunning"
        status.message = (
            f"{done}/{total} trials finished"
            + (f" ({pruned} stopped early)" if pruned else "")
            + f", {running} running (parallelism {sweep.parallelism})."
        )
        if best is not None:
            status.best_trial = best
    else:
        succeeded = sum(1 for t in ordered if t.phase == TrialPhase.SUCCEEDED)
        if best is None:
            status.phase, status.reason = TrainingRunPhase.FAILED, "NoSuccessfulTrial"
            status.message = f"None of the {total} trials succeeded with metric {metric}."
        else:
            best_job = trial_name(best)
            best_job_object = by_index.get(best)
            best_observation = observations.get(best) or (
                None if best_job_object is None else observe(best_job_object, best_job)
            )
            status.best_trial, status.metrics = best, dict(trials[best].metrics)
            if best_observation is None or best_observation.result is None:
                status.phase, status.reason = TrainingRunPhase.FAILED, RESULT_MISSING
                status.message = f"The best trial ({best}) has no result to register any more."
            else:
                status.phase, status.reason = TrainingRunPhase.SUCCEEDED, "Succeeded"
                status.job_name = best_job
                status.message = (
                    f"{succeeded}/{total} trials succeeded"
                    + (f" ({pruned} stopped early)" if pruned else "")
                    + f"; trial {best} is the best by {metric} ({sweep.objective.direction.value})."
                )
                params = {**spec.params, **trials[best].params}
                folder = output_uri(spec, run, artifact_root, best)
                status, registration = _registration(spec, best_observation, params, status, folder)
        status.completion_time = max(
            _times(o.completion_time for o in observations.values()), default=previous.completion_time
        )
    starts = _times(o.start_time for o in observations.values())
    starts += _times([previous.start_time])
    if starts:
        status.start_time = min(starts)
    if status.metrics:
        status.key_metric = run_key_metric(spec, status.metrics)
    status.engine = engine
    return RunPlan(
        jobs_to_create=[
            manifest
            for trial in to_create
            for manifest in _render(engine, run, spec, artifact_root, trial, champion, gangs)
        ],
        jobs_to_delete=_jobs_to_delete(sweep, ordered, by_index, recorded_final, best, lingering),
        registration=registration,
        status=status,
        events=events,
    )


def _jobs_to_delete(
    sweep: Sweep,
    ordered: Sequence[Trial],
    by_index: Mapping[int, Mapping[str, Any]],
    recorded_final: set[int],
    best: int | None,
    lingering: Sequence[str],
) -> list[str]:
    """The Jobs to delete after this pass's status write: those of trials pruned (now or before), and,
    unless ``retainTrialJobs``, those of every finished trial that status had recorded before this pass
    (its result is in etcd) except the best one's, which registration reads, and those of trials dropped
    from status. The operator keeps each Job and pod it watches in memory: a sweep then costs it only its
    running trials and its best, however many trials it has."""
    names = []
    for entry in ordered:
        index = entry.index
        if index not in by_index or entry.job_name is None:
            continue
        if entry.phase == TrialPhase.PRUNED or (
            not sweep.retain_trial_jobs and index in recorded_final and index != best
        ):
            names.append(entry.job_name)
    if not sweep.retain_trial_jobs:
        names += lingering
    return names


def prune_message(index: int, pruning: Pruning, metric: str) -> str:
    """What a stopped trial's event says: the step, its value and what it had to reach."""
    against = (
        (
            f"the median of the completed trials, {pruning.threshold:.4g}"
            if pruning.rule == EarlyStoppingRule.MEDIAN
            else f"its rung's cut-off, {pruning.threshold:.4g}"
        )
        if pruning.threshold is not None
        else "the others"
    )
    return (
        f"Trial {index} stopped at step {pruning.step} ({pruning.rule.value}): its best {metric} so far, "
        f"{pruning.value:.4g}, is worse than {against}."
    )


def _workload_name(
    spec: TrainingRunSpec, meta: Mapping[str, Any], trial: int | None, attempt: int = 0
) -> str:
    """The name of a run's Job (or one trial's): a gang's name for a distributed run."""
    if spec.distributed is not None:
        return gang_name(meta["name"], meta["uid"], trial, attempt)
    return job_name(meta["name"], meta["uid"], trial)


def _observe(
    spec: TrainingRunSpec,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    name: str,
    gangs: GangContext,
) -> JobObservation:
    """One Job's (or gang's) state, from it and its pods."""
    if spec.distributed is None:
        return observe_job(job, _pods_of(pods, name), gangs.queued.get(name))
    return observe_gang(job, _gang_pods(pods, name), spec.distributed.nodes, gangs.queued.get(name))


def _render(
    engine: TrainingEngine,
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    artifact_root: str,
    trial: TrialPlan | None,
    champion: ChampionModel | None,
    gangs: GangContext,
    attempt: int = 0,
) -> list[dict[str, Any]]:
    """What to create for a run (or one trial): its Job, or its gang's objects."""
    if spec.distributed is None:
        return [render_job(run, spec, artifact_root, trial, champion)]
    return render_gang(
        engine,
        run,
        spec,
        artifact_root,
        attempt=attempt,
        trial=trial,
        champion=champion,
        default_runtime=gangs.default_runtime,
    )


def _plan_gang(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    previous: TrainingRunStatus,
    jobs: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    artifact_root: str,
    champion: ChampionModel | None,
    gangs: GangContext,
) -> RunPlan:
    """A distributed run: one gang per attempt. A failed attempt (any node failed) is retried whole, as a
    new gang, while spec.backoffLimit allows; only a gang whose every node completed registers, with
    node 0's result."""
    assert spec.distributed is not None
    meta = run["metadata"]
    engine = gangs.engine(spec, previous)
    attempts: dict[int, Mapping[str, Any]] = {}
    for existing, workload in jobs.items():
        label = (workload["metadata"].get("labels") or {}).get(LABEL_ATTEMPT)
        attempt = int(label) if label is not None and label.isdigit() else None
        if attempt is not None and existing == _workload_name(spec, meta, None, attempt):
            attempts[attempt] = workload
    # The attempt status recorded, or a later one whose gang exists (created before the status write).
    current = max(previous.attempt or 0, max(attempts, default=0))
    name = _workload_name(spec, meta, None, current)
    job = attempts.get(current)
    if job is None:
        if previous.phase in FINISHED:
            return RunPlan(status=_carry(previous))
        status = TrainingRunStatus(
            phase=TrainingRunPhase.PENDING,
            job_name=name,
            reason="GangCreated",
            message=GANG_CREATED_MESSAGE,
            champion=previous.champion or (None if champion is None else champion.name),
            engine=engine,
            attempt=current,
            start_time=previous.start_time,
        )
        return RunPlan(
            jobs_to_create=_render(engine, run, spec, artifact_root, None, champion, gangs, current),
            status=status,
        )
    observation = _observe(spec, job, pods, name, gangs)
    status = _status_of(spec, observation, name)
    status.champion, status.engine, status.attempt = previous.champion, engine, current
    status.start_time = previous.start_time or status.start_time
    # A TrainJob's Jobs would retry a failed pod on their own: a failed attempt's TrainJob goes (once status
    # records the failure), which stops its other nodes. A failed Indexed Job stopped its pods itself.
    ended = [name] if observation.phase == TrainingRunPhase.FAILED and job.get("kind") == "TrainJob" else []
    retries = spec.backoff_limit or 0
    if observation.phase == TrainingRunPhase.FAILED and current < retries:
        following = current + 1
        failure = f"Attempt {current + 1} of {retries + 1} failed: {observation.message}"
        status = status.model_copy(
            update={
                "phase": TrainingRunPhase.RUNNING,
                "reason": "GangRestarted",
                "message": f"{failure} The whole gang restarts as attempt {following + 1}.",
                "attempt": following,
                "job_name": _workload_name(spec, meta, None, following),
                "completion_time": None,
            }
        )
        return RunPlan(
            jobs_to_create=_render(engine, run, spec, artifact_root, None, champion, gangs, following),
            jobs_to_delete=ended,
            status=status,
            events=[("Warning", "AttemptFailed", failure)],
        )
    registration = None
    if observation.phase == TrainingRunPhase.SUCCEEDED:
        folder = output_uri(spec, run, artifact_root)
        status, registration = _registration(spec, observation, spec.params, status, folder)
    elif observation.phase == TrainingRunPhase.FAILED and retries:
        status.message = f"{status.message} (attempt {current + 1} of {retries + 1}, the last)"
    return RunPlan(registration=registration, status=status, jobs_to_delete=ended)


def _status_of(spec: TrainingRunSpec, observation: JobObservation, name: str) -> TrainingRunStatus:
    status = TrainingRunStatus(phase=observation.phase, job_name=name)
    status.reason, status.message = observation.reason, observation.message
    status.start_time = parse_time(observation.start_time)
    status.completion_time = parse_time(observation.completion_time)
    if observation.result is not None and observation.result.metrics:
        status.metrics = observation.result.metrics
        status.key_metric = run_key_metric(spec, observation.result.metrics)
    return status


def _registration(
    spec: TrainingRunSpec,
    observation: JobObservation,
    params: Mapping[str, ParamValue],
    status: TrainingRunStatus,
    output_folder: str,
) -> tuple[TrainingRunStatus, Registration | None]:
    """Complete a succeeded status with the trainer's result, or fail the run when it cannot register:
    no result, or one that names a file outside ``output_folder``, the folder the Job was given."""
    result = observation.result
    status = status.model_copy()
    if result is None:
        status.phase, status.reason = TrainingRunPhase.FAILED, RESULT_MISSING
        status.message = "The trainer left no result (termination message)."
        return status, None
    problem = registration_problem(result, output_folder)
    if problem is not None:
        status.phase, status.reason, status.message = TrainingRunPhase.FAILED, problem.reason, problem.message
        return status, None
    status.artifact_uri, status.metrics = result.artifact_uri, result.metrics
    if result.dataset_hash:
        status.dataset_hash = result.dataset_hash
    if result.champion is not None:
        # The champion the registered model was actually compared with, as the trainer reports it.
        status.champion = result.champion.version
    if result.metrics:
        status.key_metric = run_key_metric(spec, result.metrics)
    return status, Registration(result=result, params=dict(params), image_digest=observation.image_digest)


def _gang_pods(pods: Sequence[Mapping[str, Any]], gang: str) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_GANG) == gang]


def _pods_of(pods: Sequence[Mapping[str, Any]], job: str) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job]


def _carry(previous: TrainingRunStatus) -> TrainingRunStatus:
    """The status as it was, less what every pass sets anew (the controller its modelVersion, the report
    the Ready condition and observedGeneration)."""
    return previous.model_copy(update={"model_version": None, "conditions": [], "observed_generation": None})


def _times(values: Iterable[str | datetime | None]) -> list[datetime]:
    """The times among ``values`` (as a Job's status writes them, or parsed), to compare."""
    return [moment for value in values if (moment := parse_time(value)) is not None]


def _seed(spec: TrainingRunSpec) -> int:
    seed = spec.params.get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
