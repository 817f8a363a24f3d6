"""A ModelVersion's lineage, built from the objects as the API server returns them."""

from __future__ import annotations

import json
from typing import Any

from modelloop.cli.render import render_lineage
from modelloop.registry.lineage import build_lineage, drift_policy_name, training_run_name

DIGEST = "sha256:" + "a" * 64
OPERATOR = "system:serviceaccount:modelloop-system:modelloop"
DRIFT_TRIGGER = {"kind": "DriftPolicy", "name": "iris-drift", "evidence": {"feature-drift": "0.41"}}


def model_version(**lineage: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "iris-v2",
            "namespace": "ml",
            "creationTimestamp": "2026-10-20T11:00:00Z",
            "annotations": {"modelloop.dev/registered-by": OPERATOR},
        },
        "spec": {
            "modelName": "iris",
            "version": 2,
            "artifact": {"uri": "s3://models/iris/2", "digest": DIGEST},
            "framework": {"name": "sklearn", "version": "1.5.2"},
            "metrics": {"accuracy": 0.97},
            "createdBy": "trainingrun/iris-retrain",
            "lineage": {
                "trainingRun": "iris-retrain",
                "image": "ghcr.io/modelloop/trainer:0.2.0",
                "imageDigest": DIGEST,
                "codeVersion": "git:1a2b3c",
                "datasetUri": "s3://data/iris-2026-10.csv",
                "datasetHash": "sha256:" + "b" * 64,
                "params": {"n_estimators": 300, "bootstrap": True},
                "trigger": DRIFT_TRIGGER,
                **lineage,
            },
        },
        "status": {"phase": "Validated", "stage": "Champion", "keyMetric": "accuracy=0.97"},
    }


RUN = {
    "metadata": {"name": "iris-retrain"},
    "spec": {
        "image": "ghcr.io/modelloop/trainer:0.2.0",
        "params": {"n_estimators": 100},
        "dataset": {"uri": "s3://data/iris-2026-10.csv"},
        "triggeredBy": DRIFT_TRIGGER,
    },
    "status": {
        "phase": "Succeeded",
        "startTime": "2026-10-20T10:00:00Z",
        "completionTime": "2026-10-20T10:55:00Z",
    },
}
POLICY = {"metadata": {"name": "iris-drift"}, "status": {"phase": "Retraining"}}


def test_the_chain_joins_version_run_and_drift_policy() -> None:
    lineage = build_lineage(model_version(), RUN, POLICY)

    assert lineage["modelVersion"]["artifact"] == {"uri": "s3://models/iris/2", "digest": DIGEST}
    assert lineage["modelVersion"]["stage"] == "Champion"
    run = lineage["trainingRun"]
    assert run is not None and run["found"] and run["phase"] == "Succeeded"
    assert run["startTime"] == "2026-10-20T10:00:00Z" and run["completionTime"] == "2026-10-20T10:55:00Z"
    assert lineage["trigger"] == {**DRIFT_TRIGGER, "policy": {"found": True, "phase": "Retraining"}}


def test_the_versions_own_params_win_over_the_runs_as_a_sweep_trains_with_its_best_trials() -> None:
    run = build_lineage(model_version(), RUN, POLICY)["trainingRun"]

    assert run is not None and run["params"] == {"n_estimators": 300, "bootstrap": True}


def test_a_deleted_run_is_marked_and_described_by_the_versions_own_lineage() -> None:
    lineage = build_lineage(model_version(), None, POLICY)

    run = lineage["trainingRun"]
    assert run is not None and not run["found"] and run["phase"] is None
    assert run["image"] == "ghcr.io/modelloop/trainer:0.2.0" and run["codeVersion"] == "git:1a2b3c"
    text = render_lineage(lineage)
    assert "← TrainingRun iris-retrain  (deleted" in text
    assert f"ghcr.io/modelloop/trainer:0.2.0@{DIGEST}" in text
    assert "s3://data/iris-2026-10.csv (sha256:" in text


def test_a_deleted_drift_policy_is_marked_not_found_and_its_evidence_still_shown() -> None:
    lineage = build_lineage(model_version(), RUN, None)

    assert lineage["trigger"] is not None and lineage["trigger"]["policy"] == {"found": False, "phase": None}
    text = render_lineage(lineage)
    assert "← triggered by DriftPolicy iris-drift  (deleted)" in text
    assert "policy:     not found" in text
    assert "evidence:   feature-drift=0.41" in text


def test_the_trigger_comes_from_the_run_when_the_version_recorded_none() -> None:
    version = model_version(trigger=None)

    assert drift_policy_name(version, None) is None
    assert drift_policy_name(version, RUN) == "iris-drift"
    assert build_lineage(version, RUN, POLICY)["trigger"] == {
        **DRIFT_TRIGGER,
        "policy": {"found": True, "phase": "Retraining"},
    }


def test_a_user_trigger_has_no_policy_to_look_up() -> None:
    version = model_version(trigger={"kind": "User", "name": "alice"})

    assert drift_policy_name(version, RUN) is None
    lineage = build_lineage(version, RUN, None)
    assert lineage["trigger"] == {"kind": "User", "name": "alice", "evidence": {}, "policy": None}
    assert "← triggered by User alice\n" in render_lineage(lineage)


def test_a_version_registered_by_hand_without_lineage_or_status_renders_without_errors() -> None:
    version = {
        "metadata": {"name": "iris-v1"},
        "spec": {"modelName": "iris", "version": 1, "artifact": {"uri": "file:///m"}},
    }

    lineage = build_lineage(version, None, None)

    assert training_run_name(version) is None
    assert lineage["trainingRun"] is None and lineage["trigger"] is None
    assert render_lineage(lineage) == (
        "ModelVersion iris-v1\n"
        "    model:      iris version 1\n"
        "    artifact:   file:///m\n"
        "    framework:  -\n"
        "    metrics:    -\n"
        "    phase:      -\n"
        "    stage:      -\n"
        "    created:    -\n"
        "    registered: -\n"
        "← TrainingRun: not recorded\n"
        "← triggered by: not recorded\n"
    )


def test_the_json_document_has_the_same_keys_whatever_is_missing() -> None:
    full = build_lineage(model_version(), RUN, POLICY)
    bare = build_lineage(model_version(), None, None)

    assert json.loads(json.dumps(full)) == full
    assert list(full) == ["modelVersion", "trainingRun", "trigger"]
    assert list(full["modelVersion"]) == list(bare["modelVersion"])
    assert full["trainingRun"] is not None and bare["trainingRun"] is not None
    assert list(full["trainingRun"]) == list(bare["trainingRun"])


def test_the_text_reads_as_one_block_per_link() -> None:
    text = render_lineage(build_lineage(model_version(), RUN, POLICY))

    assert text == (
        "ModelVersion iris-v2  (namespace ml)\n"
        "    model:      iris version 2\n"
        f"    artifact:   s3://models/iris/2 ({DIGEST})\n"
        "    framework:  sklearn 1.5.2\n"
        "    metrics:    accuracy=0.97\n"
        "    phase:      Validated\n"
        "    stage:      Champion\n"
        "    created:    2026-10-20T11:00:00Z by trainingrun/iris-retrain\n"
        f"    registered: by {OPERATOR} (as the API server authenticated it)\n"
        "← TrainingRun iris-retrain\n"
        "    phase:      Succeeded\n"
        f"    image:      ghcr.io/modelloop/trainer:0.2.0@{DIGEST}\n"
        "    code:       git:1a2b3c\n"
        f"    dataset:    s3://data/iris-2026-10.csv (sha256:{'b' * 64})\n"
        "    params:     bootstrap=true, n_estimators=300\n"
        "    started:    2026-10-20T10:00:00Z\n"
        "    completed:  2026-10-20T10:55:00Z\n"
        "← triggered by DriftPolicy iris-drift\n"
        "    evidence:   feature-drift=0.41\n"
        "    policy:     Retraining\n"
    )


def test_a_version_status_that_cannot_be_read_shows_as_unknown_rather_than_failing() -> None:
    version = model_version()
    version["status"] = {"phase": "Approved", "stage": "Champion", "keyMetric": "accuracy=0.97"}

    lineage = build_lineage(version, RUN, POLICY)

    link = lineage["modelVersion"]
    assert (link["phase"], link["stage"], link["keyMetric"]) == (None, None, None)
    assert "    phase:      -\n    stage:      -\n" in render_lineage(lineage)
