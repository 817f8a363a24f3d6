"""Loading the training table from a dataset URI, and its content hash.

``sklearn://<name>`` reads a dataset bundled inside scikit-learn (nothing is downloaded);
any other URI is read through fsspec (``file://``, ``s3://`` with s3fs, ...) as CSV or Parquet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from sklearn import datasets

from modelloop_trainer.config import DatasetFormat
from modelloop_trainer.errors import FailureReason, TrainerError

BUNDLED_DATASETS: dict[str, Callable[..., Any]] = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
    "diabetes": datasets.load_diabetes,
}

# Bumped whenever the canonical serialization below changes, so old and new hashes never collide.
_HASH_SCHEME = b"modelloop-dataset-v1\n"


@dataclass(frozen=True)
class Dataset:
    """A loaded training table and where it came from."""

    uri: str
    frame: pd.DataFrame
    content_hash: str


def load_dataset(uri: str, dataset_format: DatasetFormat) -> Dataset:
    """Read the table behind ``uri``; any failure to read it is a DatasetUnavailable error."""
    if dataset_format == "sklearn":
        frame = _load_bundled(uri)
    else:
        try:
            with fsspec.open(uri, "rb") as stream:
                frame = pd.read_parquet(stream) if dataset_format == "parquet" else pd.read_csv(stream)
        except Exception as exc:
            raise TrainerError(
                FailureReason.DATASET_UNAVAILABLE,
                f"cannot read {dataset_format} dataset {uri}: {type(exc).__name__}: {exc}",
            ) from exc
    return Dataset(uri=uri, frame=frame, content_hash=dataset_hash(frame))


def _load_bundled(uri: str) -> pd.DataFrame:
    name = uri.removeprefix("sklearn://").strip("/")
    loader = BUNDLED_DATASETS.get(name)
    if loader is None:
        raise TrainerError(
            FailureReason.DATASET_UNAVAILABLE,
            f"{uri} is not a dataset bundled with scikit-learn; use one of: "
            + ", ".join(f"sklearn://{known}" for known in BUNDLED_DATASETS),
        )
    frame = loader(as_frame=True).frame
    assert isinstance(frame, pd.DataFrame)
    return frame


def dataset_hash(frame: pd.DataFrame) -> str:
    """``sha256:<hex>`` of the table's content: its column names, their kinds and every value, in order.

    Each column is serialized canonically (integers as int64, other numbers as float64, both
    little-endian, every NaN the same bits; anything else as UTF-8 text), so the same table
    has the same hash whether it was read from CSV or Parquet, on any machine.
    """
    digest = hashlib.sha256(_HASH_SCHEME)
    digest.update(f"rows={len(frame)}\n".encode())
    for name in frame.columns:
        kind, payload = _canonical_column(frame[name])
        header = json.dumps({"name": str(name), "kind": kind, "bytes": len(payload)}, sort_keys=True)
        digest.update(header.encode() + b"\n")
        digest.update(payload)
    return f"sha256:{digest.hexdigest()}"


def _canonical_column(column: pd.Series) -> tuple[str, bytes]:
    exact = pd.api.types.is_bool_dtype(column) or pd.api.types.is_integer_dtype(column)
    if exact and not column.isna().any():
        values = column.to_numpy()
        if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            return "text", _text_payload(column)
        return "int", values.astype("<i8").tobytes()
    if pd.api.types.is_numeric_dtype(column):
        floats = column.to_numpy(dtype="float64", na_value=np.nan).astype("<f8")
        floats += 0.0  # -0.0 and 0.0 become the same
        floats[np.isnan(floats)] = np.nan  # one NaN bit pattern
        return "float", floats.tobytes()
    return "text", _text_payload(column)


def _text_payload(column: pd.Series) -> bytes:
    parts = []
    for value in column.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            parts.append(b"\x00")
        else:
            encoded = str(value).encode()
            parts.append(len(encoded).to_bytes(8, "little") + encoded)
    return b"".join(parts)
