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


class StepScorer:
    """The metrics of :func:`evaluate` on the same held-out rows, from predictions, in plain numpy.

    Cheap enough for every training step (scikit-learn's metric functions cost milliseconds in
    input validation, more than an epoch of a small model); equal to :func:`evaluate`'s values up
    to float rounding. The predictions are the model's for ``split.x_test``.
    """

    def __init__(self, split: Split, task: Task) -> None:
        self.task = task
        truth = split.y_test.to_numpy()
        classes = np.unique(split.y_train.to_numpy())
        # roc_auc exactly where evaluate() reports it.
        self.needs_scores = task == "classification" and len(classes) == 2 and len(np.unique(truth)) == 2
        self.is_positive = truth == classes[1] if self.needs_scores else np.zeros(0, dtype=bool)
        self.truth = truth.astype(np.float64) if task == "regression" else truth
        if task == "classification":
            # The labels a classifier can predict (its training classes) and the held-out ones,
            # sorted: predictions are counted by their index here.
            self.labels = np.unique(np.concatenate([classes, truth]))
            self.true_codes = np.searchsorted(self.labels, truth)
            self.true_counts = np.bincount(self.true_codes, minlength=len(self.labels))

    def score(self, predicted: Any, positive_scores: Any = None) -> dict[str, float]:
        """The metrics for ``predicted`` (and, for roc_auc, the positive class's probabilities)."""
        predicted = np.asarray(predicted)
        if self.task == "regression":
            error = self.truth - predicted.astype(np.float64)
            squared = float(np.sum(error**2))
            return {
                "r2": _r2(self.truth, squared),
                "rmse": math.sqrt(squared / len(error)),
                "mae": float(np.mean(np.abs(error))),
            }
        hits = self.truth == predicted
        metrics = {"accuracy": float(np.mean(hits)), "f1_macro": self._f1_macro(predicted, hits)}
        if self.needs_scores and positive_scores is not None:
            metrics["roc_auc"] = _roc_auc(self.is_positive, np.asarray(positive_scores, dtype=np.float64))
        return metrics

    def _f1_macro(self, predicted: np.ndarray, hits: np.ndarray) -> float:
        # As scikit-learn: the mean over the labels present in the truth or the predictions of
        # 2tp / (2tp + fp + fn), that is 2tp / (true count + predicted count).
        codes = np.minimum(np.searchsorted(self.labels, predicted), len(self.labels) - 1)
        if not np.array_equal(self.labels[codes], predicted):  # a label never seen: count them all anew
            return _f1_macro(self.truth, predicted)
        n_labels = len(self.labels)
        tp = np.bincount(self.true_codes[hits], minlength=n_labels)
        counts = self.true_counts + np.bincount(codes, minlength=n_labels)
        present = counts > 0
        return float(np.mean(2 * tp[present] / counts[present]))

    def score_model(self, model: Any, features: Any) -> dict[str, float]:
        """The metrics of a (possibly still training) model, predicting ``features`` (split.x_test)."""
        scores = _positive_scores(model, features) if self.needs_scores else None
        return self.score(model.predict(features), scores)


def _r2(truth: np.ndarray, squared_error: float) -> float:
    # As scikit-learn's r2_score: with a constant truth, 1 for a perfect fit and 0 otherwise.
    variation = float(np.sum((truth - truth.mean()) ** 2))
    if variation == 0.0:
        return 1.0 if squared_error == 0.0 else 0.0
    return 1.0 - squared_error / variation


def _f1_macro(truth: np.ndarray, predicted: np.ndarray) -> float:
    # Over the labels present in either array, as scikit-learn: per label 2tp / (2tp + fp + fn).
    labels, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    n = len(truth)
    true_codes, predicted_codes = codes[:n], codes[n:]
    hits = true_codes == predicted_codes
    tp = np.bincount(true_codes[hits], minlength=len(labels))
    support = np.bincount(true_codes, minlength=len(labels)) + np.bincount(
        predicted_codes, minlength=len(labels)
    )
    return float(np.mean(2 * tp / support))


def _roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    # The Mann-Whitney statistic with average ranks for ties: the area under the ROC curve.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    positives = int(is_positive.sum())
    negatives = len(is_positive) - positives
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
