"""Loading an artifact folder, as the trainer writes it, into a :class:`Predictor`: what every model
server answers requests with.

``model.joblib`` is loaded with joblib and scikit-learn; the trainer's PyTorch MLP is served from its ONNX
export, ``model.onnx``, with onnxruntime. Each is imported only when a model of its kind is loaded, so a
server imports neither scikit-learn for an MLP nor onnxruntime for a scikit-learn model. No server needs
PyTorch: a folder with the MLP's PyTorch files but no ``model.onnx`` (written before the trainer exported
ONNX) is refused, saying how to export it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from modelloop_contracts.layout import (
    ONNX_CLASS_OUTPUT,
    ONNX_FORMAT,
    ONNX_INPUT,
    ONNX_MANIFEST_KEY,
    ONNX_MODEL_FILE,
    ONNX_VALUE_OUTPUT,
    SKLEARN_MODEL_FILE,
    TORCH_MODEL_FILE,
)

if TYPE_CHECKING:
    import onnxruntime

Array = npt.NDArray[Any]

ONNX_THREADS = 1
"""onnxruntime's intra-op and inter-op threads per loaded model. A request's rows take microseconds on one
core, less than waking a pool's threads costs, and a server process answers one request at a time (KServe
on its event loop, Seldon's gunicorn worker): more cores serve through more replicas or workers."""


class ArtifactError(Exception):
    """The folder holds no model that can be served; the message says what is wrong."""


@dataclass(frozen=True)
class Predictor:
    """A loaded model: its predictions, and what requests are checked against."""

    framework: str
    """``sklearn``, or ``pytorch`` for the trainer's MLP (run from its ONNX export)."""
    predict: Callable[[Array], Array]
    """Class labels or values for the rows of a 2-D float array; ValueError for rows it cannot take."""
    feature_names: tuple[str, ...] | None
    """The features' names in the model's column order, where the training data named them."""
    n_features: int | None
    """How many values a row has, where the model records it."""
    classes: tuple[Any, ...] | None
    """A classifier's labels (Python scalars); None for a regressor."""


def load_predictor(folder: Path) -> Predictor:
    """Load the model in ``folder``; :class:`ArtifactError` when there is none or it is unreadable."""
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist")
    sklearn_file, onnx_file, torch_file = (
        folder / SKLEARN_MODEL_FILE,
        folder / ONNX_MODEL_FILE,
        folder / TORCH_MODEL_FILE,
    )
    if sklearn_file.is_file():
        other = next((path.name for path in (onnx_file, torch_file) if path.is_file()), None)
        if other is not None:
            raise ArtifactError(
                f"{folder} holds both {SKLEARN_MODEL_FILE} and {other}; a model folder holds one model"
            )
        return _load_sklearn(sklearn_file)
    if onnx_file.is_file():
        return _load_onnx(onnx_file)
    if torch_file.is_file():
        raise ArtifactError(
            f"{folder} holds a PyTorch model ({TORCH_MODEL_FILE}) but no {ONNX_MODEL_FILE}: the model "
            f"servers run the trainer's MLP from its ONNX export. Train it again, or export it where it "
            f"is with the trainer's image: modelloop-train --export-onnx <the folder's URI>"
        )
    present = sorted(path.name for path in folder.iterdir())
    raise ArtifactError(
        f"{folder} holds neither {SKLEARN_MODEL_FILE} nor {ONNX_MODEL_FILE} "
        f"(it holds: {present or 'nothing'})"
    )


def python_scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar where it is a numpy one (``np.int64(2)`` is ``2``)."""
    return value.item() if isinstance(value, np.generic) else value


def _load_sklearn(path: Path) -> Predictor:
    # Imported on use: scikit-learn takes a while to import, and an ONNX model needs neither.
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


@dataclass(frozen=True)
class _OnnxManifest:
    task: str
    feature_names: tuple[str, ...]
    classes: tuple[Any, ...] | None


def _load_onnx(path: Path) -> Predictor:
    try:
        # Imported on use: a scikit-learn model needs none of it.
        import onnxruntime
    except ImportError as exc:
        raise ArtifactError(f"cannot load {path}: onnxruntime is not installed here ({exc})") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ONNX_THREADS
    options.inter_op_num_threads = ONNX_THREADS
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    manifest = _onnx_manifest(path, session)
    n_features = len(manifest.feature_names)
    run = session.run
    if manifest.classes is None:

        def predict(rows: Array) -> Array:
            (values,) = run([ONNX_VALUE_OUTPUT], {ONNX_INPUT: _float32_rows(rows, n_features)})
            return np.asarray(values)

    else:
        labels = np.asarray(manifest.classes)

        def predict(rows: Array) -> Array:
            (index,) = run([ONNX_CLASS_OUTPUT], {ONNX_INPUT: _float32_rows(rows, n_features)})
            return np.asarray(labels[index])

    return Predictor(
        framework="pytorch",
        predict=predict,
        feature_names=manifest.feature_names,
        n_features=n_features,
        classes=manifest.classes,
    )


def _onnx_manifest(path: Path, session: onnxruntime.InferenceSession) -> _OnnxManifest:
    """``model.onnx``'s manifest, checked against the session's input and outputs."""
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_MANIFEST_KEY)
    if text is None:
        raise ArtifactError(
            f"{path} has no {ONNX_MANIFEST_KEY!r} entry in its metadata: it is not a model exported by "
            "modelloop's trainer"
        )
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{path}: its {ONNX_MANIFEST_KEY!r} metadata is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: its {ONNX_MANIFEST_KEY!r} metadata holds no JSON object")
    if manifest.get("format") != ONNX_FORMAT:
        raise ArtifactError(
            f"{path} is not a {ONNX_FORMAT} model: format {manifest.get('format')!r} "
            "(export it again with this version's trainer)"
        )
    task, names, classes = manifest.get("task"), manifest.get("feature_names"), manifest.get("classes")
    if task not in ("classification", "regression"):
        raise ArtifactError(f"{path}: task {task!r}; expected classification or regression")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ArtifactError(f"{path}: feature_names must be a non-empty list of names, not {names!r:.100}")
    if task == "classification" and (not isinstance(classes, list) or not classes):
        raise ArtifactError(f"{path}: a classifier's classes must be a non-empty list, not {classes!r:.100}")
    labels = tuple(classes) if task == "classification" and isinstance(classes, list) else None
    inputs = [(node.name, node.shape) for node in session.get_inputs()]
    width = inputs[0][1][-1] if len(inputs) == 1 and len(inputs[0][1]) == 2 else None
    if [name for name, _ in inputs] != [ONNX_INPUT] or width not in (len(names), None):
        raise ArtifactError(
            f"{path} takes {inputs}; expected one input {ONNX_INPUT!r} of shape [batch, {len(names)}]"
        )
    output = ONNX_CLASS_OUTPUT if task == "classification" else ONNX_VALUE_OUTPUT
    outputs = [node.name for node in session.get_outputs()]
    if output not in outputs:
        raise ArtifactError(f"{path}, a {task} model, has no output {output!r} (it has {outputs})")
    return _OnnxManifest(task, tuple(names), labels)


def _float32_rows(rows: Array, n_features: int) -> Array:
    """``rows`` as the contiguous float32 ``[batch, n_features]`` array that the ONNX input takes."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} values, got an array of shape {x.shape}")
    return x
