"""The hold-out split and the metrics computed on it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.estimators import Task


@dataclass(frozen=True)
class Split:
    """Training and held-out rows: features and target of each."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def split_dataset(
    frame: pd.DataFrame, target_column: str, *, task: Task, test_size: float, seed: int
) -> Split:
    """Hold out ``test_size`` of the rows, shuffled with ``seed`` and stratified for classification."""
    features = frame.drop(columns=[target_column])
    target = frame[target_column]
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            features,
            target,
            test_size=test_size,
            random_state=seed,
            stratify=target if task == "classification" else None,
        )
    except ValueError as exc:
        raise TrainerError(
            FailureReason.DATA_VALIDATION_FAILED,
            f"cannot hold out test_size {test_size:g} of {len(frame)} rows: {exc}",
        ) from None
    return Split(x_train, x_test, y_train, y_test)


def evaluate(model: Any, split: Split, task: Task) -> dict[str, float]:
    """Quality metrics on the held-out rows: accuracy, f1_macro (+ roc_auc when binary), or r2, rmse, mae."""
    predicted = model.predict(split.x_test)
    truth = split.y_test.to_numpy()
    if task == "regression":
        return {
            "r2": float(r2_score(truth, predicted)),
            "rmse": math.sqrt(float(mean_squared_error(truth, predicted))),
            "mae": float(mean_absolute_error(truth, predicted)),
        }
    metrics = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "f1_macro": float(f1_score(truth, predicted, average="macro")),
    }
    classes = np.unique(split.y_train.to_numpy())
    if len(classes) == 2 and len(np.unique(truth)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(truth == classes[1], _positive_scores(model, split.x_test)))
    return metrics


def _positive_scores(model: Any, features: pd.DataFrame) -> np.ndarray:
    # Pipelines hide predict_proba when their last step lacks it (SVC without probability=True).
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(features))[:, 1]
    return np.asarray(model.decision_function(features))
