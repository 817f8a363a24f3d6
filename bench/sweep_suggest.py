"""Benchmark: what one suggestion or one pruning decision costs the operator at 100, 300 and 1,000 trials.

Each call of modelloop.training.sweep.trial_params (Bayesian, CMAES) and modelloop.training.search.judge
(Median, SuccessiveHalving) rebuilds an in-memory Optuna study from the trials that the run's status
records, so its cost grows with the sweep. For every size N it builds the TrialRecords of a sweep that has
finished N trials, with parallelism 4 (three more running), on the search space of bench/sweep_search.py
(lr, width, depth, weight_decay), deterministically:

- parameters drawn uniformly (log-uniformly on the log ranges); learning curves of 20 epochs whose height
  and speed depend on the parameters (a TorchMLP-like response: best near lr 3e-3, slow below), with noise;
- about half the trials pruned (their curve cut at a step from 2 to 19, no value), 2% failed, the rest
  succeeded with their last epoch's value; SuccessiveHalving rungs at steps 2, 6 and 18 (startStep 2,
  reductionFactor 3); suggestedAfter and finishedOrder as a parallelism of 4 leaves them.

The records are those the operator would hold: the trials as status.trials writes them, kept within its
byte budget by compact_trials (at 1,000 trials every trial stays, but only the newest 200 finished ones
keep their curves; --full-curves keeps them all, an upper bound) and read back with record_of.

Then it times, in a fresh process per (operation, N), --repeat calls (20 by default) after a first one:

- bayesian: trial_params of the next trial (TPE; a different seed each call), cmaes: the same for CMA-ES
  (its whole history replayed); median / halving: judge of the oldest running trial (at step 10 / step 6,
  a rung), on a sweep with that rule (startStep 4, minTrials 3 / startStep 2, reductionFactor 3);
- the baseline, in the same process: the same Optuna call on a study that is already built and kept (a
  long-lived study, as a stateful operator would hold): study.ask() with the same sampler, or the pruner's
  prune() on the same trials. The ratio is the price of rebuilding the study from status at every call;
- p50 and p99 of the wall time (nearest rank: with fewer than 100 repeats p99 is the slowest call), the
  p50 of the process's CPU time (steadier when other work shares the cores), the first call (Optuna's
  import and first use included), the process's RSS (from /proc/self/statm) before the first call, its
  increase over the first call (mostly importing Optuna) and over the repeats after it, and its peak
  (getrusage's ru_maxrss) above the RSS before the first call. With --repeat 100 the increase over the
  repeats is the same as with 20 (a few MiB at 1,000 trials, the allocator's high-water mark, no leak).

    .venv/bin/python bench/sweep_suggest.py [--sizes 100 300 1000] [--repeat 20]
        [--ops bayesian cmaes median halving] [--full-curves] [--quick]

The target is a p99 of at most 1 s at 1,000 trials. --quick is a smoke run (sizes 100 and 300, 5 repeats).
On a 2-core machine shared with other work, wall times of single calls vary by ±30% and more from run to
run; the CPU p50 is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweep_search import SPACE

from modelloop.api import Sweep, Trial, TrialPhase
from modelloop.api.meta import ParamValue
from modelloop.api.sweep import MAX_CMAES_TRIALS
from modelloop.training import search
from modelloop.training.search import TrialRecord
from modelloop.training.sweep import compact_trials, record_of, status_size, trial_params

OPS = ("bayesian", "cmaes", "median", "halving")
METRIC = "accuracy"
EPOCHS = 20
PARALLELISM = 4
RUNG_STEPS = (2, 6, 18)
TARGET_P99 = 1.0
STOPPING: dict[str, dict[str, Any]] = {
    "median": {"rule": "Median", "startStep": 4, "minTrials": 3},
    "halving": {"rule": "SuccessiveHalving", "startStep": 2, "reductionFactor": 3},
}
JUDGED_STEP = {"median": 10, "halving": 6}


# -- the trials ------------------------------------------------------------------------------------


def draw_params(rng: random.Random) -> dict[str, ParamValue]:
    """Parameters drawn over SPACE: uniformly, log-uniformly on log ranges; ints rounded."""
    params: dict[str, ParamValue] = {}
    for name, spec in SPACE.items():
        low, high = float(spec["min"]), float(spec["max"])
        if spec.get("log"):
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low - 0.5, high + 0.5) if spec["type"] == "int" else rng.uniform(low, high)
        params[name] = min(max(round(value), int(low)), int(high)) if spec["type"] == "int" else value
    return params


def curve_of(params: Mapping[str, ParamValue], rng: random.Random) -> list[tuple[int, float]]:
    """A held-out accuracy curve over EPOCHS epochs: its plateau and speed depend on the parameters."""
    lr, width = float(params["lr"]), float(params["width"])
    depth, decay = float(params["depth"]), float(params["weight_decay"])
    plateau = (
        0.98
        - 0.05 * (math.log10(lr) + 2.5) ** 2
        - 0.004 * abs(math.log2(width / 128))
        - 0.003 * (depth - 2) ** 2
        - 0.03 * max(0.0, math.log10(decay) + 3)
    )
    plateau = min(max(plateau, 0.1), 0.99)
    tau = 1.0 + 4.0 * max(0.0, -2.5 - math.log10(lr))  # slow learning below lr 3e-3
    return [
        (step, min(1.0, max(0.0, 0.1 + (plateau - 0.1) * (1 - math.exp(-step / tau)) + rng.gauss(0, 0.004))))
        for step in range(1, EPOCHS + 1)
    ]


def rungs_of(curve: Sequence[tuple[int, float]]) -> tuple[float, ...]:
    values = dict(curve)
    return tuple(values[step] for step in RUNG_STEPS if step in values)


def build_records(finished: int, seed: int = 0) -> list[TrialRecord]:
    """``finished`` finished trials and PARALLELISM - 1 running ones, every curve whole."""
    rng = random.Random(seed)
    records = []
    for index in range(finished + PARALLELISM - 1):
        params = draw_params(rng)
        curve = curve_of(params, rng)
        suggested_after = max(0, index - (PARALLELISM - 1))
        if index >= finished:
            cut = curve[: rng.randint(1, EPOCHS - 1)]
            phase, value, order = TrialPhase.RUNNING, None, None
        else:
            draw = rng.random()
            order = index
            if draw < 0.02:
                cut, phase, value = curve[: rng.randint(1, EPOCHS)], TrialPhase.FAILED, None
            elif draw < 0.52:
                cut, phase, value = curve[: rng.randint(2, EPOCHS - 1)], TrialPhase.PRUNED, None
            else:
                cut, phase, value = curve, TrialPhase.SUCCEEDED, curve[-1][1]
        records.append(
            TrialRecord(
                index, params, phase, value, tuple(cut), rungs_of(cut), suggested_after, finished_order=order
            )
        )
    return records


def status_trial(record: TrialRecord) -> Trial:
    """The trial as the run's status.trials holds it."""
    trial: dict[str, Any] = {
        "index": record.index,
        "params": dict(record.params),
        "phase": record.phase.value,
        "jobName": f"bench-sweep-0123456789-{record.index}",
        "suggestedAfter": record.suggested_after,
    }
    if record.value is not None:
        trial["metrics"] = {METRIC: record.value, "f1_macro": record.value - 0.002}
    if record.curve:
        trial["curve"] = {"steps": [s for s, _ in record.curve], "values": [v for _, v in record.curve]}
    if record.rungs:
        trial["rungs"] = list(record.rungs)
    if record.finished_order is not None:
        trial["finishedOrder"] = record.finished_order
    return Trial.model_validate(trial)


def operator_records(finished: int, compact: bool = True) -> tuple[list[TrialRecord], dict[str, int]]:
    """The records the operator judges with: the status' trials, kept within its byte budget by
    compact_trials (curves of all but the newest finished trials go first), read back with record_of."""
    trials = [status_trial(r) for r in build_records(finished)]
    if compact:
        trials, dropped = compact_trials(trials, keep=set())
    else:
        dropped = 0
    facts = {
        "status_bytes": status_size(trials),
        "trials_dropped": dropped,
        "curves_kept": sum(t.curve is not None for t in trials),
    }
    return [record_of(t, METRIC) for t in trials], facts


def make_sweep(op: str) -> Sweep:
    strategy = "CMAES" if op == "cmaes" else "Bayesian"
    stopping = STOPPING.get(op, STOPPING["median"])
    return Sweep.model_validate(
        {
            "strategy": strategy,
            "space": SPACE,
            # CMA-ES sweeps are admitted up to MAX_CMAES_TRIALS (each suggestion replays the history).
            "maxTrials": MAX_CMAES_TRIALS if op == "cmaes" else 1000,
            "parallelism": PARALLELISM,
            "objective": {"metric": METRIC},
            "earlyStopping": stopping,
        }
    )


# -- the measurement (one process per operation and size) --------------------------------------------


def current_rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def judged_record(op: str, records: Sequence[TrialRecord], finished: int) -> TrialRecord:
    """The oldest running trial, at the step the operation judges it."""
    running = next(r for r in records if r.index == finished)
    rng = random.Random(finished)
    curve = tuple(curve_of(running.params, rng)[: JUDGED_STEP[op]])
    return TrialRecord(
        running.index, running.params, TrialPhase.RUNNING, None, curve, rungs_of(curve[:-1]),
        running.suggested_after,
    )  # fmt: skip


def operator_call(op: str, sweep: Sweep, records: list[TrialRecord], finished: int) -> Callable[[int], Any]:
    if op in ("bayesian", "cmaes"):
        index = len(records)
        return lambda repeat: trial_params(sweep, index, records, repeat)
    judged = judged_record(op, records, finished)
    others = [judged if r.index == judged.index else r for r in records]
    return lambda _: search.judge(sweep, others, judged)


def baseline_call(op: str, sweep: Sweep, records: list[TrialRecord], finished: int) -> Callable[[int], Any]:
    """The same Optuna call on a study built once and kept."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = search.search_space(sweep)
    direction = "maximize"
    state = optuna.trial.TrialState
    startup = max(1, min(search.MAX_STARTUP_TRIALS, (sweep.max_trials or 10) // 5))
    if op == "cmaes":
        sampler: Any = optuna.samplers.CmaEsSampler(
            seed=0,
            n_startup_trials=startup,
            independent_sampler=optuna.samplers.RandomSampler(seed=0),
            warn_independent_sampling=False,
        )
        study = optuna.create_study(direction=direction, sampler=sampler)
        # Its history as it happened: each trial asked once the ones finished before it were told.
        asked: dict[int, Any] = {}
        finished_records = [r for r in records if r.finished_order is not None]
        told = 0
        for record in records:
            while (
                told < len(finished_records)
                and finished_records[told].finished_order < record.suggested_after
            ):
                _tell(study, asked.pop(finished_records[told].index), finished_records[told])
                told += 1
            asked[record.index] = study.ask(fixed_distributions=distributions)
        for record in finished_records[told:]:
            _tell(study, asked.pop(record.index), record)
    elif op == "bayesian":
        sampler = optuna.samplers.TPESampler(
            seed=0, n_startup_trials=startup, constant_liar=True, multivariate=True
        )
        study = optuna.create_study(direction=direction, sampler=sampler)
        study.add_trials(_frozen(optuna, r, distributions) for r in records)
    else:
        judged = judged_record(op, records, finished)
        study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
        study.add_trials(_frozen(optuna, r, distributions) for r in records if r.index != judged.index)
        study.add_trial(_frozen(optuna, judged, distributions))
        trial = study.get_trials(deepcopy=False)[-1]
        rules = sweep.early_stopping
        assert rules is not None
        pruner: Any = (
            optuna.pruners.MedianPruner(
                n_startup_trials=rules.min_trials,
                n_warmup_steps=rules.start_step,
                n_min_trials=rules.min_trials,
            )
            if op == "median"
            else optuna.pruners.SuccessiveHalvingPruner(
                min_resource=rules.start_step,
                reduction_factor=rules.reduction_factor,
                min_early_stopping_rate=0,
            )
        )
        return lambda _: pruner.prune(study, trial)

    def ask(_: int) -> Any:
        trial = study.ask(fixed_distributions=distributions)
        study.tell(trial, state=state.FAIL)  # a failed trial: neither sampler learns from it
        return trial.params

    return ask


def _tell(study: Any, trial: Any, record: TrialRecord) -> None:
    import optuna

    for step, value in record.curve:
        trial.report(value, step)
    state = optuna.trial.TrialState
    if record.phase == TrialPhase.SUCCEEDED:
        study.tell(trial, record.value)
    else:
        study.tell(trial, state=state.PRUNED if record.phase == TrialPhase.PRUNED else state.FAIL)


def _frozen(optuna: Any, record: TrialRecord, distributions: Mapping[str, Any]) -> Any:
    state = optuna.trial.TrialState
    phases = {
        TrialPhase.SUCCEEDED: state.COMPLETE,
        TrialPhase.PRUNED: state.PRUNED,
        TrialPhase.FAILED: state.FAIL,
        TrialPhase.RUNNING: state.RUNNING,
    }
    return optuna.trial.create_trial(
        state=phases[record.phase],
        value=record.value if record.phase == TrialPhase.SUCCEEDED else None,
        params=dict(record.params),
        distributions=dict(distributions),
        intermediate_values=dict(record.curve),
        system_attrs={f"completed_rung_{k}": v for k, v in enumerate(record.rungs)},
    )


def measure(op: str, finished: int, repeat: int, compact: bool) -> dict[str, Any]:
    """In this process: the operator's call ``repeat`` times after a first one, then the baseline's."""
    records, facts = operator_records(finished, compact)
    sweep = make_sweep(op)
    call = operator_call(op, sweep, records, finished)
    rss_before, peak_before = current_rss_mib(), peak_rss_mib()
    started = time.perf_counter()
    first_result = call(1_000_000)
    first = time.perf_counter() - started
    rss_first = current_rss_mib()
    seconds, cpu_seconds = [], []
    for attempt in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        call(attempt)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    rss_after, peak_after = current_rss_mib(), peak_rss_mib()
    base = baseline_call(op, sweep, records, finished)
    base(-1)  # warm
    base_seconds = []
    for attempt in range(repeat):
        started = time.perf_counter()
        base(attempt)
        base_seconds.append(time.perf_counter() - started)
    pruned = getattr(first_result, "pruning", None)
    return {
        "op": op,
        "trials": finished,
        "records": len(records),
        **facts,
        "first_s": first,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "baseline_seconds": base_seconds,
        "rss_before_mib": rss_before,
        "rss_first_mib": rss_first - rss_before,
        "rss_repeats_mib": rss_after - rss_first,
        "peak_above_mib": max(peak_after, peak_before) - rss_before,
        "verdict": None if op in ("bayesian", "cmaes") else ("pruned" if pruned else "kept"),
    }


# -- the run ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="finished trials")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per operation and size")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 100 and 300, 5 repeats")
    parser.add_argument(
        "--full-curves",
        action="store_true",
        help="every trial keeps its whole curve (the status drops old curves past its byte budget)",
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("OP", "TRIALS", "REPEAT", "COMPACT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = [100, 300], 5
    return args


def main() -> int:
    args = _arguments()
    if args.child:
        op, finished, repeat, compact = args.child[0], int(args.child[1]), int(args.child[2]), args.child[3]
        print(json.dumps(measure(op, finished, repeat, compact == "compact")))
        return 0
    import optuna

    print(
        f"Optuna {optuna.__version__}; the search space of bench/sweep_search.py; {EPOCHS}-epoch curves; "
        f"parallelism {PARALLELISM}; {args.repeat} timed calls after a first one; a fresh process per row"
    )
    rows = []
    for finished in args.sizes:
        for op in args.ops:
            if op == "cmaes" and finished > MAX_CMAES_TRIALS - PARALLELISM:
                finished = MAX_CMAES_TRIALS - PARALLELISM
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    op,
                    str(finished),
                    str(args.repeat),
                    "full" if args.full_curves else "compact",
                ],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                json.dumps(
                    {
                        k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in row.items()
                        if k not in ("seconds", "cpu_seconds", "baseline_seconds")
                    }
                    | {
                        "p50_s": round(statistics.median(row["seconds"]), 4),
                        "max_s": round(max(row["seconds"]), 4),
                    }
                ),
                flush=True,
            )
    print(
        f"\n{'operation':<9} {'trials':>6} {'curves':>6} {'first s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU p50 ms':>10} {'bare p50 ms':>11} {'ratio':>6} {'RSS MiB':>8} {'+first':>7} {'+repeats':>8} "
        f"{'peak +':>7} {'p99 <= 1 s':>10}"
    )
    for row in rows:
        p50, p99 = statistics.median(row["seconds"]), percentile(row["seconds"], 0.99)
        bare = statistics.median(row["baseline_seconds"])
        print(
            f"{row['op']:<9} {row['trials']:>6} {row['curves_kept']:>6} {row['first_s']:>8.2f} "
            f"{1000 * p50:>8.1f} {1000 * p99:>8.1f} {1000 * statistics.median(row['cpu_seconds']):>10.1f} "
            f"{1000 * bare:>11.2f} {p50 / bare:>6.0f} "
            f"{row['rss_before_mib']:>8.1f} {row['rss_first_mib']:>+7.1f} {row['rss_repeats_mib']:>+8.1f} "
            f"{row['peak_above_mib']:>+7.1f} {'yes' if p99 <= TARGET_P99 else 'NO':>10}"
        )
    if len(args.sizes) > 1:
        small, large = min(args.sizes), max(args.sizes)
        print(f"\ngrowth of p50 from {small} to {large} trials ({large / small:.0f}x the trials):")
        for op in args.ops:
            by_size = {r["trials"]: statistics.median(r["seconds"]) for r in rows if r["op"] == op}
            top = max(by_size)
            print(f"  {op:<9} {by_size[top] / by_size[min(by_size)]:>6.1f}x (to {top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
