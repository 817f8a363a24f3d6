"""Time per epoch of the trainer's TorchMLP on the CPU and on CUDA, on the same data with the same seed.

Run it in the trainer's environment (make trainer-venv):

    .venvs/trainer/bin/python bench/mlp_epoch.py [--rows 200000] [--features 64] [--epochs 3]

The data is scikit-learn's make_classification with a fixed seed. The first epoch also pays
for warm-up (CUDA context, kernel selection), so the per-epoch figure is the mean of the
later epochs. On a machine without CUDA it times the CPU alone and says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from modelloop_trainer.torch_mlp import TorchMLP, cuda_available
from sklearn.datasets import make_classification


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first one is warm-up")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cpu", action="store_true", help="time CUDA alone")
    parser.add_argument("--no-cuda-graph", action="store_true", help="launch every CUDA kernel eagerly")
    return parser.parse_args()


def _time_device(device: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> float:
    model = TorchMLP(
        task="classification",
        hidden_sizes=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        seed=args.seed,
        device=device,
        cuda_graph=not args.no_cuda_graph,
    )
    started = time.perf_counter()
    model.fit(x, y)
    total = time.perf_counter() - started
    steady = model.epoch_seconds_[1:] or model.epoch_seconds_
    per_epoch = statistics.mean(steady)
    epochs = ", ".join(f"{seconds:.3f}" for seconds in model.epoch_seconds_)
    losses = ", ".join(f"{loss:.5f}" for loss in model.loss_history_)
    graph = f", {model.graph_replays_} CUDA graph replays" if device == "cuda" else ""
    print(f"{device:>4}: {per_epoch:.3f} s/epoch (epochs: {epochs} s; fit {total:.2f} s{graph})")
    print(f"      losses: {losses}")
    return per_epoch


def main() -> int:
    args = _arguments()
    x, y = make_classification(
        n_samples=args.rows,
        n_features=args.features,
        n_informative=args.features // 2,
        n_classes=args.classes,
        random_state=args.seed,
    )
    x = x.astype(np.float32)
    threads = torch.get_num_threads()
    print(
        f"TorchMLP {args.hidden}, {args.rows} rows x {args.features} features, {args.classes} classes, "
        f"batch {args.batch_size}, {args.epochs} epochs, torch {torch.__version__}, {threads} CPU threads, "
        f"CUDA graph {'off' if args.no_cuda_graph else 'on'}"
    )
    cpu = None if args.skip_cpu else _time_device("cpu", x, y, args)
    if not cuda_available():
        print("cuda: unavailable (PyTorch sees no CUDA device); timed the CPU only")
        return 0
    print(f"cuda: {torch.cuda.get_device_name(0)}")
    gpu = _time_device("cuda", x, y, args)
    if cpu is not None:
        print(f"speed-up cuda vs cpu: {cpu / gpu:.1f}x per epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
