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

from modelloop.api import ObjectiveDirection, ParameterRange, ParameterType, Sweep, SweepStrategy, TrialPhase
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


def best_trial(trials: Sequence[Mapping[str, Any]], metric: str, direction: ObjectiveDirection) -> int | None:
    """The index of the succeeded trial with the best objective metric (the lowest index on ties)."""
    candidates = [
        t for t in trials if t.get("phase") == TrialPhase.SUCCEEDED and metric in (t.get("metrics") or {})
    ]
    if not candidates:
        return None
    sign = 1.0 if direction == ObjectiveDirection.MAXIMIZE else -1.0
    best = max(candidates, key=lambda t: (sign * t["metrics"][metric], -t["index"]))
    return int(best["index"])


def record_of(trial: Mapping[str, Any], metric: str) -> TrialRecord:
    """What the search needs of a trial as status records it."""
    curve = trial.get("curve") or {}
    return TrialRecord(
        index=int(trial["index"]),
        params=trial.get("params") or {},
        phase=TrialPhase(trial.get("phase") or TrialPhase.PENDING),
        value=(trial.get("metrics") or {}).get(metric),
        curve=tuple(zip(curve.get("steps") or (), curve.get("values") or (), strict=False)),
        rungs=tuple(trial.get("rungs") or ()),
        suggested_after=int(trial.get("suggestedAfter") or 0),
        finished_order=trial.get("finishedOrder"),
    )


def merge_curve(
    curve: Mapping[str, Any] | None, points: Sequence[tuple[int, Mapping[str, float]]], metric: str
) -> dict[str, list[Any]] | None:
    """The recorded curve with the objective of newly reported points added (the first steps only)."""
    merged = dict(zip((curve or {}).get("steps") or (), (curve or {}).get("values") or (), strict=False))
    for step, metrics in points:
        if metric in metrics and step not in merged:
            merged[step] = float(metrics[metric])
    if not merged:
        return None
    steps = sorted(merged)[:MAX_CURVE_POINTS]
    return {"steps": steps, "values": [merged[s] for s in steps]}


def compact_trials(
    trials: list[dict[str, Any]], keep: set[int], budget: int = STATUS_BUDGET_BYTES
) -> tuple[list[dict[str, Any]], int]:
    """Trials that fit ``budget`` bytes serialised: first the curves of finished trials past the newest
    ``RECENT_CURVES`` go, then the oldest finished trials (never those in ``keep``, nor unfinished ones).
    Returns the trials kept and how many were dropped."""

    def size(items: Sequence[Mapping[str, Any]]) -> int:
        return len(json.dumps(items, separators=(",", ":")))

    if size(trials) <= budget:
        return trials, 0
    finished = [t for t in trials if t.get("phase") in FINAL_TRIAL_PHASES and t["index"] not in keep]
    old = {t["index"] for t in finished[:-RECENT_CURVES]} if len(finished) > RECENT_CURVES else set()
    trials = [{k: v for k, v in t.items() if k != "curve"} if t["index"] in old else t for t in trials]
    finished = [t for t in trials if t.get("phase") in FINAL_TRIAL_PHASES and t["index"] not in keep]
    total = size(trials)
    dropped: set[int] = set()
    for trial in finished:
        if total <= budget:
            break
        dropped.add(trial["index"])
        total -= len(json.dumps(trial, separators=(",", ":"))) + 1
    return [t for t in trials if t["index"] not in dropped], len(dropped)
