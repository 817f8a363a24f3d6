"""Distributed TrainingRuns: the gang's objects on each engine, and the decisions of its attempts (a failed
node fails the attempt, backoffLimit restarts the whole gang, only node 0's result of a complete gang
registers, Kueue's reason while it waits)."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from modelloop.api import TrainingEngine, TrainingRunSpec, TrainingRunStatus
from modelloop.naming import (
    ANNOTATION_RUN_UID,
    LABEL_ATTEMPT,
    LABEL_GANG,
    LABEL_TRAINING_RUN,
    MAX_GANG_NAME,
    gang_name,
)
from modelloop.training.gang import (
    COMPLETION_INDEX,
    MASTER_PORT,
    TRAINJOB_KIND,
    procs_per_node,
    render_gang,
    whole_cpus,
)
from modelloop.training.job import KUEUE_QUEUE_LABEL, output_uri
from modelloop.training.observe import slim_job, slim_pod, slim_queued
from modelloop.training.plan import GangContext, plan_run

UID = "0c5a9e1f-2d4b-4c8a-9f00-1234567890ab"
ROOT = "file:///a"


def run(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "digits", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "image": "trainer:1",
            "params": {"estimator": "TorchMLPClassifier", "epochs": 5},
            "dataset": {"uri": "sklearn://digits", "format": "sklearn"},
            "output": {"modelName": "digits"},
            "distributed": {"nodes": 2, "procsPerNode": 2},
            **(spec or {}),
        },
        "status": status or {},
    }


def parsed(obj: dict[str, Any]) -> tuple[TrainingRunSpec, TrainingRunStatus]:
    return TrainingRunSpec.model_validate(obj["spec"]), TrainingRunStatus.model_validate(obj["status"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def gang(obj: dict[str, Any], attempt: int = 0, engine: TrainingEngine = TrainingEngine.INDEXED_JOB) -> dict:
    """The attempt's Job (or TrainJob), as the operator's index keeps it."""
    spec, _ = parsed(obj)
    workload = render_gang(engine, obj, spec, ROOT, attempt=attempt)[-1]
    workload["metadata"]["uid"] = f"uid-{attempt}"
    return slim_job(workload)


def with_condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    job["status"] = {
        "conditions": [{"type": type_, "status": "True", "lastTransitionTime": "2026-12-06T10:00:00Z"}]
    }
    return job


def node_pod(
    obj: dict[str, Any],
    index: int,
    exit_code: int | None,
    message: str | None = None,
    attempt: int = 0,
    finished: str = "2026-12-06T10:00:00Z",
) -> dict[str, Any]:
    name = gang_name("digits", UID, None, attempt)
    state: dict[str, Any] = (
        {"running": {}}
        if exit_code is None
        else {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": finished}}
    )
    phase = "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")
    return slim_pod(
        {
            "metadata": {
                "name": f"{name}-{index}-abcde",
                "labels": {LABEL_GANG: name, LABEL_TRAINING_RUN: "digits", COMPLETION_INDEX: str(index)},
                "annotations": {ANNOTATION_RUN_UID: UID, COMPLETION_INDEX: str(index)},
            },
            "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
        }
    )


def result(obj: dict[str, Any], accuracy: float) -> str:
    spec, _ = parsed(obj)
    folder = output_uri(spec, obj, ROOT)
    return json.dumps(
        {
            "status": "Succeeded",
            "metrics": {"accuracy": accuracy},
            "artifactUri": f"{folder}/model.pt",
            "framework": "pytorch",
        }
    )


# --- admission: what may train distributed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "sweep", "refused"),
    [
        ({}, None, "spec.params.estimator: RandomForestClassifier cannot train across nodes"),
        ({"estimator": "LogisticRegression"}, None, "spec.params.estimator: LogisticRegression"),
        ({"estimator": "TorchMLP"}, None, None),
        (
            {"estimator": "TorchMLP"},
            {"parameters": {"estimator": ["TorchMLP", "SVC"]}},
            "spec.sweep.parameters.estimator: SVC",
        ),
        ({}, {"parameters": {"estimator": ["TorchMLPClassifier"], "epochs": [1, 2]}}, None),
    ],
)
def test_only_the_torch_estimators_train_distributed(
    params: dict[str, Any], sweep: dict[str, Any] | None, refused: str | None
) -> None:
    objective = {"objective": {"metric": "accuracy", "direction": "Maximize"}}
    spec = run({"params": params, **({"sweep": {**sweep, **objective}} if sweep else {})})["spec"]
    if refused is None:
        TrainingRunSpec.model_validate(spec)
        return
    with pytest.raises(pydantic.ValidationError, match=refused):
        TrainingRunSpec.model_validate(spec)


def test_processes_per_node_follow_what_each_node_requests() -> None:
    def procs(asked: Any, **resources: Any) -> int:
        return procs_per_node(
            TrainingRunSpec.model_validate(
                run({"distributed": {"nodes": 2, "procsPerNode": asked}, "resources": resources})["spec"]
            )
        )

    assert procs(3) == 3
    assert procs("gpu", gpus=4) == 4
    assert procs("auto", gpus=2) == 2
    assert procs("auto") == 1
    assert procs("cpu", cpu="2500m") == 2
    assert procs("cpu", cpu="500m") == 1
    assert whole_cpus("1.5") == 1 and whole_cpus(8) == 8 and whole_cpus("x") == 0
    with pytest.raises(pydantic.ValidationError, match=r"procsPerNode: gpu needs spec\.resources\.gpus"):
        TrainingRunSpec.model_validate(run({"distributed": {"nodes": 2, "procsPerNode": "gpu"}})["spec"])


def test_gang_names_are_dns_labels_that_leave_room_for_pod_host_names() -> None:
    long = "9" + "x" * 200
    names = {gang_name(long, UID, trial, attempt) for trial in (None, 3) for attempt in (0, 1)}
    assert len(names) == 4
    for name in names:
        assert len(name) <= MAX_GANG_NAME and name[0].isalpha() and "." not in name
        # JobSet's pod host names: <trainjob>-node-0-<index>, at most 63 characters.
        assert len(f"{name}-node-0-63") <= 63
    assert gang_name("a.b", UID) == gang_name("a.b", UID)


# --- the gang's objects ---------------------------------------------------------------------------------


def test_without_kubeflow_trainer_a_gang_is_an_indexed_job_and_a_headless_service() -> None:
    obj = run({"queueName": "team-a", "backoffLimit": 2})
    spec, _ = parsed(obj)
    service, job = render_gang(TrainingEngine.INDEXED_JOB, obj, spec, ROOT)
    name = gang_name("digits", UID)

    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_GANG: name}
    assert (job["metadata"]["name"], service["metadata"]["name"]) == (name, name)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    # The gang restarts whole (as a new attempt), never one pod: the Job itself has no retries.
    assert job["spec"]["backoffLimit"] == 0
    # Kueue admits it whole: one suspended Job with the queue's label.
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][LABEL_GANG] == name
    assert pod["metadata"]["labels"][LABEL_ATTEMPT] == "0"
    assert pod["spec"]["subdomain"] == name
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["torchrun", "--no-python", "modelloop-train"]
    env = env_of(container)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    assert env["PET_MASTER_ADDR"] == f"{name}-0.{name}"
    assert env["PET_MASTER_PORT"] == str(MASTER_PORT)
    assert env["MODELLOOP_OUTPUT_URI"] == output_uri(spec, obj, ROOT)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_with_kubeflow_trainer_a_gang_is_one_trainjob_with_the_run_s_pods_patched_in() -> None:
    obj = run(
        {
            "resources": {"gpus": 2, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
            "distributed": {"nodes": 4, "procsPerNode": "gpu", "runtime": "torch-gpu"},
            "queueName": "team-a",
            "activeDeadlineSeconds": 600,
        }
    )
    spec, _ = parsed(obj)
    (trainjob,) = render_gang(TrainingEngine.KUBEFLOW_TRAINER, obj, spec, ROOT, attempt=1)

    assert trainjob["kind"] == TRAINJOB_KIND
    assert trainjob["metadata"]["name"] == gang_name("digits", UID, None, 1)
    assert trainjob["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-gpu",
    }
    assert trainjob["spec"]["suspend"] is True
    assert trainjob["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 2)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    # Kubeflow Trainer sets torchrun's PET_* variables itself.
    assert not [e for e in trainer["env"] if e["name"].startswith("PET_")]
    (patch,) = trainjob["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][LABEL_TRAINING_RUN] == "digits"
    assert pod["metadata"]["labels"][LABEL_ATTEMPT] == "1"
    assert pod["metadata"]["annotations"][ANNOTATION_RUN_UID] == UID
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


# --- attempts ------------------------------------------------------------------------------------------


def test_a_new_distributed_run_creates_its_gang_on_the_engine_the_cluster_offers() -> None:
    obj = run()
    spec, status = parsed(obj)

    plain = plan_run(obj, spec, status, {}, [], ROOT)
    trainer = plan_run(obj, spec, status, {}, [], ROOT, gangs=GangContext(trainer_installed=True))

    assert [m["kind"] for m in plain.jobs_to_create] == ["Service", "Job"]
    assert plain.status.engine == TrainingEngine.INDEXED_JOB and plain.status.attempt == 0
    assert [m["kind"] for m in trainer.jobs_to_create] == ["TrainJob"]
    assert trainer.status.engine == TrainingEngine.KUBEFLOW_TRAINER
    # Once a run has an engine it keeps it, whatever the cluster offers later.
    started = run(status={"phase": "Pending", "engine": "IndexedJob", "attempt": 0})
    spec, status = parsed(started)
    again = plan_run(started, spec, status, {}, [], ROOT, gangs=GangContext(trainer_installed=True))
    assert [m["kind"] for m in again.jobs_to_create] == ["Service", "Job"]


def test_a_gang_created_before_a_restart_is_never_created_again() -> None:
    # The operator created attempt 1 and died before status said so: the next pass takes that gang.
    obj = run({"backoffLimit": 2}, status={"phase": "Running", "engine": "IndexedJob", "attempt": 0})
    spec, status = parsed(obj)
    first, second = gang(obj, 0), gang(obj, 1)
    with_condition(first, "Failed")
    jobs = {first["metadata"]["name"]: first, second["metadata"]["name"]: second}
    pods = [node_pod(obj, 0, None, attempt=1), node_pod(obj, 1, None, attempt=1)]

    plan = plan_run(obj, spec, status, jobs, pods, ROOT)

    assert plan.jobs_to_create == []
    assert plan.status.attempt == 1 and plan.status.phase == "Running"
    assert plan.status.job_name == second["metadata"]["name"]


def test_one_failed_node_fails_the_attempt_and_backoff_limit_restarts_the_whole_gang() -> None:
    obj = run({"backoffLimit": 1}, status={"phase": "Running", "engine": "IndexedJob", "attempt": 0})
    spec, status = parsed(obj)
    job = gang(obj)
    pods = [node_pod(obj, 0, None), node_pod(obj, 1, 137, "Killed")]

    plan = plan_run(obj, spec, status, {job["metadata"]["name"]: job}, pods, ROOT)

    # The failed node is found from its pod at once, before the Job controller says the Job failed.
    assert [m["metadata"]["name"] for m in plan.jobs_to_create] == [gang_name("digits", UID, None, 1)] * 2
    assert plan.status.attempt == 1 and plan.status.reason == "GangRestarted"
    ((kind, reason, message),) = plan.events
    assert (kind, reason) == ("Warning", "AttemptFailed")
    assert "Attempt 1 of 2 failed: Node 1" in message and "exited with code 137" in message
    assert plan.registration is None


def test_the_last_attempt_s_failure_fails_the_run_with_the_node_s_own_reason() -> None:
    obj = run({"backoffLimit": 1}, status={"phase": "Running", "engine": "KubeflowTrainer", "attempt": 1})
    spec, status = parsed(obj)
    job = gang(obj, 1, TrainingEngine.KUBEFLOW_TRAINER)
    reason = json.dumps({"status": "Failed", "reason": "DatasetHashMismatch", "message": "the data changed"})
    pods = [
        node_pod(obj, 0, 1, reason, attempt=1, finished="2026-12-06T10:00:05Z"),
        node_pod(obj, 1, 0, None, 1),
    ]

    plan = plan_run(obj, spec, status, {job["metadata"]["name"]: job}, pods, ROOT)

    assert plan.status.phase == "Failed" and plan.status.reason == "NodeFailed"
    assert plan.status.message.startswith("Node 0 (pod ")
    assert "DatasetHashMismatch: the data changed" in plan.status.message
    assert plan.status.message.endswith("(attempt 2 of 2, the last)")
    assert plan.jobs_to_create == []
    # A failed TrainJob goes: its Jobs would retry the failed pod, and its other nodes would wait on it.
    assert plan.jobs_to_delete == [job["metadata"]["name"]]


def test_only_a_complete_gang_registers_and_with_node_zero_s_result() -> None:
    obj = run(status={"phase": "Running", "engine": "IndexedJob", "attempt": 0})
    spec, status = parsed(obj)
    job = gang(obj)
    pods = [node_pod(obj, 1, 0, result(obj, 0.11)), node_pod(obj, 0, 0, result(obj, 0.97))]

    running = plan_run(obj, spec, status, {job["metadata"]["name"]: job}, pods, ROOT)
    assert running.registration is None and running.status.phase != "Succeeded"

    with_condition(job, "Complete")
    done = plan_run(obj, spec, status, {job["metadata"]["name"]: job}, pods, ROOT)
    assert done.status.phase == "Succeeded"
    assert done.registration is not None
    assert done.registration.result.metrics == {"accuracy": 0.97}


def test_a_queued_gang_waits_whole_with_kueue_s_reason() -> None:
    obj = run({"queueName": "team-a"}, status={"phase": "Pending", "engine": "IndexedJob", "attempt": 0})
    spec, status = parsed(obj)
    job = gang(obj)
    name = job["metadata"]["name"]
    why = "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor default"
    workload = slim_queued(
        {
            "metadata": {
                "ownerReferences": [{"kind": "Job", "name": name, "uid": "uid-0", "controller": True}]
            },
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": why}]},
        }
    )

    plan = plan_run(obj, spec, status, {name: job}, [], ROOT, gangs=GangContext(queued={name: workload}))

    assert plan.status.phase == "Pending" and plan.status.reason == "Queued"
    assert plan.status.message.endswith(why)


def test_each_trial_of_a_distributed_sweep_is_one_gang() -> None:
    sweep = {
        "parameters": {"lr": [0.01, 0.001, 0.0001]},
        "parallelism": 2,
        "objective": {"metric": "accuracy", "direction": "Maximize"},
    }
    obj = run({"sweep": sweep})
    spec, status = parsed(obj)

    plan = plan_run(obj, spec, status, {}, [], ROOT, gangs=GangContext(trainer_installed=True))

    names = [m["metadata"]["name"] for m in plan.jobs_to_create]
    assert [m["kind"] for m in plan.jobs_to_create] == ["TrainJob", "TrainJob"]
    assert names == [gang_name("digits", UID, 0), gang_name("digits", UID, 1)]
    assert [t.job_name for t in plan.status.trials] == names
    assert plan.status.engine == TrainingEngine.KUBEFLOW_TRAINER
    # A trial's gang trains with the trial's params, in the trial's own folder.
    env = {e["name"]: e["value"] for e in plan.jobs_to_create[1]["spec"]["trainer"]["env"]}
    assert json.loads(env["MODELLOOP_PARAMS"])["lr"] == 0.001
    assert env["MODELLOOP_OUTPUT_URI"].endswith("/trial-1")


def test_a_drift_policy_retrains_distributed_as_its_template_says() -> None:
    from modelloop.api import DriftPolicySpec
    from modelloop.drift.training_run import render_training_run

    template = run()["spec"]
    policy_spec = DriftPolicySpec.model_validate(
        {
            "target": {"inferenceService": "digits"},
            "metrics": [
                {"name": "drift", "query": "max(drift)", "threshold": 0.3, "comparison": "GreaterThan"}
            ],
            "retrain": {"trainingRunTemplate": template},
        }
    )
    policy = {"metadata": {"name": "digits-drift", "namespace": "ml", "uid": "p-uid"}}
    rendered = render_training_run(policy, policy_spec, "digits-retrain-1", {"drift": "0.4 > 0.3"})
    assert rendered["spec"]["distributed"] == {"nodes": 2, "procsPerNode": 2}
