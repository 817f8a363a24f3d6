"""How well, how soon and how cheaply the drift detector estimates a model's performance without labels.

    .venvs/detector/bin/python bench/estimation_quality.py [--splits 10] [--windows 20] [--seed 0]

Real data and real models: scikit-learn's bundled datasets (breast_cancer, digits, diabetes; nothing is
downloaded), each split at random into 40% training rows, 30% holdout (what the trainer writes as
``holdout.csv``, given to :func:`~modelloop_detector.estimation.build_estimator`) and 30% served rows,
whose labels are held back. A shift re-samples the served rows so that the model's hard rows are frequent
(the smallest margin between its two most probable classes; for a regressor, its highest predictions):
a covariate shift that keeps ``P(y | x)``. Shifts: none, small, medium and large put 0%, 25%, 50% and 75%
of a window's rows among the hardest 40% of the served rows.

1. Estimate against realised value, window by window (``--splits`` random splits times ``--windows``
   windows per shift): the mean absolute error of the estimated accuracy (MAE for regressors) against the
   accuracy its labels then give, their mean bias, and how often the realised value falls in the 95% band
   (the target is 90% or more), with the band's mean half-width. ``cover by split`` is the lowest and
   highest coverage of a single split: windows of one split share its holdout, so their errors move
   together.
2. Time to a confirmed breach: a stream of served rows (30 rows/s), unshifted for its first 3,000 rows,
   then only the hardest 40%. Every 50 rows the last 200 are judged, and a breach is confirmed when the
   value is below the threshold (the holdout's accuracy less 2.5 points) for 3 evaluations in a row; the
   estimate's value and its band's upper bound against the same rule on labels: of every row at once (an
   oracle), of every row an hour late (``--label-delay``), and of 10% of the rows (the last 200 labelled
   rows judged) an hour late. Also the evaluations before the shift that confirmed a false breach.
3. Cost: building an estimator from a 10,000-row holdout, and estimating a 1,000-row window (median of
   200), for a binary and a ten-class classifier and a regressor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# The detector's source, for a machine where the package is not installed; in .venvs/detector it is the
# same code as the installed (editable) package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes" / "detector" / "src"))

from modelloop_detector.estimation import (
    Holdout,
    PerformanceEstimator,
    build_estimator,
    realised_performance,
)

SHIFTS = {"none": 0.0, "small": 0.25, "medium": 0.5, "large": 0.75}
HARD_FRACTION = 0.4
RATE = 30.0  # served rows per second in the stream
EVERY, LAST, CONFIRM = 50, 200, 3  # the breach rule: every 50 rows judge the last 200, 3 in a row
BEFORE, AFTER = 3_000, 6_000  # stream rows before and after the shift
LABELLED = 0.1  # the fraction of rows that get a label, in the sparse-label rule
MARGIN = 0.025  # the threshold: the holdout's accuracy less this


@dataclass
class Split:
    """One random split of a dataset: the estimator built from its holdout, and the served rows."""

    estimator: PerformanceEstimator
    holdout_rows: int
    holdout_accuracy: float
    features: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray | None
    hard: np.ndarray  # indices of the hardest HARD_FRACTION of the served rows
    classes: tuple[str, ...] | None


@dataclass
class Case:
    name: str
    load: Callable[[], Any]
    model: Callable[[int], Any]
    window: int
    classifier: bool = True


CASES = [
    Case("breast_cancer LR", load_breast_cancer, lambda seed: scaled_logistic(), 60),
    Case(
        "breast_cancer GB", load_breast_cancer, lambda seed: GradientBoostingClassifier(random_state=seed), 60
    ),
    Case("digits LR", load_digits, lambda seed: scaled_logistic(), 150),
    Case(
        "digits RF", load_digits, lambda seed: RandomForestClassifier(100, random_state=seed, n_jobs=1), 150
    ),
    Case("diabetes Ridge", load_diabetes, lambda seed: Ridge(alpha=0.1), 50, classifier=False),
    Case("diabetes GB", load_diabetes, lambda seed: GradientBoostingRegressor(random_state=seed), 50, False),
]


def scaled_logistic() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def split(case: Case, seed: int) -> Split:
    data = case.load()
    features, labels = data.data, data.target
    stratify = labels if case.classifier else None
    train_x, rest_x, train_y, rest_y = train_test_split(
        features, labels, train_size=0.4, random_state=seed, stratify=stratify
    )
    holdout_x, pool_x, holdout_y, pool_y = train_test_split(
        rest_x, rest_y, train_size=0.5, random_state=seed, stratify=rest_y if case.classifier else None
    )
    model = case.model(seed).fit(train_x, train_y)
    holdout_predictions = model.predict(holdout_x)
    probabilities = pool_probabilities = classes = None
    if case.classifier:
        probabilities = model.predict_proba(holdout_x)
        pool_probabilities = model.predict_proba(pool_x)
        classes = tuple(str(label) for label in model.classes_)
        top = np.sort(pool_probabilities, axis=1)
        order = np.argsort(top[:, -1] - top[:, -2], kind="stable")
        holdout_accuracy = float(np.mean(holdout_predictions == holdout_y))
    else:
        order = np.argsort(-model.predict(pool_x), kind="stable")
        holdout_accuracy = float("nan")
    # The holdout as load_holdout lays out the trainer's holdout.csv.
    holdout = Holdout(
        uri=f"memory://{case.name}/{seed}",
        features=holdout_x,
        labels=holdout_y.astype(object),
        predictions=holdout_predictions.astype(object),
        probabilities=probabilities,
        classes=classes,
        task="classification" if case.classifier else "regression",
    )
    return Split(
        estimator=build_estimator(holdout, min_rows=20),
        holdout_rows=len(holdout_y),
        holdout_accuracy=holdout_accuracy,
        features=pool_x,
        labels=pool_y,
        predictions=model.predict(pool_x),
        probabilities=pool_probabilities,
        hard=order[: int(HARD_FRACTION * len(order))],
        classes=classes,
    )


def window_rows(rng: np.random.Generator, served: Split, size: int, mix: float) -> np.ndarray:
    shifted = round(mix * size)
    return np.concatenate(
        [
            rng.choice(served.hard, shifted, replace=False),
            rng.choice(len(served.labels), size - shifted, replace=False),
        ]
    )


def estimate(served: Split, rows: np.ndarray) -> tuple[float, float, float]:
    probabilities = None if served.probabilities is None else served.probabilities[rows]
    predictions = served.predictions[rows].astype(np.float64)
    first = served.estimator.estimate(served.features[rows], probabilities, predictions)[0]
    return first.value, first.lower, first.upper


def realised(served: Split, rows: np.ndarray) -> float:
    values = realised_performance(
        served.estimator.task, served.predictions[rows], served.labels[rows], served.classes
    )
    return values["accuracy" if served.estimator.task == "classification" else "mae"]


def quality(cases: list[Case], splits: int, windows: int, seed: int) -> dict[str, list[Split]]:
    print(
        f"1. Estimate vs realised: {splits} splits x {windows} windows per shift "
        f"(accuracy for classifiers, MAE for regressors; 95% band)"
    )
    header = (
        f"{'case':<18}{'shift':<8}{'window':>7}{'realised':>10}{'estimate':>10}{'MAE':>9}{'bias':>9}"
        f"{'cover':>7}{'half-width':>12}{'cover by split':>16}"
    )
    print(header)
    built: dict[str, list[Split]] = {}
    for case in cases:
        built[case.name] = [split(case, seed + index) for index in range(splits)]
        for shift, mix in SHIFTS.items():
            rows: list[tuple[float, float, float, float]] = []
            by_split = []
            for index, served in enumerate(built[case.name]):
                rng = np.random.default_rng((seed, index, int(mix * 100)))
                mine = []
                for _ in range(windows):
                    chosen = window_rows(rng, served, case.window, mix)
                    value, lower, upper = estimate(served, chosen)
                    mine.append((value, lower, upper, realised(served, chosen)))
                rows += mine
                by_split.append(np.mean([low <= real <= high for _, low, high, real in mine]))
            table = np.array(rows)
            error = table[:, 0] - table[:, 3]
            cover = np.mean((table[:, 1] <= table[:, 3]) & (table[:, 3] <= table[:, 2]))
            digits = 3 if case.classifier else 2
            print(
                f"{case.name:<18}{shift:<8}{case.window:>7}{table[:, 3].mean():>10.{digits}f}"
                f"{table[:, 0].mean():>10.{digits}f}{np.abs(error).mean():>9.{digits + 1}f}"
                f"{error.mean():>+9.{digits + 1}f}{cover:>7.1%}"
                f"{np.mean((table[:, 2] - table[:, 1]) / 2):>12.{digits + 1}f}"
                f"{f'{min(by_split):.0%}-{max(by_split):.0%}':>16}"
            )
        first = built[case.name][0]
        methods = [
            method for served in built[case.name] for method in getattr(served.estimator, "methods", ())
        ]
        counts = ", ".join(f"{name} {methods.count(name)}" for name in sorted(set(methods)))
        alphas = sorted({float(getattr(served.estimator, "alpha", 0.0)) for served in built[case.name]})
        penalties = ", ".join(f"{alpha:.3g}" for alpha in alphas)
        what = (
            f"calibration maps, all splits: {counts}"
            if methods
            else f"ridge penalties of the loss model: {penalties}"
        )
        print(f"{'':<18}holdout {first.holdout_rows} rows; {what}")
    return built


def first_confirmed(values: np.ndarray, threshold: float, times: np.ndarray) -> float | None:
    """The time of the first evaluation that confirms a breach (CONFIRM in a row below the threshold)."""
    below = 0
    for value, at in zip(values, times, strict=True):
        below = below + 1 if value < threshold else 0
        if below >= CONFIRM:
            return float(at)
    return None


def time_to_breach(served: Split, streams: int, seed: int, delay_seconds: float) -> None:
    threshold = served.holdout_accuracy - MARGIN
    delay_rows = delay_seconds * RATE
    print(
        f"\n2. Time to a confirmed breach, digits LR: from row {BEFORE} of a stream at {RATE:.0f} rows/s, "
        f"only the hardest {HARD_FRACTION:.0%} of rows are served; every {EVERY} rows the last {LAST} "
        f"judged, {CONFIRM} in a row below "
        f"{threshold:.3f} (holdout accuracy {served.holdout_accuracy:.3f} less {MARGIN}); {streams} streams"
    )
    rules = [
        "estimate",
        "band's upper bound",
        "labels, at once",
        "labels, all, delayed",
        "labels, 10%, delayed",
    ]
    delays: dict[str, list[float]] = {rule: [] for rule in rules}
    false_alarms = dict.fromkeys(rules, 0)
    realised_before, realised_after = [], []
    for stream in range(streams):
        rng = np.random.default_rng((seed, 1000 + stream))
        before = rng.choice(len(served.labels), BEFORE)
        after = rng.choice(served.hard, AFTER)
        rows = np.concatenate([before, after])
        correct = (served.predictions[rows] == served.labels[rows]).astype(np.float64)
        realised_before.append(correct[:BEFORE].mean())
        realised_after.append(correct[BEFORE:].mean())
        labelled = np.flatnonzero(rng.random(len(rows)) < LABELLED)
        ends = np.arange(LAST, len(rows) + 1, EVERY)
        values: dict[str, list[float]] = {rule: [] for rule in rules[:4]}
        sparse, sparse_ends = [], []
        for end in ends:
            window = rows[end - LAST : end]
            value, _, upper = estimate(served, window)
            values["estimate"].append(value)
            values["band's upper bound"].append(upper)
            values["labels, at once"].append(correct[end - LAST : end].mean())
            chosen = labelled[labelled < end][-LAST:]
            if len(chosen) == LAST:
                sparse.append(correct[chosen].mean())
                sparse_ends.append(end)
        values["labels, all, delayed"] = values["labels, at once"]
        for rule in rules:
            series = np.array(sparse if rule == "labels, 10%, delayed" else values[rule])
            at = np.array(sparse_ends if rule == "labels, 10%, delayed" else ends)
            pre = at <= BEFORE
            if first_confirmed(series[pre], threshold, at[pre]) is not None:
                false_alarms[rule] += 1
            found = first_confirmed(series[~pre], threshold, at[~pre])
            if found is not None:
                # Delayed labels: the same judgement, made when the last of its labels arrived.
                delays[rule].append(found - BEFORE + (delay_rows if "delayed" in rule else 0.0))
    print(
        f"   realised accuracy {statistics.mean(realised_before):.3f} before the shift, "
        f"{statistics.mean(realised_after):.3f} after"
    )
    print(
        f"   {'rule':<24}{'median rows':>12}{'median s':>10}{'range s':>18}{'found':>8}{'false alarms':>14}"
    )
    for rule in rules:
        found = delays[rule]
        if found:
            median = statistics.median(found)
            spread = f"{min(found) / RATE:.0f}-{max(found) / RATE:.0f}"
            print(
                f"   {rule:<24}{median:>12.0f}{median / RATE:>10.0f}{spread:>18}"
                f"{len(found):>5}/{streams}{false_alarms[rule]:>11}/{streams}"
            )
        else:
            print(
                f"   {rule:<24}{'-':>12}{'-':>10}{'-':>18}{0:>5}/{streams}{false_alarms[rule]:>11}/{streams}"
            )


def cost(built: dict[str, list[Split]]) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n3. Cost on this machine ({os.cpu_count()} cores, load average {load})")
    print(f"   {'model':<18}{'classes':>8}{'build, 10k rows ms':>20}{'1,000-row window ms':>21}")
    for name in ("breast_cancer LR", "digits LR", "diabetes Ridge"):
        if name not in built:
            continue
        served = built[name][0]
        rng = np.random.default_rng(0)
        # A 10,000-row holdout of the served rows (drawn with replacement), labels known.
        rows = rng.integers(0, len(served.labels), 10_000)
        classifier = served.probabilities is not None
        holdout = Holdout(
            uri="memory://cost",
            features=served.features[rows],
            labels=served.labels[rows].astype(object),
            predictions=served.predictions[rows].astype(object),
            probabilities=None if served.probabilities is None else served.probabilities[rows],
            classes=served.classes,
            task="classification" if classifier else "regression",
        )
        started = time.perf_counter()
        estimator = build_estimator(holdout)
        built_ms = (time.perf_counter() - started) * 1000
        window = rng.integers(0, len(served.labels), 1000)
        features = served.features[window]
        probabilities = None if served.probabilities is None else served.probabilities[window]
        predictions = served.predictions[window].astype(np.float64)
        durations = []
        for _ in range(200):
            started = time.perf_counter()
            estimator.estimate(features, probabilities, predictions)
            durations.append(time.perf_counter() - started)
        classes = len(served.classes) if served.classes else "-"
        print(f"   {name:<18}{classes!s:>8}{built_ms:>20.0f}{statistics.median(durations) * 1000:>21.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--label-delay", type=float, default=3600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    built = quality(CASES, args.splits, args.windows, args.seed)
    time_to_breach(built["digits LR"][0], args.streams, args.seed, args.label_delay)
    cost(built)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
