"""The ``modelloop-train`` command end to end, as the Job runs it: a process, its environment, its files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash

COMMAND = str(Path(sys.executable).with_name("modelloop-train"))


def modelloop_train(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MODELLOOP_")}
    return subprocess.run(
        [COMMAND, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_a_run_with_the_operators_environment_succeeds_and_leaves_loadable_artifacts(tmp_path: Path) -> None:
    output = tmp_path / "artifacts" / "iris" / "iris-rf" / "trial-2"
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELLOOP_RUN_NAME": "iris-rf",
        "MODELLOOP_TRIAL": "2",
        "MODELLOOP_MODEL_NAME": "iris",
        "MODELLOOP_PARAMS": json.dumps(
            {"estimator": "RandomForestClassifier", "n_estimators": 25, "seed": 1}
        ),
        "MODELLOOP_DATASET_URI": "sklearn://iris",
        "MODELLOOP_DATASET_FORMAT": "sklearn",
        "MODELLOOP_TARGET_COLUMN": "target",
        "MODELLOOP_OUTPUT_URI": output.as_uri(),
        "MODELLOOP_RESULT_PATH": str(termination_log),
        "MODELLOOP_CODE_VERSION": "ghcr.io/modelloop/trainer:0.1.0",
        "MODELLOOP_DEVICE": "auto",
    }
    process = modelloop_train(env)
    assert process.returncode == 0, process.stderr

    message = termination_log.read_text()
    result = json.loads(message)
    assert process.stdout.strip().splitlines() == [message]  # a random forest has no steps to report
    assert len(message.encode()) < 4096
    assert set(result) == {
        "status",
        "metrics",
        "artifactUri",
        "artifactDigest",
        "referenceUri",
        "referencePredictionsUri",
        "holdoutUri",
        "datasetHash",
        "codeVersion",
        "framework",
        "frameworkVersion",
        "estimator",
        "device",
    }
    assert result["status"] == "Succeeded"
    assert result["codeVersion"] == "ghcr.io/modelloop/trainer:0.1.0"
    assert (result["framework"], result["estimator"], result["device"]) == (
        "sklearn",
        "RandomForestClassifier",
        "cpu",
    )
    assert result["metrics"]["accuracy"] >= 0.9
    assert all(isinstance(value, float) for value in result["metrics"].values())

    model_file = output / "model.joblib"
    assert result["artifactUri"] == model_file.as_uri()
    assert result["artifactDigest"] == "sha256:" + hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert sorted(path.name for path in output.iterdir()) == [
        "holdout.csv",
        "metrics.json",
        "model.joblib",
        "reference.csv",
        "reference_predictions.csv",
        "result.json",
    ]
    reference = pd.read_csv(output / "reference.csv")
    predictions = joblib.load(model_file).predict(reference)
    assert len(predictions) == len(reference) == 120  # all training rows: fewer than reference_rows
    assert set(np.unique(predictions)) <= {0, 1, 2}

    hashed = modelloop_train({}, "--dataset-hash", "sklearn://iris")
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.strip() == result["datasetHash"]


def test_a_run_prints_a_progress_line_per_epoch_on_stdout_before_its_result(tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELLOOP_PARAMS": json.dumps(
            {"estimator": "TorchMLP", "hidden_sizes": [16], "epochs": 5, "lr": 0.01}
        ),
        "MODELLOOP_DATASET_URI": "sklearn://wine",
        "MODELLOOP_OUTPUT_URI": (tmp_path / "out").as_uri(),
        "MODELLOOP_RESULT_PATH": str(termination_log),
        "MODELLOOP_DEVICE": "cpu",
    }
    process = modelloop_train(env)
    assert process.returncode == 0, process.stderr
    *progress, last = process.stdout.splitlines()
    assert last == termination_log.read_text()
    assert len(progress) == 5
    for step, line in enumerate(progress, start=1):
        prefix, body = line.split(" ", 1)
        assert prefix == "modelloop:progress"
        assert json.loads(body)["step"] == step
        assert set(json.loads(body)["metrics"]) == {"accuracy", "f1_macro"}
    metrics = json.loads(last)["metrics"]
    for name, value in json.loads(progress[-1].split(" ", 1)[1])["metrics"].items():
        assert value == pytest.approx(metrics[name], rel=1e-12)
    assert "modelloop:progress" not in process.stderr


def test_an_mlp_written_without_its_onnx_export_gets_it_from_the_command(tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = {
        "MODELLOOP_PARAMS": json.dumps({"estimator": "TorchMLP", "hidden_sizes": [8], "epochs": 3}),
        "MODELLOOP_DATASET_URI": "sklearn://wine",
        "MODELLOOP_OUTPUT_URI": output.as_uri(),
        "MODELLOOP_RESULT_PATH": str(tmp_path / "termination-log"),
        "MODELLOOP_DEVICE": "cpu",
    }
    trained = modelloop_train(env)
    assert trained.returncode == 0, trained.stderr
    written = (output / "model.onnx").read_bytes()
    (output / "model.onnx").unlink()  # as an artifact of a trainer from before ONNX

    exported = modelloop_train({}, "--export-onnx", (output / "model.pt").as_uri())

    assert exported.returncode == 0, exported.stderr
    assert (output / "model.onnx").read_bytes() == written
    assert json.loads(exported.stdout) == {
        "artifactUri": (output / "model.onnx").as_uri(),
        "artifactDigest": json.loads(trained.stdout.splitlines()[-1])["artifactDigest"],
    }


def test_exporting_what_is_no_pytorch_model_fails_with_the_reason(tmp_path: Path) -> None:
    process = modelloop_train({}, "--export-onnx", tmp_path.as_uri())

    assert process.returncode == 1
    assert process.stderr.startswith(f"modelloop-train: cannot export {tmp_path.as_uri()}: FileNotFoundError")


def test_bad_data_exits_1_with_a_readable_reason_and_no_traceback_in_the_result(
    tmp_path: Path, iris_frame: pd.DataFrame, write_csv: Callable[[pd.DataFrame, str], str]
) -> None:
    iris_frame.loc[:4, "sepal width (cm)"] = np.nan
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELLOOP_DATASET_URI": write_csv(iris_frame, "iris.csv"),
        "MODELLOOP_DATASET_FORMAT": "csv",
        "MODELLOOP_TARGET_COLUMN": "species",
        "MODELLOOP_OUTPUT_URI": (tmp_path / "out").as_uri(),
        "MODELLOOP_RESULT_PATH": str(termination_log),
    }
    process = modelloop_train(env)
    assert process.returncode == 1
    result = json.loads(termination_log.read_text())
    assert result["reason"] == "DataValidationFailed"
    assert result["message"] == (
        "missing_values: too many missing values: 'sepal width (cm)' has 5 (3.33% of 150 rows); "
        "max_missing_fraction is 0"
    )
    assert result["datasetHash"] == dataset_hash(iris_frame)
    assert "Traceback" not in process.stderr  # a data problem is not a crash


def test_a_crash_in_training_puts_the_traceback_on_stderr_only(tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELLOOP_DATASET_URI": "sklearn://iris",
        "MODELLOOP_PARAMS": json.dumps({"estimator": "SVC", "kernel": "precomputed"}),
        "MODELLOOP_OUTPUT_URI": (tmp_path / "out").as_uri(),
        "MODELLOOP_RESULT_PATH": str(termination_log),
    }
    process = modelloop_train(env)
    assert process.returncode == 1
    result = json.loads(termination_log.read_text())
    assert result["reason"] == "TrainingFailed"
    assert "Traceback" not in result["message"]
    assert "Traceback (most recent call last)" in process.stderr


def test_unexpected_arguments_are_a_failed_result(tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    process = modelloop_train({"MODELLOOP_RESULT_PATH": str(termination_log)}, "--epochs", "3")
    assert process.returncode == 1
    result = json.loads(termination_log.read_text())
    assert result["reason"] == "InvalidParameters"
    assert "unrecognized arguments: --epochs 3" in result["message"]


def test_version() -> None:
    process = modelloop_train({}, "--version")
    assert process.returncode == 0
    assert process.stdout.strip() == "modelloop-train 0.1.0"
