"""A version's reference sample: the trainer's ``reference.csv``, and optionally the predictions on it.

Read once through fsspec (``file://``, ``s3://`` ...) into numpy arrays that the detectors keep. The
caller has checked the URIs against the artifact roots (:mod:`artifacts`); a file is read up to
:attr:`~modelloop_detector.limits.Limits.max_reference_bytes`, and what a reader says about a file
that cannot be parsed is logged (shortened), never returned to the caller: it may quote the file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
from modelloop_contracts import PREDICTION_COLUMN

from modelloop_detector.limits import FEATURE, Limits, RefusalReason
from modelloop_detector.payloads import CategoryCodes, FloatArray, ObjectArray

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression"]


class ReferenceError(ValueError):
    """A reference or predictions file that cannot be read or does not fit the registration;
    ``reason`` when a limit refused it."""

    def __init__(self, message: str, reason: RefusalReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


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
    limits: Limits | None = None,
) -> Reference:
    """Read ``uri`` (and ``predictions_uri``); a file that cannot be used raises :class:`ReferenceError`."""
    limits = limits or Limits()
    frame = _read_csv(uri, limits.max_reference_bytes)
    if target_column and target_column in frame.columns:
        frame = frame.drop(columns=[target_column])
    if frame.empty or not len(frame.columns):
        raise ReferenceError(f"reference {uri} has no rows or no feature columns")
    _check_features(uri, [str(name) for name in frame.columns], limits)
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
        predictions_frame = _read_csv(predictions_uri, limits.max_reference_bytes)
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


def _check_features(uri: str, names: list[str], limits: Limits) -> None:
    # Feature names become Prometheus label values: bounded in number, length and characters. The
    # message says which column, not what the file holds there.
    if len(names) > limits.max_features:
        raise ReferenceError(
            f"reference {uri} has {len(names)} feature columns; at most {limits.max_features} "
            "(MODELLOOP_DETECTOR_MAX_FEATURES)",
            RefusalReason.TOO_MANY_FEATURES,
        )
    for position, name in enumerate(names, start=1):
        if len(name) > limits.max_feature_name_length or not FEATURE.fullmatch(name):
            raise ReferenceError(
                f"column {position} of reference {uri} is not a usable feature name: at most "
                f"{limits.max_feature_name_length} letters, digits, spaces and _.,:;()[]/%+#&-",
                RefusalReason.INVALID_NAME,
            )


def _read_csv(uri: str, max_bytes: int) -> pd.DataFrame:
    try:
        with fsspec.open(uri, "rb") as stream:
            payload = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise ReferenceError(f"cannot read {uri}: no such file") from None
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise ReferenceError(f"cannot read {uri}: {_what(exc)}") from None
    except Exception as exc:
        _log_reader_error(uri, exc)
        raise ReferenceError(f"cannot read {uri} (the detector's log says why)") from None
    if len(payload) > max_bytes:
        raise ReferenceError(
            f"{uri} is larger than {max_bytes} bytes (MODELLOOP_DETECTOR_MAX_REFERENCE_BYTES)",
            RefusalReason.REFERENCE_TOO_LARGE,
        )
    try:
        return pd.read_csv(io.BytesIO(payload))
    except Exception as exc:
        _log_reader_error(uri, exc)
        raise ReferenceError(f"{uri} is not a CSV table with a header row") from None


def _what(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return "not a file"


def _log_reader_error(uri: str, exc: Exception) -> None:
    logger.warning("reading %s failed: %s: %.200s", uri, type(exc).__name__, str(exc))
