"""The allow-list of estimators a TrainingRun may name, and building one from its parameters.

Only estimators listed here can be built: ``MODELLOOP_PARAMS`` never names an arbitrary class.
Every parameter is checked against the estimator's constructor before anything is trained.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.torch_mlp import TorchMLP

Task = Literal["classification", "regression"]
Framework = Literal["sklearn", "pytorch"]


@dataclass(frozen=True)
class EstimatorSpec:
    """One allowed estimator: its class, its task (None: decided by the target) and its framework."""

    name: str
    cls: type[BaseEstimator]
    task: Task | None
    framework: Framework


def _sklearn(cls: type[BaseEstimator], task: Task) -> EstimatorSpec:
    return EstimatorSpec(cls.__name__, cls, task, "sklearn")


ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        _sklearn(RandomForestClassifier, "classification"),
        _sklearn(ExtraTreesClassifier, "classification"),
        _sklearn(GradientBoostingClassifier, "classification"),
        _sklearn(HistGradientBoostingClassifier, "classification"),
        _sklearn(DecisionTreeClassifier, "classification"),
        _sklearn(LogisticRegression, "classification"),
        _sklearn(SVC, "classification"),
        _sklearn(KNeighborsClassifier, "classification"),
        _sklearn(GaussianNB, "classification"),
        _sklearn(RandomForestRegressor, "regression"),
        _sklearn(ExtraTreesRegressor, "regression"),
        _sklearn(GradientBoostingRegressor, "regression"),
        _sklearn(HistGradientBoostingRegressor, "regression"),
        _sklearn(DecisionTreeRegressor, "regression"),
        _sklearn(LinearRegression, "regression"),
        _sklearn(Ridge, "regression"),
        _sklearn(Lasso, "regression"),
        _sklearn(ElasticNet, "regression"),
        _sklearn(SVR, "regression"),
        _sklearn(KNeighborsRegressor, "regression"),
        EstimatorSpec("TorchMLP", TorchMLP, None, "pytorch"),
        EstimatorSpec("TorchMLPClassifier", TorchMLP, "classification", "pytorch"),
        EstimatorSpec("TorchMLPRegressor", TorchMLP, "regression", "pytorch"),
    )
}

# Parameters the trainer sets itself; a TrainingRun sets them through the reserved keys instead.
_MANAGED_PARAMS = {"TorchMLP": {"seed", "device"}}


def estimator_spec(name: str) -> EstimatorSpec:
    """The allowed estimator called ``name``, or an InvalidParameters error that lists the choices."""
    spec = ESTIMATORS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, ESTIMATORS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise TrainerError(
            FailureReason.INVALID_PARAMETERS,
            f"unknown estimator {name!r}: {hint}allowed estimators are {', '.join(sorted(ESTIMATORS))}",
        )
    return spec


def resolve_task(spec: EstimatorSpec, params: Mapping[str, Any], target: pd.Series) -> Task:
    """The learning task: fixed by the estimator, or for ``TorchMLP`` by ``task`` or the target's dtype.

    With ``task: auto`` (the default) a float target means regression, any other dtype
    (integers, strings, booleans) classification.
    """
    declared = params.get("task", "auto")
    if spec.task is not None:
        if spec.framework == "pytorch" and declared not in ("auto", spec.task):
            raise TrainerError(
                FailureReason.INVALID_PARAMETERS,
                f"{spec.name} is for {spec.task}; drop task={declared!r} or use TorchMLP",
            )
        return spec.task
    if declared in ("classification", "regression"):
        return "classification" if declared == "classification" else "regression"
    if declared != "auto":
        raise TrainerError(
            FailureReason.INVALID_PARAMETERS,
            f"{spec.name} parameter task must be auto, classification or regression, got {declared!r}",
        )
    return "regression" if pd.api.types.is_float_dtype(target) else "classification"


def build_estimator(
    spec: EstimatorSpec, params: Mapping[str, Any], *, task: Task, seed: int, device: str
) -> BaseEstimator:
    """A fresh, unfitted estimator with ``params``; the seed goes to its ``random_state`` unless given."""
    estimator = spec.cls()
    accepted = set(estimator.get_params(deep=False)) - _MANAGED_PARAMS.get(spec.cls.__name__, set())
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TrainerError(
            FailureReason.INVALID_PARAMETERS, _unknown_params_message(spec.name, unknown, accepted)
        )
    chosen = dict(params)
    if spec.framework == "pytorch":
        chosen.update(task=task, seed=seed, device=device)
    elif "random_state" in accepted:
        chosen.setdefault("random_state", seed)
    estimator.set_params(**chosen)
    if isinstance(estimator, TorchMLP):
        try:
            estimator.check_params()
        except ValueError as exc:
            raise TrainerError(FailureReason.INVALID_PARAMETERS, f"{spec.name}: {exc}") from None
    return estimator


def _unknown_params_message(name: str, unknown: list[str], accepted: set[str]) -> str:
    parts = []
    for param in unknown:
        close = difflib.get_close_matches(param, accepted, n=1)
        parts.append(f"{param!r} (did you mean {close[0]!r}?)" if close else repr(param))
    noun = "parameter" if len(unknown) == 1 else "parameters"
    return f"unknown {name} {noun} {', '.join(parts)}; valid parameters are {', '.join(sorted(accepted))}"


def with_imputer(estimator: BaseEstimator) -> BaseEstimator:
    """Put a median imputer in front of a scikit-learn estimator, for data whose missing values are allowed.

    TorchMLP fills missing values itself, so it is returned unchanged.
    """
    if isinstance(estimator, TorchMLP):
        return estimator
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("model", estimator)])
