"""The local control plane schedules like a real one: GPU requests, taints, product selectors."""

from __future__ import annotations

from typing import Any

from e2e.harness import Cluster, condition, wait_for

GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"


def gpu_job(name: str, gpus: int, **pod_spec: Any) -> dict[str, Any]:
    """A Job whose single pod asks for ``gpus`` GPUs and tolerates the GPU taint."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "train",
                            "image": "example.invalid/trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": gpus}},
                        }
                    ],
                    **pod_spec,
                }
            },
        },
    }


def job_pod(cluster: Cluster, job: str, namespace: str) -> dict[str, Any] | None:
    pods = cluster.get("pods", namespace=namespace)["items"]
    return next((p for p in pods if p["metadata"].get("labels", {}).get("job-name") == job), None)


def job_condition(cluster: Cluster, job: str, namespace: str, type_: str) -> bool:
    found = condition(cluster.get("job", job, namespace), type_)
    return bool(found and found["status"] == "True")


def test_two_gpu_job_is_bound_to_a_gpu_node_and_succeeds(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_job("two-gpus", 2, nodeSelector={"nvidia.com/gpu.product": GPU_PRODUCT}), namespace)

    wait_for(
        lambda: job_condition(cluster, "two-gpus", namespace, "Complete"), timeout=60, what="Job Complete"
    )

    pod = job_pod(cluster, "two-gpus", namespace)
    assert pod is not None
    node = cluster.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
    assert pod["status"]["phase"] == "Succeeded"


def test_job_asking_for_more_gpus_than_any_node_has_stays_pending_with_the_schedulers_reason(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(gpu_job("sixteen-gpus", 16), namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod = job_pod(cluster, "sixteen-gpus", namespace)
        scheduled = condition(pod, "PodScheduled") if pod else None
        return scheduled if scheduled and scheduled.get("reason") == "Unschedulable" else None

    scheduled = wait_for(unschedulable, timeout=60, what="the scheduler's verdict")

    assert scheduled["status"] == "False"
    assert "0/4 nodes are available" in scheduled["message"]
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    pod = job_pod(cluster, "sixteen-gpus", namespace)
    assert pod is not None and pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_gpu_pod_without_the_toleration_is_kept_off_gpu_nodes(cluster: Cluster, namespace: str) -> None:
    job = gpu_job("no-toleration", 1)
    del job["spec"]["template"]["spec"]["tolerations"]
    cluster.apply(job, namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod = job_pod(cluster, "no-toleration", namespace)
        scheduled = condition(pod, "PodScheduled") if pod else None
        return scheduled if scheduled and scheduled.get("reason") == "Unschedulable" else None

    scheduled = wait_for(unschedulable, timeout=60, what="the scheduler's verdict")

    assert "untolerated taint" in scheduled["message"], scheduled["message"]


def test_pod_labelled_to_fail_fails_its_job(cluster: Cluster, namespace: str) -> None:
    job = gpu_job("failing", 0)
    job["spec"]["template"]["metadata"] = {"labels": {"sim.modelloop.dev/outcome": "Fail"}}
    cluster.apply(job, namespace)

    wait_for(lambda: job_condition(cluster, "failing", namespace, "Failed"), timeout=60, what="Job Failed")

    pod = job_pod(cluster, "failing", namespace)
    assert pod is not None and pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
