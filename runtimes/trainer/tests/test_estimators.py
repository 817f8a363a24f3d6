"""The estimator allow-list and parameter validation."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.estimators import (
    ESTIMATORS,
    build_estimator,
    estimator_spec,
    resolve_task,
    with_imputer,
)
from modelloop_trainer.torch_mlp import TorchMLP


def invalid_message(error: pytest.ExceptionInfo[TrainerError]) -> str:
    assert error.value.reason == FailureReason.INVALID_PARAMETERS
    return error.value.message


def test_the_allow_list_has_classifiers_regressors_and_the_torch_mlp() -> None:
    tasks = {spec.task for spec in ESTIMATORS.values()}
    assert tasks == {"classification", "regression", None}
    for name in (
        "RandomForestClassifier",
        "GradientBoostingRegressor",
        "LogisticRegression",
        "SVC",
        "TorchMLP",
    ):
        assert name in ESTIMATORS


def test_an_unknown_estimator_is_refused_with_a_suggestion() -> None:
    with pytest.raises(TrainerError) as caught:
        estimator_spec("RandomForestClassifer")
    message = invalid_message(caught)
    assert "unknown estimator 'RandomForestClassifer'" in message
    assert "did you mean RandomForestClassifier?" in message


def test_only_allow_listed_names_are_built_even_if_importable() -> None:
    with pytest.raises(TrainerError):
        estimator_spec("sklearn.ensemble.RandomForestClassifier")


def test_an_unknown_parameter_is_refused_with_a_suggestion() -> None:
    spec = estimator_spec("RandomForestClassifier")
    with pytest.raises(TrainerError) as caught:
        build_estimator(spec, {"n_estimator": 10}, task="classification", seed=0, device="cpu")
    message = invalid_message(caught)
    assert "unknown RandomForestClassifier parameter 'n_estimator' (did you mean 'n_estimators'?)" in message


def test_the_seed_becomes_random_state_unless_one_is_given() -> None:
    spec = estimator_spec("RandomForestClassifier")
    seeded = build_estimator(spec, {"n_estimators": 5}, task="classification", seed=11, device="cpu")
    assert isinstance(seeded, RandomForestClassifier)
    assert seeded.get_params()["random_state"] == 11
    assert seeded.get_params()["n_estimators"] == 5
    explicit = build_estimator(spec, {"random_state": 3}, task="classification", seed=11, device="cpu")
    assert explicit.get_params()["random_state"] == 3


def test_torch_mlp_parameters_are_checked_before_training() -> None:
    spec = estimator_spec("TorchMLP")
    with pytest.raises(TrainerError) as caught:
        build_estimator(spec, {"hidden_sizes": [32, 0]}, task="classification", seed=0, device="cpu")
    assert "hidden_sizes must be a list of positive integers" in invalid_message(caught)
    with pytest.raises(TrainerError) as caught:
        build_estimator(spec, {"device": "cuda"}, task="classification", seed=0, device="cpu")
    assert "unknown TorchMLP parameter 'device'" in invalid_message(caught)


def test_torch_mlp_task_follows_the_target_dtype_unless_declared() -> None:
    spec = estimator_spec("TorchMLP")
    assert resolve_task(spec, {}, pd.Series([0.5, 1.5])) == "regression"
    assert resolve_task(spec, {}, pd.Series([0, 1])) == "classification"
    assert resolve_task(spec, {}, pd.Series(["a", "b"])) == "classification"
    assert resolve_task(spec, {"task": "regression"}, pd.Series([0, 1])) == "regression"
    assert resolve_task(estimator_spec("TorchMLPClassifier"), {}, pd.Series([0.5])) == "classification"
    with pytest.raises(TrainerError):
        resolve_task(estimator_spec("TorchMLPRegressor"), {"task": "classification"}, pd.Series([0.5]))


def test_missing_values_put_an_imputer_in_front_of_scikit_learn_estimators_only() -> None:
    forest = RandomForestClassifier()
    assert isinstance(with_imputer(forest), Pipeline)
    mlp = TorchMLP()
    assert with_imputer(mlp) is mlp
