"""Benchmark: does a sweep's search learn, and what does early stopping save?

A real search space on the trainer's TorchMLP, trained on scikit-learn's load_digits (1,797 rows, 64
features, 10 classes) with a stratified held-out split drawn with the seed (30% of the rows by default);
the objective is the held-out accuracy after a fixed number of epochs (12):

    lr            float, log   [1e-4, 1e-1]
    width         int,   log   [16, 256]      hidden layer width
    depth         int          [1, 3]         hidden layers (hidden_sizes = [width] * depth)
    weight_decay  float, log   [1e-6, 1e-2]   Adam's L2 penalty

Every parameter suggestion and every pruning decision is the operator's own: each sweep is a
modelloop.api.Sweep, each trial's parameters come from modelloop.training.sweep.trial_params and each
running trial is judged after every epoch by modelloop.training.search.judge, on the TrialRecords that
the operator's status would hold (parallelism 1: a trial is suggested once the previous one finished).
Training runs in the trainer's environment: one long-lived worker (bench/sweep_worker.py under
.venvs/trainer/bin/python) trains a trial on request and reports the held-out accuracy after each epoch;
a pruned trial stops there, and the epochs actually trained are counted.

For every seed (the run's seed: the sampler's seed, the held-out split and the network's initialisation)
and the same budget of trials (24):

- strategies: Grid (a grid over the same ranges with as many points as the budget: the centres of equal
  bins on the log ranges, the depths spread out), Random, Bayesian (TPE) and CMAES. Per strategy: the best
  accuracy reached (mean ± standard deviation over the seeds, min, max; the difference from Random, the
  baseline) and the number of trials it took to get within 1% (relative) of the best accuracy that any of
  the four reached for that seed (median over the seeds that got there, and how many did); the share of
  its trials within that 1%, and the mean accuracy of its later half of trials (a search that learns
  spends more of its trials where the accuracy is high);
- early stopping: Bayesian again with each --stopping rule. By default Median with Katib's defaults
  (startStep 4, minTrials 3, also the operator's), Median tuned (startStep 2, minTrials 3) and
  SuccessiveHalving (startStep 2, reductionFactor 3); the tuned ones were picked on seeds 0-4, so check
  them on others (--first-seed 5). Against Bayesian without early stopping on the same seeds (the
  baseline): the trial-epochs spent, the trials pruned, the best accuracy lost (per seed, the baseline's
  best less this one's, relative), the epochs it took to get within 1% of the seed's best, and what the
  baseline had reached with the same number of trial-epochs. The target is at least 40% fewer
  trial-epochs for at most 0.5% of the best accuracy lost (mean over the seeds).

    .venv/bin/python bench/sweep_search.py [--seeds 5] [--trials 24] [--epochs 12]
        [--first-seed 0] [--stopping Median:4:3 Median:2:3 SuccessiveHalving:2:3] [--quick]

--quick is a smoke run (2 seeds, 8 trials, 6 epochs). Training and the search are deterministic for a
seed, so a run repeats its figures exactly; the spread is over the seeds. Nothing is downloaded: the data
ships with scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelloop.api import Sweep, TrialPhase
from modelloop.api.meta import ParamValue
from modelloop.training import search
from modelloop.training.search import TrialRecord
from modelloop.training.sweep import trial_params

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "sweep_worker.py"
METRIC = "accuracy"
STRATEGIES = ("Grid", "Random", "Bayesian", "CMAES")
BASELINE = "Random"
WITHIN = 0.01
"""Within 1% (relative) of the seed's best."""
TARGET_SAVED, TARGET_LOST = 0.40, 0.005
SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    "width": {"type": "int", "min": 16, "max": 256, "log": True},
    "depth": {"type": "int", "min": 1, "max": 3},
    "weight_decay": {"type": "float", "min": 1e-6, "max": 1e-2, "log": True},
}
DEFAULT_STOPPING = ("Median:4:3", "Median:2:3", "SuccessiveHalving:2:3")
GRID_PRIORITY = ("lr", "width", "depth", "weight_decay")
"""The order in which the grid's axes get another value as the budget allows."""


# -- the sweeps ------------------------------------------------------------------------------------


def grid_counts(budget: int, axes: Sequence[str] = GRID_PRIORITY) -> dict[str, int]:
    """Values per axis for a grid of at most ``budget`` points: each axis in turn gets one more value while
    the product stays within the budget."""
    counts = dict.fromkeys(axes, 1)
    grown = True
    while grown:
        grown = False
        for axis in axes:
            if math.prod(counts.values()) // counts[axis] * (counts[axis] + 1) <= budget:
                counts[axis] += 1
                grown = True
    return counts


def grid_values(spec: Mapping[str, Any], count: int) -> list[ParamValue]:
    """``count`` values spread over a range: the centres of equal bins (on the log scale for a log range;
    ints rounded), or an int range's ends and evenly spaced values between them."""
    low, high, log = float(spec["min"]), float(spec["max"]), bool(spec.get("log"))
    if spec["type"] == "int" and not log:
        if count == 1:
            return [round((low + high) / 2)]
        return [round(low + (high - low) * i / (count - 1)) for i in range(count)]
    if log:
        values = [low * (high / low) ** ((i + 0.5) / count) for i in range(count)]
    else:
        values = [low + (high - low) * (i + 0.5) / count for i in range(count)]
    if spec["type"] == "int":
        return [round(v) for v in values]
    return [float(f"{v:.3g}") for v in values]


def grid_parameters(budget: int) -> dict[str, list[ParamValue]]:
    counts = grid_counts(budget)
    return {name: grid_values(SPACE[name], counts[name]) for name in SPACE}


def make_sweep(strategy: str, trials: int, stopping: Mapping[str, Any] | None = None) -> Sweep:
    raw: dict[str, Any] = {"strategy": strategy, "parallelism": 1, "objective": {"metric": METRIC}}
    if strategy == "Grid":
        raw["parameters"] = grid_parameters(trials)
    else:
        raw.update(space=SPACE, maxTrials=trials)
    if stopping is not None:
        raw["earlyStopping"] = dict(stopping)
    return Sweep.model_validate(raw)


def parse_stopping(text: str) -> dict[str, Any]:
    """``Median:<startStep>:<minTrials>`` or ``SuccessiveHalving:<startStep>:<reductionFactor>``."""
    rule, start, third = text.split(":")
    if rule == "Median":
        return {"rule": rule, "startStep": int(start), "minTrials": int(third)}
    if rule == "SuccessiveHalving":
        return {"rule": rule, "startStep": int(start), "reductionFactor": int(third)}
    raise argparse.ArgumentTypeError(f"unknown rule {rule!r}: Median or SuccessiveHalving")


def stopping_label(stopping: Mapping[str, Any]) -> str:
    if stopping["rule"] == "Median":
        katib = " (Katib)" if (stopping["startStep"], stopping["minTrials"]) == (4, 3) else ""
        return f"Median start {stopping['startStep']} min {stopping['minTrials']}{katib}"
    return f"SH start {stopping['startStep']} factor {stopping['reductionFactor']}"


# -- the trainer worker ----------------------------------------------------------------------------


class Worker:
    """The trainer-side process (bench/sweep_worker.py): one trial at a time, an answer after each epoch."""

    def __init__(self, python: str, threads: int, batch_size: int, validation: float) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [python, str(WORKER), "--threads", str(threads), "--batch-size", str(batch_size),
                   "--validation", str(validation)]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the trainer worker exited ({self.process.wait()}); its stderr is above")
        message: dict[str, Any] = json.loads(line)
        return message

    def _write(self, message: Mapping[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def train(
        self, seed: int, params: Mapping[str, ParamValue], epochs: int, go_on: Callable[[int, float], bool]
    ) -> tuple[list[tuple[int, float]], float]:
        """Train one trial; ``go_on(step, accuracy)`` after each epoch says whether it continues. Returns the
        curve (the epochs trained) and the training seconds."""
        self._write({"seed": seed, "epochs": epochs, "params": dict(params)})
        curve: list[tuple[int, float]] = []
        while True:
            message = self._read()
            if message.get("done"):
                return curve, float(message["seconds"])
            step, accuracy = int(message["step"]), float(message["accuracy"])
            curve.append((step, accuracy))
            self._write({"stop": not go_on(step, accuracy)})

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


# -- one sweep -------------------------------------------------------------------------------------


@dataclass
class SweepRun:
    """One sweep on one seed, trial by trial."""

    label: str
    seed: int
    values: list[float | None] = field(default_factory=list)
    """Each trial's objective (None: pruned)."""
    epochs: list[int] = field(default_factory=list)
    """Epochs each trial trained."""
    params: list[dict[str, ParamValue]] = field(default_factory=list)
    suggest_seconds: list[float] = field(default_factory=list)
    judge_seconds: list[float] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def best(self) -> float:
        return max((v for v in self.values if v is not None), default=float("nan"))

    @property
    def pruned(self) -> int:
        return sum(v is None for v in self.values)


def run_sweep(sweep: Sweep, label: str, seed: int, epochs: int, worker: Worker) -> SweepRun:
    """Run the sweep as the operator would at parallelism 1: suggest, train, judge after each epoch."""
    run = SweepRun(label, seed)
    records: list[TrialRecord] = []
    for index in range(sweep.trial_count()):
        started = time.perf_counter()
        params = trial_params(sweep, index, records, seed)
        run.suggest_seconds.append(time.perf_counter() - started)
        record, trained, seconds = run_trial(
            sweep, index, params, records, seed, epochs, worker, run.judge_seconds
        )
        records.append(record)
        run.train_seconds += seconds
        run.values.append(record.value)
        run.epochs.append(trained)
        run.params.append(params)
    return run


def run_trial(
    sweep: Sweep,
    index: int,
    params: dict[str, ParamValue],
    records: Sequence[TrialRecord],
    seed: int,
    epochs: int,
    worker: Worker,
    judge_seconds: list[float],
) -> tuple[TrialRecord, int, float]:
    """Train one trial, judged after every epoch but the last against the finished ``records``. Returns its
    record as the operator's status holds it once finished (a curve only with early stopping, as there), the
    epochs it trained and its training seconds."""
    curve: list[tuple[int, float]] = []
    rungs: tuple[float, ...] = ()

    def go_on(step: int, accuracy: float) -> bool:
        nonlocal rungs
        curve.append((step, accuracy))
        if sweep.early_stopping is None or step >= epochs:
            return True  # the last epoch ends the trial, which succeeds: the operator judges running ones
        running = TrialRecord(
            index, params, TrialPhase.RUNNING, curve=tuple(curve), rungs=rungs, suggested_after=len(records)
        )
        started = time.perf_counter()
        verdict = search.judge(sweep, [*records, running], running)
        judge_seconds.append(time.perf_counter() - started)
        rungs = verdict.rungs
        return verdict.pruning is None

    trained, seconds = worker.train(seed, params, epochs, go_on)
    assert trained == curve
    pruned = len(curve) < epochs
    record = TrialRecord(
        index,
        params,
        TrialPhase.PRUNED if pruned else TrialPhase.SUCCEEDED,
        value=None if pruned else curve[-1][1],
        curve=tuple(curve) if sweep.early_stopping is not None else (),
        rungs=rungs,
        suggested_after=len(records),
        finished_order=len(records),
    )
    return record, len(curve), seconds


# -- the figures -----------------------------------------------------------------------------------


def trials_to_reach(values: Sequence[float | None], target: float) -> int | None:
    """How many trials it took until one reached ``target`` (None: none did)."""
    for count, value in enumerate(values, start=1):
        if value is not None and value >= target:
            return count
    return None


def epochs_to_reach(values: Sequence[float | None], epochs: Sequence[int], target: float) -> int | None:
    """The trial-epochs spent until a trial reached ``target`` (that trial's included; None: none did)."""
    count = trials_to_reach(values, target)
    return None if count is None else sum(epochs[:count])


def best_within_epochs(values: Sequence[float | None], epochs: Sequence[int], budget: int) -> float:
    """The best objective of the trials that finished within ``budget`` trial-epochs."""
    spent, best = 0, float("nan")
    for value, trained in zip(values, epochs, strict=True):
        spent += trained
        if spent > budget:
            break
        if value is not None and (math.isnan(best) or value > best):
            best = value
    return best


def share_reaching(values: Sequence[float | None], target: float) -> float:
    """The share of the trials whose objective reached ``target``."""
    return sum(v is not None and v >= target for v in values) / len(values)


def later_half_mean(values: Sequence[float | None]) -> float:
    """The mean objective of the later half of the trials (those that finished)."""
    later = [v for v in values[len(values) // 2 :] if v is not None]
    return statistics.mean(later) if later else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def reached_summary(counts: Sequence[int | None]) -> str:
    """Median [min-max] of the counts that reached the target, and how many did."""
    got = [c for c in counts if c is not None]
    if not got:
        return f"- (0/{len(counts)})"
    return f"{statistics.median(got):g} [{min(got)}-{max(got)}] ({len(got)}/{len(counts)})"


# -- the run ---------------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 (default 0)")
    parser.add_argument("--trials", type=int, default=24, help="the budget of trials of every sweep")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every trial")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--validation", type=float, default=0.3, help="held-out fraction")
    parser.add_argument(
        "--stopping",
        type=parse_stopping,
        nargs="*",
        default=None,
        help="early-stopping rules to try on Bayesian: Median:<startStep>:<minTrials> or "
        f"SuccessiveHalving:<startStep>:<reductionFactor> (default {' '.join(DEFAULT_STOPPING)})",
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--threads", type=int, default=1, help="the worker's torch threads")
    parser.add_argument("--trainer-python", default=str(ROOT / ".venvs" / "trainer" / "bin" / "python"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 8 trials, 6 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs = 2, 8, 6
    if args.stopping is None:
        args.stopping = [parse_stopping(rule) for rule in DEFAULT_STOPPING]
    if "Bayesian" not in args.strategies and args.stopping:
        args.strategies.append("Bayesian")  # the baseline of early stopping
    return args


def main() -> int:
    args = _arguments()
    began = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    worker = Worker(args.trainer_python, args.threads, args.batch_size, args.validation)
    info = worker.info
    grid = grid_parameters(args.trials)
    print(
        f"TorchMLP on load_digits ({info['rows']} rows, {info['features']} features, {info['classes']} "
        f"classes; {args.validation:.0%} held out per seed), {args.epochs} epochs, batch {args.batch_size}; "
        f"{args.trials} trials per sweep, seeds {seeds[0]}-{seeds[-1]}; torch {info['torch']}, "
        f"{info['threads']} thread(s){'' if info['per_epoch'] else ', refitting per epoch (no on_epoch)'}"
    )
    print("space: " + ", ".join(f"{name} {json.dumps(spec)}" for name, spec in SPACE.items()))
    print(f"grid ({math.prod(len(v) for v in grid.values())} points): {json.dumps(grid)}")
    configs: list[tuple[str, Sweep]] = [(s, make_sweep(s, args.trials)) for s in args.strategies]
    configs += [(stopping_label(s), make_sweep("Bayesian", args.trials, s)) for s in args.stopping]
    runs: dict[tuple[str, int], SweepRun] = {}
    try:
        for seed in seeds:
            for label, sweep in configs:
                run = run_sweep(sweep, label, seed, args.epochs, worker)
                runs[label, seed] = run
                print(
                    json.dumps(
                        {
                            "sweep": label,
                            "seed": seed,
                            "best": round(run.best, 4),
                            "trials": len(run.values),
                            "pruned": run.pruned,
                            "epochs": sum(run.epochs),
                            "train_s": round(run.train_seconds, 2),
                            "suggest_s": round(sum(run.suggest_seconds), 3),
                            "judge_s": round(sum(run.judge_seconds), 3),
                        }
                    ),
                    flush=True,
                )
    finally:
        worker.close()
    target = {seed: max(runs[s, seed].best for s in args.strategies) for seed in seeds}
    report_strategies(runs, args.strategies, seeds, target)
    if args.stopping:
        report_stopping(runs, [stopping_label(s) for s in args.stopping], seeds, args.epochs, target)
    print(f"\nwall time {time.perf_counter() - began:.0f} s")
    return 0


def report_strategies(
    runs: Mapping[tuple[str, int], SweepRun],
    strategies: Sequence[str],
    seeds: range,
    target: Mapping[int, float],
) -> None:
    baseline = BASELINE if BASELINE in strategies else strategies[0]
    print(
        f"\nThe search, {len(seeds)} seeds; baseline {baseline}. best: the sweep's best held-out accuracy "
        f"(mean ± sd over the seeds, min, max); to {WITHIN:.0%}: trials until one got within {WITHIN:.0%} of "
        f"the seed's best of any strategy ({', '.join(f'{target[s]:.4f}' for s in seeds)}), median [range] "
        f"(seeds that got there); within: the share of its trials within {WITHIN:.0%}; 2nd half: the mean "
        "accuracy of its later half of trials; suggest: trial_params per trial"
    )
    print(
        f"{'strategy':<10} {'trials':>6} {'best mean ± sd':>17} {'min':>7} {'max':>7} {'vs ' + baseline:>10} "
        f"{'to within 1%':>18} {'within':>7} {'2nd half':>8} {'suggest ms':>10} {'train s':>8}"
    )
    base_best = {seed: runs[baseline, seed].best for seed in seeds}
    for strategy in strategies:
        rows = [runs[strategy, seed] for seed in seeds]
        bests = [r.best for r in rows]
        mean, sd = spread(bests)
        delta = statistics.mean(r.best - base_best[r.seed] for r in rows)
        counts = [trials_to_reach(r.values, target[r.seed] * (1 - WITHIN)) for r in rows]
        within = statistics.mean(share_reaching(r.values, target[r.seed] * (1 - WITHIN)) for r in rows)
        later = statistics.mean(later_half_mean(r.values) for r in rows)
        suggest_ms = 1000 * statistics.mean(s for r in rows for s in r.suggest_seconds)
        train = statistics.mean(r.train_seconds for r in rows)
        print(
            f"{strategy:<10} {len(rows[0].values):>6} {mean:>9.4f} ± {sd:.4f} {min(bests):>7.4f} "
            f"{max(bests):>7.4f} {delta * 100:>+8.2f}pp {reached_summary(counts):>18} {within:>7.0%} "
            f"{later:>8.4f} {suggest_ms:>10.1f} {train:>8.1f}"
        )


def report_stopping(
    runs: Mapping[tuple[str, int], SweepRun],
    labels: Sequence[str],
    seeds: range,
    epochs: int,
    target: Mapping[int, float],
) -> None:
    base = {seed: runs["Bayesian", seed] for seed in seeds}
    base_epochs = sum(sum(r.epochs) for r in base.values())
    trials = len(base[seeds[0]].values)
    print(
        f"\nEarly stopping on Bayesian, against Bayesian without it (the baseline), {len(seeds)} seeds. "
        f"epochs: trial-epochs summed over the seeds (baseline {trials} trials x {epochs} epochs x "
        f"{len(seeds)}); lost: (baseline's best - its best) / baseline's best per seed, mean and worst seed; "
        "same epochs: the baseline's best within as many trial-epochs (mean); to 1%: trial-epochs until a "
        f"trial got within {WITHIN:.0%} of the seed's best; judge: search.judge per call. Target: >= "
        f"{TARGET_SAVED:.0%} fewer trial-epochs for <= {TARGET_LOST:.1%} lost (mean)"
    )
    print(
        f"{'early stopping':<30} {'epochs':>6} {'saved':>6} {'pruned':>8} {'best':>7} {'lost':>7} "
        f"{'worst':>6} {'same epochs':>11} {'to 1%':>17} {'judge ms':>8} {'target':>6}"
    )
    for label in ["Bayesian", *labels]:
        rows = [runs[label, seed] for seed in seeds]
        spent = sum(sum(r.epochs) for r in rows)
        saved = 1 - spent / base_epochs
        lost = [(base[r.seed].best - r.best) / base[r.seed].best for r in rows]
        mean_lost = round(statistics.mean(lost), 4) + 0.0  # to the 0.01% printed, and no "-0.00%"
        same = [best_within_epochs(base[r.seed].values, base[r.seed].epochs, sum(r.epochs)) for r in rows]
        reach = [epochs_to_reach(r.values, r.epochs, target[r.seed] * (1 - WITHIN)) for r in rows]
        judged = [s for r in rows for s in r.judge_seconds]
        judge_ms = f"{1000 * statistics.mean(judged):.1f}" if judged else "-"
        if label == "Bayesian":
            name, met = "none (baseline)", "-"
        else:
            name, met = label, "met" if saved >= TARGET_SAVED and mean_lost <= TARGET_LOST else "missed"
        pruned = f"{sum(r.pruned for r in rows)}/{sum(len(r.values) for r in rows)}"
        best = statistics.mean(r.best for r in rows)
        print(
            f"{name:<30} {spent:>6} {saved:>6.0%} {pruned:>8} {best:>7.4f} {mean_lost:>7.2%} "
            f"{max(lost):>6.2%} {statistics.mean(same):>11.4f} {reached_summary(reach):>17} {judge_ms:>8} "
            f"{met:>6}"
        )


if __name__ == "__main__":
    sys.exit(main())
