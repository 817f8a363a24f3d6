"""Writing a run's files to its output folder (any fsspec URI: file://, s3://, ...).

The folder's layout is ``modelloop_contracts.layout``: the model (``model.joblib``, or for PyTorch
``model.onnx``, which the servers run, and ``model.pt`` + ``model.json``, which this trainer reads back),
``metrics.json``, ``reference.csv`` (a sample of the training features, the reference for drift
detection), ``reference_predictions.csv`` (the model's predictions on those rows), ``holdout.csv`` (the
held-out rows with their labels, the model's predictions and a classifier's probabilities: what the drift
detector calibrates its performance estimate on) and ``result.json`` (the full result). :func:`read_model`
reads such a model back (the champion's); :func:`export_onnx` adds ``model.onnx`` to a PyTorch model
written before the trainer exported one.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import joblib
import numpy as np
import pandas as pd
from modelloop_contracts import (
    HOLDOUT_FILE,
    HOLDOUT_LABEL_COLUMN,
    HOLDOUT_PREDICTION_COLUMN,
    MODEL_FILES,
    ONNX_MODEL_FILE,
    PREDICTION_COLUMN,
    REFERENCE_FILE,
    REFERENCE_PREDICTIONS_FILE,
    SKLEARN_MODEL_FILE,
    TORCH_ARCHITECTURE_FILE,
    TORCH_MODEL_FILE,
    holdout_probability_column,
    python_scalar,
)

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.torch_mlp import TorchMLP, load_torch_mlp


@dataclass(frozen=True)
class ModelArtifact:
    """Where the model file that a server loads went (``model.joblib`` or ``model.onnx``) and the sha256
    digest of its bytes."""

    uri: str
    digest: str


def output_file_uri(output_uri: str, name: str) -> str:
    """The URI of ``name`` inside the output folder."""
    return f"{output_uri.rstrip('/')}/{name}"


def write_bytes(uri: str, payload: bytes) -> None:
    """Write ``payload`` to ``uri``, creating parent folders where the filesystem has them."""
    try:
        filesystem, path = fsspec.core.url_to_fs(uri)
        filesystem.makedirs(posixpath.dirname(path), exist_ok=True)
        with filesystem.open(path, "wb") as stream:
            stream.write(payload)
    except Exception as exc:
        raise TrainerError(
            FailureReason.OUTPUT_UNAVAILABLE, f"cannot write {uri}: {type(exc).__name__}: {exc}"
        ) from exc


def write_json(uri: str, document: Any) -> None:
    write_bytes(uri, (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def sha256_digest(payload: bytes) -> str:
    return f"sha256:{hashlib.sha256(payload).hexdigest()}"


def write_model(output_uri: str, model: Any) -> ModelArtifact:
    """Serialize the fitted model into the output folder and return the URI and digest of the file that
    a server loads: ``model.joblib``, or ``model.onnx`` for a TorchMLP, which also gets its PyTorch
    weights and architecture (``model.pt``, ``model.json``) for this trainer to read back."""
    if isinstance(model, TorchMLP):
        write_bytes(output_file_uri(output_uri, TORCH_MODEL_FILE), model.weights_bytes())
        write_json(output_file_uri(output_uri, TORCH_ARCHITECTURE_FILE), model.architecture())
        payload = _onnx_bytes(model)
        uri = output_file_uri(output_uri, ONNX_MODEL_FILE)
    else:
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        payload = buffer.getvalue()
        uri = output_file_uri(output_uri, SKLEARN_MODEL_FILE)
    write_bytes(uri, payload)
    return ModelArtifact(uri=uri, digest=sha256_digest(payload))


@dataclass(frozen=True)
class ReferenceFiles:
    """The reference sample's URI and that of the model's predictions on it, row for row."""

    uri: str
    predictions_uri: str


def write_reference(
    output_uri: str, x_train: pd.DataFrame, model: Any, *, rows: int, seed: int
) -> ReferenceFiles:
    """Write a sample of ``rows`` training rows (features only) as CSV, and ``model``'s predictions on
    exactly those rows, in the same order, as a CSV of one column ``prediction``.

    The drift detector compares served inputs with the sample, and served predictions with these.
    """
    sample = x_train.sample(n=min(rows, len(x_train)), random_state=seed) if len(x_train) > rows else x_train
    uri = output_file_uri(output_uri, REFERENCE_FILE)
    write_bytes(uri, sample.to_csv(index=False, lineterminator="\n").encode())
    try:
        predicted = model.predict(sample)
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED,
            f"predicting the reference sample failed: {type(exc).__name__}: {exc}",
        ) from exc
    predictions = pd.DataFrame({PREDICTION_COLUMN: list(predicted)})
    predictions_uri = output_file_uri(output_uri, REFERENCE_PREDICTIONS_FILE)
    write_bytes(predictions_uri, predictions.to_csv(index=False, lineterminator="\n").encode())
    return ReferenceFiles(uri=uri, predictions_uri=predictions_uri)


def write_holdout(
    output_uri: str, features: pd.DataFrame, labels: pd.Series, model: Any, *, classifier: bool
) -> str:
    """Write the held-out rows as ``holdout.csv`` and return its URI: their features (the columns of
    ``reference.csv``, in its order), then the true label (``modelloop.label``), ``model``'s prediction
    (``modelloop.prediction``, what its ``predict`` answers) and, for a ``classifier`` with probabilities,
    its probability of each class (``modelloop.probability[<label>]``, one column per class in the order
    of the model's ``classes_``); a classifier without ``predict_proba`` (an SVC without probability=True)
    gets no probability columns, nor does a regressor.

    The features are written as the CSV writer writes them: a missing value (where the data checks allowed
    some) is an empty cell, as in ``reference.csv``. The label, prediction and probability columns are never
    empty: the data checks refuse a missing target, and a model that answers a prediction or probability
    that is not a finite number fails the run here (TRAINING_FAILED), naming the column, rather than leave
    the drift detector a file it cannot calibrate on.
    """
    try:
        predictions, probabilities = _predictions_with_probabilities(model, features, classifier)
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED,
            f"predicting the held-out rows failed: {type(exc).__name__}: {exc}",
        ) from exc
    columns: dict[str, Any] = {
        HOLDOUT_LABEL_COLUMN: labels.to_numpy(),
        HOLDOUT_PREDICTION_COLUMN: predictions,
    }
    if probabilities is not None:
        for index, label in enumerate(model.classes_):
            columns[holdout_probability_column(python_scalar(label))] = probabilities[:, index]
    clashing = [name for name in columns if name in features.columns]
    if clashing:
        raise TrainerError(
            FailureReason.DATA_VALIDATION_FAILED,
            f"the feature column(s) {clashing} have the names of {HOLDOUT_FILE}'s own columns; rename them",
        )
    for name, values in columns.items():
        if name != HOLDOUT_LABEL_COLUMN and values.dtype.kind in "fc" and not np.isfinite(values).all():
            count = int((~np.isfinite(values)).sum())
            raise TrainerError(
                FailureReason.TRAINING_FAILED,
                f"the model answered {count} value(s) that are not finite numbers in {name!r} for the "
                f"{len(features)} held-out rows",
            )
    table = pd.concat([features.reset_index(drop=True), pd.DataFrame(columns)], axis=1)
    uri = output_file_uri(output_uri, HOLDOUT_FILE)
    write_bytes(uri, table.to_csv(index=False, lineterminator="\n").encode())
    return uri


def _predictions_with_probabilities(
    model: Any, features: pd.DataFrame, classifier: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """What ``model.predict`` answers for ``features``, and a classifier's ``predict_proba`` where it has one
    (a TorchMLP's both from one forward pass)."""
    if isinstance(model, TorchMLP):
        labels, probabilities = model.predictor(features, probabilities=classifier)()
        return np.asarray(labels), probabilities
    predictions = np.asarray(model.predict(features))
    if not classifier or not hasattr(model, "predict_proba"):
        # A Pipeline has predict_proba only where its last step has (not an SVC without probability=True).
        return predictions, None
    return predictions, np.asarray(model.predict_proba(features), dtype=np.float64)


def read_model(uri: str) -> Any:
    """Load a model the trainer wrote: ``uri`` names its model file (``model.joblib``; ``model.onnx`` or
    ``model.pt``, with ``model.pt`` and ``model.json`` beside it) or the folder that holds one. A TorchMLP
    is read from its PyTorch files, so that it predicts as the trainer's new models do. Raises ValueError
    or OSError."""
    base = uri.rstrip("/")
    name = posixpath.basename(base)
    if name == SKLEARN_MODEL_FILE:
        return joblib.load(io.BytesIO(_read_bytes(base)))
    if name in (ONNX_MODEL_FILE, TORCH_MODEL_FILE):
        folder = posixpath.dirname(base)
        architecture = json.loads(_read_bytes(output_file_uri(folder, TORCH_ARCHITECTURE_FILE)))
        return load_torch_mlp(_read_bytes(output_file_uri(folder, TORCH_MODEL_FILE)), architecture)
    filesystem, path = fsspec.core.url_to_fs(base)
    for candidate in MODEL_FILES:
        if filesystem.isfile(posixpath.join(path, candidate)):
            return read_model(output_file_uri(base, candidate))
    raise FileNotFoundError(
        f"{uri} is neither a model file nor a folder holding one of {', '.join(MODEL_FILES)}"
    )


def export_onnx(uri: str) -> ModelArtifact:
    """Write ``model.onnx`` beside the PyTorch model that ``uri`` names (its ``model.pt`` or its folder),
    as :func:`write_model` writes it for a new one; its URI and digest. Raises ValueError or OSError (no
    such model), or TrainerError (the export or the write failed)."""
    base = uri.rstrip("/")
    folder = posixpath.dirname(base) if posixpath.basename(base) in MODEL_FILES else base
    model = read_model(output_file_uri(folder, TORCH_MODEL_FILE))
    payload = _onnx_bytes(model)
    artifact = ModelArtifact(uri=output_file_uri(folder, ONNX_MODEL_FILE), digest=sha256_digest(payload))
    write_bytes(artifact.uri, payload)
    return artifact


def _onnx_bytes(model: TorchMLP) -> bytes:
    try:
        return model.onnx_bytes()
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED, f"exporting the model to ONNX failed: {type(exc).__name__}: {exc}"
        ) from exc


def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as stream:
        payload: bytes = stream.read()
    return payload
