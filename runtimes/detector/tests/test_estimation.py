"""Performance estimated before labels arrive, against the performance the labels then show.

Real data and real models only: scikit-learn's bundled datasets (nothing is downloaded), a model trained
on part of one, its holdout written as the trainer writes ``holdout.csv`` and read back through
:func:`load_holdout`, and windows drawn from the remaining rows with their labels held back. A covariate
shift is a change in which rows are drawn (more of the rows the model finds hard, or of high values of one
feature): it keeps ``P(y | x)``, the case performance estimation is meant for. Every draw has a fixed seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import (
    HOLDOUT_LABEL_COLUMN,
    HOLDOUT_PREDICTION_COLUMN,
    holdout_probability_column,
)
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from conftest import write_reference
from modelloop_detector.estimation import (
    ConfidenceEstimator,
    Estimate,
    Holdout,
    LossEstimator,
    PerformanceEstimator,
    _platt,
    build_estimator,
    load_holdout,
    realised_performance,
)
from modelloop_detector.limits import Limits, RefusalReason
from modelloop_detector.reference import ReferenceError, load_reference

# --- set-up: a served model, its holdout as the trainer writes it, and the rows it will serve -----------


def write_holdout(
    folder: Path,
    features: pd.DataFrame,
    labels: Sequence[Any],
    predictions: Sequence[Any],
    probabilities: np.ndarray | None = None,
    classes: Sequence[Any] = (),
) -> str:
    """``holdout.csv`` as the trainer writes it: features, label, prediction, one probability column per
    class; returns its file:// URI."""
    frame = features.reset_index(drop=True).copy()
    frame[HOLDOUT_LABEL_COLUMN] = list(labels)
    frame[HOLDOUT_PREDICTION_COLUMN] = list(predictions)
    if probabilities is not None:
        for index, label in enumerate(classes):
            frame[holdout_probability_column(label)] = probabilities[:, index]
    path = folder / "holdout.csv"
    frame.to_csv(path, index=False, lineterminator="\n")
    return path.as_uri()


@dataclass
class Served:
    """A model trained on part of a dataset, its estimator built from ``holdout.csv``, and the rest of the
    rows (the pool windows are drawn from), with their labels held back."""

    estimator: PerformanceEstimator
    holdout: Holdout
    features: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray | None
    hardest_first: np.ndarray
    classes: tuple[str, ...] | None


def serve(
    folder: Path,
    features: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    model: Any,
    *,
    seed: int = 0,
    min_rows: int = 20,
) -> Served:
    """Train ``model`` on 40% of the rows, write 30% as its holdout, keep 30% to serve."""
    stratify = labels if model_is_classifier(model) else None
    train_x, rest_x, train_y, rest_y = train_test_split(
        features, labels, train_size=0.4, random_state=seed, stratify=stratify
    )
    holdout_x, pool_x, holdout_y, pool_y = train_test_split(
        rest_x, rest_y, train_size=0.5, random_state=seed, stratify=rest_y if stratify is not None else None
    )
    model.fit(train_x, train_y)
    reference = load_reference(write_reference(folder, train_x[:200], list(names)))
    probabilities = pool_probabilities = None
    classes: tuple[str, ...] | None = None
    if model_is_classifier(model):
        probabilities = model.predict_proba(holdout_x)
        pool_probabilities = model.predict_proba(pool_x)
        classes = tuple(str(label) for label in model.classes_)
        top = np.sort(pool_probabilities, axis=1)
        hardest_first = np.argsort(top[:, -1] - top[:, -2], kind="stable")
    else:
        hardest_first = np.argsort(-model.predict(pool_x), kind="stable")
    uri = write_holdout(
        folder,
        pd.DataFrame(holdout_x, columns=list(names)),
        holdout_y,
        model.predict(holdout_x),
        probabilities,
        getattr(model, "classes_", ()),
    )
    holdout = load_holdout(uri, reference)
    return Served(
        estimator=build_estimator(holdout, min_rows=min_rows),
        holdout=holdout,
        features=pool_x,
        labels=pool_y,
        predictions=model.predict(pool_x),
        probabilities=pool_probabilities,
        hardest_first=hardest_first,
        classes=classes,
    )


def model_is_classifier(model: Any) -> bool:
    return hasattr(model, "predict_proba")


@dataclass
class Windows:
    """Each window's estimates and realised metrics, by metric."""

    estimates: dict[str, list[Estimate]]
    realised: dict[str, list[float]]

    def value(self, metric: str) -> float:
        return float(np.mean([estimate.value for estimate in self.estimates[metric]]))

    def truth(self, metric: str) -> float:
        return float(np.mean(self.realised[metric]))

    def error(self, metric: str) -> float:
        """The mean absolute difference between estimate and realised value, window by window."""
        pairs = zip(self.estimates[metric], self.realised[metric], strict=True)
        return float(np.mean([abs(estimate.value - real) for estimate, real in pairs]))

    def coverage(self, metric: str) -> float:
        """The fraction of windows whose realised value lies in the band."""
        pairs = zip(self.estimates[metric], self.realised[metric], strict=True)
        return float(np.mean([estimate.lower <= real <= estimate.upper for estimate, real in pairs]))


def merged(parts: Sequence[Windows]) -> Windows:
    """The windows of several splits as one set."""
    return Windows(
        {metric: [e for part in parts for e in part.estimates[metric]] for metric in parts[0].estimates},
        {metric: [r for part in parts for r in part.realised[metric]] for metric in parts[0].realised},
    )


def draw_windows(
    served: Served,
    *,
    size: int,
    count: int,
    mix: float = 0.0,
    favoured: np.ndarray | None = None,
    seed: int = 1,
) -> Windows:
    """``count`` windows of ``size`` pool rows: a fraction ``mix`` of them from the first 40% of
    ``favoured`` (default: the rows with the smallest margin, the model's hardest), the rest from all rows."""
    rng = np.random.default_rng(seed)
    order = served.hardest_first if favoured is None else favoured
    favourite = order[: int(0.4 * len(order))]
    estimates: dict[str, list[Estimate]] = {metric: [] for metric in served.estimator.metrics}
    realised: dict[str, list[float]] = {metric: [] for metric in served.estimator.metrics}
    task = served.estimator.task
    for _ in range(count):
        shifted = round(mix * size)
        rows = np.concatenate(
            [
                rng.choice(favourite, shifted, replace=False),
                rng.choice(len(served.labels), size - shifted, replace=False),
            ]
        )
        probabilities = None if served.probabilities is None else served.probabilities[rows]
        predictions = (
            served.predictions[rows].astype(np.float64) if task == "regression" else np.full(size, np.nan)
        )
        for estimate in served.estimator.estimate(served.features[rows], probabilities, predictions):
            estimates[estimate.metric].append(estimate)
        truth = realised_performance(task, served.predictions[rows], served.labels[rows], served.classes)
        for metric, value in truth.items():
            realised[metric].append(value)
    return Windows(estimates, realised)


def breast_cancer(folder: Path, model: Any | None = None, seed: int = 0) -> Served:
    data = load_breast_cancer()
    model = model or make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return serve(folder, data.data, data.target, data.feature_names, model, seed=seed)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """A logistic regression of breast_cancer."""
    return breast_cancer(tmp_path_factory.mktemp("cancer"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Served]:
    """Random forests of digits, on three splits: ten classes, probabilities far from calibrated."""
    data = load_digits()
    return [
        serve(
            tmp_path_factory.mktemp("digits"),
            data.data,
            data.target,
            data.feature_names,
            RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1),
            seed=seed,
        )
        for seed in range(3)
    ]


def diabetes(folder: Path, model: Any, *, noise: bool = False) -> Served:
    data = load_diabetes()
    features, names = data.data, list(data.feature_names)
    if noise:
        features = np.column_stack([features, np.random.default_rng(5).normal(size=len(features))])
        names.append("noise")
    return serve(folder, features, data.target, names, model)


# --- classifiers: CBPE ----------------------------------------------------------------------------------


def test_binary_estimate_is_close_to_the_realised_accuracy_and_its_band_covers_it(cancer: Served) -> None:
    served = cancer
    windows = draw_windows(served, size=60, count=60)
    assert isinstance(served.estimator, ConfidenceEstimator)
    for metric in ("accuracy", "f1"):
        assert len(windows.estimates[metric]) == 60
        assert windows.error(metric) < 0.03
        assert abs(windows.value(metric) - windows.truth(metric)) < 0.015
        assert windows.coverage(metric) >= 0.9
    first = windows.estimates["accuracy"][0]
    assert first.rows == 60
    assert 0.0 <= first.lower <= first.value <= first.upper <= 1.0


def test_multiclass_estimate_follows_a_harmful_shift_towards_hard_rows(digits: list[Served]) -> None:
    # Three splits: the windows of one split share its holdout, and with it its calibration's error.
    unshifted = merged([draw_windows(served, size=150, count=30) for served in digits])
    shifted = merged([draw_windows(served, size=150, count=30, mix=0.75) for served in digits])
    # The shift is harmful: the realised accuracy drops, and the estimate with it.
    assert shifted.truth("accuracy") < unshifted.truth("accuracy") - 0.02
    assert shifted.value("accuracy") < unshifted.value("accuracy") - 0.02
    assert shifted.value("f1") < unshifted.value("f1") - 0.02
    for windows in (unshifted, shifted):
        for metric in ("accuracy", "f1"):
            assert windows.error(metric) < 0.03
            assert windows.coverage(metric) >= 0.9


def test_shift_of_a_feature_the_model_ignores_does_not_move_the_estimate(tmp_path: Path) -> None:
    data = load_breast_cancer()
    noise = np.random.default_rng(3).normal(size=len(data.target))
    features = np.column_stack([data.data, noise])
    names = [*data.feature_names, "noise"]
    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    served = serve(tmp_path, features, data.target, names, tree)
    assert tree.feature_importances_[-1] == 0.0  # the tree never splits on the noise column
    high_noise_first = np.argsort(-served.features[:, -1], kind="stable")
    unshifted = draw_windows(served, size=60, count=60)
    shifted = draw_windows(served, size=60, count=60, mix=1.0, favoured=high_noise_first)
    assert np.mean(served.features[high_noise_first[:60], -1]) > 1.0  # the noise column did shift
    assert abs(shifted.value("accuracy") - unshifted.value("accuracy")) < 0.01
    assert abs(shifted.truth("accuracy") - unshifted.truth("accuracy")) < 0.03
    assert shifted.coverage("accuracy") >= 0.9


def test_small_holdout_of_iris_is_calibrated_by_platt_scaling(tmp_path: Path) -> None:
    data = load_iris()
    model = LogisticRegression(max_iter=2000)
    served = serve(tmp_path, data.data, data.target, data.feature_names, model, min_rows=10)
    assert served.holdout.rows == 45
    assert isinstance(served.estimator, ConfidenceEstimator)
    assert set(served.estimator.methods) == {"platt"}  # far below ISOTONIC_MIN_ROWS
    windows = draw_windows(served, size=20, count=60)
    assert windows.error("accuracy") < 0.06
    assert windows.coverage("accuracy") >= 0.9


def test_wine_holdout_classes_are_the_probability_columns(tmp_path: Path) -> None:
    data = load_wine()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    served = serve(tmp_path, data.data, data.target, data.feature_names, model, min_rows=10)
    assert served.holdout.classes == ("0", "1", "2")
    assert served.estimator.classes == ("0", "1", "2")
    assert served.holdout.probabilities is not None and served.holdout.probabilities.shape == (53, 3)
    windows = draw_windows(served, size=25, count=40)
    assert windows.error("accuracy") < 0.05
    assert windows.coverage("f1") >= 0.9


def test_rows_without_probabilities_are_skipped_and_too_few_give_no_estimate(cancer: Served) -> None:
    served = cancer
    assert served.probabilities is not None
    probabilities = served.probabilities[:40].copy()
    probabilities[::2] = np.nan
    features = served.features[:40]
    no_predictions = np.full(40, np.nan)
    [accuracy, f1] = served.estimator.estimate(features, probabilities, no_predictions)  # 20 usable: enough
    assert accuracy.rows == f1.rows == 20
    assert served.estimator.estimate(features, None, no_predictions) == []
    estimates = served.estimator.estimate(features, served.probabilities[:40], no_predictions)
    assert [estimate.metric for estimate in estimates] == ["accuracy", "f1"]
    assert {estimate.rows for estimate in estimates} == {40}
    probabilities[1] = np.nan
    assert served.estimator.estimate(features, probabilities, no_predictions) == []  # 19 usable
    with pytest.raises(ValueError, match="must have 2 columns"):
        served.estimator.estimate(features, served.probabilities[:40, :1], no_predictions)


def test_predicted_class_is_the_first_of_tied_probabilities(cancer: Served) -> None:
    served = cancer
    tied = np.full((30, 2), 0.5)
    [accuracy, f1] = served.estimator.estimate(served.features[:30], tied, np.full(30, np.nan))
    # Every row predicted as class 0; with calibrated probability p of class 0, F1 of that class is
    # 2p / (1 + p) and class 1 (never predicted, likely present) counts 0.
    assert f1.value == pytest.approx(accuracy.value / (1 + accuracy.value), rel=0.05)


def test_estimates_are_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = breast_cancer(tmp_path / "a"), breast_cancer(tmp_path / "b")
    assert first.probabilities is not None
    window = first.probabilities[:50]
    assert first.estimator.estimate(first.features[:50], window, np.full(50, np.nan)) == (
        second.estimator.estimate(first.features[:50], window, np.full(50, np.nan))
    )


def test_platt_scaling_is_scikit_learns_logistic_regression_of_the_outcome_on_the_logit() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=20_000)
    outcome = rng.random(20_000) < 1 / (1 + np.exp(-(0.6 * logits - 0.4)))
    centres, inverse = np.unique(np.round(logits, 1), return_inverse=True)
    positives = np.bincount(inverse, weights=outcome, minlength=len(centres))[None, :]
    totals = np.bincount(inverse, minlength=len(centres)).astype(np.float64)[None, :]
    slope, intercept = _platt(centres, positives, totals)
    theirs = LogisticRegression(C=np.inf).fit(centres[inverse].reshape(-1, 1), outcome)
    # The pull towards the identity map weighs one row against 20,000.
    assert slope[0] == pytest.approx(theirs.coef_[0, 0], abs=2e-3)
    assert intercept[0] == pytest.approx(theirs.intercept_[0], abs=2e-3)


def test_window_of_1000_rows_is_estimated_in_milliseconds(digits: list[Served]) -> None:
    served = digits[0]
    assert served.probabilities is not None
    rows = np.random.default_rng(0).integers(0, len(served.labels), 1000)
    probabilities, features, predictions = (
        served.probabilities[rows],
        served.features[rows],
        np.full(1000, np.nan),
    )
    durations = []
    for _ in range(20):
        # CPU time, not wall time: `make test` runs this suite niced beside the e2e suite, where a wall
        # clock measures the scheduler, not the estimate.
        started = time.process_time()
        served.estimator.estimate(features, probabilities, predictions)
        durations.append(time.process_time() - started)
    # Well under 10 ms on an idle core; the bound leaves room for a busy test machine.
    assert float(np.median(durations)) < 0.03


# --- regressors: DLE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_model",
    [lambda: Ridge(alpha=0.1), lambda: GradientBoostingRegressor(random_state=0)],
    ids=["ridge", "gradient-boosting"],
)
def test_regressor_estimate_is_close_to_the_realised_mae_and_follows_a_harmful_shift(
    tmp_path: Path, make_model: Callable[[], Any]
) -> None:
    served = diabetes(tmp_path, make_model())
    assert isinstance(served.estimator, LossEstimator)
    assert served.estimator.metrics == ("mae",) and served.estimator.classes is None
    unshifted = draw_windows(served, size=50, count=60)
    # Towards the rows with the highest predictions, where this model's errors are larger.
    shifted = draw_windows(served, size=50, count=60, mix=0.8)
    assert shifted.truth("mae") > unshifted.truth("mae") + 3.0
    assert shifted.value("mae") > unshifted.value("mae") + 1.5
    # The estimate follows the shift (part of the way, from 133 holdout rows): closer to the shifted
    # windows' MAE than the unshifted estimate is.
    assert abs(shifted.value("mae") - shifted.truth("mae")) < abs(
        unshifted.value("mae") - shifted.truth("mae")
    )
    assert abs(unshifted.value("mae") - unshifted.truth("mae")) < 0.06 * unshifted.truth("mae")
    assert unshifted.coverage("mae") >= 0.95
    assert shifted.coverage("mae") >= 0.9


def test_regressor_estimate_ignores_a_shift_of_a_pure_noise_column(tmp_path: Path) -> None:
    served = diabetes(tmp_path, Ridge(alpha=0.1), noise=True)
    high_noise_first = np.argsort(-served.features[:, -1], kind="stable")
    unshifted = draw_windows(served, size=40, count=60)
    shifted = draw_windows(served, size=40, count=60, mix=1.0, favoured=high_noise_first)
    assert abs(shifted.value("mae") - unshifted.value("mae")) < 0.03 * unshifted.value("mae")
    assert shifted.coverage("mae") >= 0.9


def test_regressor_rows_without_a_prediction_are_skipped(tmp_path: Path) -> None:
    served = diabetes(tmp_path, Ridge(alpha=0.1))
    predictions = served.predictions[:30].astype(np.float64)
    features = served.features[:30].copy()
    features[0, 0] = np.nan  # a missing feature value stands in for the holdout's median
    [estimate] = served.estimator.estimate(features, None, predictions)
    assert estimate.rows == 30 and estimate.lower <= estimate.value <= estimate.upper
    predictions[:11] = np.nan
    assert served.estimator.estimate(features, None, predictions) == []
    with pytest.raises(ValueError, match="features must have 10 columns"):
        served.estimator.estimate(features[:, :5], None, predictions)


# --- reading holdout.csv --------------------------------------------------------------------------------


IRIS = load_iris()
IRIS_NAMES = list(IRIS.feature_names)


def iris_files(folder: Path, **changes: Any) -> tuple[str, Any]:
    """A reference and a holdout of an iris classifier; ``changes`` edit the holdout's frame."""
    model = LogisticRegression(max_iter=2000).fit(IRIS.data, IRIS.target)
    reference = load_reference(write_reference(folder, IRIS.data[::3], IRIS_NAMES))
    rows = IRIS.data[1::3]
    frame = pd.DataFrame(rows, columns=IRIS_NAMES)
    frame[HOLDOUT_LABEL_COLUMN] = IRIS.target[1::3]
    frame[HOLDOUT_PREDICTION_COLUMN] = model.predict(rows)
    for index, probability in enumerate(model.predict_proba(rows).T):
        frame[holdout_probability_column(index)] = probability
    for change in changes.values():
        frame = change(frame)
    path = folder / "holdout.csv"
    frame.to_csv(path, index=False, lineterminator="\n")
    return path.as_uri(), reference


def test_holdout_is_laid_out_in_the_reference_feature_order(tmp_path: Path) -> None:
    reversed_features = {"order": lambda frame: frame[[*IRIS_NAMES[::-1], *frame.columns[4:]]]}
    uri, reference = iris_files(tmp_path, **reversed_features)
    holdout = load_holdout(uri, reference)
    np.testing.assert_array_equal(holdout.features, IRIS.data[1::3])
    assert holdout.feature_names == tuple(IRIS_NAMES)
    assert holdout.classes == ("0", "1", "2") and holdout.task == "classification"
    assert list(holdout.labels) == list(IRIS.target[1::3]) and holdout.rows == 50
    assert holdout.probabilities is not None
    np.testing.assert_allclose(holdout.probabilities.sum(axis=1), 1.0)


def test_holdout_categorical_feature_takes_the_reference_codes(tmp_path: Path) -> None:
    reference_frame = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0], "colour": ["red", "blue", "red", "green"]})
    reference_frame.to_csv(tmp_path / "reference.csv", index=False)
    reference = load_reference((tmp_path / "reference.csv").as_uri())
    rng = np.random.default_rng(0)
    sizes = rng.normal(2.5, 1.0, 40)
    colours = rng.choice(["green", "red", "blue", "violet"], 40)
    predictions = rng.normal(0.0, 1.0, 40) + 0.25
    uri = write_holdout(
        tmp_path, pd.DataFrame({"colour": colours, "size": sizes}), predictions + 0.5, predictions
    )
    holdout = load_holdout(uri, reference)
    assert holdout.task == "regression" and holdout.probabilities is None and holdout.classes is None
    assert holdout.categorical == (1,)
    codes = {"red": 0.0, "blue": 1.0, "green": 2.0, "violet": 3.0}  # violet: new, as a window's would be
    np.testing.assert_array_equal(holdout.features[:, 1], [codes[colour] for colour in colours])
    estimator = build_estimator(holdout)
    [estimate] = estimator.estimate(holdout.features, None, predictions)
    assert estimate.value == pytest.approx(0.5, abs=0.05)


def drop(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda frame: frame.drop(columns=[column])


def assign(column: str, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[column] = value
        return frame

    return change


def set_cell(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy().astype({column: object})
        frame.loc[row, column] = value
        return frame

    return change


PROBABILITY_0 = holdout_probability_column(0)
PROBABILITY_1 = holdout_probability_column(1)
PROBABILITY_2 = holdout_probability_column(2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop(HOLDOUT_LABEL_COLUMN), "has no 'modelloop.label' column"),
        (drop(HOLDOUT_PREDICTION_COLUMN), "has no 'modelloop.prediction' column"),
        (
            drop("petal width (cm)"),
            r"does not have the features of reference .*: missing \['petal width \(cm\)'\]",
        ),
        (assign("colour", "red"), r"does not have the features .*: unknown \['colour'\]"),
        (lambda frame: frame.iloc[:0], "has no rows"),
        (lambda frame: frame.iloc[:9], "has 9 rows; estimating performance needs at least 10"),
        (set_cell("sepal length (cm)", 3, np.nan), "feature 'sepal length \\(cm\\)' has empty or NaN values"),
        (set_cell("sepal length (cm)", 3, np.inf), "feature 'sepal length \\(cm\\)' has infinite values"),
        (
            set_cell("sepal width (cm)", 3, "wide"),
            "feature 'sepal width \\(cm\\)' is numeric in the reference",
        ),
        (set_cell(HOLDOUT_LABEL_COLUMN, 2, np.nan), "'modelloop.label' has empty or NaN values"),
        (set_cell(HOLDOUT_PREDICTION_COLUMN, 2, np.nan), "'modelloop.prediction' has empty or NaN values"),
        (set_cell(PROBABILITY_0, 2, np.nan), "probability columns have empty, NaN or infinite values"),
        (set_cell(PROBABILITY_0, 2, "high"), r"'modelloop.probability\[0\]' has values that are not numbers"),
        (set_cell(PROBABILITY_0, 2, 1.5), r"probabilities must lie in \[0, 1\]"),
        (set_cell(PROBABILITY_0, 2, -0.2), r"probabilities must lie in \[0, 1\]"),
        (assign(PROBABILITY_0, 0.6), r"the probabilities of \d+ rows do not sum to 1 \(first: row 1\)"),
        (
            lambda frame: drop(PROBABILITY_2)(drop(PROBABILITY_1)(frame)),
            "one probability column; a classifier has at least two classes",
        ),
        (
            lambda frame: frame.rename(columns={PROBABILITY_1: holdout_probability_column("0.0")}),
            r"two probability columns name the same class \['0', '0.0', '2'\]",
        ),
        (
            assign(HOLDOUT_LABEL_COLUMN, "setosa"),
            r"no 'modelloop.label' value is one of the classes .*\['0', '1', '2'\]",
        ),
        (
            lambda frame: drop(PROBABILITY_0)(drop(PROBABILITY_1)(drop(PROBABILITY_2)(frame))),
            r"has no probability columns \('modelloop.probability\[<class>\]'\): the model predicts classes",
        ),
    ],
    ids=lambda value: "" if callable(value) else value[:40],
)
def test_unusable_holdout_is_refused_with_a_message_naming_the_problem(
    tmp_path: Path, change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    uri, reference = iris_files(tmp_path, change=change)
    with pytest.raises(ReferenceError, match=message) as refused:
        load_holdout(uri, reference)
    assert refused.value.reason is None


def test_regressor_holdout_with_a_label_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    reference = load_reference(write_reference(tmp_path, IRIS.data[:20], IRIS_NAMES))
    labels: list[Any] = list(IRIS.data[:20, 0] + 0.25)
    labels[4] = "tall"
    uri = write_holdout(
        tmp_path, pd.DataFrame(IRIS.data[:20], columns=IRIS_NAMES), labels, IRIS.data[:20, 0] + 0.1
    )
    with pytest.raises(
        ReferenceError, match=r"regressor, but 'modelloop\.label' has values that are not finite numbers"
    ):
        load_holdout(uri, reference)


def test_holdout_larger_than_the_limit_is_refused_with_its_reason(tmp_path: Path) -> None:
    uri, reference = iris_files(tmp_path)
    size = (tmp_path / "holdout.csv").stat().st_size
    with pytest.raises(ReferenceError, match=f"larger than {size - 1} bytes") as refused:
        load_holdout(uri, reference, limits=Limits(max_reference_bytes=size - 1))
    assert refused.value.reason is RefusalReason.REFERENCE_TOO_LARGE
    assert load_holdout(uri, reference, limits=Limits(max_reference_bytes=size)).rows == 50


def test_missing_or_unparsable_holdout_is_refused(tmp_path: Path) -> None:
    _, reference = iris_files(tmp_path)
    with pytest.raises(ReferenceError, match="no such file"):
        load_holdout((tmp_path / "absent.csv").as_uri(), reference)
    (tmp_path / "binary.csv").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ReferenceError, match=r"is not a CSV table|has no 'modelloop\.label' column"):
        load_holdout((tmp_path / "binary.csv").as_uri(), reference)


def test_build_estimator_checks_its_settings(tmp_path: Path) -> None:
    uri, reference = iris_files(tmp_path)
    holdout = load_holdout(uri, reference)
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        build_estimator(holdout, confidence=1.0)
    with pytest.raises(ValueError, match="min_rows must be at least 1"):
        build_estimator(holdout, min_rows=0)
    narrow = build_estimator(holdout, confidence=0.5, min_rows=10)
    wide = build_estimator(holdout, confidence=0.99, min_rows=10)
    assert holdout.probabilities is not None
    window = holdout.probabilities[:30]
    [narrow_accuracy, _] = narrow.estimate(holdout.features[:30], window, np.full(30, np.nan))
    [wide_accuracy, _] = wide.estimate(holdout.features[:30], window, np.full(30, np.nan))
    assert narrow_accuracy.value == wide_accuracy.value
    assert narrow_accuracy.upper - narrow_accuracy.lower < wide_accuracy.upper - wide_accuracy.lower


# --- realised performance -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_realised_classifier_metrics_are_scikit_learns(seed: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, classes, 200))
    ours = realised_performance(
        "classification", list(predictions), list(labels), [str(c) for c in range(classes)]
    )
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert ours["f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_realised_metrics_compare_values_as_the_feedback_does() -> None:
    labels = ["1", 0, 2.0, "cat", True, "2", 1]
    predictions = [1, "0", "2", "cat", 1.0, 0, "dog"]
    canonical_labels = ["1", "0", "2", "cat", "1", "2", "1"]
    canonical_predictions = ["1", "0", "2", "cat", "1", "0", "dog"]
    ours = realised_performance("classification", predictions, labels, None)
    assert ours["accuracy"] == pytest.approx(accuracy_score(canonical_labels, canonical_predictions))
    assert ours["f1"] == pytest.approx(f1_score(canonical_labels, canonical_predictions, average="macro"))
    assert realised_performance("classification", [], [], ("0", "1")) == {}
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        realised_performance("classification", [1, 2, 3], [1, 2], None)


def test_realised_mae_is_scikit_learns_over_the_numeric_pairs() -> None:
    rng = np.random.default_rng(0)
    labels = rng.normal(100.0, 30.0, 300)
    predictions = labels + rng.normal(0.0, 10.0, 300)
    ours = realised_performance("regression", predictions, labels, None)
    assert ours == {"mae": pytest.approx(mean_absolute_error(labels, predictions))}
    mixed = realised_performance("regression", ["1.5", 2, None, "x"], [1, "2.5", 3, 4], None)
    assert mixed == {"mae": pytest.approx(0.5)}
    assert realised_performance("regression", ["x"], [1], None) == {}
