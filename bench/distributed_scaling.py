"""Time per epoch of the trainer's TorchMLP trained by 1, 2 and 4 processes under torchrun, on the same data.

Run it in the trainer's environment (make trainer-venv):

    .venvs/trainer/bin/python bench/distributed_scaling.py [--rows 200000] [--runs 3] [--processes 1 2 4]
    .venvs/trainer/bin/python bench/distributed_scaling.py --device cuda     # 1 vs 2 processes, a GPU each

Each measurement is a fresh ``torchrun --standalone --nproc-per-node N`` of this script, whose processes do
what the trainer's do: make the whole dataset (scikit-learn's make_classification, fixed seed, in process:
nothing is downloaded), then fit one TorchMLP, DistributedDataParallel with a DistributedSampler for N > 1
(gloo on the CPU, NCCL on CUDA), the plain single-process fit for N = 1. ``--batch-size`` is the global batch,
as in the trainer. An epoch's time is rank 0's; the first epoch is warm-up and left out, and a run's figure is
the median of the others. Every count runs ``--runs`` times, interleaved (1, 2, 4, 1, 2, 4, ...) so that the
machine's other load falls on all of them alike; the report gives each count's median over the runs, the
spread (min-max), and the speed-up against 1 process measured in the same invocation.

torchrun gives each process one CPU thread when it starts several (OMP_NUM_THREADS=1, unless it is set) and
leaves a single process PyTorch's default (one per core), which is how the trainer's pods run; ``--threads``
sets OMP_NUM_THREADS for every count instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "distributed-scaling "


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: the first one is warm-up")
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch, as in the trainer")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3, help="launches per process count")
    parser.add_argument("--processes", type=int, nargs="+", help="process counts (default: 1 2 4; CUDA: 1 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every process (default: torchrun's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up")
    if args.runs < 1 or args.rows < 100:
        parser.error("--runs must be at least 1 and --rows at least 100")
    return args


def _worker(args: argparse.Namespace) -> int:
    """One process of a launch: make the data, fit, and (rank 0) print the epochs' times as one JSON line."""
    import numpy as np
    import torch
    from modelloop_trainer.distributed import launch_from_env, process_group
    from modelloop_trainer.torch_mlp import TorchMLP
    from sklearn.datasets import make_classification

    launch = launch_from_env(os.environ)
    x, y = make_classification(
        n_samples=args.rows,
        n_features=args.features,
        n_informative=args.features // 2,
        n_classes=args.classes,
        random_state=args.seed,
    )
    model = TorchMLP(
        task="classification",
        hidden_sizes=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        seed=args.seed,
        device=args.device,
        cuda_graph=False,  # a distributed fit never uses CUDA graphs: compare like with like
    )
    with process_group(launch, args.device):
        started = time.perf_counter()
        model.fit(x.astype(np.float32), y, distributed=launch)
        fit_seconds = time.perf_counter() - started
    if launch is None or launch.is_primary:
        report = {
            "processes": 1 if launch is None else launch.world_size,
            "epoch_seconds": model.epoch_seconds_,
            "fit_seconds": fit_seconds,
            "threads": torch.get_num_threads(),
            "final_loss": model.loss_history_[-1],
        }
        print(RESULT_PREFIX + json.dumps(report), flush=True)
    return 0


def _launch(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """One torchrun launch of ``processes`` workers; rank 0's report."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        str(Path(__file__).resolve()),
        "--worker",
        *_worker_options(args),
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PET_")}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    finished = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(
            f"{processes} processes failed ({finished.returncode}):\n{finished.stderr[-3000:]}"
        )
    lines = [line for line in finished.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if len(lines) != 1:
        raise RuntimeError(f"{processes} processes printed {len(lines)} reports:\n{finished.stdout[-3000:]}")
    report: dict[str, Any] = json.loads(lines[0].removeprefix(RESULT_PREFIX))
    return report


def _worker_options(args: argparse.Namespace) -> list[str]:
    return [
        *("--rows", str(args.rows), "--features", str(args.features), "--classes", str(args.classes)),
        *("--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)),
        *("--device", args.device, "--hidden", *(str(size) for size in args.hidden)),
    ]


def _process_counts(args: argparse.Namespace) -> list[int]:
    if args.processes:
        counts: list[int] = sorted(set(args.processes))
    else:
        counts = [1, 2] if args.device == "cuda" else [1, 2, 4]
    if args.device == "cuda":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            print("no CUDA device here: nothing to time on the GPU")
            return []
        too_many = [count for count in counts if count > gpus]
        if too_many:
            print(f"{gpus} GPU(s) here: leaving out {too_many} processes (NCCL needs one GPU per process)")
        counts = [count for count in counts if count <= gpus]
    return counts if 1 in counts else [1, *counts]


def main() -> int:
    args = _arguments()
    if args.worker:
        return _worker(args)
    counts = _process_counts(args)
    if not counts:
        return 0
    print(
        f"TorchMLP {args.hidden}, {args.rows} rows x {args.features} features, {args.classes} classes, "
        f"global batch {args.batch_size}, {args.epochs} epochs (first is warm-up), {args.device}, "
        f"{os.cpu_count()} CPU cores, {args.runs} runs per count, "
        f"OMP_NUM_THREADS {args.threads or 'torchrun default'}"
    )
    figures: dict[int, list[float]] = {count: [] for count in counts}
    threads: dict[int, int] = {}
    for run in range(1, args.runs + 1):
        for count in counts:
            report = _launch(args, count)
            per_epoch = statistics.median(report["epoch_seconds"][1:])
            figures[count].append(per_epoch)
            threads[count] = report["threads"]
            epochs = ", ".join(f"{seconds:.3f}" for seconds in report["epoch_seconds"])
            print(
                f"run {run}, {count} process(es): {per_epoch:.3f} s/epoch (epochs {epochs}; "
                f"final loss {report['final_loss']:.4f})",
                flush=True,
            )
    baseline = statistics.median(figures[1])
    header = ("processes", "threads", "median s/epoch", "min-max", "rows/s", "speed-up")
    print("{:>9} {:>7} {:>14} {:>13} {:>9} {:>8}".format(*header))
    for count in counts:
        median = statistics.median(figures[count])
        spread = f"{min(figures[count]):.3f}-{max(figures[count]):.3f}"
        print(
            f"{count:>9} {threads[count]:>7} {median:>14.3f} {spread:>13} {args.rows / median:>9.0f} "
            f"{baseline / median:>7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
