"""Fitting that prints a progress line (:mod:`modelloop_trainer.progress`) after each training step.

The metrics are those of the final result, on the same held-out rows (:class:`StepScorer`), and
reporting changes nothing in the model: it is the one a plain ``fit`` builds, bit for bit.

- ``TorchMLP``: a step is an epoch; the network predicts the held-out rows after each one.
- ``GradientBoosting{Classifier,Regressor}``: a step is a boosting stage. ``fit``'s ``monitor`` is
  called after each stage *while* fitting, and advances ``staged_predict`` on the held-out rows by
  one stage (as scikit-learn's own ``n_iter_no_change`` does on its validation rows). One fit, so the
  lines come as the model trains and a trial that the operator prunes stops early; ``staged_predict``
  after the fit would print them all at the end, when there is nothing left to save.
- In a distributed launch (a TorchMLP under torchrun), only global rank 0 evaluates and prints the lines;
  the other processes only train, in step with it.
- Every other estimator is fitted in one go and prints nothing; its final metrics are in the result.
  That includes ``HistGradientBoosting``: it has no per-iteration hook, fitting it with ``warm_start``
  in chunks re-bins the data and re-predicts the training rows with every tree so far at each chunk
  (10 chunks added 150% to 270% to the fit time), and ``staged_predict`` after the fit would print the
  lines only once there is nothing left to prune.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
)
from sklearn.pipeline import Pipeline

from modelloop_trainer.distributed import DistributedLaunch
from modelloop_trainer.estimators import Task
from modelloop_trainer.evaluation import Split, StepScorer
from modelloop_trainer.progress import StepFilter
from modelloop_trainer.torch_mlp import TorchMLP

_BOOSTING = (GradientBoostingClassifier, GradientBoostingRegressor)


def fit_with_progress(
    estimator: Any, split: Split, task: Task, distributed: DistributedLaunch | None = None
) -> Any:
    """Fit ``estimator`` on the split's training rows, printing a progress line per step; returns it fitted.

    ``estimator`` is a model or a Pipeline whose last step is the model (the imputer in front). With
    ``distributed`` (a TorchMLP in one process of a torchrun launch), only the primary process (global
    rank 0) evaluates each step and prints its line; the others only train.
    """
    model = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    if distributed is not None and not distributed.is_primary:
        if not isinstance(model, TorchMLP):
            raise TypeError(f"{type(model).__name__} cannot train distributed")
        return model.fit(split.x_train, split.y_train, distributed=distributed)
    if not _has_steps(model):
        return estimator.fit(split.x_train, split.y_train)
    x_train, x_test = split.x_train, split.x_test
    if isinstance(estimator, Pipeline):
        # What Pipeline.fit does: fit the steps before the model on the training rows, in place.
        preprocessing = estimator[:-1]
        x_train = preprocessing.fit_transform(x_train, split.y_train)
        x_test = preprocessing.transform(x_test)
    scorer = StepScorer(split, task)
    if isinstance(model, TorchMLP):
        _fit_torch_mlp(model, x_train, split.y_train, x_test, scorer, distributed)
    else:
        _fit_boosting(model, x_train, split.y_train, x_test, scorer)
    return estimator


def _has_steps(model: Any) -> bool:
    """Whether ``model`` trains in steps that can be reported (a bad step count: the fit will say why)."""
    if isinstance(model, TorchMLP):
        planned = model.epochs
    elif isinstance(model, _BOOSTING):
        planned = model.n_estimators
    else:
        return False
    return isinstance(planned, int) and not isinstance(planned, bool) and planned > 0


def _fit_torch_mlp(
    model: TorchMLP,
    x: Any,
    y: Any,
    x_test: Any,
    scorer: StepScorer,
    distributed: DistributedLaunch | None,
) -> None:
    steps = StepFilter(model.epochs)
    predictors: list[Callable[[], tuple[np.ndarray, np.ndarray | None]]] = []

    def on_epoch(epoch: int) -> None:
        if not steps.wants(epoch):
            return
        if not predictors:  # the held-out rows, prepared once the fit has its preprocessing
            predictors.append(model.predictor(x_test, probabilities=scorer.needs_scores))
        predicted, probabilities = predictors[0]()
        steps.report(epoch, scorer.score(predicted, None if probabilities is None else probabilities[:, 1]))

    model.fit(x, y, on_epoch=on_epoch, distributed=distributed)


def _fit_boosting(model: Any, x: Any, y: Any, x_test: Any, scorer: StepScorer) -> None:
    steps = StepFilter(model.n_estimators)
    staged: list[Iterator[np.ndarray]] = []

    def monitor(stage: int, fitting: Any, _: Any) -> bool:
        if not staged:
            # Made once the first stage exists; each next() adds the stage just fitted.
            staged.append(fitting.staged_predict(x_test))
            if scorer.needs_scores:
                staged.append(fitting.staged_predict_proba(x_test))
        predicted = next(staged[0])
        scores = next(staged[1])[:, 1] if scorer.needs_scores else None
        if steps.wants(stage + 1):
            steps.report(stage + 1, scorer.score(predicted, scores))
        return False  # never stops the fit: the operator decides, by ending the pod

    model.fit(x, y, monitor=monitor)
    if steps.last_missing(model.n_estimators_):  # n_iter_no_change ended it between reported stages
        steps.report(model.n_estimators_, scorer.score_model(model, x_test))
