"""Sweeps: the trials, how many run at once, and the winner."""

from __future__ import annotations

from typing import Any

from modelloop.api import ObjectiveDirection, Sweep, TrainingRunPhase
from modelloop.training.sweep import TrialState, best_trial, plan_trials, trials_to_start


def sweep(**overrides: Any) -> Sweep:
    raw: dict[str, Any] = {
        "parameters": {"n_estimators": [10, 50], "max_depth": [2, 4, 8]},
        "objective": {"metric": "accuracy"},
        **overrides,
    }
    return Sweep.model_validate(raw)


def test_grid_takes_every_combination_in_order_last_parameter_fastest() -> None:
    plan = plan_trials(sweep())
    assert [t.params for t in plan] == [
        {"n_estimators": 10, "max_depth": 2},
        {"n_estimators": 10, "max_depth": 4},
        {"n_estimators": 10, "max_depth": 8},
        {"n_estimators": 50, "max_depth": 2},
        {"n_estimators": 50, "max_depth": 4},
        {"n_estimators": 50, "max_depth": 8},
    ]
    assert [t.index for t in plan] == list(range(6))


def test_grid_stops_at_max_trials() -> None:
    assert len(plan_trials(sweep(maxTrials=4))) == 4


def test_random_samples_distinct_combinations_reproducibly() -> None:
    random_sweep = sweep(strategy="Random", maxTrials=4)

    first = plan_trials(random_sweep, seed=7)

    assert len(first) == 4
    assert len({tuple(sorted(t.params.items())) for t in first}) == 4
    assert [t.params for t in plan_trials(random_sweep, seed=7)] == [t.params for t in first]
    assert [t.params for t in plan_trials(random_sweep, seed=8)] != [t.params for t in first]


def test_no_more_trials_start_than_parallelism_allows() -> None:
    plan = plan_trials(sweep())
    assert [t.index for t in trials_to_start(plan, [], parallelism=2)] == [0, 1]

    running = [TrialState(0, True, TrainingRunPhase.RUNNING), TrialState(1, True, TrainingRunPhase.PENDING)]
    assert trials_to_start(plan, running, parallelism=2) == []

    one_done = [
        TrialState(0, True, TrainingRunPhase.SUCCEEDED),
        TrialState(1, True, TrainingRunPhase.RUNNING),
    ]
    assert [t.index for t in trials_to_start(plan, one_done, parallelism=2)] == [2]


def test_best_trial_by_direction_ignoring_failures_and_ties_to_the_lowest_index() -> None:
    states = [
        TrialState(0, True, TrainingRunPhase.SUCCEEDED, {"accuracy": 0.9, "loss": 0.3}),
        TrialState(1, True, TrainingRunPhase.FAILED, {"accuracy": 0.99}),
        TrialState(2, True, TrainingRunPhase.SUCCEEDED, {"accuracy": 0.95, "loss": 0.2}),
        TrialState(3, True, TrainingRunPhase.SUCCEEDED, {"accuracy": 0.95, "loss": 0.4}),
    ]
    best = best_trial(states, "accuracy", ObjectiveDirection.MAXIMIZE)
    assert best is not None and best.index == 2
    lowest = best_trial(states, "loss", ObjectiveDirection.MINIMIZE)
    assert lowest is not None and lowest.index == 2
    assert best_trial(states, "missing", ObjectiveDirection.MAXIMIZE) is None
