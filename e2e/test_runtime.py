"""The controller runtime on the real API server: restarts at the worst moment, names of any length,
requests the API server refuses, status that someone else changed, writes that cannot go stale, server-side
apply that reports a conflict instead of fighting, and stages derived from what InferenceServices report."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, condition, running_operator, wait_for, wait_for_event
from e2e.kubelet import TRAINER_BIN, run_pod, running_held_pods
from e2e.test_registry import model_version
from e2e.test_trainingrun import jobs_of, phase_is, run_status, training_run
from modelloop.naming import ANNOTATION_RUN_UID, LABEL_TRAINING_RUN

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


HELD_REGISTRATION = "registrations are held by the test"
HELD_RECORD = "recording versions is held by the test"


def held_by_policy(
    name: str, namespace: str, resource: str, operation: str, allowed: str, message: str
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding that deny ``operation`` on ``resource`` (of
    modelloop.dev) in ``namespace`` alone unless the CEL expression ``allowed`` holds: the real API server
    holds the operator's request where a test wants it held, with no hook in the operator."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["modelloop.dev"],
                            "apiVersions": ["*"],
                            "operations": [operation],
                            "resources": [resource],
                        }
                    ]
                },
                "validations": [{"expression": allowed, "message": message}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]


def refused_by(cluster: Cluster, namespace: str, runs: list[str], message: str) -> bool:
    """Whether every run's Ready condition is the operator's report of the API server refusing it with
    ``message``."""
    for name in runs:
        ready = condition(cluster.get("trainingrun", name, namespace), "Ready") or {}
        if ready.get("reason") != "ApiRequestRefused" or message not in ready.get("message", ""):
            return False
    return True


def sigkill(operator: subprocess.Popen[bytes]) -> int:
    """SIGKILL a live operator; its exit status."""
    assert operator.poll() is None, "the operator was still running when it was to be killed"
    operator.send_signal(signal.SIGKILL)
    return operator.wait(timeout=30)


@needs_trainer
def test_killing_the_operator_between_job_success_and_registration_leaves_one_version_per_run(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The API server holds the registration where the test wants it (a ValidatingAdmissionPolicy), so
    the operator is killed inside each window for certain: first with every Job succeeded and no version
    created, then with every version created and no run recording it. The operator started after each
    registers exactly one version per run."""
    runs = [f"race-{i}" for i in range(3)]
    no_registration = f"hold-registrations-{namespace}"
    no_record = f"hold-run-records-{namespace}"
    probe_version = model_version(99, {"accuracy": 0.9})
    probe_record = json.dumps({"status": {"modelVersion": "iris-v99"}})

    def dry_run(*args: str, input: str | None = None) -> bool | None:
        """A server-side dry run: True if allowed, False if a policy denied it (None: refused otherwise)."""
        result = cluster.kubectl(*args, "-n", namespace, "--dry-run=server", input=input, check=False)
        return True if result.returncode == 0 else False if "denied request" in result.stderr else None

    def creating_a_version() -> bool | None:
        return dry_run("create", "-f", "-", input=json.dumps(probe_version))

    def recording_a_version() -> bool | None:
        return dry_run(
            "patch", "trainingrun", runs[0], "--subresource=status", "--type=merge", "-p", probe_record
        )

    def delete_policy(name: str) -> None:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)

    cluster.apply(
        held_by_policy(
            no_registration,
            namespace,
            "modelversions",
            "CREATE",
            "false",
            HELD_REGISTRATION,
        ),
        namespace,
    )
    try:
        # Policies take effect a moment after they are created: a server-side dry run says when.
        wait_for(lambda: creating_a_version() is False, timeout=60, what="the hold on registrations in force")

        # Window 1: every Job has succeeded; the operator's registration is refused.
        with running_operator(cluster, namespace, tmp_path / "op-1.log") as first:
            for name in runs:
                cluster.apply(training_run(name, tmp_path), namespace)

            def all_trained() -> bool:
                for pod in running_held_pods(cluster, namespace):
                    assert run_pod(cluster, pod, tmp_path).exit_code == 0
                return jobs_complete(cluster, namespace, len(runs))

            wait_for(all_trained, timeout=240, interval=0.5, what="every Job to succeed")
            wait_for(
                lambda: refused_by(cluster, namespace, runs, HELD_REGISTRATION),
                timeout=90,
                what="every registration refused",
            )
            assert model_versions(cluster, namespace) == []
            assert sigkill(first) == -signal.SIGKILL
        assert all(not run_status(cluster, n, namespace).get("modelVersion") for n in runs)

        # Window 2: versions may be created, but no run may record its version.
        cluster.apply(
            held_by_policy(
                no_record,
                namespace,
                "trainingruns/status",
                "UPDATE",
                "!has(object.status) || !has(object.status.modelVersion) || "
                "(has(oldObject.status) && has(oldObject.status.modelVersion))",
                HELD_RECORD,
            ),
            namespace,
        )
        wait_for(lambda: recording_a_version() is False, timeout=60, what="the hold on run records in force")
        delete_policy(no_registration)
        wait_for(creating_a_version, timeout=60, what="the hold on registrations lifted")
        with running_operator(cluster, namespace, tmp_path / "op-2.log") as second:
            wait_for(
                lambda: refused_by(cluster, namespace, runs, HELD_RECORD),
                timeout=90,
                what="every run's record of its version refused",
            )
            registered = {v["metadata"]["name"] for v in model_versions(cluster, namespace)}
            assert len(registered) == len(runs)
            assert sigkill(second) == -signal.SIGKILL
        assert all(not run_status(cluster, n, namespace).get("modelVersion") for n in runs)

        delete_policy(no_record)
        wait_for(recording_a_version, timeout=60, what="the hold on run records lifted")
    finally:
        for name in (no_registration, no_record):
            cluster.kubectl(
                "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                "--ignore-not-found", check=False,
            )  # fmt: skip

    with running_operator(cluster, namespace, tmp_path / "op-3.log"):
        wait_for(
            lambda: all((run_status(cluster, n, namespace).get("modelVersion")) for n in runs),
            timeout=90,
            what="every run to name its ModelVersion",
        )

    versions = model_versions(cluster, namespace)
    # The versions the second operator created, no more: the third found each and recorded it.
    assert {v["metadata"]["name"] for v in versions} == registered
    assert sorted(v["spec"]["version"] for v in versions) == list(range(1, len(runs) + 1))
    for name in runs:
        run = cluster.get("trainingrun", name, namespace)
        [version] = [v for v in versions if v["spec"]["lineage"]["trainingRun"] == name]
        assert run["status"]["modelVersion"] == version["metadata"]["name"]
        assert version["metadata"]["annotations"][ANNOTATION_RUN_UID] == run["metadata"]["uid"]
        assert version["metadata"]["labels"][LABEL_TRAINING_RUN] == name
        lineage = version["spec"]["lineage"]
        assert (lineage["image"], lineage["datasetUri"]) == (
            run["spec"]["image"],
            run["spec"]["dataset"]["uri"],
        )
        assert lineage["params"] == run["spec"]["params"]
        assert version["spec"]["createdBy"] == f"trainingrun/{name}"
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
    wait_for_event(
        cluster,
        namespace,
        lambda e: (
            e["reason"] == "ApiRequestRefused" and e["type"] == "Warning" and "exceeded quota" in e["message"]
        ),
        what="the ApiRequestRefused event",
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
