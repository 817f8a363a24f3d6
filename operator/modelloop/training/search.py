"""Searches that learn: the next trial's parameters and early stopping, with Optuna's samplers and pruners.

Nothing here lives longer than one call. Each call rebuilds an in-memory Optuna study from the trials
recorded in a TrainingRun's status, so that a restarted operator, or the other replica after a handover,
decides exactly what the dead one would have:

- Random and Bayesian (TPE) are stateless samplers: a fresh sampler, seeded from the run's seed and the
  trial's index, sees every recorded trial (running ones too, as TPE's "constant liar") and is asked once.
- CMA-ES keeps state between generations, so its study is replayed in the order things happened: each
  trial is asked once the trials that had finished when it was suggested (``suggested_after``) are told,
  in the order they finished (``finished_order``).
- Pruning rebuilds the trials' learning curves (and SuccessiveHalving's rungs) and asks Optuna's
  MedianPruner or SuccessiveHalvingPruner about one running trial.

These calls take milliseconds to a second (TPE at a thousand trials): the controller runs them off the
event loop. Optuna is imported on first use, so an operator without learning sweeps never loads it.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelloop.api import (
    EarlyStopping,
    EarlyStoppingRule,
    ObjectiveDirection,
    ParameterRange,
    ParameterType,
    Pruning,
    Sweep,
    SweepStrategy,
    TrialPhase,
)
from modelloop.api.meta import ParamValue

# TPE's random start: at most this many trials, and never more than a fifth of the budget.
MAX_STARTUP_TRIALS = 10
_RUNG_KEY = "completed_rung_{}"  # Optuna's SuccessiveHalvingPruner's own system attribute


@dataclass(frozen=True)
class TrialRecord:
    """What a sweep's status records of one trial, as the search needs it."""

    index: int
    params: Mapping[str, ParamValue]
    phase: TrialPhase
    value: float | None = None
    """The objective when the trial succeeded."""
    curve: tuple[tuple[int, float], ...] = ()
    """The objective after each step (ascending steps)."""
    rungs: tuple[float, ...] = ()
    suggested_after: int = 0
    finished_order: int | None = None


@dataclass(frozen=True)
class PruneVerdict:
    """Whether a running trial is stopped now, and its SuccessiveHalving rungs either way."""

    pruning: Pruning | None
    rungs: tuple[float, ...] = field(default=())


def uses_optuna(sweep: Sweep) -> bool:
    """Whether suggestions for this sweep come from Optuna (rather than a grid position)."""
    return sweep.strategy in (SweepStrategy.BAYESIAN, SweepStrategy.CMAES) or (
        sweep.strategy == SweepStrategy.RANDOM and bool(sweep.space)
    )


def suggest(sweep: Sweep, trials: Sequence[TrialRecord], seed: int, index: int) -> dict[str, ParamValue]:
    """The parameters of trial ``index``: a function of the sweep, the recorded ``trials`` (those before
    ``index``) and ``seed`` only."""
    optuna = _optuna()
    distributions = search_space(sweep)
    direction = _direction(sweep)
    if sweep.strategy == SweepStrategy.CMAES:
        return _replay_cmaes(sweep, trials, seed, distributions, direction)
    if sweep.strategy == SweepStrategy.BAYESIAN:
        startup = max(1, min(MAX_STARTUP_TRIALS, (sweep.max_trials or MAX_STARTUP_TRIALS) // 5))
        sampler: Any = optuna.samplers.TPESampler(
            seed=_mix(seed, index), n_startup_trials=startup, constant_liar=True, multivariate=True
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=_mix(seed, index))
    study = optuna.create_study(direction=direction, sampler=sampler)
    if sweep.strategy == SweepStrategy.BAYESIAN:
        study.add_trials(_frozen(t, distributions) for t in trials if _fits(t, distributions))
    trial = study.ask(fixed_distributions=distributions)
    return _plain(trial.params, sweep)


def judge(sweep: Sweep, trials: Sequence[TrialRecord], trial: TrialRecord) -> PruneVerdict:
    """Whether the running ``trial`` is stopped now by the sweep's early-stopping rule, judged against the
    other recorded ``trials`` (Optuna's MedianPruner or SuccessiveHalvingPruner)."""
    others = [t for t in trials if t.index != trial.index]
    return judge_all(sweep, [*others, trial], [trial.index])[trial.index]


def judge_all(sweep: Sweep, trials: Sequence[TrialRecord], running: Sequence[int]) -> dict[int, PruneVerdict]:
    """The verdict on each trial of ``running`` (indexes of ``trials``), from one study of all ``trials``:
    a pass judges every running trial of a sweep for the cost of building one study."""
    by_index = {t.index: t for t in trials}
    rules = sweep.early_stopping
    verdicts = {i: PruneVerdict(None, by_index[i].rungs) for i in running}
    judged = [i for i in running if rules is not None and by_index[i].curve]
    if rules is None or not judged:
        return verdicts
    optuna = _optuna()
    distributions = search_space(sweep)
    study = optuna.create_study(direction=_direction(sweep), sampler=optuna.samplers.RandomSampler(seed=0))
    fitting = [t for t in trials if _fits(t, distributions)]
    study.add_trials(_frozen(t, distributions) for t in fitting)
    frozen = {t.index: f for t, f in zip(fitting, study.get_trials(deepcopy=False), strict=True)}
    pruner = _pruner(rules)
    for index in judged:
        if index not in frozen:
            continue
        trial = by_index[index]
        stopped = pruner.prune(study, frozen[index])
        rungs = _rungs_of(study._storage.get_trial(frozen[index]._trial_id).system_attrs)
        if not stopped:
            verdicts[index] = PruneVerdict(None, rungs)
            continue
        others = [t for t in fitting if t.index != index]
        step = trial.curve[-1][0]
        threshold = (
            _median_at(others, step, rules)
            if rules.rule == EarlyStoppingRule.MEDIAN
            else _rung_cutoff(others, rungs, rules, sweep.objective.direction)
        )
        best = _best(trial.curve, sweep.objective.direction)
        verdicts[index] = PruneVerdict(
            Pruning(step=step, value=best, threshold=threshold, rule=rules.rule), rungs
        )
    return verdicts


def search_space(sweep: Sweep) -> dict[str, Any]:
    """The sweep's parameters as Optuna distributions (lists are categorical), in the order written."""
    distributions = _optuna().distributions
    space: dict[str, Any] = {
        name: distributions.CategoricalDistribution(tuple(values))
        for name, values in sweep.parameters.items()
    }
    for name, spec in sweep.space.items():
        space[name] = _distribution(spec)
    return space


def _distribution(spec: ParameterRange) -> Any:
    distributions = _optuna().distributions
    if spec.type == ParameterType.CATEGORICAL:
        assert spec.values is not None
        return distributions.CategoricalDistribution(tuple(spec.values))
    assert spec.min is not None and spec.max is not None
    if spec.type == ParameterType.INT:
        return distributions.IntDistribution(
            int(spec.min), int(spec.max), log=bool(spec.log), step=int(spec.step or 1)
        )
    step = spec.step
    if step is not None and spec.max - spec.min < step:
        step = None  # a single value: Optuna wants the range to hold a step
    return distributions.FloatDistribution(spec.min, spec.max, log=bool(spec.log), step=step)


def _replay_cmaes(
    sweep: Sweep,
    trials: Sequence[TrialRecord],
    seed: int,
    distributions: dict[str, Any],
    direction: str,
) -> dict[str, ParamValue]:
    optuna = _optuna()
    startup = max(1, min(MAX_STARTUP_TRIALS, (sweep.max_trials or MAX_STARTUP_TRIALS) // 5))
    sampler = optuna.samplers.CmaEsSampler(
        seed=seed,
        n_startup_trials=startup,
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        warn_independent_sampling=False,
    )
    study = optuna.create_study(direction=direction, sampler=sampler)
    recorded = sorted((t for t in trials if _fits(t, distributions)), key=lambda t: t.index)
    finished = sorted(
        (t for t in recorded if t.finished_order is not None), key=lambda t: t.finished_order or 0
    )
    asked: dict[int, Any] = {}
    told = 0

    def tell_until(count: int) -> None:
        nonlocal told
        for record in finished[told:]:
            if record.finished_order is None or record.finished_order >= count:
                break
            told += 1
            if record.index in asked:
                _tell(study, asked.pop(record.index), record)

    for record in recorded:
        tell_until(record.suggested_after)
        # The sampler's state moves on with every ask, as it did when this trial was suggested; the
        # trial runs with what was recorded then (the same, unless the sampler's version changed).
        asked[record.index] = study.ask(fixed_distributions=distributions)
    tell_until(len(finished))
    return _plain(study.ask(fixed_distributions=distributions).params, sweep)


def _tell(study: Any, trial: Any, record: TrialRecord) -> None:
    state = _optuna().trial.TrialState
    # CMA-ES reads no intermediate values: the curve is not reported (a tenth of a replay's time).
    if record.phase == TrialPhase.SUCCEEDED and record.value is not None:
        study.tell(trial, record.value)
    elif record.phase == TrialPhase.PRUNED:
        study.tell(trial, state=state.PRUNED)
    else:
        study.tell(trial, state=state.FAIL)


def _frozen(record: TrialRecord, distributions: Mapping[str, Any]) -> Any:
    optuna = _optuna()
    state = optuna.trial.TrialState
    value = record.value if record.phase == TrialPhase.SUCCEEDED else None
    if record.phase == TrialPhase.SUCCEEDED and value is not None:
        trial_state = state.COMPLETE
    elif record.phase == TrialPhase.PRUNED:
        trial_state = state.PRUNED
    elif record.phase in (TrialPhase.PENDING, TrialPhase.RUNNING):
        trial_state = state.RUNNING
    else:
        trial_state = state.FAIL
    return optuna.trial.create_trial(
        state=trial_state,
        value=value if trial_state == state.COMPLETE else None,
        params={name: record.params[name] for name in distributions},
        distributions=dict(distributions),
        intermediate_values=dict(record.curve),
        system_attrs={_RUNG_KEY.format(k): v for k, v in enumerate(record.rungs)},
    )


def _fits(record: TrialRecord, distributions: Mapping[str, Any]) -> bool:
    """Whether the record's params lie in the space (a record from another spec never does)."""
    for name, distribution in distributions.items():
        if name not in record.params:
            return False
        try:
            if not distribution._contains(distribution.to_internal_repr(record.params[name])):
                return False
        except (ValueError, TypeError):
            return False
    return record.phase != TrialPhase.SUCCEEDED or (record.value is not None and math.isfinite(record.value))


def _pruner(rules: EarlyStopping) -> Any:
    pruners = _optuna().pruners
    if rules.rule == EarlyStoppingRule.MEDIAN:
        return pruners.MedianPruner(
            n_startup_trials=rules.min_trials, n_warmup_steps=rules.start_step, n_min_trials=rules.min_trials
        )
    return pruners.SuccessiveHalvingPruner(
        min_resource=rules.start_step, reduction_factor=rules.reduction_factor, min_early_stopping_rate=0
    )


def _median_at(others: Sequence[TrialRecord], step: int, rules: EarlyStopping) -> float | None:
    """The median of the completed trials' objectives at ``step``: what MedianPruner compared with."""
    values = [v for t in others if t.phase == TrialPhase.SUCCEEDED for s, v in t.curve if s == step]
    return statistics.median(values) if values else None


def _rung_cutoff(
    others: Sequence[TrialRecord],
    rungs: Sequence[float],
    rules: EarlyStopping,
    direction: ObjectiveDirection,
) -> float | None:
    """The value a trial had to reach at its last rung to be promoted (SuccessiveHalving)."""
    if not rungs:
        return None
    rung = len(rungs) - 1
    competing = sorted([t.rungs[rung] for t in others if len(t.rungs) > rung] + [rungs[rung]])
    keep = max(len(competing) // rules.reduction_factor, 1)
    return competing[-keep] if direction == ObjectiveDirection.MAXIMIZE else competing[keep - 1]


def _rungs_of(attrs: Mapping[str, Any]) -> tuple[float, ...]:
    rungs: list[float] = []
    while _RUNG_KEY.format(len(rungs)) in attrs:
        rungs.append(float(attrs[_RUNG_KEY.format(len(rungs))]))
    return tuple(rungs)


def _best(curve: Sequence[tuple[int, float]], direction: ObjectiveDirection) -> float:
    values = [v for _, v in curve]
    return max(values) if direction == ObjectiveDirection.MAXIMIZE else min(values)


def _plain(params: Mapping[str, Any], sweep: Sweep) -> dict[str, ParamValue]:
    """Parameters in the order the sweep names them, as plain JSON scalars (ints stay ints)."""
    out: dict[str, ParamValue] = {}
    for name in [*sweep.parameters, *sweep.space]:
        value = params[name]
        spec = sweep.space.get(name)
        if spec is not None and spec.type == ParameterType.FLOAT:
            value = float(value)
        elif spec is not None and spec.type == ParameterType.INT:
            value = int(value)
        out[name] = value
    return out


def _direction(sweep: Sweep) -> str:
    return "maximize" if sweep.objective.direction == ObjectiveDirection.MAXIMIZE else "minimize"


def _mix(seed: int, index: int) -> int:
    """One sampler seed per (run seed, trial index), so that no two trials draw the same random stream."""
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**32)


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna
