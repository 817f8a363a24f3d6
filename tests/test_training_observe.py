"""What a Job and its pods say about a run, read as an engineer would with kubectl describe.

Every Job and pod goes through ``slim_job``/``slim_pod`` first, exactly as the operator's indexes keep
them: a slimmer that dropped a field the observer reads would fail these tests.
"""

from __future__ import annotations

import json
from typing import Any

from modelloop.api import TrainingRunPhase
from modelloop.training.observe import observe_job, slim_job, slim_pod, slim_queued
from modelloop.training.result import ChampionReport, parse_result

SUCCESS = {
    "status": "Succeeded",
    "metrics": {"accuracy": 0.96, "f1_macro": 0.95, "bogus": "x", "nan": float("nan")},
    "artifactUri": "file:///a/model.joblib",
    "artifactDigest": "sha256:" + "a" * 64,
    "datasetHash": "sha256:" + "b" * 64,
    "framework": "sklearn",
    "frameworkVersion": "1.5.2",
    "codeVersion": "trainer:1",
}


# What the API server sends besides: none of it may matter to the observer.
NOISE = {"managedFields": [{"manager": "kube-controller-manager"}], "resourceVersion": "7", "uid": "u"}


def job(*conditions: dict[str, Any], suspend: bool = False, **status: Any) -> dict[str, Any]:
    return slim_job(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j", "namespace": "ml", **NOISE},
            "spec": {"suspend": suspend, "backoffLimit": 1, "template": {"spec": {"containers": []}}},
            "status": {"conditions": list(conditions), "active": 0, **status},
        }
    )


def pod(
    name: str = "p", phase: str = "Pending", created: str = "2026-01-01T00:00:00Z", **status: Any
) -> dict[str, Any]:
    return slim_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created, **NOISE},
            "spec": {"nodeName": "gpu-0", "containers": [{"name": "trainer"}]},
            "status": {"phase": phase, "hostIP": "10.0.0.1", **status},
        }
    )


def terminated(message: str, exit_code: int = 0, image_id: str = "") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "imageID": image_id,
                "state": {"terminated": {"exitCode": exit_code, "message": message}},
            }
        ]
    }


def test_a_job_without_pods_is_pending() -> None:
    observed = observe_job(job(), [])
    assert (observed.phase, observed.reason) == (TrainingRunPhase.PENDING, "JobCreated")


def test_an_unschedulable_pod_reports_the_schedulers_message() -> None:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pending = pod(
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
    )

    observed = observe_job(job(), [pending])

    assert (observed.phase, observed.reason, observed.message) == (
        TrainingRunPhase.PENDING,
        "Unschedulable",
        message,
    )


def test_an_image_problem_is_named() -> None:
    waiting = pod(
        containerStatuses=[
            {
                "name": "trainer",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image x"}},
            }
        ]
    )

    observed = observe_job(job(), [waiting])

    assert (observed.reason, observed.message) == ("ImagePullBackOff", "Back-off pulling image x")


def test_a_running_pod_makes_the_run_running() -> None:
    observed = observe_job(job(startTime="2026-01-01T00:00:01Z"), [pod(phase="Running")])
    assert observed.phase == TrainingRunPhase.RUNNING
    assert observed.start_time == "2026-01-01T00:00:01Z"


def test_a_suspended_job_waits_in_its_queue() -> None:
    observed = observe_job(job(suspend=True), [])
    assert (observed.phase, observed.reason) == (TrainingRunPhase.PENDING, "Queued")
    assert observed.message == "The Job waits to be admitted by its queue (Kueue)."


def test_a_queued_job_carries_kueue_s_reason_while_it_waits_and_runs_once_admitted() -> None:
    why = "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default"
    workload = slim_queued(
        {
            "metadata": {"ownerReferences": [{"kind": "Job", "name": "j", "uid": "u", "controller": True}]},
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": why}]},
        }
    )

    waiting = observe_job(job(suspend=True), [], workload)
    admitted = observe_job(job(startTime="2026-01-01T00:00:01Z"), [pod(phase="Running")], workload)

    assert (waiting.phase, waiting.reason) == (TrainingRunPhase.PENDING, "Queued")
    assert waiting.message == f"The Job waits to be admitted by its queue (Kueue): {why}"
    assert admitted.phase == TrainingRunPhase.RUNNING


def test_a_complete_job_carries_the_trainers_result_and_image_digest() -> None:
    digest = "sha256:" + "c" * 64
    done = pod(phase="Succeeded", **terminated(json.dumps(SUCCESS), image_id=f"registry/trainer@{digest}"))

    observed = observe_job(
        job({"type": "Complete", "status": "True"}, completionTime="2026-01-01T00:01:00Z"), [done]
    )

    assert observed.phase == TrainingRunPhase.SUCCEEDED
    assert observed.completion_time == "2026-01-01T00:01:00Z"
    assert observed.result is not None and observed.result.metrics == {"accuracy": 0.96, "f1_macro": 0.95}
    assert observed.image_digest == digest


def test_a_failed_job_reports_the_trainers_own_reason() -> None:
    failure = {
        "status": "Failed",
        "reason": "DataValidationFailed",
        "message": "column x has 3 missing values",
    }
    failed_pod = pod(phase="Failed", **terminated(json.dumps(failure), exit_code=1))

    observed = observe_job(
        job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}), [failed_pod]
    )

    assert (observed.phase, observed.reason, observed.message) == (
        TrainingRunPhase.FAILED,
        "DataValidationFailed",
        "column x has 3 missing values",
    )


def test_a_failed_job_without_a_result_reports_the_jobs_reason_and_the_exit() -> None:
    crashed = pod(phase="Failed", **terminated("Segmentation fault", exit_code=139))
    condition = {
        "type": "Failed",
        "status": "True",
        "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified deadline",
    }

    observed = observe_job(job(condition), [crashed])

    assert observed.reason == "DeadlineExceeded"
    assert "exit code 139" in observed.message and "Segmentation fault" in observed.message


def test_the_newest_pod_speaks_for_the_job() -> None:
    old = pod(
        "old",
        phase="Failed",
        created="2026-01-01T00:00:00Z",
        **terminated('{"status":"Failed","reason":"A"}', 1),
    )
    new = pod("new", phase="Succeeded", created="2026-01-01T00:05:00Z", **terminated(json.dumps(SUCCESS)))

    observed = observe_job(job({"type": "Complete", "status": "True"}), [new, old])

    assert observed.result is not None and observed.result.succeeded


def test_parse_result_ignores_what_is_not_the_trainers_json() -> None:
    assert parse_result(None) is None
    assert parse_result("plain text") is None
    assert parse_result('{"status": "Weird"}') is None
    assert parse_result("[1, 2]") is None


def test_parse_result_reads_the_reference_files_the_holdout_and_the_champions_evaluation() -> None:
    result = parse_result(
        json.dumps(
            {
                **SUCCESS,
                "referenceUri": "s3://m/iris/r/reference.csv",
                "referencePredictionsUri": "s3://m/iris/r/reference_predictions.csv",
                "holdoutUri": "s3://m/iris/r/holdout.csv",
                "champion": {"version": "iris-v3", "metrics": {"accuracy": 0.95, "n": "x"}},
            }
        )
    )

    assert result is not None
    assert result.reference_uri == "s3://m/iris/r/reference.csv"
    assert result.reference_predictions_uri == "s3://m/iris/r/reference_predictions.csv"
    assert result.holdout_uri == "s3://m/iris/r/holdout.csv"
    assert result.champion == ChampionReport(version="iris-v3", metrics={"accuracy": 0.95})


def test_parse_result_keeps_why_the_champion_was_not_evaluated_and_ignores_a_nameless_one() -> None:
    failed = parse_result(json.dumps({**SUCCESS, "champion": {"version": "iris-v3", "error": "no file"}}))
    nameless = parse_result(json.dumps({**SUCCESS, "champion": {"metrics": {"accuracy": 1.0}}}))

    assert failed is not None and failed.champion == ChampionReport("iris-v3", {}, "no file")
    assert nameless is not None and nameless.champion is None
