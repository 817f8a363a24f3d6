"""Hyperparameter sweeps: which trials to run, how many at once, and which one won."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelloop.api import ObjectiveDirection, Sweep, SweepStrategy, TrainingRunPhase
from modelloop.api.meta import ParamValue
from modelloop.training.job import TrialPlan


@dataclass(frozen=True)
class TrialState:
    """What is known of a trial: whether its Job exists, its phase and metrics."""

    index: int
    has_job: bool
    phase: TrainingRunPhase | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.phase in (TrainingRunPhase.SUCCEEDED, TrainingRunPhase.FAILED)


def plan_trials(sweep: Sweep, seed: int = 0) -> list[TrialPlan]:
    """The sweep's trials, in order; the same sweep and seed always give the same plan, so that a
    restarted operator continues the sweep it started.

    Grid takes the combinations in order (parameters in the order written, the last varying fastest) up
    to maxTrials; Random samples maxTrials distinct combinations with the seed.
    """
    names = list(sweep.parameters)
    sizes = [len(sweep.parameters[name]) for name in names]
    total = math.prod(sizes)
    limit = min(total, sweep.max_trials) if sweep.max_trials is not None else total
    if sweep.strategy == SweepStrategy.RANDOM:
        positions = sorted(random.Random(seed).sample(range(total), limit))
    else:
        positions = list(range(limit))
    return [
        TrialPlan(index=i, params=_combination(sweep, names, sizes, position))
        for i, position in enumerate(positions)
    ]


def trials_to_start(
    plan: Sequence[TrialPlan], states: Sequence[TrialState], parallelism: int
) -> list[TrialPlan]:
    """The next trials to create Jobs for, so that at most ``parallelism`` run at once."""
    by_index = {state.index: state for state in states}
    running = sum(1 for s in states if s.has_job and not s.finished)
    waiting = [t for t in plan if not (by_index.get(t.index) and by_index[t.index].has_job)]
    return waiting[: max(0, parallelism - running)]


def best_trial(states: Sequence[TrialState], metric: str, direction: ObjectiveDirection) -> TrialState | None:
    """The succeeded trial with the best objective metric (the lowest index on ties), or None."""
    candidates = [s for s in states if s.phase == TrainingRunPhase.SUCCEEDED and metric in s.metrics]
    if not candidates:
        return None
    sign = 1.0 if direction == ObjectiveDirection.MAXIMIZE else -1.0
    return max(candidates, key=lambda s: (sign * s.metrics[metric], -s.index))


def _combination(sweep: Sweep, names: list[str], sizes: list[int], position: int) -> dict[str, ParamValue]:
    """Decode a position in the grid (mixed radix, last parameter fastest) into parameter values."""
    values: dict[str, ParamValue] = {}
    for name, size in zip(reversed(names), reversed(sizes), strict=True):
        position, digit = divmod(position, size)
        values[name] = sweep.parameters[name][digit]
    return {name: values[name] for name in names}
