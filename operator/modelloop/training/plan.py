"""The reconcile of a TrainingRun as a pure function: from the run and what exists, what to do next.

``plan_run`` decides; ``modelloop.controllers.trainingrun`` reads the cluster, calls it, and applies the
plan (creates Jobs, registers the ModelVersion, patches status).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelloop.api import EarlyStoppingRule, Pruning, Sweep, TrainingRunPhase, TrainingRunSpec, TrialPhase
from modelloop.api.meta import ParamValue
from modelloop.naming import job_name
from modelloop.training.job import ChampionModel, TrialPlan, job_trial_params, render_job, trial_index
from modelloop.training.observe import JOB_CREATED_MESSAGE, JobObservation, observe_job
from modelloop.training.register import registration_problem, run_key_metric
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
class RunPlan:
    """What the controller should do now. ``status`` lacks modelVersion, which registration fills in."""

    jobs_to_create: list[dict[str, Any]] = field(default_factory=list)
    jobs_to_delete: list[str] = field(default_factory=list)
    """Jobs (by name) of trials stopped early and, unless the sweep retains them, of finished trials that
    status recorded before, except the best one's; deleted once this plan's status is written."""
    registration: Registration | None = None
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """Events to post once the status is written: (type, reason, message)."""

    @property
    def phase(self) -> TrainingRunPhase:
        return TrainingRunPhase(self.status["phase"])


def plan_run(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    jobs: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    artifact_root: str,
    champion: ChampionModel | None = None,
    progress: Mapping[int, Sequence[tuple[int, Mapping[str, float]]]] | None = None,
) -> RunPlan:
    """Decide the next step of ``run`` given its Jobs (by name) and their pods.

    ``progress`` holds what a sweep's running trials reported since (by trial index: (step, metrics)),
    read from their pods' logs; early stopping judges the curves it adds to.

    ``champion`` is the model's current Champion: a Job created now evaluates it too, and the status
    records its name (``status.champion``), which the trainer's own report confirms once it finishes.
    """
    if spec.sweep is not None:
        return _plan_sweep(run, spec, jobs, pods, artifact_root, champion, progress or {})
    meta = run["metadata"]
    previous = run.get("status") or {}
    name = job_name(meta["name"], meta["uid"])
    job = jobs.get(name)
    if job is None:
        if previous.get("phase") in FINISHED:
            # Finished and the Job is gone (ttlSecondsAfterFinished): the status already tells the story.
            return RunPlan(status=_carry(previous))
        return RunPlan(
            jobs_to_create=[render_job(run, spec, artifact_root, champion=champion)],
            status={
                "phase": TrainingRunPhase.PENDING.value,
                "jobName": name,
                "reason": "JobCreated",
                "message": JOB_CREATED_MESSAGE,
                "champion": None if champion is None else champion.name,
            },
        )
    observation = observe_job(job, _pods_of(pods, name))
    status = {**_status_of(spec, observation, name), "champion": previous.get("champion")}
    registration = None
    if observation.phase == TrainingRunPhase.SUCCEEDED:
        status, registration = _registration(spec, observation, spec.params, status)
    return RunPlan(registration=registration, status=status)


def _plan_sweep(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    jobs: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    artifact_root: str,
    champion: ChampionModel | None,
    progress: Mapping[int, Sequence[tuple[int, Mapping[str, float]]]],
) -> RunPlan:
    sweep = spec.sweep
    assert sweep is not None
    meta = run["metadata"]
    previous = run.get("status") or {}
    metric = sweep.objective.metric
    seed = _seed(spec)
    total = sweep.trial_count()
    dropped = int(previous.get("trialsDropped") or 0)
    # Trials recorded with a phase; an operator before 0.2 also listed the trials not started yet.
    trials: dict[int, dict[str, Any]] = {
        int(t["index"]): dict(t) for t in previous.get("trials") or () if t.get("phase")
    }
    # Trials started before and no longer in status were dropped from it (compact_trials): their Jobs
    # may linger, but they are done with. Every other Job of the run is a trial to follow.
    recorded_started = previous.get("trialsStarted")
    started = int(recorded_started) if recorded_started is not None else len(trials) + dropped
    # What status recorded as final before this pass: those trials' results are safe in etcd.
    recorded_final = {index for index, t in trials.items() if t.get("phase") in FINAL_TRIAL}
    by_index: dict[int, Mapping[str, Any]] = {}
    lingering: list[str] = []
    for name, trial_job in jobs.items():
        index = trial_index(trial_job)
        if index is None or name != job_name(meta["name"], meta["uid"], index):
            continue
        if index < started and index not in trials:
            lingering.append(name)
            continue
        by_index[index] = trial_job
    started = max(started, max(by_index, default=-1) + 1)
    finished_count = sum(1 for t in trials.values() if t.get("finishedOrder") is not None)
    observations: dict[int, JobObservation] = {}
    to_create: list[TrialPlan] = []
    events: list[tuple[str, str, str]] = []

    for index in sorted({*trials, *by_index}):
        entry = trials.setdefault(index, {"index": index})
        entry["jobName"] = job_name(meta["name"], meta["uid"], index)
        job = by_index.get(index)
        if not entry.get("params") and job is not None:
            entry["params"] = job_trial_params(job)
        if entry.get("phase") in FINAL_TRIAL:
            continue  # a finished (or pruned) trial's record is final; its Job may linger or be gone
        if job is None:
            # Suggested and recorded, but its Job was never created (or the pass died before it was).
            entry["phase"] = TrialPhase.PENDING.value
            to_create.append(TrialPlan(index, dict(entry.get("params") or {})))
            continue
        observation = observe_job(job, _pods_of(pods, entry["jobName"]))
        observations[index] = observation
        entry["phase"] = observation.phase.value
        if sweep.early_stopping is not None:
            curve = merge_curve(entry.get("curve"), progress.get(index, ()), metric)
            if curve is not None:
                entry["curve"] = curve
        if observation.result is not None and observation.result.metrics:
            entry["metrics"] = observation.result.metrics
        if observation.finished:
            entry["finishedOrder"] = finished_count
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
        judged = [i for i in sorted(trials) if trials[i].get("phase") == TrialPhase.RUNNING.value]
        records = [record_of(t, metric) for t in trials.values()]
        for index, verdict in judge_all(sweep, records, judged).items():
            entry = trials[index]
            if verdict.rungs:
                entry["rungs"] = list(verdict.rungs)
            if verdict.pruning is None:
                continue
            entry.update(
                phase=TrialPhase.PRUNED.value,
                pruning=verdict.pruning.model_dump(mode="json", exclude_none=True),
                finishedOrder=finished_count,
            )
            finished_count += 1
            events.append(("Normal", "TrialPruned", prune_message(index, verdict.pruning, metric)))

    running = sum(1 for t in trials.values() if t.get("phase") not in FINAL_TRIAL)
    records = [record_of(t, metric) for t in trials.values()]
    while running < sweep.parallelism and started < total:
        params = trial_params(sweep, started, records, seed)
        trials[started] = {
            "index": started,
            "params": params,
            "phase": TrialPhase.PENDING.value,
            "jobName": job_name(meta["name"], meta["uid"], started),
            "suggestedAfter": finished_count,
        }
        records.append(record_of(trials[started], metric))  # the next suggestion sees this one running
        to_create.append(TrialPlan(started, params))
        started += 1
        running += 1

    ordered = [trials[i] for i in sorted(trials)]
    done = sum(1 for t in ordered if t.get("phase") in FINAL_TRIAL) + dropped
    best = best_trial(ordered, metric, sweep.objective.direction)
    if best is None:
        best = previous.get("bestTrial") if previous.get("bestTrial") in trials else None
    kept, newly_dropped = compact_trials(ordered, keep={best} if best is not None else set())
    status: dict[str, Any] = {
        "trials": [_trial_status(t) for t in kept],
        "trialsStarted": started,
        "trialsDropped": dropped + newly_dropped,
    }
    status["champion"] = previous.get("champion") or (champion.name if champion and to_create else None)
    pruned = sum(1 for t in ordered if t.get("phase") == TrialPhase.PRUNED.value)
    registration = None
    if done < total or running:
        phase = (
            TrainingRunPhase.RUNNING
            if done or any(o.phase == TrainingRunPhase.RUNNING for o in observations.values())
            else TrainingRunPhase.PENDING
        )
        status.update(
            phase=phase.value,
            reason="SweepRunning",
            message=f"{done}/{total} trials finished"
            + (f" ({pruned} stopped early)" if pruned else "")
            + f", {running} running (parallelism {sweep.parallelism}).",
        )
        if best is not None:
            status["bestTrial"] = best
    else:
        succeeded = sum(1 for t in ordered if t.get("phase") == TrialPhase.SUCCEEDED.value)
        if best is None:
            status.update(
                phase=TrainingRunPhase.FAILED.value,
                reason="NoSuccessfulTrial",
                message=f"None of the {total} trials succeeded with metric {metric}.",
            )
        else:
            best_observation = observations.get(best) or _observe_finished(
                by_index.get(best), pods, trials[best]["jobName"]
            )
            status.update(bestTrial=best, metrics=dict(trials[best].get("metrics") or {}))
            if best_observation is None or best_observation.result is None:
                status.update(
                    phase=TrainingRunPhase.FAILED.value,
                    reason="ResultMissing",
                    message=f"The best trial ({best}) has no result to register any more.",
                )
            else:
                status.update(
                    phase=TrainingRunPhase.SUCCEEDED.value,
                    reason="Succeeded",
                    message=f"{succeeded}/{total} trials succeeded"
                    + (f" ({pruned} stopped early)" if pruned else "")
                    + f"; trial {best} is the best by {metric} ({sweep.objective.direction.value}).",
                    jobName=trials[best]["jobName"],
                )
                params = {**spec.params, **(trials[best].get("params") or {})}
                status, registration = _registration(spec, best_observation, params, status)
        status["completionTime"] = max(
            (o.completion_time for o in observations.values() if o.completion_time),
            default=previous.get("completionTime"),
        )
    starts = [o.start_time for o in observations.values() if o.start_time]
    if previous.get("startTime"):
        starts.append(previous["startTime"])
    if starts:
        status["startTime"] = min(starts)
    if status.get("metrics"):
        status["keyMetric"] = run_key_metric(spec, status["metrics"])
    return RunPlan(
        jobs_to_create=[render_job(run, spec, artifact_root, trial, champion) for trial in to_create],
        jobs_to_delete=_jobs_to_delete(sweep, ordered, by_index, recorded_final, best, lingering),
        registration=registration,
        status=status,
        events=events,
    )


def _jobs_to_delete(
    sweep: Sweep,
    ordered: Sequence[Mapping[str, Any]],
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
        index = entry["index"]
        if index not in by_index:
            continue
        if entry.get("phase") == TrialPhase.PRUNED.value or (
            not sweep.retain_trial_jobs and index in recorded_final and index != best
        ):
            names.append(entry["jobName"])
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


def _observe_finished(
    job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], name: str
) -> JobObservation | None:
    return None if job is None else observe_job(job, _pods_of(pods, name))


def _status_of(spec: TrainingRunSpec, observation: JobObservation, name: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": observation.phase.value,
        "jobName": name,
        "reason": observation.reason,
        "message": observation.message,
    }
    if observation.start_time:
        status["startTime"] = observation.start_time
    if observation.completion_time:
        status["completionTime"] = observation.completion_time
    if observation.result is not None and observation.result.metrics:
        status["metrics"] = observation.result.metrics
        status["keyMetric"] = run_key_metric(spec, observation.result.metrics)
    return status


def _registration(
    spec: TrainingRunSpec,
    observation: JobObservation,
    params: Mapping[str, ParamValue],
    status: dict[str, Any],
) -> tuple[dict[str, Any], Registration | None]:
    """Complete a succeeded status with the trainer's result, or fail the run when it cannot register."""
    result = observation.result
    problem = (
        "The trainer left no result (termination message)."
        if result is None
        else registration_problem(result)
    )
    if problem is not None or result is None:
        return {
            **status,
            "phase": TrainingRunPhase.FAILED.value,
            "reason": "ResultMissing",
            "message": problem,
        }, None
    status = {**status, "artifactUri": result.artifact_uri, "metrics": result.metrics}
    if result.dataset_hash:
        status["datasetHash"] = result.dataset_hash
    if result.champion is not None:
        # The champion the registered model was actually compared with, as the trainer reports it.
        status["champion"] = result.champion.version
    if result.metrics:
        status["keyMetric"] = run_key_metric(spec, result.metrics)
    return status, Registration(result=result, params=dict(params), image_digest=observation.image_digest)


_TRIAL_FIELDS = (
    "index",
    "params",
    "phase",
    "metrics",
    "jobName",
    "curve",
    "rungs",
    "pruning",
    "suggestedAfter",
    "finishedOrder",
)


def _trial_status(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in _TRIAL_FIELDS if k in entry}


def _pods_of(pods: Sequence[Mapping[str, Any]], job: str) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job]


def _carry(previous: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "phase",
        "jobName",
        "reason",
        "message",
        "startTime",
        "completionTime",
        "metrics",
        "keyMetric",
        "artifactUri",
        "datasetHash",
        "trials",
        "trialsStarted",
        "trialsDropped",
        "bestTrial",
        "champion",
    )
    return {k: previous[k] for k in keep if k in previous}


def _seed(spec: TrainingRunSpec) -> int:
    seed = spec.params.get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
