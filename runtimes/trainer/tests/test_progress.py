"""Progress lines: their format, and one per epoch or boosting stage with the final result's metrics,
without changing the model that training builds."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.base import clone
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression

from conftest import RunTrainer
from modelloop_trainer.estimators import Task, with_imputer
from modelloop_trainer.evaluation import Split, StepScorer, evaluate, split_dataset
from modelloop_trainer.progress import (
    MAX_LINE_BYTES,
    MAX_REPORTED_STEPS,
    PROGRESS_PREFIX,
    StepFilter,
    emit_progress,
    progress_line,
)
from modelloop_trainer.stepwise import fit_with_progress
from modelloop_trainer.torch_mlp import TorchMLP, cuda_available

# The operator's parser depends on exactly this.
LINE = re.compile(r"^modelloop:progress (\{.*\})$")
Point = tuple[int, dict[str, float]]


def parse(output: str) -> list[Point]:
    """The progress lines of ``output``, checked against the format, as (step, metrics)."""
    points = []
    for line in output.splitlines():
        if not line.startswith(PROGRESS_PREFIX):
            continue
        match = LINE.match(line)
        assert match, line
        assert len(line.encode()) <= MAX_LINE_BYTES
        body = json.loads(match.group(1))
        assert set(body) == {"step", "metrics"}
        assert type(body["step"]) is int and body["step"] >= 1
        assert body["metrics"] and all(type(value) is float for value in body["metrics"].values())
        assert all(math.isfinite(value) for value in body["metrics"].values())
        points.append((body["step"], body["metrics"]))
    return points


def bundled_split(name: str, task: Task) -> Split:
    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    return split_dataset(frame, "target", task=task, test_size=0.2, seed=0)


def fit_reporting(
    estimator: Any, split: Split, task: Task, capsys: pytest.CaptureFixture[str]
) -> list[Point]:
    capsys.readouterr()
    fit_with_progress(estimator, split, task)
    captured = capsys.readouterr()
    assert PROGRESS_PREFIX not in captured.err
    return parse(captured.out)


def assert_same_metrics(reported: dict[str, float], final: dict[str, float]) -> None:
    assert set(reported) == set(final)
    for name, value in final.items():
        assert reported[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


# -- the line ------------------------------------------------------------------------------------


def test_a_line_is_the_prefix_one_space_and_compact_json_of_step_and_finite_metrics() -> None:
    line = progress_line(3, {"accuracy": 0.5, "f1_macro": np.float64(0.25), "roc_auc": float("nan")})
    assert line == 'modelloop:progress {"step":3,"metrics":{"accuracy":0.5,"f1_macro":0.25}}'
    assert json.loads(line.split(" ", 1)[1]) == {"step": 3, "metrics": {"accuracy": 0.5, "f1_macro": 0.25}}
    assert progress_line(1, {"r2": float("inf"), "rmse": float("nan")}) is None  # nothing to report
    for step in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match="integer >= 1"):
            progress_line(step, {"accuracy": 1.0})  # type: ignore[arg-type]


def test_a_line_never_exceeds_1024_bytes() -> None:
    metrics = {f"metric_{index:03d}_" + "x" * 40: 0.123456789 for index in range(40)}
    line = progress_line(7, metrics)
    assert line is not None
    assert len(line.encode()) <= MAX_LINE_BYTES
    kept = json.loads(line.split(" ", 1)[1])["metrics"]
    assert 0 < len(kept) < len(metrics)
    assert list(kept) == list(metrics)[: len(kept)]  # the first ones, in order


def test_emit_writes_one_flushed_line_and_a_broken_stream_does_not_fail_training() -> None:
    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    stream = Stream()
    assert emit_progress(2, {"accuracy": 1.0}, stream)
    assert stream.getvalue() == 'modelloop:progress {"step":2,"metrics":{"accuracy":1.0}}\n'
    assert stream.flushes == 1
    closed = io.StringIO()
    closed.close()
    assert not emit_progress(2, {"accuracy": 1.0}, closed)
    assert not emit_progress(2, {"accuracy": float("nan")}, stream)


@pytest.mark.parametrize("planned", [1, 20, 999, 1000, 1001, 1999, 2000, 2001, 2500, 10_000, 123_457])
def test_at_most_1000_steps_are_reported_and_always_the_last(planned: int) -> None:
    steps = StepFilter(planned)
    wanted = [step for step in range(1, planned + 1) if steps.wants(step)]
    assert len(wanted) <= MAX_REPORTED_STEPS
    assert wanted[-1] == planned
    if planned <= MAX_REPORTED_STEPS:
        assert wanted == list(range(1, planned + 1))
    # A run that stops early reports its actual last step too, and still stays within the bound.
    for stop in {1, planned // 3, planned - 1} - {0}:
        steps = StepFilter(planned)
        for step in range(1, stop + 1):
            if steps.wants(step):
                steps.report(step, {})
        if steps.last_missing(stop):
            steps.report(stop, {})
        assert steps.reported == stop
        assert (
            sum(1 for step in range(1, stop + 1) if StepFilter(planned).wants(step)) + 1 <= MAX_REPORTED_STEPS
        )


# -- the metrics -----------------------------------------------------------------------------------


def split_of(y_train: Any, y_test: Any) -> Split:
    y_train, y_test = pd.Series(y_train), pd.Series(y_test)
    empty = pd.DataFrame(index=range(1))
    return Split(empty, empty, y_train, y_test)


class Fixed:
    """A 'model' that predicts given values, for comparing StepScorer with evaluate()."""

    def __init__(self, predicted: Any, probabilities: Any = None) -> None:
        self.predicted, self.probabilities = np.asarray(predicted), probabilities

    def predict(self, _: Any) -> np.ndarray:
        return self.predicted

    def predict_proba(self, _: Any) -> np.ndarray:
        return np.column_stack([1 - self.probabilities, self.probabilities])


@pytest.mark.parametrize("seed", range(5))
def test_the_step_metrics_equal_evaluate_on_the_same_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.array(["setosa", "versicolor", "virginica", "unseen"])
    truth = labels[rng.integers(0, 3, 60)]
    predicted = labels[rng.integers(0, 4 if seed % 2 else 3, 60)]  # odd seeds: a label truth lacks
    split = split_of(labels[:3], truth)
    assert_same_metrics(
        StepScorer(split, "classification").score(predicted),
        evaluate(Fixed(predicted), split, "classification"),
    )

    truth = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80), 1)  # ties
    split = split_of([0, 1], truth)
    binary = StepScorer(split, "classification").score(scores > 0.5, scores)
    assert_same_metrics(binary, evaluate(Fixed(scores > 0.5, scores), split, "classification"))
    assert set(binary) == {"accuracy", "f1_macro", "roc_auc"}

    truth, predicted = rng.normal(size=50) * 10, rng.normal(size=50) * 10
    split = split_of([0.0], truth)
    assert_same_metrics(
        StepScorer(split, "regression").score(predicted), evaluate(Fixed(predicted), split, "regression")
    )
    constant = split_of([0.0], np.full(5, 2.0))
    for guess in (np.full(5, 2.0), np.full(5, 3.0)):  # r2 of a constant truth, as scikit-learn's
        assert_same_metrics(
            StepScorer(constant, "regression").score(guess), evaluate(Fixed(guess), constant, "regression")
        )


# -- TorchMLP: one line per epoch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "task", "names"),
    [
        ("iris", "classification", {"accuracy", "f1_macro"}),
        ("breast_cancer", "classification", {"accuracy", "f1_macro", "roc_auc"}),
        ("diabetes", "regression", {"r2", "rmse", "mae"}),
    ],
)
def test_torch_mlp_reports_every_epoch_and_its_last_line_is_the_final_metrics(
    capsys: pytest.CaptureFixture[str], dataset: str, task: Task, names: set[str]
) -> None:
    split = bundled_split(dataset, task)
    model = TorchMLP(task=task, hidden_sizes=[16], epochs=12, lr=0.01, batch_size=64, seed=1)
    points = fit_reporting(model, split, task, capsys)
    assert [step for step, _ in points] == list(range(1, 13))
    assert all(set(metrics) == names for _, metrics in points)
    assert_same_metrics(points[-1][1], evaluate(model, split, task))
    assert len({json.dumps(metrics) for _, metrics in points}) > 1  # it moves as the model learns


def test_reporting_changes_neither_the_weights_nor_the_random_streams_of_torch_mlp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    split = bundled_split("wine", "classification")
    reported = TorchMLP(hidden_sizes=[16], epochs=8, batch_size=32, seed=3)
    fit_reporting(reported, split, "classification", capsys)
    plain = TorchMLP(hidden_sizes=[16], epochs=8, batch_size=32, seed=3).fit(split.x_train, split.y_train)
    assert reported.loss_history_ == plain.loss_history_
    for (name, weights), (_, expected) in zip(
        reported.network_.state_dict().items(), plain.network_.state_dict().items(), strict=True
    ):
        assert weights.equal(expected), name
    np.testing.assert_array_equal(reported.predict_proba(split.x_test), plain.predict_proba(split.x_test))
    assert evaluate(reported, split, "classification") == evaluate(plain, split, "classification")


@pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")
def test_on_cuda_reporting_leaves_the_graphed_training_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    split = bundled_split("breast_cancer", "classification")
    params: dict[str, Any] = {
        "hidden_sizes": [32],
        "epochs": 10,
        "batch_size": 64,
        "seed": 2,
        "device": "cuda",
    }
    reported = TorchMLP(**params)
    points = fit_reporting(reported, split, "classification", capsys)
    plain = TorchMLP(**params).fit(split.x_train, split.y_train)
    assert reported.graph_replays_ == plain.graph_replays_ > 0
    assert reported.loss_history_ == plain.loss_history_
    np.testing.assert_array_equal(reported.predict_proba(split.x_test), plain.predict_proba(split.x_test))
    assert [step for step, _ in points] == list(range(1, 11))
    assert_same_metrics(points[-1][1], evaluate(reported, split, "classification"))


# -- gradient boosting: one line per stage, while it fits ---------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "dataset", "task"),
    [
        (GradientBoostingClassifier(n_estimators=40, random_state=0), "iris", "classification"),
        (
            GradientBoostingClassifier(n_estimators=30, subsample=0.7, max_features=0.5, random_state=1),
            "breast_cancer",
            "classification",
        ),
        (GradientBoostingRegressor(n_estimators=50, random_state=0), "diabetes", "regression"),
    ],
)
def test_gradient_boosting_reports_every_stage_as_staged_predict_sees_it(
    capsys: pytest.CaptureFixture[str], estimator: Any, dataset: str, task: Task
) -> None:
    split = bundled_split(dataset, task)
    reported = clone(estimator)
    points = fit_reporting(reported, split, task, capsys)
    assert [step for step, _ in points] == list(range(1, estimator.n_estimators + 1))
    # Each line is the model of that many stages, as staged_predict gives it after the fit.
    scorer = StepScorer(split, task)
    staged = reported.staged_predict(split.x_test)
    probabilities = reported.staged_predict_proba(split.x_test) if scorer.needs_scores else None
    for (step, metrics), predicted in zip(points, staged, strict=True):
        scores = next(probabilities)[:, 1] if probabilities is not None else None
        assert metrics == scorer.score(predicted, scores), step
    assert_same_metrics(points[-1][1], evaluate(reported, split, task))
    plain = clone(estimator).fit(split.x_train, split.y_train)
    assert evaluate(reported, split, task) == evaluate(plain, split, task)
    np.testing.assert_array_equal(reported.predict(split.x_test), plain.predict(split.x_test))


def test_gradient_boosting_stopped_by_n_iter_no_change_reports_its_last_stage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    split = bundled_split("breast_cancer", "classification")
    estimator = GradientBoostingClassifier(n_estimators=2500, n_iter_no_change=3, random_state=0)
    reported = clone(estimator)
    points = fit_reporting(reported, split, "classification", capsys)
    stages = reported.n_estimators_
    assert stages < 2500
    steps = [step for step, _ in points]
    assert steps == list(range(3, stages + 1, 3)) + ([stages] if stages % 3 else [])  # stride 3
    assert_same_metrics(points[-1][1], evaluate(reported, split, "classification"))
    assert stages == clone(estimator).fit(split.x_train, split.y_train).n_estimators_


def test_more_than_1000_stages_report_every_kth_and_the_last(capsys: pytest.CaptureFixture[str]) -> None:
    split = bundled_split("diabetes", "regression")
    model = GradientBoostingRegressor(n_estimators=1500, max_depth=1, random_state=0)
    points = fit_reporting(model, split, "regression", capsys)
    assert [step for step, _ in points] == list(range(2, 1501, 2))
    assert_same_metrics(points[-1][1], evaluate(model, split, "regression"))


def test_gradient_boosting_behind_the_imputer_reports_on_imputed_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame = datasets.load_wine(as_frame=True).frame
    frame.loc[::9, "alcohol"] = np.nan
    split = split_dataset(frame, "target", task="classification", test_size=0.25, seed=2)
    estimator = with_imputer(GradientBoostingClassifier(n_estimators=15, random_state=0))
    reported = clone(estimator)
    points = fit_reporting(reported, split, "classification", capsys)
    assert [step for step, _ in points] == list(range(1, 16))
    assert_same_metrics(points[-1][1], evaluate(reported, split, "classification"))
    plain = clone(estimator).fit(split.x_train, split.y_train)
    np.testing.assert_array_equal(reported.predict_proba(split.x_test), plain.predict_proba(split.x_test))


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=10, random_state=0),
        LogisticRegression(max_iter=1000),
        HistGradientBoostingClassifier(max_iter=10, random_state=0),
    ],
)
def test_estimators_without_reportable_steps_print_nothing(
    capsys: pytest.CaptureFixture[str], estimator: Any
) -> None:
    split = bundled_split("iris", "classification")
    assert fit_reporting(estimator, split, "classification", capsys) == []
    assert evaluate(estimator, split, "classification")["accuracy"] > 0.8


# -- through the trainer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"estimator": "TorchMLP", "hidden_sizes": [16], "epochs": 6, "batch_size": 32},
        {"estimator": "GradientBoostingClassifier", "n_estimators": 8},
    ],
)
def test_a_run_prints_progress_before_its_result_and_the_result_is_the_last_step(
    run_trainer: RunTrainer, capsys: pytest.CaptureFixture[str], params: dict[str, Any]
) -> None:
    run = run_trainer(dataset_uri="sklearn://breast_cancer", params=params, device="cpu")
    assert run.status == 0, run.result
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == run.result
    points = parse("\n".join(lines))
    planned = params.get("epochs", params.get("n_estimators"))
    assert [step for step, _ in points] == list(range(1, planned + 1))
    assert len(points) == len(lines) - 1  # nothing else on stdout
    final = {name: value for name, value in run.result["metrics"].items() if name in points[-1][1]}
    assert set(final) == {"accuracy", "f1_macro", "roc_auc"}
    assert_same_metrics(points[-1][1], final)
