"""The controller runtime on the real API server: restarts at the worst moment, names of any length,
requests the API server refuses, status that someone else changed, writes that cannot go stale, server-side
apply that reports a conflict instead of fighting, and stages derived from what InferenceServices report."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, condition, running_operator, wait_for
from e2e.kubelet import TRAINER_BIN, run_pod, running_held_pods
from e2e.test_registry import model_version
from e2e.test_trainingrun import jobs_of, phase_is, run_status, training_run

needs_trainer = pytest.mark.skipif(
    not (TRAINER_BIN / "modelloop-train").exists(),
    reason="the trainer runtime is not installed (make trainer-venv)",
)


def model_versions(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return list(cluster.get("modelversions", namespace=namespace)["items"])


def jobs_complete(cluster: Cluster, namespace: str, count: int) -> bool:
    jobs = cluster.get("jobs", namespace=namespace)["items"]
    done = [
        j for j in jobs if any(c["type"] == "Complete" for c in j.get("status", {}).get("conditions") or ())
    ]
    return len(done) == count


@needs_trainer
def test_killing_the_operator_between_job_success_and_registration_leaves_one_version_per_run(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    runs = [f"race-{i}" for i in range(5)]
    with running_operator(cluster, namespace, tmp_path / "op-0.log") as first:
        for name in runs:
            cluster.apply(training_run(name, tmp_path), namespace)
        wait_for(lambda: all(jobs_of(cluster, n, namespace) for n in runs), timeout=60, what="every Job")
        first.send_signal(signal.SIGKILL)
        first.wait()

    # With no operator running, every trainer runs and every Job succeeds: all five runs now sit in the
    # window between their Job's success and their ModelVersion's creation.
    def all_trained() -> bool:
        for pod in running_held_pods(cluster, namespace):
            assert run_pod(cluster, pod, tmp_path).exit_code == 0
        return jobs_complete(cluster, namespace, len(runs))

    wait_for(all_trained, timeout=240, interval=0.5, what="every Job to succeed")

    # Start the operator and SIGKILL it again and again: once as soon as it is live (while it starts its
    # registrations), then each time the moment a new ModelVersion appears (between a version's creation
    # and the run's status saying so), until every run has registered.
    kills = 0
    for attempt in range(1, 9):
        before = len(model_versions(cluster, namespace))
        if before == len(runs):
            break
        with running_operator(cluster, namespace, tmp_path / f"op-{attempt}.log") as operator:
            if attempt > 1:
                wait_for(
                    lambda before=before: len(model_versions(cluster, namespace)) > before,  # type: ignore[misc]
                    timeout=60,
                    interval=0.05,
                    what="a new ModelVersion",
                )
            operator.send_signal(signal.SIGKILL)
            operator.wait()
            kills += 1
    assert kills >= 1

    with running_operator(cluster, namespace, tmp_path / "op-last.log"):
        wait_for(
            lambda: all((run_status(cluster, n, namespace).get("modelVersion")) for n in runs),
            timeout=90,
            what="every run to name its ModelVersion",
        )

    versions = model_versions(cluster, namespace)
    assert len(versions) == len(runs), [v["metadata"]["name"] for v in versions]
    assert sorted(v["spec"]["version"] for v in versions) == list(range(1, len(runs) + 1))
    by_run = {v["spec"]["lineage"]["trainingRun"]: v["metadata"]["name"] for v in versions}
    assert sorted(by_run) == sorted(runs)
    for name in runs:
        assert run_status(cluster, name, namespace)["modelVersion"] == by_run[name]
        assert len(jobs_of(cluster, name, namespace)) == 1


@pytest.mark.usefixtures("operator")
def test_a_run_with_the_longest_valid_name_gets_its_job_with_valid_labels(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    name = "long-" + "n" * 243 + "-end"  # 253 characters: the longest object name
    cluster.apply(training_run(name, tmp_path), namespace)

    [job] = wait_for(
        lambda: cluster.get("jobs", namespace=namespace)["items"], timeout=60, what="the run's Job"
    )

    assert job["metadata"]["annotations"]["modelloop.dev/training-run"] == name
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())
    status = wait_for(lambda: phase_is(cluster, name, namespace, "Running"), timeout=60, what="Running")
    assert status["jobName"] == job["metadata"]["name"]
    assert condition(cluster.get("trainingrun", name, namespace), "Ready")["reason"] != "ApiRequestRefused"  # type: ignore[index]


@pytest.mark.usefixtures("operator")
def test_a_request_the_api_server_refuses_reaches_status_and_an_event_and_heals_once_allowed(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs"},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    cluster.apply(quota, namespace)
    cluster.apply(training_run("refused", tmp_path), namespace)

    def refused() -> dict[str, Any] | None:
        ready = condition(cluster.get("trainingrun", "refused", namespace), "Ready") or {}
        return ready if ready.get("reason") == "ApiRequestRefused" else None

    ready = wait_for(refused, timeout=60, what="the refusal in status")
    assert "403" in ready["message"] and "exceeded quota" in ready["message"]
    assert run_status(cluster, "refused", namespace)["phase"] == "Pending"
    events = cluster.get("events", namespace=namespace)["items"]
    assert any(
        e["reason"] == "ApiRequestRefused" and e["type"] == "Warning" and "exceeded quota" in e["message"]
        for e in events
    )

    # Retrying cannot heal it, but a changed quota does: the back-off retry then goes through.
    cluster.kubectl("delete", "resourcequota", "no-jobs", "-n", namespace)
    wait_for(lambda: jobs_of(cluster, "refused", namespace), timeout=90, what="the Job after the quota went")
    wait_for(
        lambda: (
            (condition(cluster.get("trainingrun", "refused", namespace), "Ready") or {}).get("reason")
            != "ApiRequestRefused"
        ),
        timeout=60,
        what="the refusal to clear",
    )


@pytest.mark.usefixtures("operator")
def test_a_status_edited_from_outside_is_repaired_on_the_next_pass(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.apply(training_run("edited", tmp_path), namespace)
    wait_for(lambda: phase_is(cluster, "edited", namespace, "Running"), timeout=60, what="Running")

    cluster.kubectl(
        "patch", "trainingrun", "edited", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Failed", "reason": "Tampered", "jobName": "elsewhere"}}),
    )  # fmt: skip

    repaired = wait_for(
        lambda: phase_is(cluster, "edited", namespace, "Running"), timeout=60, what="the status repaired"
    )
    assert repaired["jobName"] == jobs_of(cluster, "edited", namespace)[0]["metadata"]["name"]
    assert repaired.get("reason") != "Tampered"


@needs_trainer
@pytest.mark.usefixtures("operator")
def test_a_run_deleted_and_created_again_under_its_name_registers_a_version_of_its_own(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    def train(name: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            for pod in running_held_pods(cluster, namespace):
                run_pod(cluster, pod, tmp_path)
            return phase_is(cluster, name, namespace, "Succeeded", "Failed")

        return wait_for(finished, timeout=240, interval=0.5, what=f"{name} to finish")

    cluster.apply(training_run("again", tmp_path), namespace)
    first = train("again")
    assert first.get("modelVersion") == "iris-v1", first
    cluster.kubectl("delete", "trainingrun", "again", "-n", namespace, "--wait=true")

    cluster.apply(training_run("again", tmp_path), namespace)
    second = train("again")

    assert second.get("modelVersion") == "iris-v2", second
    assert second["jobName"] != first["jobName"]


@pytest.fixture
def client(cluster: Cluster) -> Any:
    """The operator's own client, pointed at the e2e cluster, in this process."""
    from modelloop import kube
    from modelloop.kubeconfig import kubeconfig

    return kube.KubeClient(kubeconfig(str(cluster.kubeconfig)))


def test_a_status_write_planned_on_a_stale_read_is_refused_and_a_fresh_one_goes_through(
    cluster: Cluster, namespace: str, client: Any
) -> None:
    from modelloop import kube
    from modelloop.machinery.status import StatusWriter

    cluster.apply(model_version(1, {"accuracy": 0.9}), namespace)
    stale = cluster.get("modelversion", "iris-v1", namespace)
    # Someone else writes status after our read (the other replica, a person).
    cluster.kubectl(
        "patch", "modelversion", "iris-v1", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"history": [{"stage": "Candidate", "time": "2026-11-01T00:00:00Z",
                                                  "reason": "Registered", "message": "by the other"}]}}),
    )  # fmt: skip
    writer = StatusWriter("modelversions", client)

    async def stale_write() -> None:
        try:
            await writer.write(stale, {"history": [], "stage": "Archived"})
        finally:
            await client.close()

    with pytest.raises(kube.Conflict) as conflict:
        asyncio.run(stale_write())

    assert conflict.value.key == (namespace, "iris-v1")
    kept = cluster.get("modelversion", "iris-v1", namespace)["status"]
    assert kept["history"][0]["message"] == "by the other"  # the append-only history lost nothing
    assert "stage" not in kept

    async def fresh_write() -> dict[str, Any]:
        try:
            fresh = await writer.refresh(namespace, "iris-v1")
            return await writer.write(fresh, {"stage": "Candidate"})
        finally:
            await client.close()

    written = asyncio.run(fresh_write())
    assert written["status"]["stage"] == "Candidate"
    assert cluster.get("modelversion", "iris-v1", namespace)["status"]["stage"] == "Candidate"


def test_server_side_apply_owns_its_fields_of_a_kserve_inference_service_and_reports_a_conflict(
    cluster: Cluster, namespace: str, client: Any
) -> None:
    from modelloop import kube

    def isvc(min_replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": namespace},
            "spec": {
                "predictor": {
                    "minReplicas": min_replicas,
                    "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris/1"},
                }
            },
        }

    def apply(manifest: dict[str, Any]) -> kube.Applied:
        async def applying() -> kube.Applied:
            try:
                return await client.server_side_apply("inferenceservices", manifest)
            finally:
                await client.close()

        return asyncio.run(applying())

    applied = apply(isvc(1))
    assert applied.conflict is None and applied.obj is not None
    managers = {f["manager"] for f in applied.obj["metadata"]["managedFields"]}
    assert kube.FIELD_MANAGER in managers

    # Another manager takes the field (a person with kubectl, an autoscaler's controller).
    cluster.kubectl(
        "patch", "inferenceservice.serving.kserve.io", "iris", "-n", namespace, "--type=merge",
        "--field-manager=someone-else", "-p", json.dumps({"spec": {"predictor": {"minReplicas": 3}}}),
    )  # fmt: skip

    contested = apply(isvc(2))

    assert contested.obj is None
    assert contested.conflict is not None and "minReplicas" in contested.conflict
    assert "someone-else" in contested.conflict
    served = cluster.get("inferenceservice.serving.kserve.io", "iris", namespace)
    assert served["spec"]["predictor"]["minReplicas"] == 3  # nothing was taken from the other manager
