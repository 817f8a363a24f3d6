"""Loading an artifact folder, as the trainer writes it, into a :class:`Predictor`: what every model
server answers requests with.

``model.joblib`` is loaded with joblib and scikit-learn; the trainer's PyTorch MLP is served from its ONNX
export, ``model.onnx``, with onnxruntime. Each is imported only when a model of its kind is loaded, so a
server imports neither scikit-learn for an MLP nor onnxruntime for a scikit-learn model. No server needs
PyTorch: a folder with the MLP's PyTorch files but no ``model.onnx`` (written before the trainer exported
ONNX) is refused, saying how to export it.

Unpickling a ``model.joblib`` runs whatever code the file asks for, so a model is loaded only once its
bytes are known to be the ones registered: given the ModelVersion's ``artifact.digest`` (the trainer's
sha256 of the model file), :func:`load_predictor` reads the file once, checks those bytes and loads the
same bytes, or refuses with :class:`DigestMismatch` before anything is unpickled or parsed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
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


DIGEST_ALGORITHMS = ("sha256", "sha384", "sha512")
"""The algorithms an expected digest may name (``<algorithm>:<hex>``); the trainer records sha256."""
TERMINATION_LOG = "/dev/termination-log"
"""Where Kubernetes reads a container's termination message (its ``terminationMessagePath``, by default):
KServe copies the message of a model server that failed into the InferenceService's ``modelStatus``."""
_HEX = re.compile(r"[0-9a-fA-F]+")


class ArtifactError(Exception):
    """The folder holds no model that can be served; the message says what is wrong."""


class DigestMismatch(ArtifactError):
    """The model file is not the one registered: its digest differs from the one recorded."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"refusing to load {path}: its digest is {actual}, but its ModelVersion records {expected} "
            "(spec.artifact.digest). The file was changed or replaced after it was registered; restore the "
            "registered file, or register this one as a new ModelVersion"
        )


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
    digest: str | None = None
    """The sha256 digest (``sha256:<hex>``) of the model file loaded."""


def load_predictor(folder: Path, expected_digest: str | None = None) -> Predictor:
    """Load the model in ``folder``; :class:`ArtifactError` when there is none or it is unreadable.

    With ``expected_digest`` (``<algorithm>:<hex>``, the ModelVersion's ``artifact.digest``), the model
    file's bytes must have that digest: :class:`DigestMismatch`, naming both digests, when they have not,
    raised before the file is read as a model. An expected digest that is malformed or names an algorithm
    not in :data:`DIGEST_ALGORITHMS` is refused too: nothing is loaded unchecked when a check was asked for.
    """
    expected = _parse_digest(expected_digest) if expected_digest else None
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
        payload = _checked_bytes(sklearn_file, expected)
        return _load_sklearn(sklearn_file, payload)
    if onnx_file.is_file():
        payload = _checked_bytes(onnx_file, expected)
        return _load_onnx(onnx_file, payload)
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


def write_termination_message(message: str, path: str = TERMINATION_LOG) -> None:
    """Leave ``message`` where Kubernetes reads a failed container's termination message, so that it
    reaches the pod's status (and KServe's InferenceService). Only where that file exists (the kubelet
    makes it): run anywhere else, this writes nothing."""
    target = Path(path)
    try:
        if target.is_file():
            target.write_text(message[:4096])
    except OSError:
        pass  # the message is in the log too; a read-only or missing file must not hide the real failure


def _parse_digest(text: str) -> tuple[str, str]:
    algorithm, _, value = text.partition(":")
    if algorithm not in DIGEST_ALGORITHMS:
        raise ArtifactError(
            f"the expected artifact digest {text[:100]!r} names no algorithm this server checks "
            f"({', '.join(DIGEST_ALGORITHMS)}): expected <algorithm>:<hex>, e.g. sha256:<64 hex digits>"
        )
    width = hashlib.new(algorithm).digest_size * 2
    if len(value) != width or not _HEX.fullmatch(value):
        raise ArtifactError(
            f"the expected artifact digest {text[:100]!r} is malformed: {algorithm} takes {width} hex digits"
        )
    return algorithm, value.lower()


def _checked_bytes(path: Path, expected: tuple[str, str] | None) -> bytes:
    """The model file's bytes, read once: what is checked is what is loaded, whatever happens to the file
    in between."""
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if expected is not None:
        algorithm, value = expected
        actual = hashlib.new(algorithm, payload).hexdigest()
        if actual != value:
            raise DigestMismatch(path, f"{algorithm}:{value}", f"{algorithm}:{actual}")
    return payload


def python_scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar where it is a numpy one (``np.int64(2)`` is ``2``)."""
    return value.item() if isinstance(value, np.generic) else value


def _load_sklearn(path: Path, payload: bytes) -> Predictor:
    # Imported on use: scikit-learn takes a while to import, and an ONNX model needs neither.
    import joblib
    from sklearn.base import is_classifier

    try:
        estimator = joblib.load(io.BytesIO(payload))
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
        digest=_sha256(payload),
    )


@dataclass(frozen=True)
class _OnnxManifest:
    task: str
    feature_names: tuple[str, ...]
    classes: tuple[Any, ...] | None


def _load_onnx(path: Path, payload: bytes) -> Predictor:
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
        session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
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
        digest=_sha256(payload),
    )


def _sha256(payload: bytes) -> str:
    return f"sha256:{hashlib.sha256(payload).hexdigest()}"


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
