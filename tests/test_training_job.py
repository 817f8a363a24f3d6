"""A TrainingRun's Job, rendered from the spec without a cluster."""

from __future__ import annotations

import json
from typing import Any

from modelloop.api import TrainingRunSpec
from modelloop.naming import job_name
from modelloop.training.job import ChampionModel, TrialPlan, current_champion, output_uri, render_job

RUN: dict[str, Any] = {
    "apiVersion": "modelloop.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "iris-rf", "namespace": "ml", "uid": "0f0e-uid", "labels": {"team": "vision"}},
}


def spec(**overrides: Any) -> TrainingRunSpec:
    raw: dict[str, Any] = {
        "image": "trainer:1",
        "params": {"estimator": "RandomForestClassifier", "n_estimators": 50},
        "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
        "output": {"modelName": "iris"},
        **overrides,
    }
    return TrainingRunSpec.model_validate(raw)


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod_spec(job)["containers"][0]["env"]}


def test_job_name_is_deterministic_and_differs_per_run_uid_and_trial() -> None:
    assert job_name("iris-rf", "uid-1") == job_name("iris-rf", "uid-1")
    assert job_name("iris-rf", "uid-1") != job_name("iris-rf", "uid-2")
    assert job_name("iris-rf", "uid-1", trial=0) != job_name("iris-rf", "uid-1", trial=1)


def test_job_name_of_a_long_run_is_a_valid_dns_label() -> None:
    long_name = "a" * 60 + "-" + "b" * 150
    name = job_name(long_name, "uid", trial=999)
    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert job_name(long_name, "uid", trial=999) == name


def test_job_is_owned_by_its_run_and_labelled() -> None:
    job = render_job(RUN, spec(), "file:///artifacts")

    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingRun",
        "iris-rf",
        "0f0e-uid",
        True,
    )
    labels = job["metadata"]["labels"]
    assert labels["modelloop.dev/training-run"] == "iris-rf"
    assert labels["modelloop.dev/model"] == "iris"
    assert labels["app.kubernetes.io/managed-by"] == "modelloop"
    assert labels["team"] == "vision"  # the run's own labels travel to the Job and its pods
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_gpus_are_requested_tolerated_and_pinned_to_the_product() -> None:
    job = render_job(
        RUN,
        spec(resources={"gpus": 2, "gpuProduct": "NVIDIA-A100-SXM4-80GB", "cpu": "4", "memory": "16Gi"}),
        "file:///a",
    )

    pod = pod_spec(job)
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_cpu_only_runs_do_not_tolerate_the_gpu_taint() -> None:
    pod = pod_spec(render_job(RUN, spec(), "file:///a"))
    assert "tolerations" not in pod
    assert "nodeSelector" not in pod


def test_a_users_gpu_toleration_is_not_duplicated() -> None:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod = pod_spec(render_job(RUN, spec(resources={"gpus": 1}, tolerations=tolerations), "file:///a"))
    assert pod["tolerations"] == tolerations


def test_scheduling_fields_pass_through() -> None:
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    job = render_job(
        RUN,
        spec(
            nodeSelector={"zone": "a"},
            affinity=affinity,
            priorityClassName="training-high",
            backoffLimit=2,
            activeDeadlineSeconds=3600,
            ttlSecondsAfterFinished=600,
        ),
        "file:///a",
    )
    pod = pod_spec(job)
    assert pod["nodeSelector"] == {"zone": "a"}
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "training-high"
    assert (
        job["spec"]["backoffLimit"],
        job["spec"]["activeDeadlineSeconds"],
        job["spec"]["ttlSecondsAfterFinished"],
    ) == (2, 3600, 600)


def test_kueue_queue_labels_the_job_and_creates_it_suspended() -> None:
    job = render_job(RUN, spec(queueName="team-a"), "file:///a")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert "suspend" not in render_job(RUN, spec(), "file:///a")["spec"]


def test_training_pod_has_no_api_credentials_and_no_privileges() -> None:
    pod = pod_spec(render_job(RUN, spec(), "file:///a"))
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert pod["restartPolicy"] == "Never"


def test_trainer_receives_params_dataset_and_output_through_its_environment() -> None:
    job = render_job(
        RUN,
        spec(dataset={"uri": "s3://data/iris.csv", "targetColumn": "species", "hash": "sha256:ab"}),
        "s3://models",
    )

    env = env_of(job)
    assert json.loads(env["MODELLOOP_PARAMS"]) == {"estimator": "RandomForestClassifier", "n_estimators": 50}
    assert env["MODELLOOP_DATASET_URI"] == "s3://data/iris.csv"
    assert env["MODELLOOP_DATASET_FORMAT"] == "csv"
    assert env["MODELLOOP_TARGET_COLUMN"] == "species"
    assert env["MODELLOOP_DATASET_HASH"] == "sha256:ab"
    assert env["MODELLOOP_OUTPUT_URI"] == "s3://models/ml/iris/iris-rf-0f0euid"
    assert env["MODELLOOP_RESULT_PATH"] == "/dev/termination-log"
    assert pod_spec(job)["containers"][0]["command"] == ["modelloop-train"]


def test_a_trial_overrides_params_and_writes_to_its_own_folder() -> None:
    job = render_job(RUN, spec(), "file:///a", TrialPlan(index=3, params={"n_estimators": 200}))

    env = env_of(job)
    assert json.loads(env["MODELLOOP_PARAMS"])["n_estimators"] == 200
    assert env["MODELLOOP_TRIAL"] == "3"
    assert env["MODELLOOP_OUTPUT_URI"] == "file:///a/ml/iris/iris-rf-0f0euid/trial-3"
    assert job["metadata"]["labels"]["modelloop.dev/trial"] == "3"
    assert job["metadata"]["name"] == job_name("iris-rf", "0f0e-uid", 3)


def run_object(name: str, namespace: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid}}


def test_the_output_folder_is_the_namespace_the_model_and_the_run_with_the_start_of_its_uid() -> None:
    run = run_object("r", "team-a", "3f2a1b4c-0000-4000-8000-000000000000")

    assert output_uri(spec(), run, "file:///x/") == "file:///x/team-a/iris/r-3f2a1b4c"
    assert output_uri(spec(), run, "file:///x", trial=2) == "file:///x/team-a/iris/r-3f2a1b4c/trial-2"


def test_a_runs_prefix_replaces_the_root_and_still_gets_the_run_and_its_uid() -> None:
    prefixed = spec(output={"modelName": "iris", "artifactUriPrefix": "s3://b/p/"})
    run = run_object("r", "team-a", "3f2a1b4c-0000-4000-8000-000000000000")

    assert output_uri(prefixed, run, "file:///x") == "s3://b/p/r-3f2a1b4c"


def test_runs_of_the_same_name_in_two_namespaces_write_to_different_folders() -> None:
    uid = "3f2a1b4c-0000-4000-8000-000000000000"

    ours = output_uri(spec(), run_object("iris-rf", "team-a", uid), "s3://shared")
    theirs = output_uri(spec(), run_object("iris-rf", "team-b", uid), "s3://shared")

    assert ours != theirs
    assert not theirs.startswith(ours + "/") and not ours.startswith(theirs + "/")


def test_a_run_deleted_and_created_again_under_its_name_gets_a_new_folder() -> None:
    """The ModelVersion the first run registered still points into its folder: the second writes elsewhere."""
    first = render_job(run_object("iris-rf", "ml", "3f2a1b4c-0000-4000-8000-000000000000"), spec(), "s3://m")
    again = render_job(run_object("iris-rf", "ml", "9d8e7f6a-0000-4000-8000-000000000000"), spec(), "s3://m")

    assert env_of(first)["MODELLOOP_OUTPUT_URI"] == "s3://m/ml/iris/iris-rf-3f2a1b4c"
    assert env_of(again)["MODELLOOP_OUTPUT_URI"] == "s3://m/ml/iris/iris-rf-9d8e7f6a"
    prefixed = spec(output={"modelName": "iris", "artifactUriPrefix": "s3://b/iris"})
    for uid in ("3f2a1b4c", "9d8e7f6a"):
        job = render_job(run_object("iris-rf", "ml", uid), prefixed, "s3://m")
        assert env_of(job)["MODELLOOP_OUTPUT_URI"] == f"s3://b/iris/iris-rf-{uid}"


def test_additional_datasets_reach_the_trainer_as_one_json_list() -> None:
    dataset = {
        "uri": "s3://data/iris.csv",
        "targetColumn": "species",
        "additional": [
            {"uri": "s3://drift/iris/recent-1.csv"},
            {"uri": "s3://drift/iris/recent-2.parquet", "format": "parquet", "hash": "sha256:cd"},
        ],
    }

    env = env_of(render_job(RUN, spec(dataset=dataset), "s3://models"))

    assert json.loads(env["MODELLOOP_ADDITIONAL_DATASETS"]) == [
        {"uri": "s3://drift/iris/recent-1.csv", "format": "csv"},
        {"uri": "s3://drift/iris/recent-2.parquet", "format": "parquet", "hash": "sha256:cd"},
    ]


def test_without_additional_datasets_or_a_champion_the_trainer_gets_neither_variable() -> None:
    env = env_of(render_job(RUN, spec(), "s3://models"))

    assert not {
        "MODELLOOP_ADDITIONAL_DATASETS",
        "MODELLOOP_CHAMPION_URI",
        "MODELLOOP_CHAMPION_VERSION",
    } & set(env)


def test_the_champion_reaches_the_trainer_by_artifact_and_name() -> None:
    champion = ChampionModel(name="iris-v3", artifact_uri="s3://models/iris/iris-3/model.joblib")

    single = env_of(render_job(RUN, spec(), "s3://models", champion=champion))
    trial = env_of(render_job(RUN, spec(), "s3://models", TrialPlan(index=1), champion))

    for env in (single, trial):
        assert env["MODELLOOP_CHAMPION_URI"] == "s3://models/iris/iris-3/model.joblib"
        assert env["MODELLOOP_CHAMPION_VERSION"] == "iris-v3"


def model_version(
    name: str, stage: str | None, champion_since: str = "2024-01-01T00:00:00Z"
) -> dict[str, Any]:
    history = [{"stage": stage, "time": champion_since}] if stage else []
    return {
        "metadata": {"name": name},
        "spec": {"modelName": "iris", "artifact": {"uri": f"s3://models/iris/{name}/model.joblib"}},
        "status": {"stage": stage, "history": history} if stage else {},
    }


def test_the_current_champion_is_the_version_in_the_champion_stage() -> None:
    versions = [
        model_version("iris-v1", "Archived"),
        model_version("iris-v2", "Champion"),
        model_version("iris-v3", "Candidate"),
        model_version("iris-v4", None),
    ]

    assert current_champion(versions) == ChampionModel("iris-v2", "s3://models/iris/iris-v2/model.joblib")
    assert current_champion([model_version("iris-v1", "Challenger")]) is None
    assert current_champion([]) is None
