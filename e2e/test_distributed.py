"""Distributed TrainingRuns on the local control plane, trained for real.

What runs for real: the API server, the Job controller and the scheduler (kwok's nodes), the operator as a
user starts it, and every pod's command (`torchrun --no-python modelloop-train`, the real trainer under
real torchrun with gloo) run by the stand-in kubelet (e2e/kubelet.py: GangKubelet) with the pod's exact
environment, its `fieldRef`s resolved as the kubelet does, in a sandbox of its own whose host name is the
pod's and whose /etc/hosts maps every pod's DNS name (`<job>-<index>.<service>`) to that pod's own loopback
address: torchrun's rendezvous and gloo's connections go over loopback between separate processes that
find each other by name, as pods do. The one deliberate difference is the network itself.

Then the same through the real engines a platform team runs: Kubeflow Trainer v2.2.0 and JobSet v0.11.1 (a
TrainJob becomes a JobSet of indexed Jobs, torchrun configured by Trainer's own PET_* variables), and Kueue
v0.17.0 admitting a gang whole or not at all, each built from its Go module (hack/build-training-engines.sh)
and run against the local control plane with its webhooks (e2e/engines.py).

Every gang here binds torchrun's rendezvous port (29500, Kubeflow Trainer's) on its node 0: the tests that
train gangs live in this one file, which one worker of the suite runs test after test, so that no two gangs
ever train at once.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import ENGINE_BUILD_SECONDS
from e2e.engines import (
    make_queue,
    remove_trainer_crds,
    running_jobset,
    running_kueue,
    running_trainer,
    set_quota,
)
from e2e.harness import Cluster, running_operator, wait_for
from e2e.kubelet import HOLD, TRAINER_BIN, GangKubelet

pytestmark = pytest.mark.skipif(
    not (TRAINER_BIN / "torchrun").exists(),
    reason="the trainer runtime is not installed (make trainer-venv)",
)

# A TorchMLP on the digits (1,797 rows, 10 classes; in scikit-learn, nothing downloaded).
PARAMS = {"estimator": "TorchMLPClassifier", "epochs": 15, "batch_size": 64, "seed": 7}
ACCURACY_TOLERANCE = 0.03
"""How far a 2-node x 2-process run's held-out accuracy may be from one process's (the trainer's tests
compare 1 and 4 processes alike)."""


def training_run(name: str, artifacts: Path, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "labels": dict(HOLD)},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": PARAMS,
            "dataset": {"uri": "sklearn://digits", "format": "sklearn"},
            "output": {"modelName": "digits", "artifactUriPrefix": f"file://{artifacts}"},
            **spec,
        },
    }


def status_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    return cluster.get("trainingrun", name, namespace).get("status") or {}


def finished(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    status = status_of(cluster, name, namespace)
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def owned(cluster: Cluster, kind: str, name: str, namespace: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` the run ``name`` owns."""
    return [
        obj
        for obj in cluster.get(kind, namespace=namespace)["items"]
        if any(o.get("name") == name for o in obj["metadata"].get("ownerReferences") or ())
    ]


def events_of(cluster: Cluster, name: str, namespace: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.get("events", namespace=namespace)["items"]
        if e.get("involvedObject", {}).get("name") == name
    ]


def test_a_two_node_gang_trains_for_real_on_an_indexed_job_survives_an_operator_kill_and_registers_once(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # A cluster without Kubeflow Trainer (another test may have installed it): the operator, left at
    # MODELLOOP_TRAINING_ENGINE=auto, renders the gang itself.
    remove_trainer_crds(cluster)
    gang = training_run("digits-ddp", tmp_path / "artifacts", distributed={"nodes": 2, "procsPerNode": 2})
    single = training_run("digits-one", tmp_path / "artifacts")
    with GangKubelet(cluster, namespace, tmp_path / "kubelet") as kubelet:
        with running_operator(cluster, namespace, tmp_path / "first.log") as first:
            cluster.apply(gang, namespace)
            cluster.apply(single, namespace)
            job = wait_for(
                lambda: owned(cluster, "jobs", "digits-ddp", namespace), timeout=60, what="the gang's Job"
            )[0]
            pods = wait_for(
                lambda: running_pods(cluster, job, namespace, 2), timeout=120, what="both nodes' pods running"
            )
            for pod in pods:
                kubelet.running(pod["metadata"]["name"], timeout=60)
            # The operator dies while the gang trains: the one started next finds the gang it made.
            first.send_signal(signal.SIGKILL)
            first.wait()
        with running_operator(cluster, namespace, tmp_path / "second.log"):
            status = wait_for(
                lambda: finished(cluster, "digits-ddp", namespace), timeout=420, what="the gang to finish"
            )
            one = wait_for(
                lambda: finished(cluster, "digits-one", namespace), timeout=300, what="the single run"
            )

    assert status["phase"] == "Succeeded", (status, kubelet.logs())
    assert one["phase"] == "Succeeded", one
    assert status["engine"] == "IndexedJob" and one["engine"] == "Job"
    assert status["attempt"] == 0
    # One Indexed Job (and its Service) however often the operator died; every node ran and ended well.
    (job,) = owned(cluster, "jobs", "digits-ddp", namespace)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    (service,) = owned(cluster, "services", "digits-ddp", namespace)
    assert service["metadata"]["name"] == job["metadata"]["name"]
    ran = {e.pod: e for e in kubelet.executions if e.pod.startswith(job["metadata"]["name"])}
    assert len(ran) == 2 and all(e.exit_code == 0 for e in ran.values()), ran
    # Node 0 reported the result; node 1 wrote none.
    by_index = {
        int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p for p in pods
    }
    assert ran[by_index[0]["metadata"]["name"]].message and not ran[by_index[1]["metadata"]["name"]].message
    versions = [
        v
        for v in cluster.get("modelversions", namespace=namespace)["items"]
        if v["spec"]["lineage"]["trainingRun"] == "digits-ddp"
    ]
    assert len(versions) == 1
    assert abs(status["metrics"]["accuracy"] - one["metrics"]["accuracy"]) <= ACCURACY_TOLERANCE, (
        status["metrics"],
        one["metrics"],
    )


def running_pods(
    cluster: Cluster, job: dict[str, Any], namespace: str, count: int
) -> list[dict[str, Any]] | None:
    """The Job's pods once ``count`` of them run, else None."""
    pods = [p for p in owned_pods(cluster, job, namespace) if p["status"].get("phase") == "Running"]
    return pods if len(pods) == count else None


def owned_pods(cluster: Cluster, job: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    return cluster.get(
        "pods", namespace=namespace, selector=f"batch.kubernetes.io/job-name={job['metadata']['name']}"
    )["items"]


def test_a_killed_worker_fails_its_attempt_with_its_index_and_the_whole_gang_restarts(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    run = training_run(
        "digits-crash", tmp_path / "artifacts", distributed={"nodes": 2, "procsPerNode": 1}, backoffLimit=1
    )
    with (
        GangKubelet(cluster, namespace, tmp_path / "kubelet") as kubelet,
        running_operator(cluster, namespace, tmp_path / "operator.log"),
    ):
        cluster.apply(run, namespace)
        first = wait_for(
            lambda: owned(cluster, "jobs", "digits-crash", namespace), timeout=60, what="the Job"
        )[0]
        victim = wait_for(
            lambda: next(
                (
                    p
                    for p in owned_pods(cluster, first, namespace)
                    if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "1"
                    and p["status"].get("phase") == "Running"
                ),
                None,
            ),
            timeout=120,
            what="node 1's pod running",
        )
        kubelet.running(victim["metadata"]["name"], timeout=60)
        kubelet.kill(victim["metadata"]["name"])
        status = wait_for(lambda: finished(cluster, "digits-crash", namespace), timeout=420, what="the run")

    assert status["phase"] == "Succeeded", (status, kubelet.logs())
    assert status["attempt"] == 1
    jobs = sorted(
        owned(cluster, "jobs", "digits-crash", namespace),
        key=lambda j: j["metadata"]["labels"]["modelloop.dev/attempt"],
    )
    assert [j["metadata"]["labels"]["modelloop.dev/attempt"] for j in jobs] == ["0", "1"]
    assert any(
        c["type"] == "Failed" and c["status"] == "True" for c in jobs[0]["status"].get("conditions") or ()
    )
    (failure,) = [e for e in events_of(cluster, "digits-crash", namespace) if e["reason"] == "AttemptFailed"]
    assert failure["type"] == "Warning"
    assert "Attempt 1 of 2 failed: Node 1" in failure["message"]
    assert f"pod {victim['metadata']['name']}" in failure["message"]
    assert "exited with code 137" in failure["message"]
    # Only the complete gang registered.
    assert len(cluster.get("modelversions", namespace=namespace)["items"]) == 1


def pods_of_run(cluster: Cluster, name: str, namespace: str) -> list[dict[str, Any]]:
    return cluster.get("pods", namespace=namespace, selector=f"modelloop.dev/training-run={name}")["items"]


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
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

    assert status["phase"] == "Succeeded", (status, kubelet.logs())
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


def gpu_run(name: str, artifacts: Path, nodes: int, queue: str, **spec: Any) -> dict[str, Any]:
    run = training_run(
        name,
        artifacts,
        distributed={"nodes": nodes, "procsPerNode": 1},
        resources={"gpus": 1, "cpu": "1", "memory": "1Gi"},
        queueName=queue,
        **spec,
    )
    return run


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_kueue_keeps_a_gang_pending_whole_until_its_quota_fits_every_node(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    with running_kueue(cluster, tmp_path / "kueue"):
        # A queue of the test's own: a ClusterQueue is cluster-wide, and an earlier test's still holds quota.
        queue = f"q-{namespace}"
        make_queue(cluster, namespace, queue, gpus=3)
        with running_operator(cluster, namespace, tmp_path / "operator.log"):
            cluster.apply(gpu_run("big", tmp_path / "artifacts", nodes=4, queue=queue), namespace)
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

            set_quota(cluster, queue, gpus=4)
            wait_for(
                lambda: len(pods_of_run(cluster, "big", namespace)) == 4,
                timeout=120,
                what="all four nodes' pods",
            )
            # kwok starts the pods one by one: the run is Running from the first, then counts them all.
            wait_for(
                lambda: status_of(cluster, "big", namespace).get("message") == "Training on 4 of 4 nodes.",
                timeout=120,
                what="the run Running on all four nodes",
            )
            assert status_of(cluster, "big", namespace)["phase"] == "Running"

            # A one-node run that no quota of the queue fits says what Kueue says of its Job too.
            lone = training_run(
                "lone",
                tmp_path / "artifacts",
                resources={"gpus": 5, "cpu": "1", "memory": "1Gi"},
                queueName=queue,
            )
            cluster.apply(lone, namespace)
            status = wait_for(
                lambda: (
                    (s := status_of(cluster, "lone", namespace)).get("reason") == "Queued"
                    and "nvidia.com/gpu" in s.get("message", "")
                    and s
                ),
                timeout=120,
                what="the one-node run Pending with Kueue's reason",
            )
            assert status["message"].startswith("The Job waits to be admitted by its queue (Kueue): ")
            assert status["phase"] == "Pending"
            assert pods_of_run(cluster, "lone", namespace) == []


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_two_gangs_that_fit_one_at_a_time_run_one_after_the_other(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    with (
        running_kueue(cluster, tmp_path / "kueue"),
        GangKubelet(cluster, namespace, tmp_path / "kubelet") as kubelet,
    ):
        queue = f"q-{namespace}"
        make_queue(cluster, namespace, queue, gpus=2)
        with running_operator(cluster, namespace, tmp_path / "operator.log"):
            cluster.apply(gpu_run("first", tmp_path / "artifacts", nodes=2, queue=queue), namespace)
            wait_for(
                lambda: pods_of_run(cluster, "first", namespace), timeout=120, what="the first gang's pods"
            )
            cluster.apply(gpu_run("second", tmp_path / "artifacts", nodes=2, queue=queue), namespace)
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
    assert first["phase"] == second["phase"] == "Succeeded", (first, second, kubelet.logs())
    # One after the other: the second's nodes started only once the first's had all ended.
    ended = {e.pod: e for e in kubelet.executions}
    first_pods = [p for p in ended if p.startswith(first["jobName"])]
    second_pods = [p for p in ended if p.startswith(second["jobName"])]
    assert len(first_pods) == len(second_pods) == 2
    assert second["startTime"] >= first["completionTime"], (first, second)
