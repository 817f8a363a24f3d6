"""The pure helpers of bench/sweep_search.py and bench/sweep_suggest.py (no training, no timing)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import sweep_search
import sweep_suggest

from modelloop.api import TrialPhase


@pytest.mark.parametrize("budget", [1, 2, 7, 8, 20, 24, 30, 100])
def test_grid_fits_the_budget(budget: int) -> None:
    counts = sweep_search.grid_counts(budget)
    assert math.prod(counts.values()) <= budget
    # No axis could take one more value within the budget.
    for axis, count in counts.items():
        assert math.prod(counts.values()) // count * (count + 1) > budget, axis


def test_grid_of_24_is_a_sweep_of_24_trials_within_the_ranges() -> None:
    assert sweep_search.grid_counts(24) == {"lr": 3, "width": 2, "depth": 2, "weight_decay": 2}
    sweep = sweep_search.make_sweep("Grid", 24)
    assert sweep.trial_count() == 24
    for name, values in sweep.parameters.items():
        spec = sweep_search.SPACE[name]
        assert all(spec["min"] <= v <= spec["max"] for v in values), name
        assert len(set(values)) == len(values), name
    assert sweep.parameters["depth"] == [1, 3]
    assert sweep.parameters["lr"] == [0.000316, 0.00316, 0.0316]


def test_stopping_rules_parse() -> None:
    assert sweep_search.parse_stopping("Median:4:3") == {"rule": "Median", "startStep": 4, "minTrials": 3}
    sweep = sweep_search.make_sweep("Bayesian", 24, sweep_search.parse_stopping("SuccessiveHalving:2:3"))
    assert sweep.early_stopping is not None and sweep.early_stopping.reduction_factor == 3


def test_trials_and_epochs_to_reach() -> None:
    values = [0.5, None, 0.9, 0.95]
    epochs = [10, 4, 10, 10]
    assert sweep_search.trials_to_reach(values, 0.9) == 3
    assert sweep_search.trials_to_reach(values, 0.99) is None
    assert sweep_search.epochs_to_reach(values, epochs, 0.9) == 24
    assert sweep_search.best_within_epochs(values, epochs, 23) == 0.5
    assert sweep_search.best_within_epochs(values, epochs, 24) == 0.9
    assert math.isnan(sweep_search.best_within_epochs(values, epochs, 9))
    assert sweep_search.share_reaching(values, 0.9) == 0.5
    assert sweep_search.later_half_mean(values) == pytest.approx(0.925)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert sweep_suggest.percentile(values, 0.5) == 10.0
    assert sweep_suggest.percentile(values, 0.99) == 20.0
    assert sweep_suggest.percentile([3.0], 0.99) == 3.0


def test_records_are_a_finished_sweep_with_three_running() -> None:
    records, facts = sweep_suggest.operator_records(100)
    assert len(records) == 103 and facts["trials_dropped"] == 0
    assert [r.index for r in records] == list(range(103))
    phases = [r.phase for r in records[:100]]
    assert set(phases) <= {TrialPhase.SUCCEEDED, TrialPhase.PRUNED, TrialPhase.FAILED}
    assert 30 <= phases.count(TrialPhase.PRUNED) <= 70
    assert all(r.phase == TrialPhase.RUNNING and r.finished_order is None for r in records[100:])
    assert all(r.value is not None for r in records if r.phase == TrialPhase.SUCCEEDED)
    assert records[50].suggested_after == 47 and records[50].finished_order == 50
