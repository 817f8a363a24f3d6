"""The model registry end to end: immutable versions, concurrent registration, validation gates against
the champion, stage requests and history, retention, on the real API server with the operator running."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from e2e.harness import Cluster, condition, wait_for, wait_for_event
from e2e.kubelet import HOLD, report_termination

API = "modelloop.dev/v1alpha1"


def model_version(
    number: int,
    metrics: dict[str, float],
    model: str = "iris",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelVersion",
        "metadata": {"name": f"{model}-v{number}", "annotations": annotations or {}, "labels": labels or {}},
        "spec": {
            "modelName": model,
            "version": number,
            "artifact": {"uri": f"s3://models/{model}/{number}/model.joblib"},
            "framework": {"name": "sklearn"},
            "metrics": metrics,
            "createdBy": "e2e",
        },
    }


def model_policy(spec: dict[str, Any], model: str = "iris") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelPolicy", "metadata": {"name": model}, "spec": spec}


def status_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    return cluster.get("modelversion", name, namespace).get("status") or {}


def settled(cluster: Cluster, name: str, namespace: str, **wanted: str) -> dict[str, Any]:
    """Wait until the version's status has every ``wanted`` field (e.g. phase="Validated"); return it."""

    def probe() -> dict[str, Any] | None:
        status = status_of(cluster, name, namespace)
        return status if all(status.get(k) == v for k, v in wanted.items()) else None

    return wait_for(probe, timeout=60, what=f"{name} with {wanted}")


def request_stage(cluster: Cluster, name: str, namespace: str, stage: str, reason: str = "") -> None:
    annotations = [f"modelloop.dev/requested-stage={stage}"] + (
        [f"modelloop.dev/stage-reason={reason}"] if reason else []
    )
    cluster.kubectl("annotate", "--overwrite", "modelversion", name, "-n", namespace, *annotations)


def test_any_change_of_a_versions_spec_is_refused_at_admission(cluster: Cluster, namespace: str) -> None:
    cluster.apply(model_version(1, {"accuracy": 0.9}), namespace)

    for patch in (
        {"metrics": {"accuracy": 0.99}},
        {"artifact": {"uri": "s3://elsewhere"}},
        {"createdBy": "me"},
    ):
        body = json.dumps({"spec": patch})
        result = cluster.kubectl(
            "patch", "modelversion", "iris-v1", "-n", namespace, "--type=merge", "-p", body, check=False
        )  # fmt: skip
        assert result.returncode != 0, patch
        assert "spec is immutable: register a new ModelVersion instead" in result.stderr

    assert cluster.get("modelversion", "iris-v1", namespace)["spec"]["metrics"] == {"accuracy": 0.9}
    # Labels and annotations are not the record: they may change (that is how stages are requested).
    cluster.kubectl("label", "modelversion", "iris-v1", "-n", namespace, "team=ml")


def test_the_api_server_records_who_registered_a_version_and_keeps_it(
    cluster: Cluster, namespace: str
) -> None:
    me = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    forged = model_version(1, {"accuracy": 0.9}, annotations={"modelloop.dev/registered-by": "mallory"})

    cluster.apply(forged, namespace)

    def registered_by() -> str:
        return str(
            cluster.get("modelversion", "iris-v1", namespace)["metadata"]["annotations"][
                "modelloop.dev/registered-by"
            ]
        )

    assert me and registered_by() == me
    cluster.kubectl(
        "annotate",
        "--overwrite",
        "modelversion",
        "iris-v1",
        "-n",
        namespace,
        "modelloop.dev/registered-by=eve",
    )
    assert registered_by() == me
    cluster.kubectl("annotate", "modelversion", "iris-v1", "-n", namespace, "modelloop.dev/registered-by-")
    assert registered_by() == me
    # The other annotations stay the user's to change.
    cluster.kubectl("annotate", "modelversion", "iris-v1", "-n", namespace, "team=ml")
    assert cluster.get("modelversion", "iris-v1", namespace)["metadata"]["annotations"]["team"] == "ml"


@pytest.mark.usefixtures("operator")
def test_twenty_runs_finishing_at_once_register_twenty_consecutive_versions(
    cluster: Cluster, namespace: str
) -> None:
    for i in range(20):
        cluster.apply(
            {
                "apiVersion": API,
                "kind": "TrainingRun",
                "metadata": {"name": f"burst-{i}", "labels": dict(HOLD)},
                "spec": {
                    "image": "ghcr.io/modelloop/trainer:0.1.0",
                    "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                    "output": {"modelName": "burst"},
                },
            },
            namespace,
        )

    def all_running() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in cluster.get("pods", namespace=namespace)["items"]
            if p["status"].get("phase") == "Running"
        ]
        return pods if len(pods) == 20 else None

    pods = wait_for(all_running, timeout=90, what="20 training pods running")

    # The trainer's result is written as the kubelet would (the real trainer runs in test_trainingrun.py):
    # all 20 at once, so that the operator registers 20 versions of one model concurrently.
    def finish(pod: dict[str, Any]) -> None:
        # In the folder the operator gave the run (only what a run wrote there is registered).
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or ()}
        result = {
            "status": "Succeeded",
            "metrics": {"accuracy": 0.9},
            "artifactUri": f"{env['MODELLOOP_OUTPUT_URI']}/model.joblib",
            "framework": "sklearn",
        }
        report_termination(cluster, pod, 0, json.dumps(result))

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(finish, pods))

    def registered() -> list[dict[str, Any]] | None:
        runs = cluster.get("trainingruns", namespace=namespace)["items"]
        done = [r for r in runs if (r.get("status") or {}).get("modelVersion")]
        return runs if len(done) == 20 else None

    runs = wait_for(registered, timeout=120, what="20 runs with their ModelVersion")
    names = sorted(r["status"]["modelVersion"] for r in runs)
    versions = cluster.get("modelversions", namespace=namespace)["items"]
    assert sorted(v["spec"]["version"] for v in versions) == list(range(1, 21))
    assert sorted(v["metadata"]["name"] for v in versions) == names  # one each, no run shares a version
    # Each version records the run it came from.
    by_run = {v["spec"]["lineage"]["trainingRun"]: v["metadata"]["name"] for v in versions}
    assert by_run == {r["metadata"]["name"]: r["status"]["modelVersion"] for r in runs}


@pytest.mark.usefixtures("operator")
def test_gates_and_the_champion_comparison_validate_or_reject_each_version(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        model_policy(
            {
                "validation": {
                    "gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.8}],
                    "champion": {"metric": "accuracy", "direction": "Maximize", "margin": 0.02},
                }
            }
        ),
        namespace,
    )
    cluster.apply(
        model_version(1, {"accuracy": 0.95}, annotations={"modelloop.dev/requested-stage": "Champion"}),
        namespace,
    )
    first = settled(cluster, "iris-v1", namespace, phase="Validated", stage="Champion")
    assert [c["name"] for c in first["checks"]] == ["policy/accuracy", "champion/accuracy"]
    assert "no champion yet" in first["checks"][1]["message"]

    cluster.apply(model_version(2, {"accuracy": 0.90}), namespace)  # passes the gate, too far below v1
    cluster.apply(model_version(3, {"accuracy": 0.94}), namespace)  # within the margin
    cluster.apply(model_version(4, {"accuracy": 0.70}), namespace)  # fails the gate, and the champion

    worse = settled(cluster, "iris-v2", namespace, phase="Rejected")
    assert worse["comparedWith"] == "iris-v1"
    gate, champion = worse["checks"]
    assert (gate["passed"], gate["value"], gate["threshold"]) == (True, 0.9, 0.8)
    assert (champion["passed"], champion["value"], champion["threshold"]) == (False, 0.9, pytest.approx(0.93))
    assert champion["comparison"] == "GreaterThanOrEqual"
    ready = condition(cluster.get("modelversion", "iris-v2", namespace), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ChecksFailed")

    assert settled(cluster, "iris-v3", namespace, phase="Validated")["keyMetric"] == "accuracy=0.94"
    assert [c["passed"] for c in settled(cluster, "iris-v4", namespace, phase="Rejected")["checks"]] == [
        False,
        False,
    ]

    table = cluster.kubectl("get", "modelversions", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "VERSION", "METRIC", "VALIDATED", "STAGE", "AGE"]
    assert table[1].split()[:6] == ["iris-v1", "iris", "1", "accuracy=0.95", "Validated", "Champion"]
    assert table[2].split()[:6] == ["iris-v2", "iris", "2", "accuracy=0.9", "Rejected", "Candidate"]

    wait_for_event(
        cluster,
        namespace,
        lambda e: e["involvedObject"]["name"] == "iris-v2" and e["reason"] == "ChecksFailed",
        what="the ChecksFailed event of iris-v2",
    )

    # A rejected version cannot be promoted; the refusal is recorded, and nothing else changes.
    request_stage(cluster, "iris-v2", namespace, "Champion")
    refused = wait_for(
        lambda: (
            (status_of(cluster, "iris-v2", namespace).get("stageRequest") or {}).get("result") == "Refused"
            and status_of(cluster, "iris-v2", namespace)
        ),
        timeout=60,
        what="the refused request",
    )
    assert "rejected by validation" in refused["stageRequest"]["message"]
    assert status_of(cluster, "iris-v1", namespace)["stage"] == "Champion"


@pytest.mark.usefixtures("operator")
def test_stage_changes_keep_their_history_and_retention_removes_only_what_it_may(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(model_policy({"retention": {"keepArchived": 1}}), namespace)
    operator_made = {"app.kubernetes.io/managed-by": "modelloop"}
    cluster.apply(model_version(1, {"accuracy": 0.9}), namespace)  # a user's: never deleted
    for number in range(2, 6):
        cluster.apply(model_version(number, {"accuracy": 0.9}, labels=operator_made), namespace)
    for number in range(1, 6):
        settled(cluster, f"iris-v{number}", namespace, phase="Validated", stage="Candidate")
    # An InferenceService serves v2: serving makes it Champion, and it must stay, archived or not.
    cluster.apply(
        {
            "apiVersion": API,
            "kind": "InferenceService",
            "metadata": {"name": "iris"},
            "spec": {"model": {"name": "iris", "version": 2}},
        },
        namespace,
    )
    settled(cluster, "iris-v2", namespace, stage="Champion")

    for number in (1, 3, 4, 5):
        request_stage(cluster, f"iris-v{number}", namespace, "Champion", reason=f"round {number}")
        settled(cluster, f"iris-v{number}", namespace, stage="Champion")

    def remaining() -> list[str] | None:
        names = sorted(
            v["metadata"]["name"] for v in cluster.get("modelversions", namespace=namespace)["items"]
        )
        policy = cluster.get("modelpolicy", "iris", namespace).get("status") or {}
        return names if policy.get("versions") == len(names) == 4 else None

    # Archived: v1 (a user's), v2 (served), v3, v4; keeping one archived version deletes v3 alone.
    assert wait_for(remaining, timeout=60, what="retention") == ["iris-v1", "iris-v2", "iris-v4", "iris-v5"]
    events = wait_for_event(
        cluster, namespace, lambda e: e["reason"] == "Retention", what="a Retention event"
    )
    assert {e["involvedObject"]["name"] for e in events if e["reason"] == "Retention"} == {"iris-v3"}
    policy_status = cluster.get("modelpolicy", "iris", namespace)["status"]
    assert (policy_status["champion"], policy_status["latestVersion"]) == ("iris-v5", 5)

    history = status_of(cluster, "iris-v2", namespace)["history"]
    assert [(h["stage"], h["reason"]) for h in history] == [
        ("Candidate", "Registered"),
        ("Champion", "Promoted"),
        ("Archived", "ReplacedByChampion"),
    ]
    assert "InferenceService iris" in history[1]["message"] and "iris-v1" in history[2]["message"]
    assert history[0]["time"] <= history[1]["time"] <= history[2]["time"]

    champions = cluster.get("modelversions", namespace=namespace, selector="modelloop.dev/stage=champion")[
        "items"
    ]
    assert [v["metadata"]["name"] for v in champions] == ["iris-v5"]
    assert all(v["metadata"]["labels"]["modelloop.dev/model"] == "iris" for v in champions)

    # The champion is never deleted, even when asked for with keepArchived 0 and nothing else left.
    cluster.kubectl(
        "patch",
        "modelpolicy",
        "iris",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"retention":{"keepArchived":0}}}',
    )

    def after_zero() -> list[str] | None:
        names = sorted(
            v["metadata"]["name"] for v in cluster.get("modelversions", namespace=namespace)["items"]
        )
        return names if "iris-v4" not in names else None

    assert wait_for(after_zero, timeout=60, what="retention with keepArchived 0") == [
        "iris-v1",
        "iris-v2",
        "iris-v5",
    ]
