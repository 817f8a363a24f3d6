"""Loading a modelloop artifact folder, as the trainer writes it, into a :class:`Predictor`.

The folder holds ``model.joblib`` (a scikit-learn estimator or pipeline) or ``model.pt`` +
``model.json`` (the trainer's PyTorch MLP: tensors only, and the architecture to rebuild it).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import joblib
import numpy as np
import numpy.typing as npt
from sklearn.base import is_classifier

SKLEARN_MODEL_FILE = "model.joblib"
TORCH_MODEL_FILE = "model.pt"
TORCH_ARCHITECTURE_FILE = "model.json"

Array = npt.NDArray[Any]


class ArtifactError(Exception):
    """The folder holds no model this server can load; the message says what is wrong."""


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


def model_folder(model_uri: str) -> Path:
    """The local folder that ``model_uri`` names: a path, or a ``file://`` URI."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise ArtifactError(
            f"model_uri {model_uri!r} is not a local folder: give a path or a file:// URI "
            "(Seldon's storage initializer copies a graph's modelUri to /mnt/models)"
        )
    return Path(model_uri)


def load_predictor(folder: Path) -> Predictor:
    """Load the model in ``folder``; :class:`ArtifactError` when there is none or it is unreadable."""
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist")
    sklearn_file, torch_file = folder / SKLEARN_MODEL_FILE, folder / TORCH_MODEL_FILE
    if sklearn_file.is_file() and torch_file.is_file():
        raise ArtifactError(
            f"{folder} holds both {SKLEARN_MODEL_FILE} and {TORCH_MODEL_FILE}; it must hold one"
        )
    if sklearn_file.is_file():
        return _load_sklearn(sklearn_file)
    if torch_file.is_file():
        return _load_torch(torch_file, folder / TORCH_ARCHITECTURE_FILE)
    present = sorted(path.name for path in folder.iterdir())
    raise ArtifactError(
        f"{folder} holds neither {SKLEARN_MODEL_FILE} nor {TORCH_MODEL_FILE} "
        f"(it holds: {present or 'nothing'})"
    )


def python_scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar where it is a numpy one (``np.int64(2)`` is ``2``)."""
    return value.item() if isinstance(value, np.generic) else value


def _load_sklearn(path: Path) -> Predictor:
    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise ArtifactError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(estimator, "predict", None)):
        raise ArtifactError(f"{path} holds a {type(estimator).__name__}, which has no predict method")
    # The trainer fits on a named table; requests become plain rows in the same column order, so
    # scikit-learn's warning about missing names says nothing (and would be logged per request).
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


def _load_torch(weights: Path, architecture_file: Path) -> Predictor:
    if not architecture_file.is_file():
        raise ArtifactError(f"{weights} has no {TORCH_ARCHITECTURE_FILE} beside it to rebuild the network")
    try:
        architecture = json.loads(architecture_file.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {architecture_file}: {exc}") from exc
    # PyTorch is imported for PyTorch artifacts only: a scikit-learn server starts seconds sooner.
    from modelloop_seldon.torch_mlp import load_torch_mlp

    try:
        return load_torch_mlp(weights.read_bytes(), architecture)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot load {weights}: {type(exc).__name__}: {exc}") from exc
