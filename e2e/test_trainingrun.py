"""TrainingRun end to end: Jobs placed by the real scheduler, the real trainer run with the pod's own
command and environment, results flowing back through the pod status, sweeps, restarts, deletion."""

from __future__ import annotations

import csv
import hashlib
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Cluster, condition, running_operator, wait_for, wait_for_event
from e2e.kubelet import HOLD, TRAINER_BIN, run_pod, running_held_pods

GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"

pytestmark = pytest.mark.skipif(
    not (TRAINER_BIN / "modelloop-train").exists(),
    reason="the trainer runtime is not installed (make trainer-venv)",
)


def training_run(name: str, artifacts: Path, hold: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "labels": dict(HOLD) if hold else {}},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "RandomForestClassifier", "n_estimators": 30, "seed": 1},
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "backoffLimit": 0,
            "output": {"modelName": "iris", "artifactUriPrefix": f"file://{artifacts}"},
            "validation": {
                "gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.8}]
            },
            **spec,
        },
    }


def run_status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    return cluster.get("trainingrun", name, namespace).get("status") or {}


def phase_is(cluster: Cluster, name: str, namespace: str, *phases: str) -> dict[str, Any] | None:
    status = run_status(cluster, name, namespace)
    return status if status.get("phase") in phases else None


def jobs_of(cluster: Cluster, name: str, namespace: str) -> list[dict[str, Any]]:
    return cluster.get("jobs", namespace=namespace, selector=f"modelloop.dev/training-run={name}")["items"]


def pods_of(cluster: Cluster, name: str, namespace: str) -> list[dict[str, Any]]:
    return cluster.get("pods", namespace=namespace, selector=f"modelloop.dev/training-run={name}")["items"]


def run_held_pods_until(
    cluster: Cluster, namespace: str, workdir: Path, done: Any, timeout: float = 240
) -> list[Any]:
    """Play the kubelet for held pods until ``done()`` is truthy; return what ran."""
    executions = []

    def step() -> Any:
        for pod in running_held_pods(cluster, namespace):
            executions.append(run_pod(cluster, pod, workdir))
        return done()

    wait_for(step, timeout=timeout, interval=0.5, what="the run to finish")
    return executions


@pytest.mark.usefixtures("operator")
def test_a_two_gpu_run_lands_on_a_gpu_node_through_the_scheduler_and_its_product_selector(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.apply(
        training_run("gpu-run", tmp_path, resources={"gpus": 2, "gpuProduct": GPU_PRODUCT}), namespace
    )

    status = wait_for(lambda: phase_is(cluster, "gpu-run", namespace, "Running"), timeout=60, what="Running")

    [pod] = pods_of(cluster, "gpu-run", namespace)
    node = cluster.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert status["jobName"] == pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]


@pytest.mark.usefixtures("operator")
def test_an_oversized_run_stays_pending_with_the_schedulers_reason_in_status(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.apply(training_run("too-big", tmp_path, resources={"gpus": 16}), namespace)

    def unschedulable() -> dict[str, Any] | None:
        status = run_status(cluster, "too-big", namespace)
        return status if status.get("reason") == "Unschedulable" else None

    status = wait_for(unschedulable, timeout=60, what="Unschedulable in status")

    assert status["phase"] == "Pending"
    assert "0/4 nodes are available" in status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"]
    ready = condition(cluster.get("trainingrun", "too-big", namespace), "Ready")
    assert ready is not None and ready["reason"] == "Unschedulable"
    wait_for_event(
        cluster,
        namespace,
        lambda e: e["reason"] == "Unschedulable" and e["type"] == "Warning",
        what="the Unschedulable event",
    )


@pytest.mark.usefixtures("operator")
def test_the_real_trainer_runs_from_the_pod_spec_and_its_result_becomes_a_model_version(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # A version registered by hand (trained elsewhere, no labels): the run's model must come after it.
    by_hand = next(d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d["kind"] == "ModelVersion")
    cluster.apply(by_hand, namespace)
    cluster.apply(training_run("iris-rf", tmp_path), namespace)

    [execution] = run_held_pods_until(
        cluster, namespace, tmp_path, lambda: phase_is(cluster, "iris-rf", namespace, "Succeeded", "Failed")
    )

    assert execution.exit_code == 0, execution.stderr
    status = run_status(cluster, "iris-rf", namespace)
    assert status["phase"] == "Succeeded", status
    assert status["metrics"]["accuracy"] >= 0.8
    assert status["keyMetric"].startswith("accuracy=")
    assert status["datasetHash"].startswith("sha256:")
    version = cluster.get("modelversion", status["modelVersion"], namespace)
    assert (version["metadata"]["name"], version["spec"]["version"]) == ("iris-v2", 2)
    assert version["spec"]["metrics"] == status["metrics"]
    assert version["spec"]["lineage"]["trainingRun"] == "iris-rf"
    assert version["spec"]["lineage"]["params"]["n_estimators"] == 30
    artifact = Path(version["spec"]["artifact"]["uri"].removeprefix("file://"))
    assert artifact.is_file() and str(artifact).startswith(str(tmp_path))
    assert (
        version["spec"]["artifact"]["digest"] == "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest()
    )
    assert (condition(cluster.get("trainingrun", "iris-rf", namespace), "Ready") or {}).get(
        "status"
    ) == "True"
    # The run's gates travel with the version, and the registry validates it against them.
    assert version["spec"]["validation"] == training_run("x", tmp_path)["spec"]["validation"]
    validated = wait_for(
        lambda: (
            (cluster.get("modelversion", "iris-v2", namespace).get("status") or {}).get("phase")
            == "Validated"
            and cluster.get("modelversion", "iris-v2", namespace)["status"]
        ),
        timeout=60,
        what="iris-v2 validated",
    )
    [check] = validated["checks"]
    assert (check["name"], check["value"], check["passed"]) == (
        "gate/accuracy",
        status["metrics"]["accuracy"],
        True,
    )
    assert validated["stage"] == "Candidate"


@pytest.mark.usefixtures("operator")
def test_a_failing_data_check_fails_the_run_with_its_reason(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    data = tmp_path / "iris-with-gaps.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sepal_length", "sepal_width", "label"])
        for i in range(60):
            writer.writerow(["" if i % 5 == 0 else 5.0 + i / 100, 3.0, i % 2])
    run = training_run(
        "gaps", tmp_path, dataset={"uri": f"file://{data}", "format": "csv", "targetColumn": "label"}
    )
    cluster.apply(run, namespace)

    [execution] = run_held_pods_until(
        cluster, namespace, tmp_path, lambda: phase_is(cluster, "gaps", namespace, "Succeeded", "Failed")
    )

    assert execution.exit_code == 1
    status = run_status(cluster, "gaps", namespace)
    assert status["phase"] == "Failed"
    assert status["reason"] == "DataValidationFailed"
    assert "sepal_length" in status["message"]
    assert "modelVersion" not in status
    assert cluster.get("modelversions", namespace=namespace)["items"] == []


def test_killing_and_restarting_the_operator_mid_run_creates_no_second_job(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    with running_operator(cluster, namespace, tmp_path / "first.log") as first:
        cluster.apply(training_run("restart", tmp_path), namespace)
        wait_for(lambda: jobs_of(cluster, "restart", namespace), timeout=60, what="the Job")
        first.send_signal(signal.SIGKILL)
        first.wait()

    with running_operator(cluster, namespace, tmp_path / "second.log"):
        run_held_pods_until(
            cluster,
            namespace,
            tmp_path,
            lambda: phase_is(cluster, "restart", namespace, "Succeeded", "Failed"),
        )
        assert run_status(cluster, "restart", namespace)["phase"] == "Succeeded"

    assert len(jobs_of(cluster, "restart", namespace)) == 1
    assert len(cluster.get("modelversions", namespace=namespace)["items"]) == 1


@pytest.mark.usefixtures("operator")
def test_a_sweep_of_four_trials_never_runs_more_than_two_jobs_and_registers_the_best(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    sweep = {
        "parameters": {"max_depth": [1, 2, 3, 4]},
        "parallelism": 2,
        "objective": {"metric": "accuracy", "direction": "Maximize"},
    }
    run = training_run("sweep", tmp_path, sweep=sweep)
    run["spec"]["params"] = {"estimator": "DecisionTreeClassifier", "seed": 3}
    run["spec"]["dataset"] = {"uri": "sklearn://wine", "format": "sklearn", "targetColumn": "target"}
    cluster.apply(run, namespace)
    most_active = 0

    def finished() -> Any:
        nonlocal most_active
        active = [j for j in jobs_of(cluster, "sweep", namespace) if not _job_finished(j)]
        most_active = max(most_active, len(active))
        return phase_is(cluster, "sweep", namespace, "Succeeded", "Failed")

    executions = run_held_pods_until(cluster, namespace, tmp_path, finished)

    status = run_status(cluster, "sweep", namespace)
    assert status["phase"] == "Succeeded", status
    assert len(executions) == 4
    assert 1 <= most_active <= 2
    trials = status["trials"]
    assert [t["params"]["max_depth"] for t in trials] == [1, 2, 3, 4]
    accuracies = [t["metrics"]["accuracy"] for t in trials]
    best = max(range(4), key=lambda i: (accuracies[i], -i))
    assert status["bestTrial"] == best
    version = cluster.get("modelversion", status["modelVersion"], namespace)
    assert version["spec"]["lineage"]["params"]["max_depth"] == best + 1
    assert version["spec"]["metrics"]["accuracy"] == accuracies[best]
    # The other trials' Jobs go once status records them; the best trial's stays.
    wait_for(
        lambda: (
            [j["metadata"]["name"] for j in jobs_of(cluster, "sweep", namespace)] == [trials[best]["jobName"]]
        ),
        timeout=60,
        what="only the best trial's Job to be left",
    )


@pytest.mark.usefixtures("operator")
def test_deleting_a_run_removes_its_job_and_pods(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cluster.apply(training_run("doomed", tmp_path), namespace)
    wait_for(lambda: phase_is(cluster, "doomed", namespace, "Running"), timeout=60, what="Running")
    # No finalizer of ours: a run can be deleted even while the operator is away.
    assert not cluster.get("trainingrun", "doomed", namespace)["metadata"].get("finalizers")

    cluster.kubectl("delete", "trainingrun", "doomed", "-n", namespace, "--wait=true")

    wait_for(
        lambda: not jobs_of(cluster, "doomed", namespace) and not pods_of(cluster, "doomed", namespace),
        timeout=90,
        what="the garbage collector to remove the Job and its pods",
    )


def _job_finished(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions") or ()
    )
