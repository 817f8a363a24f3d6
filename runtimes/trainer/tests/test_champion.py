"""The champion evaluated on the new model's own held-out rows, and the reference predictions."""

from __future__ import annotations

import json
from collections.abc import Callable

import joblib
import pandas as pd
import pytest

from conftest import RunTrainer
from modelloop_trainer.evaluation import evaluate, split_dataset
from modelloop_trainer.torch_mlp import load_torch_mlp

WriteCsv = Callable[[pd.DataFrame, str], str]
QUALITY = {"accuracy", "f1_macro"}


def test_the_champion_is_evaluated_on_the_same_held_out_rows_as_the_new_model(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    uri = write_csv(iris_frame, "iris.csv")
    champion = run_trainer(
        name="champion", dataset_uri=uri, target_column="species", params={"estimator": "GaussianNB"}
    )
    run = run_trainer(
        name="new",
        dataset_uri=uri,
        target_column="species",
        params={"n_estimators": 20, "seed": 3},
        champion_uri=champion.result["artifactUri"],
        champion_version="iris-v3",
    )

    assert run.status == 0, run.result
    reported = run.result["champion"]
    assert reported["version"] == "iris-v3"
    assert set(reported["metrics"]) == QUALITY == set(run.result["metrics"]) & QUALITY
    # The same rows the new model was measured on: seed 3's split, not the champion's own seed 0.
    split = split_dataset(iris_frame, "species", task="classification", test_size=0.2, seed=3)
    model = joblib.load(champion.output / "model.joblib")
    assert reported["metrics"] == evaluate(model, split, "classification")
    assert run.full_result()["champion"] == reported


def test_a_champion_that_looked_better_on_its_easier_split_is_worse_on_the_same_data(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    # The champion only ever saw two of the three species: its own held-out rows were easy.
    easy = iris_frame[iris_frame["species"] != "virginica"]
    champion = run_trainer(name="champion", dataset_uri=write_csv(easy, "easy.csv"), target_column="species")
    run = run_trainer(
        name="new",
        dataset_uri=write_csv(iris_frame, "iris.csv"),
        target_column="species",
        champion_uri=champion.result["artifactUri"],
        champion_version="iris-v1",
    )

    assert run.status == 0, run.result
    own, new, same_data = (
        champion.result["metrics"]["accuracy"],
        run.result["metrics"]["accuracy"],
        run.result["champion"]["metrics"]["accuracy"],
    )
    assert own > new > same_data
    assert same_data <= 2 / 3 + 1e-9  # it cannot name a single virginica


@pytest.mark.parametrize(
    "given_as",
    ["artifact", "folder", "weights"],
    ids=["its-artifact-uri-model.onnx", "its-folder", "its-model.pt"],
)
def test_a_pytorch_champion_is_evaluated_with_its_pytorch_weights_however_it_is_named(
    run_trainer: RunTrainer, given_as: str
) -> None:
    params = {"estimator": "TorchMLP", "hidden_sizes": [8], "epochs": 5, "batch_size": 32}
    champion = run_trainer(
        name="champion", dataset_uri="sklearn://breast_cancer", params=params, device="cpu"
    )
    uri = {
        "artifact": champion.result["artifactUri"],
        "folder": champion.output.as_uri() + "/",
        "weights": (champion.output / "model.pt").as_uri(),
    }[given_as]
    run = run_trainer(
        name="new",
        dataset_uri="sklearn://breast_cancer",
        params={"estimator": "LogisticRegression", "max_iter": 5000},
        champion_uri=uri,
        champion_version="cancer-v2",
    )

    assert run.status == 0, run.result
    assert set(run.result["champion"]["metrics"]) == {"accuracy", "f1_macro", "roc_auc"}
    assert run.result["champion"]["metrics"]["roc_auc"] > 0.9


@pytest.mark.parametrize(
    ("champion_dataset", "fragment"),
    [
        (None, "cannot load file:///nowhere/model.joblib: FileNotFoundError"),
        ("wine", "trained on other features"),
    ],
)
def test_a_champion_that_cannot_be_evaluated_is_reported_and_the_run_still_succeeds(
    run_trainer: RunTrainer, champion_dataset: str | None, fragment: str
) -> None:
    uri = "file:///nowhere/model.joblib"
    if champion_dataset is not None:
        uri = run_trainer(name="champion", dataset_uri=f"sklearn://{champion_dataset}").result["artifactUri"]

    run = run_trainer(name="new", champion_uri=uri, champion_version="iris-v9")

    assert run.status == 0, run.result
    assert run.result["status"] == "Succeeded"
    assert set(run.result["champion"]) == {"version", "error"}
    assert run.result["champion"]["version"] == "iris-v9"
    assert fragment in run.result["champion"]["error"]


def test_a_run_without_a_champion_reports_none(run_trainer: RunTrainer) -> None:
    assert "champion" not in run_trainer().result


def test_reference_predictions_are_the_models_own_on_the_reference_rows_in_order(
    run_trainer: RunTrainer,
) -> None:
    run = run_trainer(params={"n_estimators": 10, "reference_rows": 40})

    reference = pd.read_csv(run.output / "reference.csv")
    predictions = pd.read_csv(run.output / "reference_predictions.csv")
    assert run.result["referencePredictionsUri"] == (run.output / "reference_predictions.csv").as_uri()
    assert list(predictions.columns) == ["prediction"]
    model = joblib.load(run.output / "model.joblib")
    assert predictions["prediction"].tolist() == model.predict(reference).tolist()
    assert len(predictions) == 40


def test_a_torch_models_reference_predictions_are_its_labels(run_trainer: RunTrainer) -> None:
    params = {"estimator": "TorchMLP", "hidden_sizes": [8], "epochs": 3, "reference_rows": 30}
    run = run_trainer(dataset_uri="sklearn://wine", params=params, device="cpu")

    model = load_torch_mlp(
        (run.output / "model.pt").read_bytes(), json.loads((run.output / "model.json").read_text())
    )
    reference = pd.read_csv(run.output / "reference.csv")
    predictions = pd.read_csv(run.output / "reference_predictions.csv")["prediction"]
    assert predictions.tolist() == model.predict(reference).tolist()
