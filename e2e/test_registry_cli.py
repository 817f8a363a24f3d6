"""`modelloop lineage` and `modelloop history` against the real API server, run as a user runs them.

No operator runs here: the tests write the objects' status themselves (``kubectl patch
--subresource=status``), standing in for the controllers, so that what the commands read is known exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster

API_VERSION = "modelloop.dev/v1alpha1"
IMAGE = "ghcr.io/modelloop/trainer:0.2.0"
IMAGE_DIGEST = "sha256:" + "1" * 64
ARTIFACT_DIGEST = "sha256:" + "2" * 64
DATASET_URI = "s3://data/iris-2026-10.csv"
DATASET_HASH = "sha256:" + "3" * 64
EVIDENCE = {"feature-drift": "0.41", "threshold": "0.3"}
DRIFT_TRIGGER = {"kind": "DriftPolicy", "name": "iris-drift", "evidence": EVIDENCE}

DRIFT_POLICY = {
    "apiVersion": API_VERSION,
    "kind": "DriftPolicy",
    "metadata": {"name": "iris-drift"},
    "spec": {
        "target": {"inferenceService": "iris"},
        "metrics": [
            {
                "name": "feature-drift",
                "query": 'max(modelloop_drift_score{service="iris"})',
                "threshold": 0.3,
                "comparison": "GreaterThan",
            }
        ],
        "retrain": {
            "trainingRunTemplate": {
                "image": IMAGE,
                "dataset": {"uri": DATASET_URI, "targetColumn": "species"},
                "output": {"modelName": "iris"},
            }
        },
    },
}
TRAINING_RUN = {
    "apiVersion": API_VERSION,
    "kind": "TrainingRun",
    "metadata": {"name": "iris-retrain"},
    "spec": {
        "image": IMAGE,
        "params": {"n_estimators": 300},
        "dataset": {"uri": DATASET_URI, "targetColumn": "species"},
        "output": {"modelName": "iris"},
        "triggeredBy": DRIFT_TRIGGER,
    },
}


def model_version(version: int, lineage: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": f"iris-v{version}"},
        "spec": {
            "modelName": "iris",
            "version": version,
            "artifact": {"uri": f"s3://models/iris/{version}", "digest": ARTIFACT_DIGEST},
            "framework": {"name": "sklearn", "version": "1.5.2"},
            "metrics": {"accuracy": 0.9 + version / 100},
            "lineage": lineage,
            "createdBy": "trainingrun/iris-retrain" if version == 2 else "alice",
        },
    }


def history(*entries: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"time": time, "stage": stage, "reason": reason} for time, stage, reason in entries]


# (kind, name, status) as the operator would have written them.
STATUSES: list[tuple[str, str, dict[str, Any]]] = [
    ("driftpolicy", "iris-drift", {"phase": "Retraining", "lastTrainingRun": "iris-retrain"}),
    (
        "trainingrun",
        "iris-retrain",
        {
            "phase": "Succeeded",
            "startTime": "2026-10-20T10:00:00Z",
            "completionTime": "2026-10-20T10:55:00Z",
            "datasetHash": DATASET_HASH,
            "modelVersion": "iris-v2",
        },
    ),
    (
        "modelversion",
        "iris-v1",
        {
            "phase": "Validated",
            "stage": "Archived",
            "history": history(
                ("2026-10-01T00:00:00Z", "Candidate", "Registered"),
                ("2026-10-01T01:00:00Z", "Champion", "Promoted"),
                ("2026-10-20T12:00:00Z", "Archived", "ReplacedByChampion"),
            ),
        },
    ),
    (
        "modelversion",
        "iris-v2",
        {
            "phase": "Validated",
            "stage": "Champion",
            "keyMetric": "accuracy=0.92",
            "history": history(
                ("2026-10-20T11:00:00Z", "Candidate", "Registered"),
                ("2026-10-20T12:00:00Z", "Champion", "Promoted"),
            ),
        },
    ),
]


@pytest.fixture
def registry(cluster: Cluster, namespace: str) -> str:
    """A DriftPolicy that started a TrainingRun that registered iris-v2, which then replaced iris-v1 as
    Champion; returns the namespace."""
    v1 = model_version(1, {"trigger": {"kind": "User", "name": "alice"}})
    v2 = model_version(
        2,
        {
            "trainingRun": "iris-retrain",
            "image": IMAGE,
            "imageDigest": IMAGE_DIGEST,
            "codeVersion": "git:1a2b3c",
            "datasetUri": DATASET_URI,
            "datasetHash": DATASET_HASH,
            "params": {"n_estimators": 300},
            "trigger": DRIFT_TRIGGER,
        },
    )
    cluster.apply([DRIFT_POLICY, TRAINING_RUN, v1, v2], namespace)
    for kind, name, status in STATUSES:
        cluster.kubectl(
            *("patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge"),
            "-p",
            json.dumps({"status": status}),
        )
    return namespace


def modelloop(
    cluster: Cluster, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `modelloop` command of this checkout, run with the cluster's environment."""
    env = cluster.env if kubeconfig is None else {**cluster.env, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(Path(sys.executable).with_name("modelloop")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_lineage_shows_the_version_its_run_and_the_drift_policy_evidence_that_started_it(
    cluster: Cluster, registry: str
) -> None:
    created = cluster.get("modelversion", "iris-v2", registry)["metadata"]["creationTimestamp"]
    me = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout

    result = modelloop(cluster, "lineage", "iris-v2", "-n", registry)

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"ModelVersion iris-v2  (namespace {registry})\n"
        "    model:      iris version 2\n"
        f"    artifact:   s3://models/iris/2 ({ARTIFACT_DIGEST})\n"
        "    framework:  sklearn 1.5.2\n"
        "    metrics:    accuracy=0.92\n"
        "    phase:      Validated\n"
        "    stage:      Champion\n"
        f"    created:    {created} by trainingrun/iris-retrain\n"
        f"    registered: by {me} (as the API server authenticated it)\n"
        "← TrainingRun iris-retrain\n"
        "    phase:      Succeeded\n"
        f"    image:      {IMAGE}@{IMAGE_DIGEST}\n"
        "    code:       git:1a2b3c\n"
        f"    dataset:    {DATASET_URI} ({DATASET_HASH})\n"
        "    params:     n_estimators=300\n"
        "    started:    2026-10-20T10:00:00Z\n"
        "    completed:  2026-10-20T10:55:00Z\n"
        "← triggered by DriftPolicy iris-drift\n"
        "    evidence:   feature-drift=0.41, threshold=0.3\n"
        "    policy:     Retraining\n"
    )
    document = json.loads(modelloop(cluster, "lineage", "iris-v2", "-n", registry, "-o", "json").stdout)
    assert document["trainingRun"]["found"] and document["trainingRun"]["datasetUri"] == DATASET_URI
    assert document["trigger"] == {**DRIFT_TRIGGER, "policy": {"found": True, "phase": "Retraining"}}


def test_lineage_marks_a_deleted_run_and_policy_and_keeps_what_the_version_recorded(
    cluster: Cluster, registry: str
) -> None:
    cluster.kubectl("delete", "trainingrun", "iris-retrain", "-n", registry)
    cluster.kubectl("delete", "driftpolicy", "iris-drift", "-n", registry)

    result = modelloop(cluster, "lineage", "iris-v2", "-n", registry)

    assert result.returncode == 0, result.stderr
    assert "← TrainingRun iris-retrain  (deleted; as recorded by the ModelVersion)\n" in result.stdout
    assert "    phase:      not found\n" in result.stdout
    assert f"    image:      {IMAGE}@{IMAGE_DIGEST}\n" in result.stdout
    assert f"    dataset:    {DATASET_URI} ({DATASET_HASH})\n" in result.stdout
    assert "← triggered by DriftPolicy iris-drift  (deleted)\n" in result.stdout
    assert "    evidence:   feature-drift=0.41, threshold=0.3\n    policy:     not found\n" in result.stdout


def test_lineage_of_a_missing_version_fails_with_one_line(cluster: Cluster, registry: str) -> None:
    result = modelloop(cluster, "lineage", "iris-v9", "-n", registry)

    assert result.returncode == 1
    assert result.stderr == f"Error: ModelVersion iris-v9 not found in namespace {registry}\n"


def test_lineage_reads_the_kubeconfig_contexts_namespace_by_default(
    cluster: Cluster, registry: str, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    cluster.kubectl(
        "--kubeconfig", str(kubeconfig), "config", "set-context", "--current", "--namespace", registry
    )

    result = modelloop(cluster, "lineage", "iris-v1", kubeconfig=kubeconfig)

    assert result.returncode == 0, result.stderr
    assert f"ModelVersion iris-v1  (namespace {registry})\n" in result.stdout
    assert "← TrainingRun: not recorded\n← triggered by User alice\n" in result.stdout


def test_history_lists_every_stage_change_and_names_the_champion_of_each_moment(
    cluster: Cluster, registry: str
) -> None:
    timeline = modelloop(cluster, "history", "iris", "-n", registry)
    assert timeline.returncode == 0, timeline.stderr
    assert [line.split()[:3] for line in timeline.stdout.splitlines()[1:]] == [
        ["2026-10-01T00:00:00Z", "iris-v1", "Candidate"],
        ["2026-10-01T01:00:00Z", "iris-v1", "Champion"],
        ["2026-10-20T11:00:00Z", "iris-v2", "Candidate"],
        ["2026-10-20T12:00:00Z", "iris-v1", "Archived"],
        ["2026-10-20T12:00:00Z", "iris-v2", "Champion"],
    ]

    def champion(at: str) -> str:
        result = modelloop(cluster, "history", "iris", "-n", registry, "--at", at)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert champion("2026-09-30") == "none\n"
    assert champion("2026-10-10") == "iris-v1  (Champion since 2026-10-01T01:00:00Z)\n"
    assert champion("2026-11-01T00:00:00Z") == "iris-v2  (Champion since 2026-10-20T12:00:00Z)\n"
