"""``holdout.csv``: the held-out rows the model was evaluated on, with their labels, the model's predictions
and a classifier's probabilities, as the drift detector reads them to calibrate its performance estimate."""

from __future__ import annotations

from collections.abc import Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import (
    HOLDOUT_LABEL_COLUMN,
    HOLDOUT_PREDICTION_COLUMN,
    holdout_probability_column,
    holdout_probability_label,
)
from sklearn.metrics import accuracy_score, r2_score

from conftest import RunTrainer, TrainerRun
from modelloop_trainer.artifacts import read_model, write_holdout
from modelloop_trainer.errors import FailureReason, TrainerError

WriteCsv = Callable[[pd.DataFrame, str], str]


def holdout(run: TrainerRun) -> pd.DataFrame:
    assert run.status == 0, run.result
    assert run.result["holdoutUri"] == (run.output / "holdout.csv").as_uri()
    assert run.full_result()["holdoutUri"] == run.result["holdoutUri"]
    return pd.read_csv(run.output / "holdout.csv")


def probability_columns(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if holdout_probability_label(column) is not None]


def test_a_classifiers_holdout_has_the_evaluated_rows_labels_predictions_and_probabilities(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "iris.csv"),
        target_column="species",
        params={"estimator": "RandomForestClassifier", "n_estimators": 10, "seed": 3},
    )

    table = holdout(run)

    features = list(pd.read_csv(run.output / "reference.csv").columns)
    classes = ["setosa", "versicolor", "virginica"]
    assert list(table.columns) == [
        *features,
        HOLDOUT_LABEL_COLUMN,
        HOLDOUT_PREDICTION_COLUMN,
        *(holdout_probability_column(label) for label in classes),
    ]
    # Exactly the rows the metrics were measured on.
    metrics = run.result["metrics"]
    assert len(table) == metrics["n_test"] == 30
    assert (
        accuracy_score(table[HOLDOUT_LABEL_COLUMN], table[HOLDOUT_PREDICTION_COLUMN]) == metrics["accuracy"]
    )
    model = joblib.load(run.output / "model.joblib")
    assert table[HOLDOUT_PREDICTION_COLUMN].tolist() == model.predict(table[features]).tolist()
    probabilities = table[probability_columns(table)].to_numpy()
    # Written to the last bit: a float's shortest repr reads back as the same float.
    assert np.array_equal(probabilities, model.predict_proba(table[features]))
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert [classes[index] for index in probabilities.argmax(axis=1)] == table[
        HOLDOUT_PREDICTION_COLUMN
    ].tolist()
    assert not table.isna().any().any()


def test_a_torch_classifiers_probabilities_are_its_own_and_its_predictions_their_largest(
    run_trainer: RunTrainer,
) -> None:
    run = run_trainer(params={"estimator": "TorchMLP", "hidden_sizes": [8], "epochs": 5, "seed": 1})

    table = holdout(run)

    assert probability_columns(table) == [holdout_probability_column(label) for label in (0, 1, 2)]
    features = list(pd.read_csv(run.output / "reference.csv").columns)
    model = read_model(run.result["artifactUri"])
    probabilities = table[probability_columns(table)].to_numpy()
    assert np.allclose(probabilities, model.predict_proba(table[features]), rtol=1e-12, atol=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert table[HOLDOUT_PREDICTION_COLUMN].tolist() == model.predict(table[features]).tolist()
    assert (probabilities.argmax(axis=1) == table[HOLDOUT_PREDICTION_COLUMN]).all()
    assert accuracy_score(table[HOLDOUT_LABEL_COLUMN], table[HOLDOUT_PREDICTION_COLUMN]) == pytest.approx(
        run.result["metrics"]["accuracy"]
    )


def test_holdout_rows_caps_the_file_with_a_sample_of_the_held_out_rows_not_the_metrics(
    run_trainer: RunTrainer,
) -> None:
    run = run_trainer(params={"n_estimators": 10, "seed": 2, "holdout_rows": 12})

    table = holdout(run)

    assert len(table) == 12
    assert run.result["metrics"]["n_test"] == 30  # measured on every held-out row
    model = joblib.load(run.output / "model.joblib")
    features = list(pd.read_csv(run.output / "reference.csv").columns)
    assert table[HOLDOUT_PREDICTION_COLUMN].tolist() == model.predict(table[features]).tolist()
    again = holdout(run_trainer(params={"n_estimators": 10, "seed": 2, "holdout_rows": 12}))
    assert again.equals(table), "the sample is the seed's"


def test_a_regressors_holdout_has_no_probability_columns(run_trainer: RunTrainer) -> None:
    run = run_trainer(params={"estimator": "Ridge"}, dataset_uri="sklearn://diabetes")

    table = holdout(run)

    features = list(pd.read_csv(run.output / "reference.csv").columns)
    assert list(table.columns) == [*features, HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN]
    assert r2_score(table[HOLDOUT_LABEL_COLUMN], table[HOLDOUT_PREDICTION_COLUMN]) == pytest.approx(
        run.result["metrics"]["r2"], rel=1e-12
    )


def test_a_classifier_without_probabilities_has_none_and_missing_features_stay_empty_cells(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    iris_frame.loc[::5, "sepal width (cm)"] = np.nan
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "gappy.csv"),
        target_column="species",
        params={"estimator": "SVC", "max_missing_fraction": 0.3},
    )

    table = holdout(run)
    text = (run.output / "holdout.csv").read_text()

    assert probability_columns(table) == []
    assert list(table.columns)[-2:] == [HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN]
    assert table["sepal width (cm)"].isna().any()
    assert ",," in text  # the CSV writer's empty cell for a missing value
    assert not table[[HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN]].isna().any().any()


def test_a_feature_named_like_a_holdout_column_fails_the_run_naming_it(tmp_path: object) -> None:
    from sklearn.linear_model import LogisticRegression

    features = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], HOLDOUT_LABEL_COLUMN: [1.0, 0.0, 1.0, 0.0]})
    labels = pd.Series([0, 0, 1, 1])
    model = LogisticRegression().fit(features, labels)

    with pytest.raises(TrainerError, match=r"\['modelloop.label'\] have the names of holdout.csv") as raised:
        write_holdout(f"file://{tmp_path}", features, labels, model, classifier=True)
    assert raised.value.reason == FailureReason.DATA_VALIDATION_FAILED


def test_a_model_that_answers_non_finite_values_fails_the_run_naming_the_column(tmp_path: object) -> None:
    from sklearn.linear_model import LinearRegression

    features = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    labels = pd.Series([1.0, 2.0, 3.0])
    model = LinearRegression().fit(features, labels)
    model.coef_ = np.array([np.inf])  # a model whose weights overflowed

    with pytest.raises(
        TrainerError, match=r"3 value\(s\) that are not finite numbers in 'modelloop.prediction'"
    ) as raised:
        write_holdout(f"file://{tmp_path}", features, labels, model, classifier=False)
    assert raised.value.reason == FailureReason.TRAINING_FAILED
