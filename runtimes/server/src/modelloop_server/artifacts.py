"""Loading a modelloop artifact folder, as the trainer writes it, into a :class:`Predictor`.

The folder holds ``model.joblib`` (a scikit-learn estimator or pipeline) or ``model.pt`` +
``model.json`` (the trainer's PyTorch MLP: tensors only, and the architecture to rebuild it).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
from sklearn.base import is_classifier

SKLEARN_MODEL_FILE = "model.joblib"
TORCH_MODEL_FILE = "model.pt"
TORCH_ARCHITECTURE_FILE = "model.json"


class ArtifactError(Exception):
    """The folder holds no model this server can load; the message says what is wrong."""


class Predictor(Protocol):
    """A loaded model: what the server needs to answer requests and label its metrics."""

    @property
    def framework(self) -> str:
        """``sklearn`` or ``pytorch``."""

    @property
    def feature_names(self) -> list[str] | None:
        """The features' names in the model's column order, where the training data named them."""

    @property
    def n_features(self) -> int | None:
        """How many features a row has, where the model records it."""

    @property
    def classes(self) -> list[Any] | None:
        """A classifier's labels; None for a regressor."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predictions for the rows of a 2-D float array: class labels or values."""


class SklearnPredictor:
    """A scikit-learn estimator or pipeline loaded from ``model.joblib``."""

    framework = "sklearn"

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        # The trainer fits on a named table; requests become plain rows in the same column order
        # (requests with names are put in that order first), so scikit-learn's warning about the
        # missing names says nothing. One filter for the process: catch_warnings() around every
        # predict would reset the warnings registry on each request, which costs more.
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names: list[str] | None = None if names is None else [str(name) for name in names]
        n_features = getattr(estimator, "n_features_in_", None)
        self.n_features: int | None = None if n_features is None else int(n_features)
        self.classes: list[Any] | None = (
            [_python_scalar(label) for label in estimator.classes_] if is_classifier(estimator) else None
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predictions for the rows of a 2-D float array: class labels or values."""
        return np.asarray(self.estimator.predict(features))


def load_predictor(model_dir: Path) -> Predictor:
    """Load the model in ``model_dir``; :class:`ArtifactError` when there is none or it is unreadable."""
    if not model_dir.is_dir():
        raise ArtifactError(f"model folder {model_dir} does not exist")
    sklearn_file = model_dir / SKLEARN_MODEL_FILE
    torch_file = model_dir / TORCH_MODEL_FILE
    if sklearn_file.is_file() and torch_file.is_file():
        raise ArtifactError(
            f"{model_dir} holds both {SKLEARN_MODEL_FILE} and {TORCH_MODEL_FILE}; "
            "a model folder holds one model"
        )
    if sklearn_file.is_file():
        return _load_sklearn(sklearn_file)
    if torch_file.is_file():
        return _load_torch(torch_file, model_dir / TORCH_ARCHITECTURE_FILE)
    present = sorted(path.name for path in model_dir.iterdir())
    raise ArtifactError(
        f"{model_dir} holds neither {SKLEARN_MODEL_FILE} nor {TORCH_MODEL_FILE} "
        f"(it holds: {present or 'nothing'})"
    )


def _load_sklearn(path: Path) -> SklearnPredictor:
    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise ArtifactError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(estimator, "predict", None)):
        raise ArtifactError(f"{path} holds a {type(estimator).__name__}, which has no predict method")
    return SklearnPredictor(estimator)


def _load_torch(weights: Path, architecture_file: Path) -> Predictor:
    if not architecture_file.is_file():
        raise ArtifactError(f"{weights} has no {TORCH_ARCHITECTURE_FILE} beside it to rebuild the network")
    try:
        architecture = json.loads(architecture_file.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {architecture_file}: {exc}") from exc
    # PyTorch is imported only for PyTorch artifacts: a scikit-learn server starts seconds sooner.
    from modelloop_server.torch_mlp import TorchMLPPredictor

    try:
        return TorchMLPPredictor.load(weights.read_bytes(), architecture)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot load {weights}: {type(exc).__name__}: {exc}") from exc


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
