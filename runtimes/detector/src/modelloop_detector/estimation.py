"""A model's performance on a window estimated before its labels arrive, from its holdout.

The trainer writes ``holdout.csv``: rows the model never trained on, with their true labels, the model's
predictions and, for a classifier, its class probabilities. :func:`build_estimator` learns from them, once
at registration, how far the model's own outputs can be trusted; its estimator then turns a window of
served rows into :class:`Estimate` values with a confidence band, and :func:`realised_performance`
computes the same metrics once labels arrive, to check them.

- A classifier (confidence-based performance estimation, CBPE, as NannyML describes it): the served
  probabilities are calibrated on the holdout, each class's one-vs-rest as NannyML does, and the predicted
  class's (the argmax, the first on a tie, as the servers pick it) also top-label: on the rows where it
  was the prediction, which is what accuracy asks. Each map is Platt scaling, or on holdouts of
  :data:`ISOTONIC_MIN_ROWS` rows or more isotonic regression where cross-validation finds it better. A
  row's predicted class takes its top-label probability, the other classes share the rest in proportion
  to their one-vs-rest ones, and the expected confusion matrix of the window follows: expected accuracy
  is the mean calibrated probability of the predicted class, expected macro F1 comes from the expected
  true positives, false positives and false negatives of each class. The band adds the window's sampling
  noise (the realised metric of rows whose classes are drawn from their calibrated probabilities: a
  Poisson-binomial for accuracy, the delta method for F1) to the calibration's own uncertainty (the
  spread of the estimate under isotonic calibrations refitted on bootstrap replicates of the holdout,
  which also shows where Platt scaling's two parameters do not fit it).
- A regressor (direct loss estimation, DLE): a ridge regression of the absolute error ``|y - ŷ|`` on
  piecewise-linear functions of the prediction and of each feature (straight lines on a small holdout),
  its penalty chosen by leave-one-out cross-validation; the estimated MAE is the window's mean predicted
  error. The band adds the window's sampling noise (the holdout's out-of-fold residuals of that loss
  model, in proportion to each row's predicted error) to the loss model's own uncertainty (the spread of
  the window's estimate over the five cross-fitted loss models).

Under a covariate shift that keeps ``P(y | x)`` both stay right in expectation: what is learnt is a function
of what the model sees. A window is estimated with a fixed number of array operations (no loop over its rows).
"""

# NannyML (Apache-2.0) implements both methods, but does not install beside the detector's pins (checked
# with uv 0.13.9 for Python 3.11 against requirements.in and requirements.lock): nannyml >= 0.11 requires
# pydantic >= 2.7 (0.11.0 and 0.12.1: pydantic >= 2.7.4), while alibi-detect 0.11.4 needs pydantic < 2; the
# newest release that resolves, 0.10.7, requires pandas >= 1.5, < 2 (the lock has pandas 2.3.3), and every
# release from 0.5.1 to 0.13.0 requires jinja2 < 3.1 where the lock's torch 2.15.0 has jinja2 3.1.6. Against
# requirements.in alone the resolver can only step back to nannyml 0.4.1 (2022), which would downgrade numpy
# to 1.22.4, pandas to 1.5.1, scipy to 1.7.3 and scikit-learn to 1.6.1. Against the lock it does not
# resolve. Hence this module, on scikit-learn's isotonic regression and ridge regression.

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from modelloop_contracts import HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN, holdout_probability_label
from sklearn.isotonic import isotonic_regression  # type: ignore[import-untyped]
from sklearn.linear_model import Ridge, RidgeCV  # type: ignore[import-untyped]

from modelloop_detector.feedback import _number
from modelloop_detector.limits import Limits
from modelloop_detector.payloads import FloatArray, ObjectArray
from modelloop_detector.reference import Reference, ReferenceError, Task, _read_csv, prediction_task

IntArray = npt.NDArray[np.intp]

MIN_HOLDOUT_ROWS = 10
"""The fewest holdout rows an estimator is built from."""
MAX_CALIBRATION_ROWS = 50_000
"""Holdout rows an estimator learns from at most (a fixed-seed sample of a larger holdout)."""
ISOTONIC_MIN_ROWS = 500
"""Isotonic regression is tried only on holdouts of at least this many rows: below it, its steps follow the
noise of the few rows in each, and Platt scaling's two parameters calibrate better."""
PROBABILITY_TOLERANCE = 1e-3
"""How far a holdout row's probabilities may sum from 1 (written as text, then read back)."""

_LOGIT_LIMIT = 10.0  # calibration maps are tabulated on logits in [-10, 10]: p from 4.5e-5 to 1 - 4.5e-5
_GRID = 256
_FIT_BINS = 200  # a class's scores are pooled into at most this many quantile bins before a fit
_BOOTSTRAPS = 20
_FOLDS = 5
_SEED = 20240607
_KNOTS = 4  # piecewise-linear pieces of a numeric column of the loss model, at most ...
_ROWS_PER_PIECE = 40  # ... one per this many holdout rows per column ...
_MAX_BASIS = 240  # ... and fewer when the columns are many, so that its design stays this narrow
_TOP_CATEGORIES = 8
_RIDGE_ALPHAS = np.logspace(-3, 4, 15)
_PLATT_PRIOR = 0.1  # the weight of the identity map in a Platt fit: a tenth of one uncertain row


@dataclass(frozen=True)
class Holdout:
    """A version's held-out rows as the trainer wrote them, laid out like its reference.

    ``features`` holds the feature columns in the reference's order, categorical ones as the reference's
    category codes (values the reference never had get new codes, as a window's would).
    """

    uri: str
    features: FloatArray
    labels: ObjectArray
    predictions: ObjectArray
    probabilities: FloatArray | None
    classes: tuple[str, ...] | None
    task: Task
    feature_names: tuple[str, ...] = ()
    categorical: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        """The number of held-out rows."""
        return len(self.labels)


@dataclass(frozen=True)
class Estimate:
    """One metric estimated on a window, with its confidence band."""

    metric: str
    value: float
    lower: float
    upper: float
    rows: int


class PerformanceEstimator(ABC):
    """What a window's rows say about the model's performance on them, before labels arrive."""

    task: Task
    metrics: tuple[str, ...]
    classes: tuple[str, ...] | None
    confidence: float
    min_rows: int

    @abstractmethod
    def estimate(
        self, features: FloatArray, probabilities: FloatArray | None, predictions: FloatArray
    ) -> list[Estimate]:
        """Each of :attr:`metrics` on a window; ``[]`` when fewer than :attr:`min_rows` rows are usable.

        ``features`` is the window's ``(n, d)`` matrix as the window holds it; ``probabilities`` the
        ``(n, k)`` served class probabilities in :attr:`classes` order (a classifier; a row with a NaN is a
        row served without them, and is skipped); ``predictions`` the ``(n,)`` numeric predictions (a
        regressor; NaN is skipped). A classifier's estimate reads only the probabilities.
        """


def load_holdout(uri: str, reference: Reference, *, limits: Limits | None = None) -> Holdout:
    """Read ``holdout.csv`` at ``uri`` and lay it out like ``reference``.

    A file that cannot be used raises :class:`ReferenceError` (with ``reason`` where a limit refused it):
    larger than ``limits.max_reference_bytes``, not a CSV table, without the label or prediction column,
    with other features than the reference's, fewer than :data:`MIN_HOLDOUT_ROWS` rows, empty or
    non-finite values, probabilities outside [0, 1] or whose rows do not sum to 1, labels none of the
    classes, or a classifier without probabilities.
    """
    limits = limits or Limits()
    frame = _read_csv(uri, limits.max_reference_bytes)
    columns = [str(name) for name in frame.columns]
    for required in (HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN):
        if required not in columns:
            raise ReferenceError(f"holdout {uri} has no '{required}' column")
    probability_columns = [name for name in columns if holdout_probability_label(name) is not None]
    special = {HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN, *probability_columns}
    feature_columns = [name for name in columns if name not in special]
    if sorted(feature_columns) != sorted(reference.features):
        missing = [name for name in reference.features if name not in feature_columns]
        unknown = [name for name in feature_columns if name not in reference.features]
        parts = [
            f"missing {_names(missing)}" if missing else "",
            f"unknown {_names(unknown)}" if unknown else "",
        ]
        raise ReferenceError(
            f"holdout {uri} does not have the features of reference {reference.uri}: "
            + "; ".join(part for part in parts if part)
        )
    if len(frame) < MIN_HOLDOUT_ROWS:
        raise ReferenceError(
            f"holdout {uri} has {len(frame)} rows; estimating performance needs at least {MIN_HOLDOUT_ROWS}"
            if len(frame)
            else f"holdout {uri} has no rows"
        )
    features = _holdout_features(uri, frame, reference)
    labels = _values(uri, frame, HOLDOUT_LABEL_COLUMN)
    predictions = _values(uri, frame, HOLDOUT_PREDICTION_COLUMN)
    probabilities = classes = None
    if probability_columns:
        classes = tuple(str(holdout_probability_label(name)) for name in probability_columns)
        probabilities = _holdout_probabilities(uri, frame, probability_columns, classes)
        class_keys = {value_key(label) for label in classes}
        if not any(value_key(label) in class_keys for label in labels):
            raise ReferenceError(
                f"holdout {uri}: no '{HOLDOUT_LABEL_COLUMN}' value is one of the classes of its probability "
                f"columns {_names(list(classes))}"
            )
        task: Task = "classification"
    else:
        task = reference.task or prediction_task(predictions)
        if task == "classification":
            raise ReferenceError(
                f"holdout {uri} has no probability columns ('modelloop.probability[<class>]'): the model "
                "predicts classes, and estimating a classifier's performance needs its class probabilities"
            )
        for name, values in ((HOLDOUT_LABEL_COLUMN, labels), (HOLDOUT_PREDICTION_COLUMN, predictions)):
            if any(_number(value) is None for value in values):
                raise ReferenceError(
                    f"holdout {uri}: the model is a regressor, but '{name}' has values that are not "
                    "finite numbers"
                )
    return Holdout(
        uri=uri,
        features=features,
        labels=labels,
        predictions=predictions,
        probabilities=probabilities,
        classes=classes,
        task=task,
        feature_names=reference.features,
        categorical=tuple(sorted(reference.categorical)),
    )


def build_estimator(
    holdout: Holdout, *, confidence: float = 0.95, min_rows: int = 30
) -> PerformanceEstimator:
    """The estimator of ``holdout``'s model, calibrated on it (well under a second for 10,000 rows).

    ``confidence`` is the coverage the bands aim at; windows with fewer than ``min_rows`` usable rows are
    not estimated.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, not {min_rows}")
    if holdout.rows < MIN_HOLDOUT_ROWS:
        raise ReferenceError(f"holdout {holdout.uri} has {holdout.rows} rows; at least {MIN_HOLDOUT_ROWS}")
    if holdout.task == "classification":
        return ConfidenceEstimator(holdout, confidence=confidence, min_rows=min_rows)
    return LossEstimator(holdout, confidence=confidence, min_rows=min_rows)


def realised_performance(
    task: Task,
    predictions: Sequence[Any] | npt.NDArray[Any],
    labels: Sequence[Any] | npt.NDArray[Any],
    classes: Sequence[str] | None,
) -> dict[str, float]:
    """The metrics an estimator estimates, computed from labels: ``accuracy`` and ``f1`` (macro F1 over the
    classes among the labels and predictions, as scikit-learn averages it) for a classifier, ``mae`` over
    the numeric pairs for a regressor; ``{}`` without pairs.

    Values are compared as the detector's feedback compares them (``1 == "1" == 1.0``); ``classes`` (the
    model's, where known) fix the order in which classes are counted, which does not change the result.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not len(labels):
        return {}
    if task == "regression":
        pairs = [(_number(p), _number(y)) for p, y in zip(predictions, labels, strict=True)]
        errors = [abs(p - y) for p, y in pairs if p is not None and y is not None]
        return {"mae": math.fsum(errors) / len(errors)} if errors else {}
    index: dict[Any, int] = {value_key(label): position for position, label in enumerate(classes or ())}
    predicted = np.fromiter((index.setdefault(value_key(p), len(index)) for p in predictions), np.intp)
    actual = np.fromiter((index.setdefault(value_key(y), len(index)) for y in labels), np.intp)
    k = len(index)
    true_positives = np.bincount(predicted[predicted == actual], minlength=k)
    predicted_count = np.bincount(predicted, minlength=k)
    actual_count = np.bincount(actual, minlength=k)
    present = (predicted_count + actual_count) > 0
    f1 = 2.0 * true_positives[present] / (predicted_count[present] + actual_count[present])
    return {"accuracy": float(np.mean(predicted == actual)), "f1": float(np.mean(f1))}


def value_key(value: Any) -> Any:
    """A value as the feedback compares it: its number where it is one, else its text."""
    number = _number(value)
    return str(value) if number is None else number


# --- confidence-based performance estimation (classifiers) ----------------------------------------------


class ConfidenceEstimator(PerformanceEstimator):
    """CBPE: accuracy and macro F1 from calibrated class probabilities.

    ``methods`` says how each map was fitted, ``platt`` or ``isotonic``: a binary model's one map (of its
    second class's probability; the first is its complement), or a multiclass model's one per class and,
    last, its top-label map. Built once; :meth:`estimate` changes nothing, and may run in several threads.
    """

    task: Task = "classification"
    metrics = ("accuracy", "f1")

    def __init__(self, holdout: Holdout, *, confidence: float = 0.95, min_rows: int = 30) -> None:
        if holdout.probabilities is None or holdout.classes is None:
            raise ValueError(f"holdout {holdout.uri} has no class probabilities")
        self.classes = holdout.classes
        self.confidence = confidence
        self.min_rows = min_rows
        self._z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        probabilities = holdout.probabilities
        index = {value_key(label): position for position, label in enumerate(self.classes)}
        actual = np.fromiter((index.get(value_key(label), -1) for label in holdout.labels), np.intp)
        rng = np.random.default_rng(_SEED)
        if len(actual) > MAX_CALIBRATION_ROWS:
            keep = np.sort(rng.choice(len(actual), MAX_CALIBRATION_ROWS, replace=False))
            probabilities, actual = probabilities[keep], actual[keep]
        k = len(self.classes)
        self._binary = k == 2
        columns = [1] if self._binary else list(range(k))
        # Row weights of the holdout itself (row 0) and of its bootstrap replicates.
        weights = np.vstack(
            [
                np.ones(len(actual)),
                rng.multinomial(len(actual), np.full(len(actual), 1 / len(actual)), _BOOTSTRAPS),
            ]
        )
        folds = rng.permutation(len(actual)) % _FOLDS
        # Each map tabulated on the logit grid, laid out (column, grid point, replicate) so that reading a
        # window's rows gathers contiguous runs of replicates.
        tables = np.empty((len(columns), _GRID, _BOOTSTRAPS + 1), dtype=np.float32)
        methods = []
        for position, column in enumerate(columns):
            scores = np.clip(_logit(probabilities[:, column]), -_LOGIT_LIMIT, _LOGIT_LIMIT)
            method, table = _calibrate(scores, actual == column, weights, folds)
            methods.append(method)
            tables[position] = table.T
        self._top_table = tables[0]
        if not self._binary:
            # The predicted class's own probability, calibrated on the rows where it was the prediction.
            top = np.max(probabilities, axis=1)
            correct = np.argmax(probabilities, axis=1) == actual
            scores = np.clip(_logit(top), -_LOGIT_LIMIT, _LOGIT_LIMIT)
            method, table = _calibrate(scores, correct, weights, folds)
            self._top_table = np.ascontiguousarray(table.T)
            methods.append(method)
        self.methods: tuple[str, ...] = tuple(methods)
        # Each map's value and slope at each grid point, one row per (column, grid point).
        self._values = tables.reshape(len(columns) * _GRID, -1)
        self._slopes = np.diff(tables, axis=1, append=tables[:, -1:]).reshape(len(columns) * _GRID, -1)
        self._top_slopes = np.diff(self._top_table, axis=0, append=self._top_table[-1:])
        self._offsets = (np.arange(len(columns)) * _GRID)[None, :]

    def estimate(
        self, features: FloatArray, probabilities: FloatArray | None, predictions: FloatArray
    ) -> list[Estimate]:
        """Expected accuracy and macro F1 of the window's rows that came with probabilities."""
        if probabilities is None:
            return []
        k = len(self.classes or ())
        if probabilities.ndim != 2 or probabilities.shape[1] != k:
            raise ValueError(f"probabilities must have {k} columns (the classes {list(self.classes or ())})")
        served = probabilities[np.isfinite(probabilities).all(axis=1)]
        rows = len(served)
        if rows < self.min_rows:
            return []
        served = np.clip(served, 0.0, 1.0)
        predicted = np.argmax(served, axis=1)
        calibrated = self._calibrated(served, predicted)  # (rows, k, replicates)
        chosen = calibrated[np.arange(rows), predicted]  # (rows, replicates)
        accuracy = chosen.mean(axis=0, dtype=np.float64)
        onehot = np.zeros((rows, k), dtype=np.float32)
        onehot[np.arange(rows), predicted] = 1.0
        f1, f1_variance = _expected_f1(calibrated, onehot)
        correct = chosen[:, 0].astype(np.float64)
        accuracy_variance = float(np.sum(correct * (1.0 - correct))) / rows**2
        return [
            self._band("accuracy", accuracy, accuracy_variance, rows),
            self._band("f1", f1, f1_variance, rows),
        ]

    def _calibrated(self, served: FloatArray, predicted: IntArray) -> npt.NDArray[np.float32]:
        """Each row's calibrated class probabilities under the holdout's and every replicate's maps."""
        # Read off the tabulated maps by linear interpolation in logit space.
        scores = served[:, 1:2] if self._binary else served
        position = (np.clip(_logit(scores), -_LOGIT_LIMIT, _LOGIT_LIMIT) + _LOGIT_LIMIT) * (
            (_GRID - 1) / (2 * _LOGIT_LIMIT)
        )
        low = np.minimum(position.astype(np.intp), _GRID - 2)
        fraction = (position - low).astype(np.float32)
        cells = self._offsets + low
        values: npt.NDArray[np.float32] = np.take(self._values, cells, axis=0)
        values += np.take(self._slopes, cells, axis=0) * fraction[:, :, None]
        if self._binary:
            return np.concatenate([1 - values, values], axis=1)
        # The predicted class takes its top-label calibrated probability (what accuracy needs); the other
        # classes share the rest in proportion to their one-vs-rest calibrated ones. Renormalising the
        # one-vs-rest row alone underestimates accuracy: a class's calibration at p = 0.4 mixes the rows
        # where it was predicted with those where it was not, and every class's small probabilities are
        # raised for all rows alike (its errors gathered on a few hard rows) at the predicted one's cost.
        rows = np.arange(len(served))
        low, fraction = low[rows, predicted], fraction[rows, predicted]
        chosen = self._top_table[low] + self._top_slopes[low] * fraction[:, None]
        values[rows, predicted] = 0.0
        others = values.sum(axis=1)  # (rows, replicates)
        spare = 1 - chosen
        share = np.divide(spare, others, out=np.zeros_like(spare), where=others > 0)
        values *= share[:, None, :]
        if not np.all(others > 0):  # every other class calibrated to 0: they share the rest equally
            values += np.where(others > 0, 0, spare / (values.shape[1] - 1))[:, None, :]
        values[rows, predicted] = chosen
        return values

    def _band(self, metric: str, values: FloatArray, sampling_variance: float, rows: int) -> Estimate:
        value = float(values[0])
        calibration_variance = float(np.mean((values[1:] - value) ** 2))
        # Half a row's worth on each side: the realised metric moves in steps of about 1/rows.
        half = self._z * math.sqrt(sampling_variance + calibration_variance) + 0.5 / rows
        return Estimate(metric, value, max(0.0, value - half), min(1.0, value + half), rows)


def _expected_f1(
    calibrated: npt.NDArray[np.float32], onehot: npt.NDArray[np.float32]
) -> tuple[FloatArray, float]:
    """Each replicate's expected macro F1 from ``(rows, k, replicates)`` calibrated probabilities, and the
    sampling variance of the realised one (under the holdout's own calibration, replicate 0)."""
    predicted_count = onehot.sum(axis=0, dtype=np.float64)[:, None]  # (k, 1)
    true_positives = np.einsum("nkr,nk->kr", calibrated, onehot, dtype=np.float64)
    actual_count = calibrated.sum(axis=0, dtype=np.float64)  # (k, replicates)
    denominator = predicted_count + actual_count
    per_class = 2.0 * true_positives / denominator
    # A class counts in the realised macro F1 when it is predicted or occurs: the first is known, the
    # second is likely (1 - the chance that no row is of that class).
    holdout = calibrated[:, :, 0].astype(np.float64)
    absent = np.exp(np.sum(np.log1p(-np.minimum(holdout, 1 - 1e-9)), axis=0))
    counted = float(np.sum(np.where(predicted_count[:, 0] > 0, 1.0, 1.0 - absent)))
    f1: FloatArray = per_class.sum(axis=0) / counted
    # Delta method: the realised F1 as a sum over rows of a function of each row's (random) class.
    slope_tp = 2.0 / (denominator[:, 0] * counted)
    slope_actual = -2.0 * true_positives[:, 0] / (denominator[:, 0] ** 2 * counted)
    gradient = slope_actual[None, :] + slope_tp[None, :] * onehot
    variance = float(np.sum(np.sum(holdout * gradient**2, axis=1) - np.sum(holdout * gradient, axis=1) ** 2))
    return f1, max(variance, 0.0)


def _calibrate(
    scores: FloatArray, positive: npt.NDArray[np.bool_], weights: FloatArray, folds: IntArray
) -> tuple[str, npt.NDArray[np.float32]]:
    """One class's calibration map tabulated on the logit grid, for the holdout and each replicate.

    Platt scaling below :data:`ISOTONIC_MIN_ROWS` holdout rows; from there on, Platt scaling or isotonic
    regression, whichever has the lower cross-validated Brier score.
    """
    bins, centres = _bins(scores)
    method = "platt"
    if len(scores) >= ISOTONIC_MIN_ROWS:
        brier = {"platt": 0.0, "isotonic": 0.0}
        for fold in range(_FOLDS):
            held = folds == fold
            positives, totals = _bin_counts(bins, positive, (~held).astype(np.float64)[None, :], len(centres))
            outcome = positive[held].astype(np.float64)
            for candidate in brier:
                fitted = _fit_maps(candidate, centres, positives, totals)[0]
                brier[candidate] += float(np.sum((np.interp(scores[held], _LOGITS, fitted) - outcome) ** 2))
        method = min(brier, key=lambda name: brier[name])
    positives, totals = _bin_counts(bins, positive, weights, len(centres))
    table = np.empty((len(weights), _GRID), dtype=np.float32)
    table[0] = _fit_maps(method, centres, positives[:1], totals[:1])[0]
    # The replicates by isotonic regression, which assumes nothing of the map's shape: their spread around
    # the estimate is the calibration's sampling noise and, where Platt scaling's two parameters cannot
    # follow the holdout, its misfit.
    table[1:] = _fit_maps("isotonic", centres, positives[1:], totals[1:])
    return method, table


_LOGITS = np.linspace(-_LOGIT_LIMIT, _LOGIT_LIMIT, _GRID)


def _bins(scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """Rows pooled into at most :data:`_FIT_BINS` quantile bins of their score, and each bin's mean score."""
    edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, _FIT_BINS + 1)[1:-1]))
    bins = np.searchsorted(edges, scores, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    sums = np.bincount(bins, weights=scores, minlength=len(edges) + 1)
    occupied = counts > 0
    remap = np.cumsum(occupied) - 1
    return remap[bins].astype(np.intp), sums[occupied] / counts[occupied]


def _bin_counts(
    bins: IntArray, positive: npt.NDArray[np.bool_], weights: FloatArray, count: int
) -> tuple[FloatArray, FloatArray]:
    """Each weighting's (row of ``weights``) weight of positive rows and of all rows in each bin."""
    offsets = (np.arange(len(weights)) * count)[:, None] + bins[None, :]
    size = len(weights) * count
    totals = np.bincount(offsets.ravel(), weights=weights.ravel(), minlength=size)
    positives = np.bincount(offsets.ravel(), weights=(weights * positive[None, :]).ravel(), minlength=size)
    shape = (len(weights), count)
    return positives.reshape(shape).astype(np.float64), totals.reshape(shape).astype(np.float64)


def _fit_maps(method: str, centres: FloatArray, positives: FloatArray, totals: FloatArray) -> FloatArray:
    """Calibration maps fitted to each row of binned counts, tabulated on the logit grid."""
    if method == "none":
        return np.broadcast_to(_sigmoid(_LOGITS), (len(totals), _GRID))
    if method == "platt":
        slope, intercept = _platt(centres, positives, totals)
        return _sigmoid(slope[:, None] * _LOGITS[None, :] + intercept[:, None])
    maps = np.empty((len(totals), _GRID))
    for replicate in range(len(totals)):
        occupied = totals[replicate] > 0
        fitted = isotonic_regression(
            positives[replicate, occupied] / totals[replicate, occupied],
            sample_weight=totals[replicate, occupied],
            y_min=0.0,
            y_max=1.0,
        )
        maps[replicate] = np.interp(_LOGITS, centres[occupied], fitted)
    return maps


def _platt(centres: FloatArray, positives: FloatArray, totals: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Platt scaling, ``p = sigmoid(a * logit + b)``, fitted to each row of binned counts at once.

    A logistic regression of the outcome on the score's logit (what scikit-learn's ``LogisticRegression``
    fits), by Newton's method on all rows together, with a small penalty ``((a - 1)^2 + b^2)`` (weight
    :data:`_PLATT_PRIOR` / 2) that pulls it toward the model's own probabilities: it keeps the fit finite
    when the scores separate the classes, as they may on a small holdout.
    """
    slope = np.ones(len(totals))
    intercept = np.zeros(len(totals))
    for _ in range(100):
        predicted = _sigmoid(slope[:, None] * centres[None, :] + intercept[:, None])
        residual = totals * predicted - positives
        grad_slope = residual @ centres + _PLATT_PRIOR * (slope - 1.0)
        grad_intercept = residual.sum(axis=1) + _PLATT_PRIOR * intercept
        curvature = totals * predicted * (1 - predicted)
        h_ss = curvature @ (centres * centres) + _PLATT_PRIOR
        h_si = curvature @ centres
        h_ii = curvature.sum(axis=1) + _PLATT_PRIOR
        determinant = h_ss * h_ii - h_si * h_si
        step_slope = (h_ii * grad_slope - h_si * grad_intercept) / determinant
        step_intercept = (h_ss * grad_intercept - h_si * grad_slope) / determinant
        # Damped: a full Newton step from far away can overshoot the minimum.
        largest = np.maximum(np.abs(step_slope), np.abs(step_intercept))
        scale = np.minimum(1.0, 2.0 / np.maximum(largest, 1e-12))
        slope -= scale * step_slope
        intercept -= scale * step_intercept
        if float(np.max(largest)) < 1e-9:
            break
    return slope, intercept


def _logit(probabilities: FloatArray) -> FloatArray:
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)  # type: ignore[no-any-return]


def _sigmoid(values: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))  # type: ignore[no-any-return]


# --- direct loss estimation (regressors) -----------------------------------------------------------------


@dataclass(frozen=True)
class _Basis:
    """Piecewise-linear functions of each numeric column, indicators of each categorical one's most
    frequent values: the loss model's design, computed for a whole window at once."""

    numeric: IntArray
    knots: FloatArray  # (numeric columns, knots), padded with +inf
    last: IntArray  # each numeric column's last real knot
    keep: npt.NDArray[np.bool_]  # which (column, knot) hat functions are columns of the design
    categorical: IntArray
    categories: FloatArray  # (categorical columns, _TOP_CATEGORIES), padded with NaN
    fill: FloatArray = field(repr=False)  # each column's holdout median, for a window's missing values

    @classmethod
    def learn(cls, table: FloatArray, categorical: Sequence[int]) -> _Basis:
        numeric = np.array([c for c in range(table.shape[1]) if c not in set(categorical)], dtype=np.intp)
        # The prediction (the table's last column) says most about the error: it gets _KNOTS pieces. A
        # feature gets one per _ROWS_PER_PIECE rows per column, at most _KNOTS (and fewer when the columns
        # are many): a small holdout fits a straight line of each feature.
        width = max(1, len(numeric))
        feature_pieces = int(np.clip(len(table) // (_ROWS_PER_PIECE * width), 1, _KNOTS))
        feature_pieces = max(1, min(feature_pieces, _MAX_BASIS // width))
        pieces = max(feature_pieces, _KNOTS)
        knots = np.full((len(numeric), pieces + 1), np.inf)
        last = np.zeros(len(numeric), dtype=np.intp)
        for position, column in enumerate(numeric):
            count = _KNOTS if column == table.shape[1] - 1 else feature_pieces
            unique = np.unique(np.quantile(table[:, column], np.linspace(0.0, 1.0, count + 1)))
            knots[position, : len(unique)] = unique
            last[position] = len(unique) - 1
        # The first hat function of each column is the intercept less the others: left out.
        keep = (np.arange(pieces + 1)[None, :] >= 1) & (np.arange(pieces + 1)[None, :] <= last[:, None])
        categorical_columns = np.array(sorted(categorical), dtype=np.intp)
        categories = np.full((len(categorical_columns), _TOP_CATEGORIES), np.nan)
        for position, column in enumerate(categorical_columns):
            values, counts = np.unique(table[:, column], return_counts=True)
            top = values[np.argsort(-counts, kind="stable")][:_TOP_CATEGORIES]
            categories[position, : len(top)] = top
        return cls(numeric, knots, last, keep, categorical_columns, categories, np.median(table, axis=0))

    def design(self, table: FloatArray) -> FloatArray:
        table = np.where(np.isnan(table), self.fill[None, :], table)
        rows = len(table)
        values = table[:, self.numeric]
        lowest = self.knots[:, 0]
        highest = np.take_along_axis(self.knots, self.last[:, None], axis=1)[:, 0]
        values = np.clip(values, lowest[None, :], highest[None, :])
        piece = np.minimum(
            (values[:, :, None] >= self.knots[None, :, 1:]).sum(axis=2), np.maximum(self.last - 1, 0)
        )
        left = np.take_along_axis(self.knots[None, :, :], piece[:, :, None], axis=2)[:, :, 0]
        right = np.take_along_axis(
            self.knots[None, :, :], np.minimum(piece + 1, self.last)[:, :, None], axis=2
        )[:, :, 0]
        width = np.where(right > left, right - left, 1.0)
        fraction = np.where(right > left, (values - left) / width, 0.0)
        hats = np.zeros((rows, len(self.numeric), self.knots.shape[1]))
        np.put_along_axis(hats, piece[:, :, None], (1 - fraction)[:, :, None], axis=2)
        np.put_along_axis(hats, np.minimum(piece + 1, self.last)[:, :, None], fraction[:, :, None], axis=2)
        numeric = hats[:, self.keep]
        indicators = (table[:, self.categorical, None] == self.categories[None, :, :]).reshape(rows, -1)
        return np.hstack([numeric, indicators.astype(np.float64)])


class LossEstimator(PerformanceEstimator):
    """DLE: a regressor's mean absolute error from a model of its absolute error on the holdout.

    ``alpha`` is the loss model's ridge penalty, ``holdout_mae`` the holdout's own MAE. Built once;
    :meth:`estimate` changes nothing, and may run in several threads.
    """

    task: Task = "regression"
    metrics = ("mae",)
    classes = None

    def __init__(self, holdout: Holdout, *, confidence: float = 0.95, min_rows: int = 30) -> None:
        self.confidence = confidence
        self.min_rows = min_rows
        self._z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        predictions = np.asarray([_number(value) for value in holdout.predictions], dtype=np.float64)
        labels = np.asarray([_number(value) for value in holdout.labels], dtype=np.float64)
        table = np.column_stack([holdout.features, predictions])
        loss = np.abs(labels - predictions)
        rng = np.random.default_rng(_SEED)
        if len(loss) > MAX_CALIBRATION_ROWS:
            keep = np.sort(rng.choice(len(loss), MAX_CALIBRATION_ROWS, replace=False))
            table, loss = table[keep], loss[keep]
        self._width = holdout.features.shape[1]
        self._basis = _Basis.learn(table, holdout.categorical)
        design = self._basis.design(table)
        alpha = float(RidgeCV(alphas=_RIDGE_ALPHAS).fit(design, loss).alpha_)
        folds = rng.permutation(len(loss)) % _FOLDS
        out_of_fold = np.empty(len(loss))
        coefficients = [Ridge(alpha=alpha).fit(design, loss)]
        for fold in range(_FOLDS):
            held = folds == fold
            model = Ridge(alpha=alpha).fit(design[~held], loss[~held])
            coefficients.append(model)
            out_of_fold[held] = model.predict(design[held])
        self._weights = np.column_stack([model.coef_ for model in coefficients])
        self._intercepts = np.array([model.intercept_ for model in coefficients])
        out_of_fold = np.maximum(out_of_fold, 0.0)
        # The realised error of a row scatters around its predicted error in proportion to it.
        self._scatter = float(np.sum((loss - out_of_fold) ** 2) / max(np.sum(out_of_fold**2), 1e-300))
        self.alpha = alpha
        self.holdout_mae = float(loss.mean())

    def estimate(
        self, features: FloatArray, probabilities: FloatArray | None, predictions: FloatArray
    ) -> list[Estimate]:
        """The expected mean absolute error of the window's rows with a numeric prediction."""
        if features.ndim != 2 or features.shape[1] != self._width:
            raise ValueError(f"features must have {self._width} columns")
        if len(predictions) != len(features):
            raise ValueError(f"{len(features)} rows but {len(predictions)} predictions")
        usable = np.isfinite(predictions)
        rows = int(usable.sum())
        if rows < self.min_rows:
            return []
        table = np.column_stack([features[usable], predictions[usable]])
        expected = np.maximum(self._basis.design(table) @ self._weights + self._intercepts[None, :], 0.0)
        means = expected.mean(axis=0)
        value = float(means[0])
        folds = means[1:]
        model_variance = (len(folds) - 1) / len(folds) * float(np.sum((folds - folds.mean()) ** 2))
        sampling_variance = self._scatter * float(np.sum(expected[:, 0] ** 2)) / rows**2
        half = self._z * math.sqrt(model_variance + sampling_variance)
        return [Estimate("mae", value, max(0.0, value - half), value + half, rows)]


# --- reading the holdout ---------------------------------------------------------------------------------


def _holdout_features(uri: str, frame: pd.DataFrame, reference: Reference) -> FloatArray:
    rows = np.empty((len(frame), reference.width), dtype=np.float64)
    for index, name in enumerate(reference.features):
        column = frame[name]
        if column.isna().any():
            raise ReferenceError(f"holdout {uri}: feature {name!r} has empty or NaN values")
        if index in reference.categorical:
            rows[:, index] = reference.categorical[index].encode(column.to_numpy(dtype=object))
            continue
        if not pd.api.types.is_numeric_dtype(column):
            raise ReferenceError(f"holdout {uri}: feature {name!r} is numeric in the reference but not here")
        rows[:, index] = column.to_numpy(dtype=np.float64)
        if not np.isfinite(rows[:, index]).all():
            raise ReferenceError(f"holdout {uri}: feature {name!r} has infinite values")
    return rows


def _values(uri: str, frame: pd.DataFrame, name: str) -> ObjectArray:
    column = frame[name]
    if column.isna().any():
        raise ReferenceError(f"holdout {uri}: '{name}' has empty or NaN values")
    return np.asarray(column.to_numpy(dtype=object), dtype=object)


def _holdout_probabilities(
    uri: str, frame: pd.DataFrame, columns: list[str], classes: tuple[str, ...]
) -> FloatArray:
    if len(columns) < 2:
        raise ReferenceError(
            f"holdout {uri} has one probability column; a classifier has at least two classes"
        )
    if len({value_key(label) for label in classes}) < len(classes):
        raise ReferenceError(
            f"holdout {uri}: two probability columns name the same class {_names(list(classes))}"
        )
    for name in columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            raise ReferenceError(f"holdout {uri}: '{name}' has values that are not numbers")
    values: FloatArray = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all():
        raise ReferenceError(f"holdout {uri}: probability columns have empty, NaN or infinite values")
    if values.min() < -1e-9 or values.max() > 1 + 1e-9:
        raise ReferenceError(f"holdout {uri}: probabilities must lie in [0, 1]")
    off = np.abs(values.sum(axis=1) - 1.0) > PROBABILITY_TOLERANCE
    if off.any():
        raise ReferenceError(
            f"holdout {uri}: the probabilities of {int(off.sum())} rows do not sum to 1 "
            f"(first: row {int(np.argmax(off)) + 1})"
        )
    return np.clip(values, 0.0, 1.0)


def _names(names: list[str], shown: int = 5, length: int = 40) -> str:
    """A short list of column names for a message: at most ``shown``, each at most ``length`` characters."""
    text = [name if len(name) <= length else name[: length - 1] + "…" for name in names[:shown]]
    return str(text) + (f" and {len(names) - shown} more" if len(names) > shown else "")
