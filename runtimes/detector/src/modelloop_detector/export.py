"""Writing a window's rows as a training table, and the table's content hash.

The hash is the trainer's ``dataset_hash`` (runtimes/trainer, ``modelloop_trainer.dataset``),
re-implemented byte for byte: the trainer reads the exported file with ``pandas.read_csv`` and
hashes that frame, so the detector hashes the frame that ``read_csv`` gives back for the same bytes.
The tests check both give the same value.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec
import numpy as np
import pandas as pd

from modelloop_detector.service import Export

# Must equal the trainer's: bumped there whenever the canonical serialization changes.
_HASH_SCHEME = b"modelloop-dataset-v1\n"


@dataclass(frozen=True)
class ExportedTable:
    """Where a table was written, and what it holds."""

    uri: str
    content_hash: str
    rows: int
    labelled: int


def export_csv(
    export: Export, uri_prefix: str, namespace: str, service: str, now: datetime | None = None
) -> ExportedTable:
    """Write ``export`` as ``<uri_prefix>/<namespace>-<service>-<UTC time>-<hash prefix>.csv``."""
    frame = pd.DataFrame(export.columns, columns=[*export.features, export.target_column])
    payload = frame.to_csv(index=False, lineterminator="\n").encode()
    content_hash = dataset_hash(pd.read_csv(io.BytesIO(payload)))
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = content_hash.removeprefix("sha256:")[:12]
    uri = f"{uri_prefix.rstrip('/')}/{namespace}-{service}-{stamp}-{digest}.csv"
    with fsspec.open(uri, "wb", auto_mkdir=True) as stream:
        stream.write(payload)
    return ExportedTable(uri=uri, content_hash=content_hash, rows=export.rows, labelled=export.labelled)


def dataset_hash(frame: pd.DataFrame) -> str:
    """``sha256:<hex>`` of a table's content: column names, their kinds and every value, in order."""
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
