"""The real training engines on the e2e control plane, without modelloop's operator: what Kubeflow Trainer
(v2.2.0, over JobSet v0.11.1) makes of a TrainJob on the ``torch-distributed`` runtime, what its pods get
and how success and failure show in the statuses; and how Kueue (v0.17.0) holds a suspended Job or TrainJob
that does not fit its ClusterQueue and admits it once the quota grows.

These tests pin down the behaviour modelloop relies on (the operator renders the same environment itself
when Trainer is absent), so that an upgrade of an engine that changes it fails here first. What they see
is also printed (run with ``-s``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import ENGINE_BUILD_SECONDS
from e2e.engines import (
    QUEUE_LABEL,
    TORCH_RUNTIME,
    TRAINER_CRDS,
    Engine,
    delete_queue,
    indexed_job,
    install_crds,
    make_queue,
    remove_trainer_crds,
    running_jobset,
    running_kueue,
    running_trainer,
    set_quota,
    trainjob_manifest,
    workloads_of,
)
from e2e.harness import Cluster, condition, wait_for

TIMEOUT = 90
OUTCOME = "sim.modelloop.dev/outcome"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
TRAINJOBS = "trainjobs.trainer.kubeflow.org"
JOBSETS = "jobsets.jobset.x-k8s.io"
WORKLOADS = "workloads.kueue.x-k8s.io"


@pytest.fixture(scope="module")
def trainer(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """JobSet's and Trainer's controllers, for this module."""
    workdir = tmp_path_factory.mktemp("engines")
    with running_jobset(cluster, workdir / "jobset"), running_trainer(cluster, workdir / "trainer") as engine:
        yield engine


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, trainer: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Kueue's controller, started after Trainer's (whose TrainJob kind it integrates), for this module."""
    with running_kueue(cluster, tmp_path_factory.mktemp("kueue")) as engine:
        yield engine


def record(tmp_path: Path, what: str, value: Any) -> None:
    """Print what a test saw, and keep it next to the test's files."""
    text = json.dumps(value, indent=2, sort_keys=True)
    (tmp_path / f"{what}.json").write_text(text)
    print(f"\n=== {what} ===\n{text}")


def is_true(obj: Mapping[str, Any], type_: str) -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond["status"] == "True"


def distributed_trainjob(name: str, pod_labels: Mapping[str, str], runtime: str = "torch-distributed") -> Any:
    """A TrainJob of 2 nodes of 2 processes each whose runtime patch adds pod labels and an annotation."""
    job = trainjob_manifest(
        name,
        runtime=runtime,
        command=["torchrun", "/app/train.py"],
        args=["--epochs", "1"],
        env=[{"name": "MODELLOOP_RUN", "value": name}],
        numNodes=2,
        numProcPerNode=2,
        resourcesPerNode={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    )
    job["spec"]["runtimePatches"] = [
        {
            "manager": "modelloop.dev/operator",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "spec": {
                                        "template": {
                                            "metadata": {
                                                "labels": {"modelloop.dev/run": name, **pod_labels},
                                                "annotations": {"modelloop.dev/note": "from runtimePatches"},
                                            }
                                        }
                                    }
                                },
                            }
                        ]
                    }
                }
            },
        }
    ]
    return job


def trainjob_pods(cluster: Cluster, namespace: str, name: str, count: int) -> list[dict[str, Any]]:
    """Wait until the TrainJob ``name`` has ``count`` pods; return them ordered by completion index."""

    def pods() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = cluster.get(
            "pods", namespace=namespace, selector=f"jobset.sigs.k8s.io/jobset-name={name}"
        )["items"]
        return items if len(items) == count else None

    found = wait_for(pods, timeout=TIMEOUT, what=f"{count} pods of TrainJob {name}")
    return sorted(found, key=lambda p: int(p["metadata"]["annotations"][COMPLETION_INDEX]))


def container(pod: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An object's conditions without their timestamps."""
    return [
        {k: v for k, v in c.items() if k not in ("lastTransitionTime", "lastProbeTime", "lastUpdateTime")}
        for c in obj.get("status", {}).get("conditions") or ()
    ]


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_a_trainjob_of_two_nodes_becomes_a_jobset_whose_pods_get_torchs_rendezvous_and_it_completes(
    cluster: Cluster, namespace: str, trainer: Engine, tmp_path: Path
) -> None:
    cluster.apply(distributed_trainjob("dist", {}), namespace)

    pods = trainjob_pods(cluster, namespace, "dist", 2)
    jobset = cluster.get(JOBSETS, "dist", namespace)
    jobs = cluster.get("jobs", namespace=namespace, selector="jobset.sigs.k8s.io/jobset-name=dist")["items"]
    seen = {
        "jobset_replicated_jobs": [
            {
                "name": r["name"],
                "replicas": r.get("replicas"),
                "parallelism": r["template"]["spec"].get("parallelism"),
            }
            for r in jobset["spec"]["replicatedJobs"]
        ],
        "jobset_network": jobset["spec"].get("network"),
        "jobs": [j["metadata"]["name"] for j in jobs],
        "pods": [
            {
                "name": p["metadata"]["name"],
                "hostname": p["spec"].get("hostname"),
                "subdomain": p["spec"].get("subdomain"),
                "labels": p["metadata"]["labels"],
                "annotations": p["metadata"].get("annotations"),
                "containers": [c["name"] for c in p["spec"]["containers"]],
                "env": container(p, "node").get("env"),
                "command": container(p, "node").get("command"),
                "args": container(p, "node").get("args"),
                "ports": container(p, "node").get("ports"),
                "resources": container(p, "node").get("resources"),
            }
            for p in pods
        ],
        "services": [
            {
                "name": s["metadata"]["name"],
                "clusterIP": s["spec"].get("clusterIP"),
                "selector": s["spec"].get("selector"),
            }
            for s in cluster.get("services", namespace=namespace)["items"]
        ],
    }
    record(tmp_path, "trainjob-pods", seen)

    def complete() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.get(TRAINJOBS, "dist", namespace)
        return obj if is_true(obj, "Complete") else None

    done = wait_for(complete, timeout=TIMEOUT, what="TrainJob dist Complete")
    record(
        tmp_path,
        "trainjob-success-status",
        {
            "trainjob": conditions(done),
            "trainjob_jobsStatus": done["status"].get("jobsStatus"),
            "jobset": conditions(cluster.get(JOBSETS, "dist", namespace)),
        },
    )

    # One replicated job "node" of one Indexed Job (<trainjob>-node-0) whose parallelism is numNodes, a
    # headless Service named after the TrainJob, and pods whose hostnames resolve under it.
    assert seen["jobset_replicated_jobs"] == [{"name": "node", "replicas": 1, "parallelism": 2}]
    assert seen["jobs"] == ["dist-node-0"]
    assert {
        "name": "dist",
        "clusterIP": "None",
        "selector": {"jobset.sigs.k8s.io/jobset-name": "dist"},
    } in seen["services"]
    for index, pod in enumerate(pods):
        labels = pod["metadata"]["labels"]
        assert labels["modelloop.dev/run"] == "dist"
        assert pod["metadata"]["annotations"]["modelloop.dev/note"] == "from runtimePatches"
        assert labels[COMPLETION_INDEX] == str(index) and labels["job-name"] == "dist-node-0"
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"dist-node-0-{index}", "dist")
        node = container(pod, "node")
        assert node["command"] == ["torchrun", "/app/train.py"] and node["args"] == ["--epochs", "1"]
        assert node["ports"] == [{"containerPort": 29500, "protocol": "TCP"}]
        # The TrainJob's env first, then Trainer's torch rendezvous (the same on every node: the rank is
        # the pod's completion index), then the Job controller's JOB_COMPLETION_INDEX.
        assert node["env"] == [
            {"name": "MODELLOOP_RUN", "value": "dist"},
            {"name": "PET_NNODES", "value": "2"},
            {"name": "PET_NPROC_PER_NODE", "value": "2"},
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {
                        "apiVersion": "v1",
                        "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']",
                    }
                },
            },
            {"name": "PET_MASTER_ADDR", "value": "dist-node-0-0.dist"},
            {"name": "PET_MASTER_PORT", "value": "29500"},
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}
                },
            },
        ]
    completed = {"type": "Complete", "status": "True", "reason": "AllJobsCompleted"}
    assert {**completed, "message": "jobset completed successfully"} in conditions(done)
    jobset_completed = {**completed, "type": "Completed", "message": "jobset completed successfully"}
    assert jobset_completed in conditions(cluster.get(JOBSETS, "dist", namespace))


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_a_failed_pod_fails_the_jobset_and_the_trainjob(
    cluster: Cluster, namespace: str, trainer: Engine, tmp_path: Path
) -> None:
    # The shared torch-distributed runtime leaves Job.backoffLimit at Kubernetes' default, 6 retries with a
    # growing back-off (minutes): a copy that fails a Job at its first failed pod.
    runtime = yaml.safe_load(TORCH_RUNTIME.read_text())
    runtime = copy.deepcopy(runtime)
    runtime["metadata"]["name"] = f"torch-fail-fast-{namespace}"
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] = 0
    cluster.kubectl("apply", "-f", "-", input=json.dumps(runtime))
    try:
        cluster.apply(
            distributed_trainjob("doomed", {OUTCOME: "Hold"}, runtime=runtime["metadata"]["name"]), namespace
        )
        pods = trainjob_pods(cluster, namespace, "doomed", 2)
        wait_for(
            lambda: all(
                p["status"].get("phase") == "Running"
                for p in cluster.get(
                    "pods", namespace=namespace, selector="jobset.sigs.k8s.io/jobset-name=doomed"
                )["items"]
            ),
            timeout=TIMEOUT,
            what="both pods Running",
        )
        failing = pods[1]["metadata"]["name"]
        cluster.kubectl("label", "pod", failing, "-n", namespace, f"{OUTCOME}=Fail", "--overwrite")

        def failed() -> dict[str, Any] | None:
            obj: dict[str, Any] = cluster.get(TRAINJOBS, "doomed", namespace)
            return obj if is_true(obj, "Failed") else None

        done = wait_for(failed, timeout=TIMEOUT, what="TrainJob doomed Failed")
        jobset = cluster.get(JOBSETS, "doomed", namespace)
        jobs = cluster.get("jobs", namespace=namespace, selector="jobset.sigs.k8s.io/jobset-name=doomed")[
            "items"
        ]
        record(
            tmp_path,
            "trainjob-failure-status",
            {
                "trainjob": conditions(done),
                "trainjob_jobsStatus": done["status"].get("jobsStatus"),
                "jobset": conditions(jobset),
                "jobset_restarts": jobset["status"].get("restarts"),
                "jobs": [{j["metadata"]["name"]: conditions(j)} for j in jobs],
                "failed_pod": failing,
            },
        )
        failure = {
            "type": "Failed",
            "status": "True",
            "reason": "FailedJobs",
            "message": "jobset failed due to one or more job failures (first failed job: doomed-node-0)",
        }
        assert failure in conditions(jobset) and failure in conditions(done)
        backoff = {"status": "True", "reason": "BackoffLimitExceeded"}
        assert {
            "type": "Failed",
            **backoff,
            "message": "Job has reached the specified backoff limit",
        } in conditions(jobs[0])
    finally:
        cluster.kubectl(
            "delete", "clustertrainingruntime", runtime["metadata"]["name"], "--wait=false", check=False
        )


def pending_workload(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """Wait until the Workload of ``kind`` ``name`` says why it is not admitted; return it."""

    def pending() -> dict[str, Any] | None:
        for wl in workloads_of(cluster, namespace, kind, name):
            reserved = condition(wl, "QuotaReserved")
            if reserved and reserved["status"] == "False" and reserved.get("message"):
                return wl
        return None

    return wait_for(pending, timeout=TIMEOUT, what=f"a pending Workload of {kind} {name}")


def job_uid(cluster: Cluster, resource: str, name: str, namespace: str) -> str:
    return str(cluster.get(resource, name, namespace)["metadata"]["uid"])


def workload_summary(wl: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": wl["apiVersion"],
        "name": wl["metadata"]["name"],
        "labels": wl["metadata"].get("labels"),
        "annotations": wl["metadata"].get("annotations"),
        "ownerReferences": wl["metadata"].get("ownerReferences"),
        "queueName": wl["spec"].get("queueName"),
        "podSets": [
            {
                "name": ps["name"],
                "count": ps["count"],
                "requests": ps["template"]["spec"]["containers"][0].get("resources"),
            }
            for ps in wl["spec"]["podSets"]
        ],
        "conditions": conditions(wl),
        "admission": wl.get("status", {}).get("admission"),
    }


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_kueue_holds_a_job_that_does_not_fit_and_admits_it_when_the_quota_grows(
    cluster: Cluster, namespace: str, kueue: Engine, tmp_path: Path
) -> None:
    queue = f"q-{namespace}"
    make_queue(cluster, namespace, queue, gpus=3)
    try:
        job = indexed_job(
            "four", 4, {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}, suspend=True, queue=queue
        )
        cluster.apply(job, namespace)

        wl = pending_workload(cluster, namespace, "Job", "four")
        record(tmp_path, "job-workload-pending", workload_summary(wl))
        assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["spec"]["queueName"] == queue
        assert wl["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == job_uid(
            cluster, "job", "four", namespace
        )
        assert conditions(wl) == [
            {
                "type": "QuotaReserved",
                "status": "False",
                "reason": "Pending",
                "message": "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu"
                f" in flavor {queue}, previously considered podsets requests (0)"
                " + current podset request (4) > maximum capacity (3)",
                "observedGeneration": 1,
            }
        ]
        assert cluster.get("job", "four", namespace)["spec"]["suspend"] is True
        assert not cluster.get("pods", namespace=namespace, selector="job-name=four")["items"]

        set_quota(cluster, queue, gpus=4)

        def started() -> list[dict[str, Any]] | None:
            running = cluster.get("job", "four", namespace)
            pods: list[dict[str, Any]] = cluster.get("pods", namespace=namespace, selector="job-name=four")[
                "items"
            ]
            return pods if running["spec"]["suspend"] is False and len(pods) == 4 else None

        wait_for(started, timeout=TIMEOUT, what="Job four unsuspended with 4 pods")
        admitted = workloads_of(cluster, namespace, "Job", "four")
        record(tmp_path, "job-workload-admitted", [workload_summary(w) for w in admitted])
        assert len(admitted) == 1 and is_true(admitted[0], "Admitted")
    finally:
        delete_queue(cluster, namespace, queue)


@pytest.mark.timeout(ENGINE_BUILD_SECONDS)
def test_kueue_holds_a_trainjob_that_does_not_fit_and_admits_it_when_the_quota_grows(
    cluster: Cluster, namespace: str, kueue: Engine, tmp_path: Path
) -> None:
    queue = f"q-{namespace}"
    make_queue(cluster, namespace, queue, gpus=3)
    try:
        job = distributed_trainjob("queued", {})
        job["metadata"]["labels"] = {QUEUE_LABEL: queue}
        job["spec"]["suspend"] = True
        gpus = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "2"}
        job["spec"]["trainer"]["resourcesPerNode"] = {"requests": gpus, "limits": gpus}
        pod_patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
            "replicatedJobs"
        ][0]
        pod_patch["template"]["spec"]["template"]["spec"] = {"tolerations": [GPU_TOLERATION]}
        cluster.apply(job, namespace)

        wl = pending_workload(cluster, namespace, "TrainJob", "queued")
        held = cluster.get(TRAINJOBS, "queued", namespace)
        record(
            tmp_path,
            "trainjob-workload-pending",
            {**workload_summary(wl), "trainjob_conditions": conditions(held)},
        )
        assert held["spec"]["suspend"] is True
        assert not cluster.get(JOBSETS, namespace=namespace)["items"] or all(
            js["spec"].get("suspend") for js in cluster.get(JOBSETS, namespace=namespace)["items"]
        )
        assert wl["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == held["metadata"]["uid"]
        reserved = condition(wl, "QuotaReserved")
        assert reserved is not None and reserved["reason"] == "Pending"
        assert reserved["message"].startswith(
            "couldn't assign flavors to pod set node: insufficient quota for nvidia"
        )

        set_quota(cluster, queue, gpus=4)

        def started() -> list[dict[str, Any]] | None:
            tj = cluster.get(TRAINJOBS, "queued", namespace)
            pods: list[dict[str, Any]] = cluster.get(
                "pods", namespace=namespace, selector="jobset.sigs.k8s.io/jobset-name=queued"
            )["items"]
            return pods if not tj["spec"].get("suspend") and len(pods) == 2 else None

        wait_for(started, timeout=TIMEOUT, what="TrainJob queued unsuspended with 2 pods")
        admitted = workloads_of(cluster, namespace, "TrainJob", "queued")
        tj = cluster.get(TRAINJOBS, "queued", namespace)
        record(
            tmp_path,
            "trainjob-workload-admitted",
            {
                "workloads": [workload_summary(w) for w in admitted],
                "trainjob_runtimePatches": tj["spec"].get("runtimePatches"),
                "trainjob_conditions": conditions(tj),
            },
        )
        assert len(admitted) == 1 and is_true(admitted[0], "Admitted")
    finally:
        delete_queue(cluster, namespace, queue)


def test_without_trainers_crds_a_trainjob_is_refused_as_an_unknown_kind(
    cluster: Cluster, namespace: str, trainer: Engine
) -> None:
    """What an operator without Trainer sees (and falls back on): the kind is not served. The CRDs and the
    runtime are installed again afterwards, for the rest of the session."""
    remove_trainer_crds(cluster)
    try:
        refused = cluster.apply_result(trainjob_manifest("orphan"), namespace)
        assert refused.returncode != 0
        assert 'no matches for kind "TrainJob" in version "trainer.kubeflow.org/v1alpha1"' in refused.stderr
    finally:
        install_crds(cluster, TRAINER_CRDS)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(TORCH_RUNTIME))
