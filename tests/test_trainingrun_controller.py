"""The TrainingRun controller's glue, with an injected client: what it asks the API server, and in which
order. The decisions are ``plan_run``'s (tests/test_training_plan.py); this is reading the indexes,
applying a plan, and writing status once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop.controllers import trainingrun as controller_module
from modelloop.controllers.trainingrun import TrainingRunController, register_next_version, training_runs
from modelloop.kube import KubeClient
from modelloop.machinery import events as runtime_events
from modelloop.naming import ANNOTATION_RUN_UID, ANNOTATION_TRIAL_PARAMS, LABEL_TRIAL, job_name
from modelloop.settings import Settings
from modelloop.training.observe import slim_job, slim_pod

UID = "run-uid"
KEY = ("ml", "search")


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Events the controller posts (through kopf, which needs a running operator): recorded instead."""
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        runtime_events, "post_event", lambda obj, type_, reason, message: posted.append((type_, reason))
    )
    return posted


def sweep_run(status: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {
            "name": "search",
            "namespace": "ml",
            "uid": UID,
            "generation": 1,
            "resourceVersion": "5",
        },
        "spec": {
            "image": "trainer:1",
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "output": {"modelName": "iris"},
            "sweep": {
                "parameters": {"max_depth": [1, 2, 3]},
                "parallelism": 1,
                "objective": {"metric": "accuracy"},
            },
        },
        "status": status,
    }
    return asyncio.run(training_runs(namespace="ml", name="search", body=body))[KEY]


def trial_job(index: int, accuracy: float) -> tuple[dict[str, Any], dict[str, Any]]:
    name = job_name("search", UID, index)
    job = {
        "metadata": {
            "name": name,
            "labels": {LABEL_TRIAL: str(index)},
            "annotations": {
                ANNOTATION_RUN_UID: UID,
                ANNOTATION_TRIAL_PARAMS: json.dumps({"max_depth": index + 1}),
            },
        },
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    result = {"status": "Succeeded", "metrics": {"accuracy": accuracy}, "artifactUri": f"file:///a/{name}"}
    return slim_job(job), slim_pod(trainer_pod(name, "Succeeded", 0, result))


def trainer_pod(job: str, phase: str, exit_code: int, report: Mapping[str, Any]) -> dict[str, Any]:
    """The pod of ``job`` whose trainer ended with ``exit_code``, its termination message ``report``."""
    terminated = {"exitCode": exit_code, "message": json.dumps(report)}
    return {
        "metadata": {
            "name": f"{job}-x",
            "labels": {"batch.kubernetes.io/job-name": job},
            "annotations": {ANNOTATION_RUN_UID: UID},
        },
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }


def recorded(index: int, accuracy: float) -> dict[str, Any]:
    return {
        "index": index,
        "phase": "Succeeded",
        "params": {"max_depth": index + 1},
        "metrics": {"accuracy": accuracy},
        "finishedOrder": index,
    }


def controller_for(
    run: dict[str, Any], jobs: list[tuple[dict[str, Any], dict[str, Any]]], client: KubeClient
) -> TrainingRunController:
    indexes = {
        "training_runs": {KEY: [run]},
        "training_jobs": {KEY: [job for job, _ in jobs]},
        "training_pods": {KEY: [pod for _, pod in jobs]},
        "model_versions": {},
    }
    return TrainingRunController(Settings(), indexes, client)


def test_finished_trials_jobs_are_deleted_only_after_the_status_write_and_only_once() -> None:
    # Trials 0 and 1 were recorded as finished; trial 1 is the best; trial 2 is next.
    run = sweep_run({"phase": "Running", "trialsStarted": 2, "trials": [recorded(0, 0.8), recorded(1, 0.9)]})
    jobs = [trial_job(0, 0.8), trial_job(1, 0.9)]
    client = RecordingClient()
    controller = controller_for(run, jobs, client)

    asyncio.run(controller.reconcile(KEY))

    assert client.calls == [
        ("create_job", job_name("search", UID, 2)),
        ("patch_status", "search"),
        ("delete_job", job_name("search", UID, 0)),  # not the best trial's
    ]
    assert client.statuses[0]["trialsStarted"] == 3

    # A reconcile before the index sees the Job gone neither plans on it nor deletes it again.
    client.calls.clear()
    asyncio.run(controller.reconcile(KEY))
    assert ("delete_job", job_name("search", UID, 0)) not in client.calls


def test_a_failed_status_write_deletes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    run = sweep_run({"phase": "Running", "trialsStarted": 2, "trials": [recorded(0, 0.8), recorded(1, 0.9)]})
    client = RecordingClient()

    async def refused(*_: Any, **__: Any) -> str:
        client.calls.append(("patch_status", "refused"))
        raise OSError("connection reset")

    monkeypatch.setattr(client, "patch_status", refused)
    controller = controller_for(run, [trial_job(0, 0.8), trial_job(1, 0.9)], client)

    with pytest.raises(OSError, match="connection reset"):
        asyncio.run(controller.reconcile(KEY))

    assert not any(call[0] == "delete_job" for call in client.calls)


def test_the_next_version_is_one_above_the_highest_and_a_taken_number_moves_on() -> None:
    versions = [{"spec": {"modelName": "iris", "version": v}} for v in (1, 2)]
    versions.append({"spec": {"modelName": "wine", "version": 9}})  # another model's
    client = RecordingClient(versions, taken={"iris-v3"})  # registered meanwhile by another run

    def render(version: int) -> dict[str, Any]:
        return {"metadata": {"name": f"iris-v{version}", "namespace": "ml"}}

    name = asyncio.run(register_next_version(client, "ml", "iris", render))

    assert name == "iris-v4"
    assert client.calls == [("list", "modelversions"), ("create", "iris-v3"), ("create", "iris-v4")]


class BlockingClient(RecordingClient):
    """Status writes wait until released; counts the writes waiting at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> str:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        await self.release.wait()
        self.waiting -= 1
        return await super().patch_status(plural, namespace, name, status, resource_version)


def test_only_a_few_sweeps_are_in_a_pass_at_once_however_many_workers_hold_one() -> None:
    client = BlockingClient()
    runs = {}
    for i in range(3 * controller_module.SWEEP_PASSES):
        run = sweep_run({})
        run["metadata"] = {**run["metadata"], "name": f"search-{i}"}
        runs[("ml", f"search-{i}")] = [run]
    indexes = {"training_runs": runs, "training_jobs": {}, "training_pods": {}, "model_versions": {}}
    controller = TrainingRunController(Settings(), indexes, client)

    async def scenario() -> None:
        passes = [asyncio.create_task(controller.reconcile(key)) for key in runs]
        for _ in range(200):  # every pass that can start reaches its status write
            await asyncio.sleep(0)
        assert client.waiting == controller_module.SWEEP_PASSES
        client.release.set()
        await asyncio.gather(*passes)

    asyncio.run(scenario())
    assert client.most_waiting == controller_module.SWEEP_PASSES
    assert len(client.statuses) == len(runs)


def test_a_pass_that_finds_nothing_new_writes_no_status() -> None:
    # Trial 0 finished with a whole-number accuracy (the API server returns it as an integer) and trial 1
    # runs; the pass parses the status, plans, and the writer compares what it dumps with what it read.
    run = sweep_run({"phase": "Running", "trialsStarted": 1, "trials": [recorded(0, 1)]})
    client = RecordingClient()
    controller = controller_for(run, [trial_job(0, 1)], client)
    asyncio.run(controller.reconcile(KEY))
    assert ("patch_status", "search") in client.calls
    written = client.statuses[-1]
    assert written["trials"][1]["phase"] == "Pending" and "metrics" not in written["trials"][1]

    client.calls.clear()
    asyncio.run(controller.reconcile(KEY))

    assert ("patch_status", "search") not in client.calls


def test_a_status_that_cannot_be_read_is_refused_and_left_as_it_is(events: list[tuple[str, str]]) -> None:
    unreadable = {"index": 0, "phase": "Finished"}  # edited by hand: no such phase
    run = sweep_run({"phase": "Running", "trialsStarted": 1, "trials": [unreadable]})
    client = RecordingClient()
    controller = controller_for(run, [], client)

    asyncio.run(controller.reconcile(KEY))

    assert client.calls == [("patch_status", "search")]  # no trial is started on a status it cannot read
    written = client.statuses[0]
    assert written["reason"] == "InvalidStatus" and "status.trials[0].phase" in written["message"]
    assert written["conditions"][0]["status"] == "False"
    assert "trials" not in written and "phase" not in written  # left as they are
    assert events == [("Warning", "InvalidStatus")]


def running_iris_run() -> Any:
    """The index entry of a Running single run ``ml/iris``."""
    body = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "iris", "namespace": "ml", "uid": UID, "generation": 1, "resourceVersion": "5"},
        "spec": {
            "image": "trainer:1",
            "dataset": {"uri": "sklearn://iris", "format": "sklearn"},
            "output": {"modelName": "iris"},
        },
        "status": {"phase": "Running"},
    }
    return asyncio.run(training_runs(namespace="ml", name="iris", body=body))[("ml", "iris")]


def test_a_trainers_reason_that_no_condition_can_hold_is_refused_in_status(
    events: list[tuple[str, str]],
) -> None:
    run = running_iris_run()
    name = job_name("iris", UID)
    failed = {"status": "Failed", "reason": "data check failed", "message": "column x is empty"}
    job = {
        "metadata": {"name": name, "annotations": {ANNOTATION_RUN_UID: UID}},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    }
    pod = trainer_pod(name, "Failed", 1, failed)
    indexes = {
        "training_runs": {("ml", "iris"): [run]},
        "training_jobs": {("ml", "iris"): [slim_job(job)]},
        "training_pods": {("ml", "iris"): [slim_pod(pod)]},
        "model_versions": {},
    }
    client = RecordingClient()

    asyncio.run(TrainingRunController(Settings(), indexes, client).reconcile(("ml", "iris")))

    # The CRD's schema would refuse "data check failed" as the Ready condition's reason: the run says why.
    written = client.statuses[-1]
    assert (
        written["reason"] == "ApiRequestRefused" and "status.conditions[Ready].reason" in written["message"]
    )
    assert events == [("Warning", "ApiRequestRefused")]


def single_run_reporting(artifact_uri: str) -> tuple[TrainingRunController, RecordingClient]:
    """A single run whose Job succeeded and whose trainer reported ``artifact_uri``, under the operator's
    default artifact root, with the controller that reconciles it."""
    run = running_iris_run()
    name = job_name("iris", UID)
    job = {
        "metadata": {"name": name, "annotations": {ANNOTATION_RUN_UID: UID}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1},
    }
    result = {
        "status": "Succeeded",
        "metrics": {"accuracy": 0.97},
        "artifactUri": artifact_uri,
        "framework": "sklearn",
    }
    indexes = {
        "training_runs": {("ml", "iris"): [run]},
        "training_jobs": {("ml", "iris"): [slim_job(job)]},
        "training_pods": {("ml", "iris"): [slim_pod(trainer_pod(name, "Succeeded", 0, result))]},
        "model_versions": {},
    }
    client = RecordingClient()
    return TrainingRunController(Settings(), indexes, client), client


RUN_FOLDER = f"{Settings().artifact_root}/ml/iris/iris-runuid"


def test_an_artifact_in_the_runs_own_folder_is_registered(events: list[tuple[str, str]]) -> None:
    controller, client = single_run_reporting(f"{RUN_FOLDER}/model.joblib")

    asyncio.run(controller.reconcile(("ml", "iris")))

    assert ("create", "iris-v1") in client.calls
    assert client.statuses[-1]["modelVersion"] == "iris-v1"
    assert ("Normal", "ModelRegistered") in events


def test_another_teams_artifact_is_never_registered_and_the_run_fails_saying_where_to_write(
    events: list[tuple[str, str]],
) -> None:
    foreign = f"{Settings().artifact_root}/team-b/fraud/fraud-0a0b0c0d/model.joblib"
    controller, client = single_run_reporting(foreign)

    asyncio.run(controller.reconcile(("ml", "iris")))

    assert [call for call in client.calls if call[0] in ("list", "create")] == []
    written = client.statuses[-1]
    assert (written["phase"], written["reason"]) == ("Failed", "ArtifactOutsideOutputFolder")
    assert "modelVersion" not in written and "artifactUri" not in written
    assert foreign in written["message"] and f"{RUN_FOLDER}/" in written["message"]
    ready = written["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ArtifactOutsideOutputFolder")
    assert events == [("Warning", "ArtifactOutsideOutputFolder")]
