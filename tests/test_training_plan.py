"""The reconcile of a TrainingRun as a pure decision: what to create, what to register, what to report."""

from __future__ import annotations

import json
from typing import Any

from modelloop.api import ModelVersionSpec, TrainingRunSpec, TrainingRunStatus
from modelloop.naming import ANNOTATION_RUN_UID, ANNOTATION_TRIAL_PARAMS, LABEL_TRIAL, job_name
from modelloop.training.job import ChampionModel, output_uri, render_job
from modelloop.training.observe import slim_job, slim_pod, slim_queued
from modelloop.training.plan import GangContext, plan_run
from modelloop.training.register import render_model_version, run_key_metric
from modelloop.training.sweep import grid_point

UID = "run-uid"


def run(spec_overrides: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "iris", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "image": "trainer:1",
            "params": {"estimator": "RandomForestClassifier"},
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "output": {"modelName": "iris"},
            "validation": {
                "gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.9}]
            },
            **(spec_overrides or {}),
        },
        "status": status or {},
    }


def spec_of(obj: dict[str, Any]) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(obj["spec"])


def status_of(obj: dict[str, Any]) -> TrainingRunStatus:
    """The run's status, parsed as the controller parses it when it reads the run."""
    return TrainingRunStatus.model_validate(obj["status"])


def finished_job(
    obj: dict[str, Any], accuracy: float | None, trial: int | None = None, **reported: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Job of ``obj`` that completed, and its pod with the trainer's termination message: its artifact in
    the folder the operator gave it (``output_uri`` with the artifact root ``file:///a``)."""
    name = job_name("iris", UID, trial)
    folder = output_uri(spec_of(obj), obj, "file:///a", trial)
    annotations = {ANNOTATION_RUN_UID: UID}
    labels = {}
    sweep = spec_of(obj).sweep
    if trial is not None and sweep is not None:
        # As render_job marks a trial's Job: its index, and the sweep's parameters it runs with.
        labels[LABEL_TRIAL] = str(trial)
        annotations[ANNOTATION_TRIAL_PARAMS] = json.dumps(grid_point(sweep, trial))
    job = {
        "metadata": {"name": name, "annotations": annotations, "labels": labels, "resourceVersion": "1"},
        "spec": {"template": {}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1},
    }
    message = None
    if accuracy is not None:
        message = json.dumps(
            {
                "status": "Succeeded",
                "metrics": {"accuracy": accuracy},
                "artifactUri": f"{folder}/model.joblib",
                "framework": "sklearn",
                **reported,
            }
        )
    pod = {
        "metadata": {
            "name": f"{name}-x",
            "labels": {"batch.kubernetes.io/job-name": name, "controller-uid": "c"},
            "annotations": {ANNOTATION_RUN_UID: UID},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    }
    # As the operator's indexes keep them.
    return slim_job(job), slim_pod(pod)


def test_a_new_run_creates_its_one_job() -> None:
    obj = run()
    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a")

    assert [j["metadata"]["name"] for j in plan.jobs_to_create] == [job_name("iris", UID)]
    assert plan.status.phase == "Pending"
    assert plan.registration is None


def test_a_queued_one_node_run_says_what_kueue_says_of_its_job() -> None:
    obj = run({"queueName": "team-a"}, status={"phase": "Pending", "engine": "Job"})
    job = render_job(obj, spec_of(obj), "file:///a")
    name = job["metadata"]["name"]
    assert job["spec"]["suspend"] is True
    why = "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default"
    workload = slim_queued(
        {
            "metadata": {"ownerReferences": [{"kind": "Job", "name": name, "uid": "u", "controller": True}]},
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": why}]},
        }
    )

    plan = plan_run(
        obj,
        spec_of(obj),
        status_of(obj),
        {name: job},
        [],
        "file:///a",
        gangs=GangContext(queued={name: workload}),
    )

    assert (plan.status.phase, plan.status.reason) == ("Pending", "Queued")
    assert plan.status.message == f"The Job waits to be admitted by its queue (Kueue): {why}"
    assert plan.jobs_to_create == []


def test_an_existing_job_is_never_created_again() -> None:
    obj = run()
    existing = render_job(obj, spec_of(obj), "file:///a")

    plan = plan_run(
        obj, spec_of(obj), status_of(obj), {existing["metadata"]["name"]: existing}, [], "file:///a"
    )

    assert plan.jobs_to_create == []


def test_a_finished_run_whose_job_was_cleaned_up_keeps_its_status() -> None:
    obj = run(status={"phase": "Succeeded", "metrics": {"accuracy": 0.97}, "modelVersion": "iris-v1"})

    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a")

    assert plan.jobs_to_create == []
    assert plan.status.phase == "Succeeded"
    assert plan.status.metrics == {"accuracy": 0.97}


def test_a_succeeded_job_registers_its_result() -> None:
    obj = run()
    job, pod = finished_job(obj, 0.97)

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert plan.status.phase == "Succeeded"
    assert plan.status.key_metric == "accuracy=0.97"
    assert plan.registration is not None
    assert plan.registration.result.metrics == {"accuracy": 0.97}


def test_a_succeeded_job_without_a_result_fails_the_run_saying_why() -> None:
    obj = run()
    job, pod = finished_job(obj, None)

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert (plan.status.phase, plan.status.reason) == ("Failed", "ResultMissing")
    assert plan.registration is None


FOREIGN = "file:///a/team-b/fraud/fraud-0a0b0c0d/model.joblib"


def test_a_job_reporting_an_artifact_outside_its_folder_fails_the_run_and_registers_nothing() -> None:
    obj = run()
    job, pod = finished_job(obj, 0.97, artifactUri=FOREIGN)

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert (plan.status.phase, plan.status.reason) == ("Failed", "ArtifactOutsideOutputFolder")
    assert plan.registration is None
    assert plan.status.artifact_uri is None
    message = plan.status.message or ""
    assert "artifactUri" in message and FOREIGN in message
    assert "file:///a/ml/iris/iris-runuid/" in message


def test_a_sibling_folder_sharing_the_runs_prefix_is_refused() -> None:
    obj = run()
    job, pod = finished_job(obj, 0.97, artifactUri="file:///a/ml/iris/iris-runuidx/model.joblib")

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert (plan.status.phase, plan.registration) == ("Failed", None)


def test_a_run_with_an_artifact_prefix_registers_only_inside_its_folder_below_the_prefix() -> None:
    obj = run({"output": {"modelName": "iris", "artifactUriPrefix": "s3://team-a/iris/"}})
    inside, outside = "s3://team-a/iris/iris-runuid/model.joblib", "s3://team-a/iris/model.joblib"
    jobs = {}
    for uri in (inside, outside):
        job, pod = finished_job(obj, 0.97, artifactUri=uri)
        jobs[uri] = plan_run(
            obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a"
        )

    assert jobs[inside].registration is not None and jobs[inside].status.phase == "Succeeded"
    assert jobs[outside].registration is None and jobs[outside].status.phase == "Failed"


def sweep_run(status: dict[str, Any] | None = None, **sweep: Any) -> dict[str, Any]:
    return run(
        {
            "sweep": {
                "parameters": {"n_estimators": [10, 50], "max_depth": [2, 8]},
                "parallelism": 2,
                "objective": {"metric": "accuracy", "direction": "Maximize"},
                **sweep,
            }
        },
        status,
    )


def test_a_sweep_starts_only_as_many_trials_as_its_parallelism() -> None:
    obj = sweep_run()
    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a")

    assert [j["metadata"]["labels"]["modelloop.dev/trial"] for j in plan.jobs_to_create] == ["0", "1"]
    # Only the trials that start are materialised; the rest are not even listed.
    assert [t.phase for t in plan.status.trials] == ["Pending", "Pending"]
    assert plan.status.trials_started == 2
    assert plan.status.phase == "Pending"


def test_a_finished_sweep_registers_its_best_trial_with_that_trials_params() -> None:
    obj = sweep_run()
    jobs, pods = {}, []
    for trial, accuracy in enumerate([0.91, 0.97, 0.93, None]):
        job, pod = finished_job(obj, accuracy, trial)
        jobs[job["metadata"]["name"]] = job
        pods.append(pod)

    plan = plan_run(obj, spec_of(obj), status_of(obj), jobs, pods, "file:///a")

    assert plan.jobs_to_create == []
    assert plan.status.phase == "Succeeded"
    assert plan.status.best_trial == 1
    assert plan.registration is not None
    assert plan.registration.params == {
        "estimator": "RandomForestClassifier",
        "n_estimators": 10,
        "max_depth": 8,
    }
    assert [t.metrics.get("accuracy") for t in plan.status.trials[:3]] == [0.91, 0.97, 0.93]
    assert plan.status.artifact_uri == "file:///a/ml/iris/iris-runuid/trial-1/model.joblib"


def test_a_sweeps_best_trial_may_register_only_from_its_own_trial_folder() -> None:
    obj = sweep_run()
    jobs, pods = {}, []
    # The best trial (1) reports the artifact of trial 0: inside the run's folder, not inside its own.
    for trial, accuracy in enumerate([0.91, 0.97, 0.93, 0.5]):
        reported = {"artifactUri": "file:///a/ml/iris/iris-runuid/trial-0/model.joblib"} if trial == 1 else {}
        job, pod = finished_job(obj, accuracy, trial, **reported)
        jobs[job["metadata"]["name"]] = job
        pods.append(pod)

    plan = plan_run(obj, spec_of(obj), status_of(obj), jobs, pods, "file:///a")

    assert (plan.status.phase, plan.status.reason) == ("Failed", "ArtifactOutsideOutputFolder")
    assert plan.registration is None
    assert "file:///a/ml/iris/iris-runuid/trial-1/" in (plan.status.message or "")


def test_the_registered_model_version_is_a_valid_immutable_record_with_lineage() -> None:
    obj = run({"triggeredBy": {"kind": "DriftPolicy", "name": "iris-drift", "evidence": {"psi": "0.4"}}})
    job, pod = finished_job(obj, 0.97)
    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")
    assert plan.registration is not None

    manifest = render_model_version(
        obj, spec_of(obj), plan.registration.result, 3, plan.registration.params, "sha256:" + "d" * 64
    )

    assert manifest["metadata"]["name"] == "iris-v3"
    assert manifest["metadata"]["labels"]["modelloop.dev/model"] == "iris"
    assert "ownerReferences" not in manifest["metadata"]
    spec = ModelVersionSpec.model_validate(manifest["spec"])
    assert spec.version == 3
    assert spec.lineage is not None and spec.lineage.training_run == "iris"
    assert spec.lineage.trigger is not None and spec.lineage.trigger.name == "iris-drift"
    assert spec.lineage.image_digest == "sha256:" + "d" * 64


def test_key_metric_prefers_the_gate_metric() -> None:
    obj = run()
    assert run_key_metric(spec_of(obj), {"f1_macro": 0.5, "accuracy": 0.95321}) == "accuracy=0.9532"
    assert run_key_metric(spec_of(run({"validation": None})), {"zeta": 1.0, "alpha": 2.0}) == "alpha=2"


CHAMPION = ChampionModel(name="iris-v3", artifact_uri="s3://models/iris/iris-3/model.joblib")


def test_a_new_run_names_the_champion_its_job_evaluates() -> None:
    obj = run()
    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a", CHAMPION)

    assert plan.status.champion == "iris-v3"
    assert plan.jobs_to_create == [render_job(obj, spec_of(obj), "file:///a", champion=CHAMPION)]
    without = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a")
    assert without.status.champion is None
    env = {e["name"] for e in without.jobs_to_create[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MODELLOOP_CHAMPION_URI" not in env


def test_the_recorded_champion_stays_while_the_job_runs_and_a_new_champion_changes_nothing() -> None:
    obj = run(status={"phase": "Running", "champion": "iris-v3"})
    job, pod = finished_job(obj, 0.97)
    job["status"] = {"active": 1}

    plan = plan_run(
        obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a", None
    )

    assert plan.status.champion == "iris-v3"


def test_the_champion_the_trainer_reports_is_recorded_and_registered() -> None:
    obj = run(status={"phase": "Running", "champion": "iris-v3"})
    reported = {
        "referenceUri": "file:///a/ml/iris/iris-runuid/reference.csv",
        "referencePredictionsUri": "file:///a/ml/iris/iris-runuid/reference_predictions.csv",
        "holdoutUri": "file:///a/ml/iris/iris-runuid/holdout.csv",
        "champion": {"version": "iris-v3", "metrics": {"accuracy": 0.95, "f1_macro": 0.94}},
    }
    job, pod = finished_job(obj, 0.97, **reported)

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert plan.status.champion == "iris-v3"
    assert plan.registration is not None
    manifest = render_model_version(obj, spec_of(obj), plan.registration.result, 4, {})
    spec = ModelVersionSpec.model_validate(manifest["spec"])
    assert spec.artifact.reference_uri == "file:///a/ml/iris/iris-runuid/reference.csv"
    assert (
        spec.artifact.reference_predictions_uri == "file:///a/ml/iris/iris-runuid/reference_predictions.csv"
    )
    assert spec.artifact.holdout_uri == "file:///a/ml/iris/iris-runuid/holdout.csv"
    assert spec.champion_evaluation is not None
    assert spec.champion_evaluation.version == "iris-v3"
    assert spec.champion_evaluation.metrics == {"accuracy": 0.95, "f1_macro": 0.94}


def test_a_champion_the_trainer_could_not_evaluate_is_not_registered_as_an_evaluation() -> None:
    obj = run()
    job, pod = finished_job(obj, 0.97, champion={"version": "iris-v3", "error": "cannot load s3://..."})

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert plan.registration is not None
    champion = plan.registration.result.champion
    assert champion is not None and champion.error == "cannot load s3://..."
    manifest = render_model_version(obj, spec_of(obj), plan.registration.result, 4, {})
    assert "championEvaluation" not in manifest["spec"]
    assert not {"referenceUri", "holdoutUri"} & set(manifest["spec"]["artifact"])


def test_a_sweeps_trials_evaluate_the_champion_and_the_status_names_it() -> None:
    obj = sweep_run()
    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a", CHAMPION)

    assert plan.status.champion == "iris-v3"
    for job in plan.jobs_to_create:
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MODELLOOP_CHAMPION_VERSION"] == "iris-v3"


def test_trials_dropped_from_status_are_not_followed_again_from_their_lingering_jobs() -> None:
    status = {
        "trialsStarted": 4,
        "trialsDropped": 2,
        "trials": [
            {
                "index": 2,
                "phase": "Succeeded",
                "params": {"n_estimators": 50, "max_depth": 2},
                "metrics": {"accuracy": 0.9},
                "finishedOrder": 2,
            },
            {"index": 3, "phase": "Running", "params": {"n_estimators": 50, "max_depth": 8}},
        ],
    }
    obj = sweep_run(status)
    jobs, pods = {}, []
    for trial, accuracy in enumerate([0.91, 0.97, 0.9, 0.93]):
        job, pod = finished_job(obj, accuracy, trial)
        jobs[job["metadata"]["name"]] = job
        pods.append(pod)

    plan = plan_run(obj, spec_of(obj), status_of(obj), jobs, pods, "file:///a")

    assert [t.index for t in plan.status.trials] == [2, 3]
    assert (plan.status.trials_started, plan.status.trials_dropped) == (4, 2)
    assert plan.status.phase == "Succeeded"
    assert plan.status.best_trial == 3  # the dropped trial 1 (0.97) is gone with its record
    assert plan.jobs_to_create == []
    # The lingering Jobs of dropped trials go, and that of trial 2, recorded before and not the best.
    assert plan.jobs_to_delete == [job_name("iris", UID, i) for i in (2, 0, 1)]


def test_a_sweep_recorded_by_an_older_operator_starts_no_trial_beyond_its_parallelism() -> None:
    status = {"trials": [{"index": i, "params": {}} for i in range(4)]}  # not started: no phase
    obj = sweep_run(status)

    plan = plan_run(obj, spec_of(obj), status_of(obj), {}, [], "file:///a")

    assert len(plan.jobs_to_create) == 2


def failed_job(obj: dict[str, Any], trial: int, message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    job, pod = finished_job(obj, None, trial)
    job["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": message}
    ]
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
    return job, pod


def recorded(index: int, accuracy: float | None, order: int) -> dict[str, Any]:
    trial: dict[str, Any] = {"index": index, "phase": "Failed" if accuracy is None else "Succeeded"}
    if accuracy is not None:
        trial["metrics"] = {"accuracy": accuracy}
    return {**trial, "params": {}, "finishedOrder": order}


def test_finished_trials_jobs_go_once_status_recorded_them_except_the_best_ones() -> None:
    # Trials 0-2 were recorded as finished by an earlier pass; trial 3 finishes in this one.
    status = {
        "trialsStarted": 4,
        "trials": [recorded(0, 0.91, 0), recorded(1, 0.97, 1), recorded(2, None, 2)],
    }
    status["trials"].append({"index": 3, "phase": "Running", "params": {}})
    obj = sweep_run(status)
    jobs, pods = {}, []
    for trial, accuracy in enumerate([0.91, 0.97, None, 0.93]):
        job, pod = finished_job(obj, accuracy, trial) if accuracy is not None else failed_job(obj, trial, "x")
        jobs[job["metadata"]["name"]] = job
        pods.append(pod)

    plan = plan_run(obj, spec_of(obj), status_of(obj), jobs, pods, "file:///a")

    # Not the best's (1), which registration reads, nor trial 3's, whose result this plan records first.
    assert plan.jobs_to_delete == [job_name("iris", UID, 0), job_name("iris", UID, 2)]
    assert plan.status.phase == "Succeeded" and plan.registration is not None
    assert plan.registration.result.artifact_uri == "file:///a/ml/iris/iris-runuid/trial-1/model.joblib"

    # The next pass, with trial 3 recorded: its Job goes too; the best's stays.
    again = sweep_run({**status, "trials": [*status["trials"][:3], recorded(3, 0.93, 3)]})
    left = {name: job for name, job in jobs.items() if name not in plan.jobs_to_delete}
    assert plan_run(again, spec_of(again), status_of(again), left, pods, "file:///a").jobs_to_delete == [
        job_name("iris", UID, 3)
    ]


def test_a_sweep_that_retains_its_trial_jobs_deletes_none_it_did_not_prune() -> None:
    status = {"trialsStarted": 2, "trials": [recorded(0, 0.91, 0), recorded(1, 0.97, 1)]}
    obj = sweep_run(status, retainTrialJobs=True)
    jobs = {}
    for trial, accuracy in enumerate([0.91, 0.97]):
        job, _ = finished_job(obj, accuracy, trial)
        jobs[job["metadata"]["name"]] = job

    plan = plan_run(obj, spec_of(obj), status_of(obj), jobs, [], "file:///a")

    assert plan.jobs_to_delete == []
    assert [t.phase for t in plan.status.trials[:2]] == ["Succeeded", "Succeeded"]


def test_a_failing_trial_says_why_in_an_event_before_its_job_goes() -> None:
    status = {"trialsStarted": 2, "trials": [{"index": 0, "phase": "Running", "params": {}}]}
    status["trials"].append({"index": 1, "phase": "Running", "params": {}})
    obj = sweep_run(status)
    job, pod = failed_job(obj, 0, "Job has reached the specified backoff limit")

    plan = plan_run(obj, spec_of(obj), status_of(obj), {job["metadata"]["name"]: job}, [pod], "file:///a")

    assert plan.events == [
        (
            "Warning",
            "TrialFailed",
            "Trial 0 failed: BackoffLimitExceeded: Job has reached the specified backoff limit "
            "Last pod: exit code 1 (Error)",
        )
    ]
    assert plan.status.trials[0].phase == "Failed"
    assert plan.jobs_to_delete == []  # recorded by this plan's write first
