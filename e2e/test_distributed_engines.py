"""Distributed TrainingRuns through the real engines a platform team runs: Kubeflow Trainer v2.2.0 and JobSet
v0.11.1 (a TrainJob becomes a JobSet of indexed Jobs, torchrun configured by Trainer's own PET_* variables),
and Kueue v0.17.0 admitting a gang whole or not at all. Each controller is built from its Go module
(hack/build-training-engines.sh) and runs against the local control plane with its webhooks
(e2e/engines.py); the operator, the Job controller, the scheduler and kwok's GPU nodes are real, and the
stand-in kubelet runs every pod's command for real (e2e/test_distributed.py says how).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from e2e.engines import (
    make_queue,
    remove_trainer_crds,
    running_jobset,
    running_kueue,
    running_trainer,
    set_quota,
)
from e2e.harness import Cluster, running_operator, wait_for
from e2e.kubelet import TRAINER_BIN, GangKubelet
from e2e.test_distributed import ACCURACY_TOLERANCE, finished, owned, status_of, training_run

pytestmark = pytest.mark.skipif(
    not (TRAINER_BIN / "torchrun").exists(),
    reason="the trainer runtime is not installed (make trainer-venv)",
)


def pods_of_run(cluster: Cluster, name: str, namespace: str) -> list[dict[str, Any]]:
    return cluster.get("pods", namespace=namespace, selector=f"modelloop.dev/training-run={name}")["items"]


def test_a_two_node_gang_trains_for_real_through_kubeflow_trainer_and_jobset(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    gang = training_run("digits-tj", tmp_path / "artifacts", distributed={"nodes": 2, "procsPerNode": 2})
    single = training_run("digits-one", tmp_path / "artifacts")
    try:
        with (
            running_jobset(cluster, tmp_path / "jobset"),
            running_trainer(cluster, tmp_path / "trainer"),
            GangKubelet(cluster, namespace, tmp_path / "kubelet") as kubelet,
        ):
            # MODELLOOP_TRAINING_ENGINE is left at auto: the operator finds Trainer's API by discovery.
            with running_operator(cluster, namespace, tmp_path / "first.log") as first:
                cluster.apply(gang, namespace)
                cluster.apply(single, namespace)
                wait_for(
                    lambda: (
                        len(
                            [
                                p
                                for p in pods_of_run(cluster, "digits-tj", namespace)
                                if p["status"].get("phase") == "Running"
                            ]
                        )
                        == 2
                    ),
                    timeout=180,
                    what="the TrainJob's two pods running",
                )
                for pod in pods_of_run(cluster, "digits-tj", namespace):
                    kubelet.running(pod["metadata"]["name"], timeout=60)
                first.send_signal(signal.SIGKILL)
                first.wait()
            with running_operator(cluster, namespace, tmp_path / "second.log"):
                status = wait_for(
                    lambda: finished(cluster, "digits-tj", namespace), timeout=420, what="the TrainJob's run"
                )
                one = wait_for(
                    lambda: finished(cluster, "digits-one", namespace), timeout=300, what="the single run"
                )
            trainjobs = owned(cluster, "trainjobs.trainer.kubeflow.org", "digits-tj", namespace)
            pods = pods_of_run(cluster, "digits-tj", namespace)
    finally:
        remove_trainer_crds(cluster)

    assert status["phase"] == "Succeeded", status
    assert status["engine"] == "KubeflowTrainer"
    # One TrainJob, however often the operator died.
    assert len(trainjobs) == 1 and trainjobs[0]["metadata"]["name"] == status["jobName"]
    # The pods are Trainer's (JobSet's host names), with Trainer's own torchrun configuration.
    assert {p["spec"]["subdomain"] for p in pods} == {status["jobName"]}
    env = {e["name"] for e in pods[0]["spec"]["containers"][0]["env"]}
    assert {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"} <= env
    assert all(e.exit_code == 0 for e in kubelet.executions if e.pod in {p["metadata"]["name"] for p in pods})
    versions = [
        v
        for v in cluster.get("modelversions", namespace=namespace)["items"]
        if v["spec"]["lineage"]["trainingRun"] == "digits-tj"
    ]
    assert len(versions) == 1
    assert abs(status["metrics"]["accuracy"] - one["metrics"]["accuracy"]) <= ACCURACY_TOLERANCE


def gpu_run(name: str, artifacts: Path, nodes: int, hold: bool = True, **spec: Any) -> dict[str, Any]:
    run = training_run(
        name,
        artifacts,
        distributed={"nodes": nodes, "procsPerNode": 1},
        resources={"gpus": 1, "cpu": "1", "memory": "1Gi"},
        queueName="team-a",
        **spec,
    )
    if not hold:
        run["metadata"]["labels"] = {}
    return run


def test_kueue_keeps_a_gang_pending_whole_until_its_quota_fits_every_node(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    with running_kueue(cluster, tmp_path / "kueue"):
        make_queue(cluster, namespace, "team-a", gpus=3)
        with running_operator(cluster, namespace, tmp_path / "operator.log"):
            cluster.apply(gpu_run("big", tmp_path / "artifacts", nodes=4), namespace)
            # Kueue says why, and the run says what Kueue says: 4 GPUs asked, 3 in the queue.
            status = wait_for(
                lambda: (
                    (s := status_of(cluster, "big", namespace)).get("reason") == "Queued"
                    and "nvidia.com/gpu" in s.get("message", "")
                    and s
                ),
                timeout=120,
                what="the run Pending with Kueue's reason",
            )
            assert status["phase"] == "Pending"
            assert "waits whole" in status["message"]
            (job,) = owned(cluster, "jobs", "big", namespace)
            assert job["spec"]["suspend"] is True
            assert pods_of_run(cluster, "big", namespace) == []  # not one node started

            set_quota(cluster, "team-a", gpus=4)
            wait_for(
                lambda: len(pods_of_run(cluster, "big", namespace)) == 4,
                timeout=120,
                what="all four nodes' pods",
            )
            running = wait_for(
                lambda: (s := status_of(cluster, "big", namespace)).get("phase") == "Running" and s,
                timeout=120,
                what="the run Running",
            )
            assert running["message"] == "Training on 4 of 4 nodes."


def test_two_gangs_that_fit_one_at_a_time_run_one_after_the_other(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    with (
        running_kueue(cluster, tmp_path / "kueue"),
        GangKubelet(cluster, namespace, tmp_path / "kubelet") as kubelet,
    ):
        make_queue(cluster, namespace, "team-a", gpus=2)
        with running_operator(cluster, namespace, tmp_path / "operator.log"):
            cluster.apply(gpu_run("first", tmp_path / "artifacts", nodes=2), namespace)
            wait_for(
                lambda: pods_of_run(cluster, "first", namespace), timeout=120, what="the first gang's pods"
            )
            cluster.apply(gpu_run("second", tmp_path / "artifacts", nodes=2), namespace)
            waiting = wait_for(
                lambda: (s := status_of(cluster, "second", namespace)).get("reason") == "Queued" and s,
                timeout=120,
                what="the second gang queued",
            )
            first = wait_for(lambda: finished(cluster, "first", namespace), timeout=420, what="the first run")
            second = wait_for(
                lambda: finished(cluster, "second", namespace), timeout=420, what="the second run"
            )

    assert waiting["phase"] == "Pending" and "Kueue" in waiting["message"]
    assert first["phase"] == second["phase"] == "Succeeded", (first, second)
    # One after the other: the second's nodes started only once the first's had all ended.
    ended = {e.pod: e for e in kubelet.executions}
    first_pods = [p for p in ended if p.startswith(first["jobName"])]
    second_pods = [p for p in ended if p.startswith(second["jobName"])]
    assert len(first_pods) == len(second_pods) == 2
    assert second["startTime"] >= first["completionTime"], (first, second)
