"""Whole runs through the environment contract, in-process: train, evaluate, write, report."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash, load_predictor
from sklearn.pipeline import Pipeline

from conftest import RunTrainer
from modelloop_trainer.torch_mlp import cuda_available, load_torch_mlp

WriteCsv = Callable[[pd.DataFrame, str], str]
CLASSIFICATION_METRICS = {"accuracy", "f1_macro", "n_train", "n_test", "train_seconds"}


@pytest.mark.parametrize(
    ("dataset", "params", "metric", "at_least"),
    [
        ("iris", {"n_estimators": 50}, "accuracy", 0.9),
        ("wine", {"estimator": "GradientBoostingClassifier", "n_estimators": 30}, "accuracy", 0.85),
        ("breast_cancer", {"estimator": "LogisticRegression", "max_iter": 5000}, "roc_auc", 0.95),
        ("diabetes", {"estimator": "Ridge", "alpha": 0.1}, "r2", 0.3),
        ("diabetes", {"estimator": "RandomForestRegressor", "n_estimators": 30}, "r2", 0.2),
    ],
)
def test_it_trains_on_bundled_datasets_and_reports_held_out_metrics(
    run_trainer: RunTrainer, dataset: str, params: dict[str, object], metric: str, at_least: float
) -> None:
    run = run_trainer(dataset_uri=f"sklearn://{dataset}", params=params)
    assert run.status == 0, run.result
    assert run.result["status"] == "Succeeded"
    assert run.result["metrics"][metric] >= at_least
    assert run.result["metrics"]["n_train"] + run.result["metrics"]["n_test"] > 100
    assert run.result["framework"] == "sklearn"
    assert run.result["device"] == "cpu"
    assert run.result["codeVersion"] == "modelloop-trainer 0.1.0"


def test_classification_reports_accuracy_f1_and_roc_auc_only_when_binary(run_trainer: RunTrainer) -> None:
    iris = run_trainer(name="iris")
    cancer = run_trainer(name="cancer", dataset_uri="sklearn://breast_cancer")
    assert set(iris.result["metrics"]) == CLASSIFICATION_METRICS
    assert set(cancer.result["metrics"]) == CLASSIFICATION_METRICS | {"roc_auc"}


def test_regression_reports_r2_rmse_and_mae(run_trainer: RunTrainer) -> None:
    run = run_trainer(dataset_uri="sklearn://diabetes", params={"estimator": "LinearRegression"})
    assert set(run.result["metrics"]) == {"r2", "rmse", "mae", "n_train", "n_test", "train_seconds"}
    assert run.result["metrics"]["n_test"] == 89.0  # 20 % of 442 rows, rounded up


def test_the_same_seed_gives_the_same_metrics_and_model(run_trainer: RunTrainer) -> None:
    params = {"estimator": "RandomForestClassifier", "n_estimators": 20, "seed": 4}
    first = run_trainer(name="first", dataset_uri="sklearn://wine", params=params)
    second = run_trainer(name="second", dataset_uri="sklearn://wine", params=params)
    other = run_trainer(name="other", dataset_uri="sklearn://wine", params={**params, "seed": 5})

    def quality(run: object) -> dict[str, float]:
        metrics = dict(run.result["metrics"])  # type: ignore[attr-defined]
        del metrics["train_seconds"]
        return metrics

    assert quality(first) == quality(second)
    assert first.result["artifactDigest"] == second.result["artifactDigest"]
    assert first.result["datasetHash"] == second.result["datasetHash"] == other.result["datasetHash"]
    assert first.result["artifactDigest"] != other.result["artifactDigest"]


def test_artifacts_are_written_and_the_digest_is_the_model_files_sha256(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"n_estimators": 10, "reference_rows": 50})
    model_file = run.output / "model.joblib"
    assert run.result["artifactUri"] == model_file.as_uri()
    assert run.result["artifactDigest"] == "sha256:" + hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert json.loads((run.output / "metrics.json").read_text()) == run.result["metrics"]
    reference = pd.read_csv(run.output / "reference.csv")
    assert run.result["referenceUri"] == (run.output / "reference.csv").as_uri()
    assert len(reference) == 50
    assert "target" not in reference.columns
    model = joblib.load(model_file)
    assert set(model.predict(reference)) <= {0, 1, 2}


def test_the_full_result_with_its_details_stays_in_the_output_folder(run_trainer: RunTrainer) -> None:
    run = run_trainer(name="iris-rf", trial="2", code_version="registry.example/trainer:1.2")
    full = run.full_result()
    assert {key: full[key] for key in run.result} == run.result
    assert (full["runName"], full["trial"], full["modelName"]) == ("iris-rf", 2, "model")
    assert full["task"] == "classification"
    assert full["params"]["random_state"] == 0
    assert [check["name"] for check in full["checks"]][:2] == ["dataset_hash", "schema"]
    assert run.result["codeVersion"] == "registry.example/trainer:1.2"


def test_a_csv_dataset_with_a_named_target_and_a_matching_hash_trains(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "iris.csv"),
        target_column="species",
        dataset_hash=dataset_hash(iris_frame),
        params={"estimator": "KNeighborsClassifier", "n_neighbors": 5},
    )
    assert run.status == 0, run.result
    assert run.result["datasetHash"] == dataset_hash(iris_frame)
    model = joblib.load(run.output / "model.joblib")
    assert set(model.predict(iris_frame.drop(columns=["species"]))) <= {"setosa", "versicolor", "virginica"}


def test_allowed_missing_values_are_imputed_in_the_saved_model(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    iris_frame.loc[::10, "sepal width (cm)"] = np.nan
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "gappy.csv"),
        target_column="species",
        params={"estimator": "SVC", "max_missing_fraction": 0.2},
    )
    assert run.status == 0, run.result
    model = joblib.load(run.output / "model.joblib")
    assert isinstance(model, Pipeline)
    assert len(model.predict(iris_frame.drop(columns=["species"]))) == 150


def failed(run: object, reason: str) -> str:
    assert run.status == 1  # type: ignore[attr-defined]
    result = run.result  # type: ignore[attr-defined]
    assert result["status"] == "Failed"
    assert result["reason"] == reason, result
    assert "Traceback" not in result["message"]
    return str(result["message"])


def test_nans_in_a_csv_fail_the_missing_value_check_before_training(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    iris_frame.loc[:9, "petal length (cm)"] = np.nan
    run = run_trainer(dataset_uri=write_csv(iris_frame, "nan.csv"), target_column="species")
    message = failed(run, "DataValidationFailed")
    assert "'petal length (cm)' has 10 (6.67% of 150 rows)" in message
    statuses = {check["name"]: check["status"] for check in run.result["checks"]}
    assert statuses["missing_values"] == "Failed"
    assert run.result["datasetHash"] == dataset_hash(iris_frame)
    assert not (run.output / "model.joblib").exists()


def test_an_imbalanced_csv_fails_the_class_balance(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    rare = pd.concat([iris_frame.iloc[50:], iris_frame.iloc[:3]])
    run = run_trainer(dataset_uri=write_csv(rare, "rare.csv"), target_column="species")
    assert "class 'setosa' of target 'species' has 3 of 103 rows" in failed(run, "DataValidationFailed")


def test_a_missing_target_column_fails_the_schema(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    run = run_trainer(dataset_uri=write_csv(iris_frame, "iris.csv"), target_column="label")
    assert "target column 'label' not found" in failed(run, "DataValidationFailed")


def test_a_hash_mismatch_fails_the_data_checks(run_trainer: RunTrainer) -> None:
    run = run_trainer(dataset_hash="sha256:" + "0" * 64)
    message = failed(run, "DataValidationFailed")
    assert message.startswith("dataset_hash: the dataset's content hash is sha256:")


def test_a_regressor_on_text_labels_fails_the_schema(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "iris.csv"), target_column="species", params={"estimator": "Ridge"}
    )
    assert "Ridge is a regressor" in failed(run, "DataValidationFailed")


def test_an_unknown_estimator_fails_before_reading_the_data(run_trainer: RunTrainer) -> None:
    run = run_trainer(
        dataset_uri="file:///nowhere/data.csv", target_column="y", params={"estimator": "XGBoost"}
    )
    assert "unknown estimator 'XGBoost'" in failed(run, "InvalidParameters")


def test_an_unknown_estimator_parameter_fails(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"estimator": "SVC", "gama": 0.1})
    assert "'gama' (did you mean 'gamma'?)" in failed(run, "InvalidParameters")


def test_a_bad_parameter_value_is_invalid_parameters(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"n_estimators": -3})
    assert "n_estimators" in failed(run, "InvalidParameters")


def test_an_error_inside_fit_is_training_failed(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"estimator": "SVC", "kernel": "precomputed"})
    assert failed(run, "TrainingFailed").startswith("SVC failed to train: ValueError:")


def test_an_unreadable_dataset_is_dataset_unavailable(run_trainer: RunTrainer, tmp_path: object) -> None:
    run = run_trainer(dataset_uri="file:///nowhere/data.csv", target_column="y")
    assert "cannot read csv dataset file:///nowhere/data.csv" in failed(run, "DatasetUnavailable")


def test_a_bad_environment_is_reported_as_invalid_parameters(run_trainer: RunTrainer) -> None:
    run = run_trainer(params=None, trial="x")
    assert failed(run, "InvalidParameters") == "MODELLOOP_TRIAL must be a non-negative integer, got 'x'"


def test_a_torch_mlp_run_writes_its_onnx_export_for_serving_and_its_weights_and_architecture(
    run_trainer: RunTrainer,
) -> None:
    params = {"estimator": "TorchMLP", "hidden_sizes": [16], "epochs": 15, "batch_size": 32}
    run = run_trainer(dataset_uri="sklearn://breast_cancer", params=params, device="auto")
    assert run.status == 0, run.result
    assert run.result["framework"] == "pytorch"
    assert run.result["estimator"] == "TorchMLP"
    assert run.result["metrics"]["roc_auc"] > 0.95
    # The artifact is what a server loads: model.onnx, and its digest.
    exported = run.output / "model.onnx"
    assert run.result["artifactUri"] == exported.as_uri()
    assert run.result["artifactDigest"] == "sha256:" + hashlib.sha256(exported.read_bytes()).hexdigest()
    model = load_torch_mlp(
        (run.output / "model.pt").read_bytes(), json.loads((run.output / "model.json").read_text())
    )
    reference = pd.read_csv(run.output / "reference.csv")
    served = load_predictor(run.output).predict(reference.to_numpy())
    assert served.tolist() == model.predict(reference).tolist()
    assert set(served) <= {0, 1}


def test_torch_mlp_gets_the_seed_and_is_deterministic(run_trainer: RunTrainer) -> None:
    params = {"estimator": "TorchMLP", "hidden_sizes": [16], "epochs": 10, "seed": 9}
    first = run_trainer(name="a", dataset_uri="sklearn://diabetes", params=params, device="cpu")
    second = run_trainer(name="b", dataset_uri="sklearn://diabetes", params=params, device="cpu")
    assert first.result["metrics"]["r2"] == second.result["metrics"]["r2"]
    assert first.result["artifactDigest"] == second.result["artifactDigest"]  # model.onnx, byte for byte
    assert first.full_result()["task"] == "regression"
    assert first.full_result()["params"]["seed"] == 9


def test_a_long_result_is_truncated_in_the_message_and_kept_whole_in_the_output(
    run_trainer: RunTrainer,
) -> None:
    code_version = "registry.example/team/trainer@sha256:" + "f" * 5000
    run = run_trainer(code_version=code_version)
    message_bytes = json.dumps(run.result, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(message_bytes) < 4096
    assert run.result["truncated"] is True
    assert run.result["resultUri"] == (run.output / "result.json").as_uri()
    assert run.result["status"] == "Succeeded"
    assert run.full_result()["codeVersion"] == code_version


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_device_unavailable(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"estimator": "TorchMLP", "epochs": 1}, device="cuda")
    assert "PyTorch sees no CUDA device" in failed(run, "DeviceUnavailable")


@pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")
def test_a_torch_mlp_trains_on_the_gpu_when_one_is_there(run_trainer: RunTrainer) -> None:
    params = {"estimator": "TorchMLP", "hidden_sizes": [32], "epochs": 20, "batch_size": 32}
    run = run_trainer(dataset_uri="sklearn://wine", params=params, device="auto")
    assert run.status == 0, run.result
    assert run.result["device"] == "cuda"
    assert run.result["metrics"]["accuracy"] >= 0.9


def test_scikit_learn_estimators_always_train_on_the_cpu(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"n_estimators": 5}, device="cuda")
    assert run.status == 0, run.result
    assert run.result["device"] == "cpu"
