"""A version's reference sample: the trainer's ``reference.csv``, and optionally the predictions on it.

Read once through fsspec (``file://``, ``s3://`` ...) into numpy arrays that the detectors keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
from modelloop_contracts import PREDICTION_COLUMN

from modelloop_detector.payloads import CategoryCodes, FloatArray, ObjectArray

Task = Literal["classification", "regression"]


class ReferenceError(ValueError):
    """A reference or predictions file that cannot be read or does not fit the registration."""


@dataclass(frozen=True)
class Reference:
    """The reference sample of one version, laid out for the detectors.

    ``rows`` holds every feature in ``features`` order, categorical ones as category codes;
    ``numeric`` and ``categorical`` are the column indices of each kind.
    """

    uri: str
    features: tuple[str, ...]
    rows: FloatArray
    numeric: tuple[int, ...]
    categorical: dict[int, CategoryCodes]
    predictions_uri: str | None = None
    predictions: ObjectArray | None = None
    task: Task | None = None

    @property
    def width(self) -> int:
        """The number of features."""
        return len(self.features)


def load_reference(
    uri: str,
    *,
    categorical: Sequence[str] = (),
    target_column: str | None = None,
    predictions_uri: str | None = None,
) -> Reference:
    """Read ``uri`` (and ``predictions_uri``); a file that cannot be used raises :class:`ReferenceError`."""
    frame = _read_csv(uri)
    if target_column and target_column in frame.columns:
        frame = frame.drop(columns=[target_column])
    if frame.empty or not len(frame.columns):
        raise ReferenceError(f"reference {uri} has no rows or no feature columns")
    unknown = [name for name in categorical if name not in frame.columns]
    if unknown:
        raise ReferenceError(f"categorical columns {unknown} are not columns of reference {uri}")
    # Text columns cannot be compared as numbers: they are categorical whether or not they are named.
    categorical_names = set(categorical) | {
        str(name) for name in frame.columns if not pd.api.types.is_numeric_dtype(frame[name])
    }
    features = tuple(str(name) for name in frame.columns)
    rows = np.empty((len(frame), len(features)), dtype=np.float64)
    codes: dict[int, CategoryCodes] = {}
    for index, name in enumerate(features):
        column = frame[name]
        if name in categorical_names:
            values = column.to_numpy(dtype=object)
            codes[index] = CategoryCodes(list(dict.fromkeys(values.tolist())))
            rows[:, index] = codes[index].encode(values)
        else:
            rows[:, index] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(rows).any():
        raise ReferenceError(f"reference {uri} has empty or NaN values; the trainer's reference has none")
    numeric = tuple(index for index in range(len(features)) if index not in codes)
    predictions = task = None
    if predictions_uri:
        predictions_frame = _read_csv(predictions_uri)
        if PREDICTION_COLUMN not in predictions_frame.columns:
            raise ReferenceError(f"predictions file {predictions_uri} has no '{PREDICTION_COLUMN}' column")
        predictions = predictions_frame[PREDICTION_COLUMN].to_numpy(dtype=object)
        if len(predictions) == 0:
            raise ReferenceError(f"predictions file {predictions_uri} has no rows")
        task = prediction_task(predictions)
    return Reference(
        uri=uri,
        features=features,
        rows=rows,
        numeric=numeric,
        categorical=codes,
        predictions_uri=predictions_uri or None,
        predictions=predictions,
        task=task,
    )


def prediction_task(values: Sequence[Any] | ObjectArray) -> Task:
    """Classification when every prediction is a class (text, a bool or a whole number), else regression."""
    for value in values:
        if isinstance(value, str | bytes | bool | np.bool_):
            return "classification"
        if isinstance(value, float | np.floating) and not float(value).is_integer():
            return "regression"
    return "classification"


def _read_csv(uri: str) -> pd.DataFrame:
    try:
        with fsspec.open(uri, "rb") as stream:
            return pd.read_csv(stream)
    except Exception as exc:
        raise ReferenceError(f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc
