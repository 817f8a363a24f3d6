"""The trainer's PyTorch MLP, rebuilt for serving from ``model.json`` and ``model.pt``.

The server does not import the trainer: it re-creates the same network (``Linear``/``ReLU``
layers in a ``Sequential``, so the state's keys match) from the architecture the trainer wrote,
and loads the weights with ``torch.load(weights_only=True)``, which unpickles tensors only.
:func:`load_torch_mlp` is the ``load_torch`` that ``modelloop_contracts.load_predictor`` calls.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from modelloop_contracts import ArtifactError, Predictor

ARCHITECTURE_FORMAT = "modelloop-torch-mlp/v1"
_PREPROCESS_KEYS = ("fill", "mean", "std")


def load_torch_mlp(weights: bytes, architecture: dict[str, Any]) -> Predictor:
    """The network of ``model.pt`` and ``model.json`` as a :class:`~modelloop_contracts.Predictor`."""
    mlp = TorchMLPPredictor.load(weights, architecture)
    return Predictor(
        framework=mlp.framework,
        predict=mlp.predict,
        feature_names=None if mlp.feature_names is None else tuple(mlp.feature_names),
        n_features=mlp.n_features,
        classes=None if mlp.classes is None else tuple(mlp.classes),
    )


class TorchMLPPredictor:
    """A TorchMLP classifier or regressor on the CPU, with the trainer's input preprocessing."""

    framework = "pytorch"

    def __init__(
        self,
        network: torch.nn.Sequential,
        *,
        fill: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        feature_names: list[str],
        classes: list[Any] | None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        self.network = network.eval()
        self.fill, self.mean, self.std = fill, mean, std
        self.feature_names: list[str] | None = feature_names
        self.n_features: int | None = len(feature_names)
        self.classes = classes
        self._labels = None if classes is None else np.asarray(classes)
        self.target_mean, self.target_std = target_mean, target_std

    @classmethod
    def load(cls, weights: bytes, architecture: dict[str, Any]) -> TorchMLPPredictor:
        """Rebuild the network from ``architecture`` (model.json) and load ``weights`` (model.pt)."""
        if architecture.get("format") != ARCHITECTURE_FORMAT:
            raise ArtifactError(
                f"model.json is not a {ARCHITECTURE_FORMAT} architecture: "
                f"format {architecture.get('format')!r}"
            )
        task = architecture.get("task")
        if task not in ("classification", "regression"):
            raise ArtifactError(f"model.json has task {task!r}; expected classification or regression")
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        missing = [f"preprocess.{key}" for key in _PREPROCESS_KEYS if f"preprocess.{key}" not in state]
        if missing:
            raise ArtifactError(f"model.pt lacks the input preprocessing tensors {missing}")
        preprocess = {
            key: state.pop(f"preprocess.{key}").numpy().astype(np.float32) for key in _PREPROCESS_KEYS
        }
        network = build_network(
            int(architecture["n_features"]),
            [int(size) for size in architecture["hidden_sizes"]],
            int(architecture["n_outputs"]),
        )
        network.load_state_dict(state)
        if task == "classification":
            return cls(
                network,
                **preprocess,
                feature_names=[str(name) for name in architecture["feature_names"]],
                classes=list(architecture["classes"]),
            )
        return cls(
            network,
            **preprocess,
            feature_names=[str(name) for name in architecture["feature_names"]],
            classes=None,
            target_mean=float(architecture["target_mean"]),
            target_std=float(architecture["target_std"]),
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class labels (classification) or values (regression) for the rows of ``features``."""
        x = np.asarray(features, dtype=np.float32)
        x = (np.where(np.isnan(x), self.fill, x) - self.mean) / self.std
        with torch.inference_mode():
            scores = self.network(torch.from_numpy(x)).numpy()
        if self._labels is not None:
            return np.asarray(self._labels[scores.argmax(axis=1)])
        return np.asarray(scores[:, 0].astype(np.float64) * self.target_std + self.target_mean)


def build_network(n_features: int, hidden_sizes: list[int], n_outputs: int) -> torch.nn.Sequential:
    """The trainer's MLP: ``Linear`` and ``ReLU`` per hidden layer, then a ``Linear`` output layer."""
    layers: list[torch.nn.Module] = []
    width = n_features
    for size in hidden_sizes:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers.append(torch.nn.Linear(width, n_outputs))
    return torch.nn.Sequential(*layers)
