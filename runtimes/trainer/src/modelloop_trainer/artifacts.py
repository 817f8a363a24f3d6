"""Writing a run's files to its output folder (any fsspec URI: file://, s3://, ...).

The folder holds the model (``model.joblib``, or ``model.pt`` + ``model.json`` for PyTorch),
``metrics.json``, ``reference.csv`` (a sample of the training features, the reference for
drift detection) and ``result.json`` (the full result).
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
import pandas as pd

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.torch_mlp import TorchMLP

SKLEARN_MODEL_FILE = "model.joblib"
TORCH_MODEL_FILE = "model.pt"
TORCH_ARCHITECTURE_FILE = "model.json"
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.csv"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class ModelArtifact:
    """Where the model file went and the sha256 digest of its bytes."""

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
    """Serialize the fitted model into the output folder and return its URI and digest."""
    if isinstance(model, TorchMLP):
        payload = model.weights_bytes()
        uri = output_file_uri(output_uri, TORCH_MODEL_FILE)
        write_json(output_file_uri(output_uri, TORCH_ARCHITECTURE_FILE), model.architecture())
    else:
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        payload = buffer.getvalue()
        uri = output_file_uri(output_uri, SKLEARN_MODEL_FILE)
    write_bytes(uri, payload)
    return ModelArtifact(uri=uri, digest=sha256_digest(payload))


def write_reference(output_uri: str, x_train: pd.DataFrame, *, rows: int, seed: int) -> str:
    """Write a sample of ``rows`` training rows (features only) as CSV; returns its URI."""
    sample = x_train.sample(n=min(rows, len(x_train)), random_state=seed) if len(x_train) > rows else x_train
    uri = output_file_uri(output_uri, REFERENCE_FILE)
    write_bytes(uri, sample.to_csv(index=False, lineterminator="\n").encode())
    return uri
