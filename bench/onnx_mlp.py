"""Single-row predictions of the trainer's TorchMLP: onnxruntime, as the model servers now run it, against
the PyTorch eager path that it replaced, one thread each, in one process.

Run it in the trainer's environment (make trainer-venv), which has both:

    .venvs/trainer/bin/python bench/onnx_mlp.py [--calls 2000] [--repeats 7] [--hidden 64 64]

It trains a TorchMLP (scikit-learn's make_classification with a fixed seed: 20 features, 3 classes, hidden
layers 64 and 64 unless told otherwise) and writes it with the trainer's own ``write_model``. Then:

- ``onnxruntime``: ``modelloop_contracts.load_predictor`` on the folder, the servers' very predictor
  (``model.onnx``, one intra-op and one inter-op thread);
- ``pytorch``: what the servers ran until now, rebuilt from the same ``model.pt``: the rows filled and
  standardized in numpy, the network under ``torch.inference_mode()``, argmax to the class labels; PyTorch
  limited to one thread.

- ``onnxruntime_with_probabilities``: the same predictor's ``predict_with_probabilities``, what the servers
  call when they answer a classifier's probabilities: one run of the graph for both outputs.

Each call predicts one held-out row, given as the servers give it (a float64 array of shape (1, 20)).
The paths take turns, ``--calls`` calls each per repeat, for ``--repeats`` repeats (the order reverses
in every other repeat), after a warm-up. It prints one JSON object: per path the median µs per row over
the repeats and their range, the ratio pytorch/onnxruntime and the ratio with probabilities/without
(median and range of the repeats' ratios; the servers' target for the latter is at most 1.05), and
whether all answered the same label for every held-out row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from modelloop_contracts import Predictor, load_predictor
from modelloop_trainer.artifacts import read_model, write_model
from modelloop_trainer.torch_mlp import TorchMLP
from sklearn.datasets import make_classification

Predict = Callable[[np.ndarray], np.ndarray]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="single-row calls per path and repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=500, help="calls per path before the first repeat")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def pytorch_eager(model: TorchMLP) -> Predict:
    """The servers' PyTorch predictor as it was: the trainer's network on the CPU, fill and
    standardization in numpy, one forward pass under inference_mode, argmax to the labels."""
    network = model.network_.cpu().eval()
    fill, mean, std = model.fill_, model.mean_, model.std_
    labels = np.asarray(model.classes_)

    def predict(rows: np.ndarray) -> np.ndarray:
        x = np.asarray(rows, dtype=np.float32)
        x = (np.where(np.isnan(x), fill, x) - mean) / std
        with torch.inference_mode():
            scores = network(torch.from_numpy(x)).numpy()
        return np.asarray(labels[scores.argmax(axis=1)])

    return predict


def per_row_microseconds(predict: Predict, rows: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for row in rows:
        predict(row)
    return (time.perf_counter() - started) / len(rows) * 1e6


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "repeats": [round(value, 2) for value in values],
    }


def main() -> None:
    args = _arguments()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    x, y = make_classification(
        n_samples=5000,
        n_features=args.features,
        n_informative=args.features // 2,
        n_classes=args.classes,
        random_state=args.seed,
    )
    train, held_out = slice(0, 4000), slice(4000, None)
    mlp = TorchMLP(hidden_sizes=args.hidden, epochs=5, batch_size=256, seed=args.seed).fit(x[train], y[train])
    with tempfile.TemporaryDirectory() as folder:
        write_model(Path(folder).as_uri(), mlp)
        served: Predictor = load_predictor(Path(folder))
        eager = pytorch_eager(read_model(Path(folder).as_uri()))

    rows = [x[index : index + 1] for index in range(4000, 5000)]
    calls = [rows[index % len(rows)] for index in range(args.calls)]
    agree = bool((served.predict(x[held_out]) == eager(x[held_out])).all())
    same_rows = all(served.predict(row)[0] == eager(row)[0] for row in rows)
    with_probabilities = served.predict_with_probabilities(x[held_out])[0]
    agree = agree and bool((with_probabilities == served.predict(x[held_out])).all())

    def labels_and_probabilities(rows: np.ndarray) -> np.ndarray:
        return served.predict_with_probabilities(rows)[0]

    paths: dict[str, Predict] = {
        "onnxruntime": served.predict,
        "pytorch": eager,
        "onnxruntime_with_probabilities": labels_and_probabilities,
    }
    for predict in paths.values():
        per_row_microseconds(predict, calls[: args.warmup])
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            timings[name].append(per_row_microseconds(paths[name], calls))
    ratios = [
        eager_us / onnx_us
        for eager_us, onnx_us in zip(timings["pytorch"], timings["onnxruntime"], strict=True)
    ]
    probability_ratios = [
        both_us / onnx_us
        for both_us, onnx_us in zip(
            timings["onnxruntime_with_probabilities"], timings["onnxruntime"], strict=True
        )
    ]
    print(
        json.dumps(
            {
                "model": f"TorchMLP {args.features}-{'-'.join(map(str, args.hidden))}-{args.classes}",
                "calls_per_repeat": args.calls,
                "repeats": args.repeats,
                "threads": 1,
                "onnxruntime": {
                    "version": onnxruntime.__version__,
                    "us_per_row": summary(timings["onnxruntime"]),
                },
                "pytorch": {"version": str(torch.__version__), "us_per_row": summary(timings["pytorch"])},
                "onnxruntime_with_probabilities": {
                    "us_per_row": summary(timings["onnxruntime_with_probabilities"])
                },
                "ratio_pytorch_over_onnxruntime": summary(ratios),
                "ratio_with_probabilities_over_without": summary(probability_ratios),
                "same_labels_batch_and_single_rows": agree and same_rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
