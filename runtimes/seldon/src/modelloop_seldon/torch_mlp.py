"""The trainer's PyTorch MLP (``model.pt`` + ``model.json``), rebuilt for serving.

The network is re-created from the architecture the trainer wrote (``Linear`` and ``ReLU`` layers
in a ``Sequential``, so the state's keys match) and the weights are loaded with
``torch.load(weights_only=True)``, which unpickles tensors only: no code from the artifact runs.
:func:`load_torch_mlp` is the ``load_torch`` that ``modelloop_contracts.load_predictor`` calls.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from modelloop_contracts import Array, ArtifactError, Predictor

ARCHITECTURE_FORMAT = "modelloop-torch-mlp/v1"


def load_torch_mlp(weights: bytes, architecture: dict[str, Any]) -> Predictor:
    """A CPU predictor from ``model.pt``'s bytes and ``model.json``, with the trainer's preprocessing."""
    if architecture.get("format") != ARCHITECTURE_FORMAT:
        raise ArtifactError(
            f"model.json is not a {ARCHITECTURE_FORMAT} architecture: format {architecture.get('format')!r}"
        )
    task = architecture.get("task")
    if task not in ("classification", "regression"):
        raise ArtifactError(f"model.json has task {task!r}; expected classification or regression")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    missing = [key for key in ("preprocess.fill", "preprocess.mean", "preprocess.std") if key not in state]
    if missing:
        raise ArtifactError(f"model.pt lacks the input preprocessing tensors {missing}")
    fill, mean, std = (
        state.pop(f"preprocess.{key}").numpy().astype(np.float32) for key in ("fill", "mean", "std")
    )

    layers: list[torch.nn.Module] = []
    width = int(architecture["n_features"])
    for size in architecture["hidden_sizes"]:
        layers += [torch.nn.Linear(width, int(size)), torch.nn.ReLU()]
        width = int(size)
    layers.append(torch.nn.Linear(width, int(architecture["n_outputs"])))
    network = torch.nn.Sequential(*layers)
    network.load_state_dict(state)
    network.eval()

    classes = tuple(architecture["classes"]) if task == "classification" else None
    labels = None if classes is None else np.asarray(classes)
    target_mean = float(architecture.get("target_mean", 0.0))
    target_std = float(architecture.get("target_std", 1.0))

    def predict(rows: Array) -> Array:
        x = ((np.where(np.isnan(rows), fill, rows) - mean) / std).astype(np.float32)
        with torch.inference_mode():
            scores = network(torch.from_numpy(x)).numpy()
        if labels is not None:
            return np.asarray(labels[scores.argmax(axis=1)])
        return np.asarray(scores[:, 0].astype(np.float64) * target_std + target_mean)

    feature_names = tuple(str(name) for name in architecture["feature_names"])
    return Predictor(
        framework="pytorch",
        predict=predict,
        feature_names=feature_names,
        n_features=len(feature_names),
        classes=classes,
    )
