"""The reconcile of a TrainingRun as a pure function: from the run and what exists, what to do next.

``plan_run`` decides; ``modelloop.controllers.trainingrun`` reads the cluster, calls it, and applies the
plan (creates Jobs, registers the ModelVersion, patches status).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelloop.api import TrainingRunPhase, TrainingRunSpec
from modelloop.api.meta import ParamValue
from modelloop.naming import job_name
from modelloop.training.job import ChampionModel, render_job
from modelloop.training.observe import JOB_CREATED_MESSAGE, JobObservation, observe_job
from modelloop.training.register import registration_problem, run_key_metric
from modelloop.training.result import TrainerResult
from modelloop.training.sweep import TrialState, best_trial, plan_trials, trials_to_start

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
    registration: Registration | None = None
    status: dict[str, Any] = field(default_factory=dict)

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
) -> RunPlan:
    """Decide the next step of ``run`` given its Jobs (by name) and their pods.

    ``champion`` is the model's current Champion: a Job created now evaluates it too, and the status
    records its name (``status.champion``), which the trainer's own report confirms once it finishes.
    """
    if spec.sweep is not None:
        return _plan_sweep(run, spec, jobs, pods, artifact_root, champion)
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
) -> RunPlan:
    assert spec.sweep is not None
    meta = run["metadata"]
    previous = run.get("status") or {}
    recorded = {t["index"]: t for t in previous.get("trials") or ()}
    plan = plan_trials(spec.sweep, seed=_seed(spec))
    states: list[TrialState] = []
    trials: list[dict[str, Any]] = []
    observations: dict[int, JobObservation] = {}
    for trial in plan:
        name = job_name(meta["name"], meta["uid"], trial.index)
        job = jobs.get(name)
        entry: dict[str, Any] = {
            "index": trial.index,
            "params": {**spec.params, **trial.params},
            "jobName": name,
        }
        if job is not None:
            observation = observe_job(job, _pods_of(pods, name))
            observations[trial.index] = observation
            entry["phase"] = observation.phase.value
            if observation.result is not None and observation.result.metrics:
                entry["metrics"] = observation.result.metrics
            if observation.phase == TrainingRunPhase.FAILED:
                entry["reason"] = observation.reason
            states.append(TrialState(trial.index, True, observation.phase, entry.get("metrics", {})))
        elif (old := recorded.get(trial.index)) and old.get("phase") in FINISHED:
            # The trial's Job was removed after it finished: keep what the status recorded.
            entry.update({k: old[k] for k in ("phase", "metrics", "reason") if k in old})
            states.append(
                TrialState(trial.index, True, TrainingRunPhase(old["phase"]), old.get("metrics", {}))
            )
        else:
            states.append(TrialState(trial.index, False))
        trials.append(entry)

    to_start = trials_to_start(plan, states, spec.sweep.parallelism)
    for trial in to_start:
        trials[trial.index]["phase"] = TrainingRunPhase.PENDING.value
    running = sum(1 for s in states if s.has_job and not s.finished) + len(to_start)
    done = sum(1 for s in states if s.finished)
    succeeded = [s for s in states if s.phase == TrainingRunPhase.SUCCEEDED]
    status: dict[str, Any] = {"trials": [_trial_status(t) for t in trials]}
    status["champion"] = previous.get("champion") or (champion.name if champion and to_start else None)
    registration = None
    if done < len(plan):
        phase = (
            TrainingRunPhase.RUNNING
            if done or any(o.phase == TrainingRunPhase.RUNNING for o in observations.values())
            else TrainingRunPhase.PENDING
        )
        status.update(
            phase=phase.value,
            reason="SweepRunning",
            message=f"{done}/{len(plan)} trials finished, {running} running "
            f"(parallelism {spec.sweep.parallelism}).",
        )
    else:
        objective = spec.sweep.objective
        best = best_trial(states, objective.metric, objective.direction)
        if best is None:
            status.update(
                phase=TrainingRunPhase.FAILED.value,
                reason="NoSuccessfulTrial",
                message=f"None of the {len(plan)} trials succeeded with metric {objective.metric}.",
            )
        else:
            best_observation = observations.get(best.index)
            status.update(bestTrial=best.index, metrics=dict(best.metrics))
            if best_observation is None or best_observation.result is None:
                status.update(
                    phase=TrainingRunPhase.FAILED.value,
                    reason="ResultMissing",
                    message=f"The best trial ({best.index}) has no result to register any more.",
                )
            else:
                status.update(
                    phase=TrainingRunPhase.SUCCEEDED.value,
                    reason="Succeeded",
                    message=f"{len(succeeded)}/{len(plan)} trials succeeded; trial {best.index} is the "
                    f"best by {objective.metric} ({objective.direction.value}).",
                    jobName=trials[best.index]["jobName"],
                )
                status, registration = _registration(
                    spec, best_observation, trials[best.index]["params"], status
                )
        status["completionTime"] = max(
            (o.completion_time for o in observations.values() if o.completion_time), default=None
        )
    starts = [o.start_time for o in observations.values() if o.start_time]
    if starts:
        status["startTime"] = min(starts)
    if status.get("metrics"):
        status["keyMetric"] = run_key_metric(spec, status["metrics"])
    return RunPlan(
        jobs_to_create=[render_job(run, spec, artifact_root, trial, champion) for trial in to_start],
        registration=registration,
        status=status,
    )


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


def _trial_status(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("index", "params", "phase", "metrics", "jobName") if k in entry}


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
        "bestTrial",
        "champion",
    )
    return {k: previous[k] for k in keep if k in previous}


def _seed(spec: TrainingRunSpec) -> int:
    seed = spec.params.get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
