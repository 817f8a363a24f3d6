"""Hyperparameter sweeps: the next trials' parameters, which trial won, and a status that stays small.

No sweep is ever expanded: a Grid trial decodes its own position, a Random one samples positions lazily
(or asks Optuna for ranges), and a learning search asks ``modelloop.training.search``. Only the trials
that run next are ever materialised.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from modelloop.api import (
    Curve,
    ObjectiveDirection,
    ParameterRange,
    ParameterType,
    Sweep,
    SweepStrategy,
    Trial,
    TrialPhase,
)
from modelloop.api.meta import ParamValue
from modelloop.api.sweep import MAX_CURVE_POINTS
from modelloop.training import search
from modelloop.training.search import TrialRecord

STATUS_BUDGET_BYTES = 600_000
"""What status.trials may take, serialised: etcd keeps objects under 1.5 MiB, and the run's spec and the
rest of its status need room too."""
RECENT_CURVES = 200
"""Finished trials past the newest this many keep no curve when the budget runs short (pruning judges
against the recent ones)."""
FINAL_TRIAL_PHASES = (TrialPhase.SUCCEEDED, TrialPhase.FAILED, TrialPhase.PRUNED)


def trial_params(
    sweep: Sweep, index: int, records: Sequence[TrialRecord], seed: int
) -> dict[str, ParamValue]:
    """The sweep's parameters of trial ``index``: a function of the sweep, the trials recorded before it
    and the seed, so that a restarted operator suggests what the dead one would have."""
    if search.uses_optuna(sweep):
        return search.suggest(sweep, records, seed, index)
    if sweep.strategy == SweepStrategy.RANDOM:
        return grid_point(sweep, _random_position(sweep, index, seed))
    return grid_point(sweep, index)


def grid_point(sweep: Sweep, position: int) -> dict[str, ParamValue]:
    """Decode a position in the grid (mixed radix, parameters in the order written, lists before ranges,
    the last varying fastest) into parameter values."""
    axes: list[tuple[str, int]] = [(name, len(values)) for name, values in sweep.parameters.items()]
    axes += [(name, spec.grid_size() or 1) for name, spec in sweep.space.items()]
    values: dict[str, ParamValue] = {}
    for name, size in reversed(axes):
        position, digit = divmod(position, size)
        values[name] = _axis_value(sweep, name, digit)
    return {name: values[name] for name, _ in axes}


def _axis_value(sweep: Sweep, name: str, digit: int) -> ParamValue:
    if name in sweep.parameters:
        return sweep.parameters[name][digit]
    spec: ParameterRange = sweep.space[name]
    if spec.values is not None:
        return spec.values[digit]
    assert spec.min is not None
    if spec.type == ParameterType.INT:
        return int(spec.min) + digit * int(spec.step or 1)
    assert spec.step is not None
    return round(spec.min + digit * spec.step, 12)


def _random_position(sweep: Sweep, index: int, seed: int) -> int:
    """The ``index``-th of maxTrials distinct grid positions drawn with ``seed`` (drawn one by one, never
    listed: a grid of 16 parameters of 100 values has 10**32 positions)."""
    total = sweep.grid_size()
    rng = random.Random(seed)
    seen: set[int] = set()
    drawn: list[int] = []
    while len(drawn) <= index:
        position = rng.randrange(total)
        if position not in seen:
            seen.add(position)
            drawn.append(position)
    return drawn[index]


def best_trial(trials: Sequence[Trial], metric: str, direction: ObjectiveDirection) -> int | None:
    """The index of the succeeded trial with the best objective metric (the lowest index on ties)."""
    candidates = [t for t in trials if t.phase == TrialPhase.SUCCEEDED and metric in t.metrics]
    if not candidates:
        return None
    sign = 1.0 if direction == ObjectiveDirection.MAXIMIZE else -1.0
    best = max(candidates, key=lambda t: (sign * t.metrics[metric], -t.index))
    return best.index


def record_of(trial: Trial, metric: str) -> TrialRecord:
    """What the search needs of a trial as status records it."""
    curve = trial.curve
    return TrialRecord(
        index=trial.index,
        params=trial.params,
        phase=trial.phase or TrialPhase.PENDING,
        value=trial.metrics.get(metric),
        curve=tuple(zip(curve.steps, curve.values, strict=False)) if curve is not None else (),
        rungs=tuple(trial.rungs),
        suggested_after=trial.suggested_after or 0,
        finished_order=trial.finished_order,
    )


def merge_curve(
    curve: Curve | None, points: Sequence[tuple[int, Mapping[str, float]]], metric: str
) -> Curve | None:
    """The recorded curve with the objective of newly reported points added (the first steps only)."""
    merged = dict(zip(curve.steps, curve.values, strict=False)) if curve is not None else {}
    for step, metrics in points:
        if metric in metrics and step not in merged:
            merged[step] = float(metrics[metric])
    if not merged:
        return None
    steps = sorted(merged)[:MAX_CURVE_POINTS]
    return Curve(steps=steps, values=[merged[s] for s in steps])


def status_size(trials: Sequence[Trial]) -> int:
    """What ``trials`` take in status.trials, serialised as compact JSON."""
    return _size(_written(trials))


def compact_trials(
    trials: list[Trial], keep: set[int], budget: int = STATUS_BUDGET_BYTES
) -> tuple[list[Trial], int]:
    """Trials that fit ``budget`` bytes serialised: first the curves of finished trials past the newest
    ``RECENT_CURVES`` go, then the oldest finished trials (never those in ``keep``, nor unfinished ones).
    Returns the trials kept and how many were dropped."""
    written = _written(trials)  # measured as written, each trial dumped once
    if _size(written) <= budget:
        return trials, 0
    finished = [i for i, t in enumerate(trials) if t.phase in FINAL_TRIAL_PHASES and t.index not in keep]
    old = set(finished[:-RECENT_CURVES]) if len(finished) > RECENT_CURVES else set()
    for position in old:
        written[position].pop("curve", None)
    total = _size(written)
    dropped: set[int] = set()
    for position in finished:
        if total <= budget:
            break
        dropped.add(position)
        total -= _size(written[position]) + 1
    kept = [
        t.model_copy(update={"curve": None}) if position in old else t
        for position, t in enumerate(trials)
        if position not in dropped
    ]
    return kept, len(dropped)


_TRIALS = TypeAdapter(list[Trial])


def _written(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """Trials as status writes them."""
    written: list[dict[str, Any]] = _TRIALS.dump_python(list(trials), mode="json", exclude_none=True)
    return written


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))
