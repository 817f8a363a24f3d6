"""The training side of bench/sweep_search.py: trains one TorchMLP trial at a time on request.

It runs in the trainer's environment (torch, scikit-learn, modelloop_trainer), started once by the bench:

    .venvs/trainer/bin/python bench/sweep_worker.py [--threads 1] [--batch-size 64] [--validation 0.3]

and speaks JSON lines, one object a line, requests on stdin and answers on stdout:

- it says {"ready": true, "torch": ..., "rows": ..., "features": ..., "classes": ...} once the data is loaded;
- a request {"seed": 0, "epochs": 12, "params": {"lr": ..., "width": ..., "depth": ..., "weight_decay": ...}}
  trains TorchMLP(hidden_sizes=[width] * depth, lr, weight_decay, seed) on scikit-learn's load_digits, less a
  stratified held-out split drawn with the seed (the same rows for every trial of that seed);
- after every epoch it sends {"step": k, "accuracy": a} (accuracy on the held-out rows) and waits for the
  bench's {"stop": false} to go on, or {"stop": true} to end the trial there (a pruned trial trains no
  further epoch);
- at the end of a trial it sends {"done": true, "epochs": trained, "seconds": training time}.

Anything else that would print to stdout goes to stderr, so that stdout carries the protocol alone.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Any, TextIO

import numpy as np
import torch
from modelloop_trainer.torch_mlp import TorchMLP
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class _Stopped(Exception):
    """The bench stopped the trial after this epoch."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.epoch = epoch


def _send(protocol: TextIO, message: dict[str, Any]) -> None:
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def _receive() -> dict[str, Any] | None:
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def _train(
    protocol: TextIO, request: dict[str, Any], split: list[np.ndarray], batch_size: int, per_epoch: bool
) -> dict[str, Any]:
    """Train one trial, reporting each epoch's held-out accuracy and stopping when the bench says so."""
    seed, epochs, params = int(request["seed"]), int(request["epochs"]), request["params"]
    x_train, x_val, y_train, y_val = split

    def model_for(epochs: int) -> TorchMLP:
        return TorchMLP(
            task="classification",
            hidden_sizes=[int(params["width"])] * int(params["depth"]),
            epochs=epochs,
            lr=float(params["lr"]),
            batch_size=batch_size,
            weight_decay=float(params["weight_decay"]),
            seed=seed,
            device="cpu",
        )

    model = model_for(epochs)

    def on_epoch(epoch: int) -> None:
        accuracy = float(np.mean(model.predict(x_val) == y_val))
        _send(protocol, {"step": epoch, "accuracy": accuracy})
        reply = _receive()
        if reply is None or reply.get("stop"):
            raise _Stopped(epoch)

    started = time.perf_counter()
    trained = epochs
    try:
        if per_epoch:
            model.fit(x_train, y_train, on_epoch=on_epoch)
        else:
            for epoch in range(1, epochs + 1):
                model = model_for(epoch)
                model.fit(x_train, y_train)
                on_epoch(epoch)
    except _Stopped as stopped:
        trained = stopped.epoch
    return {"done": True, "epochs": trained, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--validation", type=float, default=0.3, help="held-out fraction")
    args = parser.parse_args()

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch.set_num_threads(args.threads)
    # A trainer whose TorchMLP.fit takes no on_epoch callback: epoch k is then a fresh fit of k epochs, the
    # same network as the long fit's at epoch k (the fit is deterministic for a seed), at a quadratic cost.
    per_epoch = "on_epoch" in inspect.signature(TorchMLP.fit).parameters
    if not per_epoch:
        print("sweep_worker: TorchMLP.fit has no on_epoch; refitting for every epoch", file=sys.stderr)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    splits: dict[int, list[np.ndarray]] = {}
    _send(
        protocol,
        {
            "ready": True,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rows": int(x.shape[0]),
            "features": int(x.shape[1]),
            "classes": len(np.unique(y)),
            "per_epoch": per_epoch,
        },
    )
    while (request := _receive()) is not None:
        seed = int(request["seed"])
        if seed not in splits:
            splits[seed] = train_test_split(x, y, test_size=args.validation, stratify=y, random_state=seed)
        _send(protocol, _train(protocol, request, splits[seed], args.batch_size, per_epoch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
