"""Loading an artifact folder, as the trainer writes it, into a :class:`Predictor`: what every model
server answers requests with.

The folder's layout is checked here and ``model.joblib`` is loaded here. The trainer's PyTorch MLP is
rebuilt by the server's own code, handed in as ``load_torch``: only a server that serves one imports
PyTorch, and only when it loads one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelloop_contracts.layout import (
    SKLEARN_MODEL_FILE,
    TORCH_ARCHITECTURE_FILE,
    TORCH_ARCHITECTURE_FORMAT,
    TORCH_MODEL_FILE,
)

Array = npt.NDArray[Any]


class ArtifactError(Exception):
    """The folder holds no model that can be served; the message says what is wrong."""


@dataclass(frozen=True)
class Predictor:
    """A loaded model: its predictions, and what requests are checked against."""

    framework: str
    """``sklearn`` or ``pytorch``."""
    predict: Callable[[Array], Array]
    """Class labels or values for the rows of a 2-D float array."""
    feature_names: tuple[str, ...] | None
    """The features' names in the model's column order, where the training data named them."""
    n_features: int | None
    """How many values a row has, where the model records it."""
    classes: tuple[Any, ...] | None
    """A classifier's labels (Python scalars); None for a regressor."""


TorchLoader = Callable[[bytes, dict[str, Any]], Predictor]
"""Rebuilds the trainer's PyTorch MLP from ``model.pt``'s bytes and ``model.json``'s manifest."""


def load_predictor(folder: Path, *, load_torch: TorchLoader | None = None) -> Predictor:
    """Load the model in ``folder``; :class:`ArtifactError` when there is none or it is unreadable.

    ``load_torch`` rebuilds a PyTorch model; without it, a folder holding one is refused.
    """
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist")
    sklearn_file, torch_file = folder / SKLEARN_MODEL_FILE, folder / TORCH_MODEL_FILE
    if sklearn_file.is_file() and torch_file.is_file():
        raise ArtifactError(
            f"{folder} holds both {SKLEARN_MODEL_FILE} and {TORCH_MODEL_FILE}; a model folder holds one model"
        )
    if sklearn_file.is_file():
        return _load_sklearn(sklearn_file)
    if torch_file.is_file():
        return _load_torch(torch_file, folder / TORCH_ARCHITECTURE_FILE, load_torch)
    present = sorted(path.name for path in folder.iterdir())
    raise ArtifactError(
        f"{folder} holds neither {SKLEARN_MODEL_FILE} nor {TORCH_MODEL_FILE} "
        f"(it holds: {present or 'nothing'})"
    )


def python_scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar where it is a numpy one (``np.int64(2)`` is ``2``)."""
    return value.item() if isinstance(value, np.generic) else value


def _load_sklearn(path: Path) -> Predictor:
    # Imported on use: scikit-learn takes a while to import, and a PyTorch model needs neither.
    import joblib
    from sklearn.base import is_classifier

    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise ArtifactError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(estimator, "predict", None)):
        raise ArtifactError(f"{path} holds a {type(estimator).__name__}, which has no predict method")
    # The trainer fits on a named table; requests become plain rows in the same column order (requests
    # with names are put in that order first), so scikit-learn's warning about the missing names says
    # nothing. One filter for the process: catch_warnings() around every predict would reset the warnings
    # registry on each request, which costs more.
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
    names = getattr(estimator, "feature_names_in_", None)
    n_features = getattr(estimator, "n_features_in_", None)
    return Predictor(
        framework="sklearn",
        predict=lambda rows: np.asarray(estimator.predict(rows)),
        feature_names=None if names is None else tuple(str(name) for name in names),
        n_features=None if n_features is None else int(n_features),
        classes=tuple(python_scalar(label) for label in estimator.classes_)
        if is_classifier(estimator)
        else None,
    )


def _load_torch(weights: Path, architecture_file: Path, load_torch: TorchLoader | None) -> Predictor:
    if load_torch is None:
        raise ArtifactError(f"{weights} is a PyTorch model, which this server does not load")
    if not architecture_file.is_file():
        raise ArtifactError(f"{weights} has no {TORCH_ARCHITECTURE_FILE} beside it to rebuild the network")
    try:
        architecture = json.loads(architecture_file.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {architecture_file}: {exc}") from exc
    if not isinstance(architecture, dict):
        raise ArtifactError(f"{architecture_file} holds no JSON object")
    if architecture.get("format") != TORCH_ARCHITECTURE_FORMAT:
        raise ArtifactError(
            f"{TORCH_ARCHITECTURE_FILE} is not a {TORCH_ARCHITECTURE_FORMAT} architecture: "
            f"format {architecture.get('format')!r}"
        )
    try:
        return load_torch(weights.read_bytes(), architecture)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot load {weights}: {type(exc).__name__}: {exc}") from exc
