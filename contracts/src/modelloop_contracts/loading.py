"""Loading an artifact folder, as the trainer writes it, into a :class:`Predictor`: what every model
server answers requests with.

``model.joblib`` is loaded with joblib and scikit-learn; the trainer's PyTorch MLP is served from its ONNX
export, ``model.onnx``, with onnxruntime. Each is imported only when a model of its kind is loaded, so a
server imports neither scikit-learn for an MLP nor onnxruntime for a scikit-learn model. No server needs
PyTorch: a folder with the MLP's PyTorch files but no ``model.onnx`` (written before the trainer exported
ONNX) is refused, saying how to export it.

A :class:`Predictor` answers a classifier's class probabilities beside its labels in one model call where
the model allows it (:attr:`Predictor.predict_with_probabilities`): the MLP's graph computes both in one
run; a scikit-learn estimator whose ``predict`` is the largest of its ``predict_proba`` (or of scores that
its probabilities keep the order of) answers its labels from its probabilities, and any other calls
``predict`` and ``predict_proba`` both, so that its labels are always exactly what ``predict`` says.

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
from collections.abc import Callable, Mapping
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
    ONNX_PROBABILITIES_OUTPUT,
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

SERVE_PROBABILITIES_ENV = "MODELLOOP_SERVE_PROBABILITIES"
"""The model servers' switch for a classifier's class probabilities in their answers (on unless set off)."""
_SWITCH_VALUES = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}

# scikit-learn classifiers (module and class, as scikit-learn 1.9 defines them) whose predict is
# ``classes_[argmax(predict_proba)]`` in their own code: their labels come from their probabilities as is.
_PREDICT_IS_ARGMAX_OF_PROBABILITIES = frozenset(
    {
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.ExtraTreeClassifier",
    }
)
# Classifiers whose predict picks the largest of per-class scores (the first on a tie; a binary model's one
# score against 0) and whose predict_proba is a function of those scores that keeps their order (softmax,
# the logistic function, a normalized exp, counts over k): where a row's largest probability is unique, its
# largest score is that class's too, so the label comes from the probabilities; a row whose largest
# probability is tied (or NaN) may have been decided by scores closer than the probabilities can tell, and
# is predicted by predict. A class outside both sets calls predict and predict_proba: what predict says is
# what is served, whatever the probabilities say (an SVC's Platt-scaled ones may disagree with it).
_PREDICT_IS_ARGMAX_OF_ORDERED_SCORES = frozenset(
    {
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.naive_bayes.BernoulliNB",
        "sklearn.naive_bayes.CategoricalNB",
        "sklearn.naive_bayes.ComplementNB",
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.naive_bayes.MultinomialNB",
        # Only with uniform weights (counts of neighbours) and for one label per row: see _label_rule.
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    }
)


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
    predict_with_probabilities: Callable[[Array], tuple[Array, Array | None]]
    """What :attr:`predict` answers for the rows, and a classifier's probability of each class: float64
    ``(rows, classes)``, columns in the order of :attr:`classes`; None for a regressor, or a classifier that
    has no probabilities (no ``predict_proba``). One model call where the model allows it; the labels are
    always :attr:`predict`'s. ValueError for rows it cannot take."""
    feature_names: tuple[str, ...] | None
    """The features' names in the model's column order, where the training data named them."""
    n_features: int | None
    """How many values a row has, where the model records it."""
    classes: tuple[Any, ...] | None
    """A classifier's labels (Python scalars); None for a regressor."""
    digest: str | None = None
    """The sha256 digest (``sha256:<hex>``) of the model file loaded."""


def serve_probabilities(env: Mapping[str, str]) -> bool:
    """Whether a model server answers a classifier's probabilities, as :data:`SERVE_PROBABILITIES_ENV` in
    ``env`` says: on when it is unset or empty; ``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/
    ``off`` in any case; ValueError naming the variable for anything else."""
    return switch_value(env.get(SERVE_PROBABILITIES_ENV) or "true", SERVE_PROBABILITIES_ENV)


def switch_value(text: str, name: str) -> bool:
    """``text`` as an on/off switch (``true``/``1``/``yes``/``on``, ``false``/``0``/``no``/``off``, any
    case, around spaces); ValueError naming ``name`` for anything else."""
    value = _SWITCH_VALUES.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{name} must be true or false (or 1/0, yes/no, on/off), not {text[:100]!r}")
    return value


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
    classes = estimator.classes_ if is_classifier(estimator) else None

    def predict(rows: Array) -> Array:
        return np.asarray(estimator.predict(rows))

    return Predictor(
        framework="sklearn",
        predict=predict,
        predict_with_probabilities=_sklearn_predict_with_probabilities(estimator, classes, predict),
        feature_names=None if names is None else tuple(str(name) for name in names),
        n_features=None if n_features is None else int(n_features),
        classes=None if classes is None else tuple(python_scalar(label) for label in classes),
        digest=_sha256(payload),
    )


def _sklearn_predict_with_probabilities(
    estimator: Any, classes: Any, predict: Callable[[Array], Array]
) -> Callable[[Array], tuple[Array, Array | None]]:
    """The estimator's labels and probabilities for rows, in as few model calls as its kind allows (see
    :data:`_PREDICT_IS_ARGMAX_OF_ORDERED_SCORES`). A classifier of one label per row only: a multi-output
    one's ``classes_`` is a list of arrays, one per output, and it answers no probabilities."""
    single_label = isinstance(classes, np.ndarray) and classes.ndim == 1
    if not single_label or not hasattr(estimator, "predict_proba"):
        # A Pipeline offers predict_proba only where its last step does (not an SVC without probability).

        def without_probabilities(rows: Array) -> tuple[Array, Array | None]:
            return predict(rows), None

        return without_probabilities
    predict_proba = estimator.predict_proba
    rule = _label_rule(estimator)

    def probabilities_of(rows: Array) -> Array:
        probabilities = np.asarray(predict_proba(rows), dtype=np.float64)
        if probabilities.shape != (len(rows), len(classes)):
            # The model's fault, not the rows': not a ValueError, which the servers answer with a 400.
            raise RuntimeError(
                f"predict_proba answered an array of shape {probabilities.shape} for {len(rows)} rows "
                f"of a model with {len(classes)} classes"
            )
        return probabilities

    if rule == "argmax":

        def from_probabilities(rows: Array) -> tuple[Array, Array | None]:
            probabilities = probabilities_of(rows)
            return classes.take(probabilities.argmax(axis=1)), probabilities

        return from_probabilities
    if rule == "ordered":
        last_column = len(classes) - 1

        def from_unique_largest(rows: Array) -> tuple[Array, Array | None]:
            probabilities = probabilities_of(rows)
            best = probabilities.argmax(axis=1)
            labels = classes.take(best)
            # Where the first and the last of a row's largest probabilities differ, they are tied (or NaN,
            # which fills a row whose scores have one): predict decides, from the scores themselves.
            undecided = best != last_column - probabilities[:, ::-1].argmax(axis=1)
            if undecided.any():
                labels[undecided] = predict(np.asarray(rows)[undecided])
            return labels, probabilities

        return from_unique_largest

    def both(rows: Array) -> tuple[Array, Array | None]:
        return predict(rows), probabilities_of(rows)

    return both


def _label_rule(estimator: Any) -> str | None:
    """How the labels follow from ``predict_proba``: ``argmax``, ``ordered`` (from a unique largest
    probability), or None (they do not: predict is called). A pipeline's are its last step's."""
    final = estimator
    if _kind(estimator) == "sklearn.pipeline.Pipeline" and estimator.steps:
        final = estimator.steps[-1][1]
    kind = _kind(final)
    if kind in _PREDICT_IS_ARGMAX_OF_PROBABILITIES:
        return "argmax"
    if kind not in _PREDICT_IS_ARGMAX_OF_ORDERED_SCORES:
        return None
    if kind.endswith(".KNeighborsClassifier") and getattr(final, "weights", None) != "uniform":
        # Weighted votes are summed in another order by predict than by predict_proba.
        return None
    if kind.endswith(".MLPClassifier"):
        # A multi-label MLP answers an indicator matrix, not a label per row.
        binarizer = getattr(final, "_label_binarizer", None)
        if getattr(binarizer, "y_type_", None) not in ("binary", "multiclass"):
            return None
    return "ordered"


def _kind(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


@dataclass(frozen=True)
class _OnnxManifest:
    task: str
    feature_names: tuple[str, ...]
    classes: tuple[Any, ...] | None
    has_probabilities: bool
    """Whether the graph has the probabilities output (a classifier exported by this trainer has)."""


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

        def predict_with_probabilities(rows: Array) -> tuple[Array, Array | None]:
            return predict(rows), None

    else:
        labels = np.asarray(manifest.classes)

        def predict(rows: Array) -> Array:
            (index,) = run([ONNX_CLASS_OUTPUT], {ONNX_INPUT: _float32_rows(rows, n_features)})
            return np.asarray(labels[index])

        if manifest.has_probabilities:
            both = [ONNX_CLASS_OUTPUT, ONNX_PROBABILITIES_OUTPUT]

            def predict_with_probabilities(rows: Array) -> tuple[Array, Array | None]:
                # One run of the graph for both outputs: the labels are the graph's class index, as predict's.
                index, probabilities = run(both, {ONNX_INPUT: _float32_rows(rows, n_features)})
                return np.asarray(labels[index]), np.asarray(probabilities, dtype=np.float64)

        else:

            def predict_with_probabilities(rows: Array) -> tuple[Array, Array | None]:
                return predict(rows), None

    return Predictor(
        framework="pytorch",
        predict=predict,
        predict_with_probabilities=predict_with_probabilities,
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
    probabilities = labels is not None and ONNX_PROBABILITIES_OUTPUT in outputs
    return _OnnxManifest(task, tuple(names), labels, probabilities)


def _float32_rows(rows: Array, n_features: int) -> Array:
    """``rows`` as the contiguous float32 ``[batch, n_features]`` array that the ONNX input takes."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} values, got an array of shape {x.shape}")
    return x
