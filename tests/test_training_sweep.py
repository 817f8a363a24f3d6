"""Sweeps: the trials' parameters (grid, random, learning), the winner, and a status that stays small."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from modelloop.api import Curve, ObjectiveDirection, Sweep, Trial, TrialPhase
from modelloop.training.search import TrialRecord, judge, judge_all, suggest
from modelloop.training.sweep import (
    best_trial,
    compact_trials,
    grid_point,
    merge_curve,
    record_of,
    trial_params,
)


def sweep(**overrides: Any) -> Sweep:
    raw: dict[str, Any] = {
        "parameters": {"n_estimators": [10, 50], "max_depth": [2, 4, 8]},
        "objective": {"metric": "accuracy"},
        **overrides,
    }
    return Sweep.model_validate(raw)


def learning(strategy: str = "Bayesian", **overrides: Any) -> Sweep:
    return sweep(
        strategy=strategy,
        maxTrials=40,
        parameters={"activation": ["relu", "tanh"]},
        space={
            "lr": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
            "width": {"type": "int", "min": 8, "max": 128, "step": 8},
        },
        **overrides,
    )


def score(params: dict[str, Any]) -> float:
    """A smooth objective with its best at lr=1e-2 and width=128."""
    return 1.0 - abs(math.log10(params["lr"]) + 2) / 4 - (128 - params["width"]) / 1000


def run_search(sweep: Sweep, trials: int, seed: int = 3) -> list[TrialRecord]:
    records: list[TrialRecord] = []
    for index in range(trials):
        params = trial_params(sweep, index, records, seed)
        records.append(
            TrialRecord(
                index,
                params,
                TrialPhase.SUCCEEDED,
                score(params),
                suggested_after=index,
                finished_order=index,
            )
        )
    return records


def test_grid_takes_every_combination_in_order_last_parameter_fastest() -> None:
    grid = sweep()
    assert [trial_params(grid, i, [], 0) for i in range(grid.trial_count())] == [
        {"n_estimators": 10, "max_depth": 2},
        {"n_estimators": 10, "max_depth": 4},
        {"n_estimators": 10, "max_depth": 8},
        {"n_estimators": 50, "max_depth": 2},
        {"n_estimators": 50, "max_depth": 4},
        {"n_estimators": 50, "max_depth": 8},
    ]


def test_grid_stops_at_max_trials_and_ranges_with_steps_join_the_grid() -> None:
    assert sweep(maxTrials=4).trial_count() == 4
    ranged = sweep(
        parameters={"a": [1, 2]},
        space={
            "depth": {"type": "int", "min": 2, "max": 6, "step": 2},
            "lr": {"type": "float", "min": 0.1, "max": 0.3, "step": 0.1},
        },
    )
    assert ranged.trial_count() == 2 * 3 * 3
    assert grid_point(ranged, 0) == {"a": 1, "depth": 2, "lr": 0.1}
    assert grid_point(ranged, 17) == {"a": 2, "depth": 6, "lr": 0.3}


def test_a_huge_grid_with_max_trials_is_never_expanded() -> None:
    huge = sweep(parameters={f"p{i}": list(range(10)) for i in range(6)}, maxTrials=5)
    assert huge.grid_size() == 10**6
    assert [trial_params(huge, i, [], 0)["p5"] for i in range(5)] == [0, 1, 2, 3, 4]


def test_random_samples_distinct_combinations_reproducibly() -> None:
    random_sweep = sweep(strategy="Random", maxTrials=4)

    first = [trial_params(random_sweep, i, [], 7) for i in range(4)]

    assert len({tuple(sorted(p.items())) for p in first}) == 4
    assert [trial_params(random_sweep, i, [], 7) for i in range(4)] == first
    assert [trial_params(random_sweep, i, [], 8) for i in range(4)] != first


@pytest.mark.parametrize("strategy", ["Random", "Bayesian", "CMAES"])
def test_ranges_are_sampled_inside_their_bounds(strategy: str) -> None:
    for record in run_search(learning(strategy), 15):
        assert 1e-4 <= record.params["lr"] <= 1.0
        assert record.params["width"] in range(8, 129, 8)
        assert isinstance(record.params["width"], int)
        assert record.params["activation"] in ("relu", "tanh")


@pytest.mark.parametrize("strategy", ["Bayesian", "CMAES"])
def test_a_suggestion_is_a_function_of_the_recorded_trials_and_the_seed(strategy: str) -> None:
    """What a restarted operator (or the other replica) suggests is exactly what the dead one would have."""
    records = run_search(learning(strategy), 12)

    again = suggest(learning(strategy), records, 3, 12)

    assert suggest(learning(strategy), list(records), 3, 12) == again
    assert suggest(learning(strategy), records, 4, 12) != again
    # The history matters: another set of finished trials gives another suggestion.
    assert suggest(learning(strategy), records[:6], 3, 12) != again


def test_a_bayesian_search_learns_where_random_does_not() -> None:
    """Over the same budget, TPE's best is better than random sampling's in most seeds."""
    wins = 0
    for seed in range(5):
        bayes = max(r.value or 0 for r in _seeded(learning("Bayesian"), 30, seed))
        rand = max(r.value or 0 for r in _seeded(learning("Random"), 30, seed))
        wins += bayes >= rand
    assert wins >= 4


def _seeded(sweep: Sweep, trials: int, seed: int) -> list[TrialRecord]:
    return run_search(sweep, trials, seed)


def curve(*values: float) -> tuple[tuple[int, float], ...]:
    return tuple((step, value) for step, value in enumerate(values, start=1))


def completed(index: int, *values: float) -> TrialRecord:
    return TrialRecord(
        index,
        {"activation": "relu", "lr": 0.01, "width": 64},
        TrialPhase.SUCCEEDED,
        values[-1],
        curve=curve(*values),
        finished_order=index,
    )


def running(index: int, *values: float) -> TrialRecord:
    return TrialRecord(
        index, {"activation": "relu", "lr": 0.1, "width": 64}, TrialPhase.RUNNING, curve=curve(*values)
    )


def test_median_stops_a_trial_below_the_median_of_completed_trials_at_its_step() -> None:
    stopping = learning(earlyStopping={"rule": "Median", "startStep": 4, "minTrials": 3})
    others = [
        completed(0, 0.5, 0.6, 0.7, 0.8, 0.9),
        completed(1, 0.5, 0.6, 0.7, 0.75, 0.8),
        completed(2, 0.4, 0.5, 0.6, 0.7, 0.85),
    ]

    verdict = judge(stopping, others, running(3, 0.3, 0.4, 0.5, 0.6))

    assert verdict.pruning is not None
    assert (verdict.pruning.step, verdict.pruning.value, verdict.pruning.threshold) == (4, 0.6, 0.75)


def test_median_waits_for_its_start_step_and_its_minimum_of_completed_trials() -> None:
    stopping = learning(earlyStopping={"rule": "Median", "startStep": 4, "minTrials": 3})
    others = [
        completed(0, 0.5, 0.6, 0.7, 0.8),
        completed(1, 0.5, 0.6, 0.7, 0.8),
        completed(2, 0.5, 0.6, 0.7, 0.8),
    ]

    assert judge(stopping, others, running(3, 0.1, 0.1, 0.1)).pruning is None  # step 3 < startStep
    assert judge(stopping, others[:2], running(3, 0.1, 0.1, 0.1, 0.1)).pruning is None  # 2 < minTrials
    assert judge(stopping, others, running(3, 0.1, 0.1, 0.1, 0.1)).pruning is not None
    # A trial as good as the median at its step goes on; so does one whose best so far is good enough.
    assert judge(stopping, others, running(3, 0.5, 0.6, 0.7, 0.8)).pruning is None
    assert judge(stopping, others, running(3, 0.9, 0.1, 0.1, 0.1)).pruning is None


def test_median_minimising_stops_the_trial_with_the_higher_loss() -> None:
    stopping = learning(
        objective={"metric": "loss", "direction": "Minimize"},
        earlyStopping={"rule": "Median", "startStep": 2, "minTrials": 2},
    )
    others = [completed(0, 1.0, 0.5), completed(1, 1.0, 0.6)]
    assert judge(stopping, others, running(2, 1.0, 0.9)).pruning is not None
    assert judge(stopping, others, running(2, 1.0, 0.4)).pruning is None


def test_successive_halving_keeps_the_top_third_at_each_rung_and_records_the_rungs() -> None:
    stopping = learning(earlyStopping={"rule": "SuccessiveHalving", "startStep": 1, "reductionFactor": 3})
    others = [
        TrialRecord(
            i,
            {"activation": "relu", "lr": 0.01, "width": 64},
            TrialPhase.SUCCEEDED,
            0.1 * i,
            curve=curve(0.1 * i),
            rungs=(0.1 * i,),
            finished_order=i,
        )
        for i in range(1, 9)
    ]

    low = judge(stopping, others, running(9, 0.3))
    high = judge(stopping, others, running(9, 0.95))

    assert low.pruning is not None and low.pruning.threshold == pytest.approx(0.6)
    assert low.rungs == (0.3,)
    assert high.pruning is None and high.rungs == (0.95,)


def test_a_trial_with_no_curve_or_no_rule_is_never_stopped() -> None:
    others = [completed(i, 0.9, 0.9, 0.9, 0.9) for i in range(3)]
    assert judge(learning(), others, running(3, 0.1, 0.1, 0.1, 0.1)).pruning is None
    stopping = learning(earlyStopping={"rule": "Median"})
    assert judge(stopping, others, running(3)).pruning is None


def test_best_trial_by_direction_ignoring_failures_and_ties_to_the_lowest_index() -> None:
    trials = [
        Trial.model_validate(t)
        for t in (
            {"index": 0, "phase": "Succeeded", "metrics": {"accuracy": 0.9, "loss": 0.3}},
            {"index": 1, "phase": "Failed", "metrics": {"accuracy": 0.99}},
            {"index": 2, "phase": "Succeeded", "metrics": {"accuracy": 0.95, "loss": 0.2}},
            {"index": 3, "phase": "Succeeded", "metrics": {"accuracy": 0.95, "loss": 0.4}},
            {"index": 4, "phase": "Pruned", "metrics": {"accuracy": 0.999}},
        )
    ]
    assert best_trial(trials, "accuracy", ObjectiveDirection.MAXIMIZE) == 2
    assert best_trial(trials, "loss", ObjectiveDirection.MINIMIZE) == 2
    assert best_trial(trials, "missing", ObjectiveDirection.MAXIMIZE) is None


def test_curves_merge_new_points_of_the_objective_and_keep_only_the_first_steps() -> None:
    merged = merge_curve(
        Curve(steps=[1, 2], values=[0.1, 0.2]), [(2, {"accuracy": 0.9}), (3, {"accuracy": 0.3})], "accuracy"
    )
    assert merged == Curve(steps=[1, 2, 3], values=[0.1, 0.2, 0.3])
    assert merge_curve(None, [(1, {"loss": 1.0})], "accuracy") is None
    long = merge_curve(None, [(s, {"accuracy": 0.5}) for s in range(1, 500)], "accuracy")
    assert long is not None and long.steps == list(range(1, 101))


def test_a_record_reads_what_status_keeps() -> None:
    record = record_of(
        Trial.model_validate(
            {
                "index": 4,
                "params": {"lr": 0.1},
                "phase": "Pruned",
                "metrics": {"accuracy": 0.5},
                "curve": {"steps": [1, 2], "values": [0.4, 0.5]},
                "rungs": [0.4],
                "suggestedAfter": 2,
                "finishedOrder": 3,
            }
        ),
        "accuracy",
    )
    assert record == TrialRecord(4, {"lr": 0.1}, TrialPhase.PRUNED, 0.5, ((1, 0.4), (2, 0.5)), (0.4,), 2, 3)


def test_status_stays_under_its_budget_by_dropping_old_curves_then_the_oldest_finished_trials() -> None:
    trials = [
        Trial.model_validate(
            {
                "index": i,
                "params": {"lr": 0.1 * i, "name": "x" * 600},
                "phase": "Succeeded",
                "metrics": {"accuracy": 0.5},
                "curve": {"steps": list(range(1, 101)), "values": [0.5] * 100},
            }
        )
        for i in range(1000)
    ]
    trials += [Trial.model_validate({"index": 1000, "params": {"lr": 1.0}, "phase": "Running"})]

    kept, dropped = compact_trials(trials, keep={3})

    written = [t.model_dump(mode="json", exclude_none=True) for t in kept]
    assert len(json.dumps(written, separators=(",", ":"))) <= 600_000
    assert dropped > 0 and len(kept) + dropped == len(trials)
    indexes = [t.index for t in kept]
    assert 3 in indexes and 1000 in indexes  # the best and the running trial always stay
    assert indexes[1:] == sorted(indexes[1:]) and indexes[2] > 3  # the oldest went first
    assert kept[-2].curve is not None  # the newest keep their curves
    assert compact_trials(trials[:10], keep=set()) == (trials[:10], 0)


def test_random_over_an_astronomic_grid_draws_without_listing_it() -> None:
    astronomic = sweep(
        strategy="Random", maxTrials=1000, parameters={f"p{i}": list(range(100)) for i in range(16)}
    )
    assert astronomic.grid_size() == 100**16
    drawn = [tuple(trial_params(astronomic, i, [], 1).values()) for i in (0, 1, 999)]
    assert len(set(drawn)) == 3


def test_judging_every_running_trial_on_one_study_says_what_judging_each_says() -> None:
    stopping = learning(earlyStopping={"rule": "Median", "startStep": 2, "minTrials": 2})
    others = [completed(0, 0.5, 0.6, 0.7), completed(1, 0.5, 0.7, 0.8)]
    runs = [running(2, 0.1, 0.2), running(3, 0.9, 0.9), running(4, 0.5, 0.6)]

    together = judge_all(stopping, [*others, *runs], [2, 3, 4])

    assert together == {r.index: judge(stopping, others, r) for r in runs}
    assert [i for i, v in together.items() if v.pruning] == [2, 4]  # 0.6 at step 2 is below the median 0.65


def test_a_trial_is_written_with_only_what_it_records() -> None:
    """Empty maps and lists are left out, as status always wrote trials: a running trial costs the status
    budget its index, parameters, phase and Job, no more."""
    running = Trial(index=7, params={"lr": 0.1}, phase=TrialPhase.RUNNING, job_name="search-7")

    assert running.model_dump(mode="json", exclude_none=True) == {
        "index": 7,
        "params": {"lr": 0.1},
        "phase": "Running",
        "jobName": "search-7",
    }
    assert record_of(Trial.model_validate(running.model_dump(mode="json")), "accuracy") == record_of(
        running, "accuracy"
    )
