"""The content hash of a training table: what the trainer reports as ``datasetHash`` and checks
``MODELLOOP_DATASET_HASH`` against, and what the drift detector reports for the tables it exports.

The hash is of the table's values, not of its file's bytes, so the same table has the same hash read from
CSV or Parquet, with pandas 2 or 3, numpy 1 or 2, on any machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# Bumped whenever the canonical serialization below changes, so old and new hashes never collide.
_HASH_SCHEME = b"modelloop-dataset-v1\n"


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
    # pandas is imported here, not with the package: the model servers install it without pandas. Whoever
    # hands over a DataFrame has imported it already.
    from pandas.api import types

    exact = types.is_bool_dtype(column) or types.is_integer_dtype(column)
    if exact and not column.isna().any():
        values = column.to_numpy()
        if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            return "text", _text_payload(column)
        return "int", values.astype("<i8").tobytes()
    if types.is_numeric_dtype(column):
        floats = column.to_numpy(dtype="float64", na_value=np.nan).astype("<f8")
        floats += 0.0  # -0.0 and 0.0 become the same
        floats[np.isnan(floats)] = np.nan  # one NaN bit pattern
        return "float", floats.tobytes()
    return "text", _text_payload(column)


def _text_payload(column: pd.Series) -> bytes:
    import pandas as pd

    parts = []
    for value in column.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            parts.append(b"\x00")
        else:
            encoded = str(value).encode()
            parts.append(len(encoded).to_bytes(8, "little") + encoded)
    return b"".join(parts)
