"""Seldon's prediction protocol: the rows of a request, and the message that answers a failure.

A request is a SeldonMessage as JSON (REST) or decoded from protobuf (gRPC) with rows of feature
values in ``data``: ``{"ndarray": [[...], ...]}`` or ``{"tensor": {"shape": [rows, features],
"values": [...]}}``, and optionally ``"names"``, the features' names in the order the columns are
sent. Rows become a 2-D float64 array in the model's column order; anything that cannot become one
is a :class:`BadRequest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from modelloop_contracts import Array

# Why a request failed: the bounded values of the errors metric's ``reason`` label.
INVALID_MESSAGE = "invalid_message"
INVALID_FEATURES = "invalid_features"
MODEL_REJECTED = "model_rejected"
INTERNAL = "internal"
ERROR_REASONS = (INVALID_MESSAGE, INVALID_FEATURES, MODEL_REJECTED, INTERNAL)

_ROWS_OF_NUMBERS = "must be a non-empty list of rows, each a list of numbers"


class BadRequest(Exception):
    """A request the model cannot take: answered 400 with ``message``; ``reason`` labels the metric."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def features_from_message(message: Any, feature_names: Sequence[str] | None, n_features: int | None) -> Array:
    """The request's rows as a 2-D float64 array in the model's column order."""
    if not isinstance(message, dict):
        raise BadRequest(
            'the request must be a Seldon message, a JSON object such as {"data": {"ndarray": [[...]]}}',
            INVALID_MESSAGE,
        )
    data = message.get("data")
    if not isinstance(data, dict):
        sent = next((key for key in ("jsonData", "strData", "binData") if key in message), None)
        raise BadRequest(
            'the request needs "data" with the rows in "ndarray" or "tensor"'
            + (f' ("{sent}" is not supported)' if sent else ""),
            INVALID_MESSAGE,
        )
    if "ndarray" in data:
        rows = _as_rows(data["ndarray"], f'"data.ndarray" {_ROWS_OF_NUMBERS}')
    elif "tensor" in data:
        rows = _tensor_rows(data["tensor"])
    else:
        raise BadRequest('"data" needs "ndarray" or "tensor" ("tftensor" is not supported)', INVALID_MESSAGE)
    names = data.get("names")
    if names and feature_names is not None:
        rows = _in_model_order(rows, names, feature_names)
    if n_features is not None and rows.shape[1] != n_features:
        raise BadRequest(
            f"each row must have {n_features} feature values, got {rows.shape[1]}", INVALID_FEATURES
        )
    return rows


def failure_message(info: str, code: int, reason: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """A failed request's answer, in the form of seldon-core's own errors.

    seldon-core answers a ``predict_raw`` result whose ``status.code`` is set with that HTTP status,
    and records the ``meta.metrics`` of every result, failures included.
    """
    seldon_reason = "MICROSERVICE_BAD_DATA" if code < 500 else "MICROSERVICE_INTERNAL_ERROR"
    return {
        "status": {"code": code, "info": info, "reason": seldon_reason, "status": "FAILURE"},
        "meta": {"metrics": metrics},
    }


def _tensor_rows(tensor: Any) -> Array:
    message = '"data.tensor" must be {"shape": [rows, features], "values": [numbers, row after row]}'
    if not isinstance(tensor, dict):
        raise BadRequest(message, INVALID_FEATURES)
    try:
        values = np.asarray(tensor["values"], dtype=np.float64).reshape(tensor["shape"])
    except (KeyError, ValueError, TypeError):
        raise BadRequest(message, INVALID_FEATURES) from None
    return _as_rows(values, message)


def _as_rows(values: Any, message: str) -> Array:
    try:
        rows = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(message, INVALID_FEATURES) from None
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise BadRequest(message, INVALID_FEATURES)
    return rows


def _in_model_order(rows: Array, names: Any, feature_names: Sequence[str]) -> Array:
    if not isinstance(names, list) or len(names) != rows.shape[1]:
        raise BadRequest('"data.names" must name each column of the rows, in order', INVALID_FEATURES)
    sent = [str(name) for name in names]
    if sent == list(feature_names):
        return rows
    missing = [name for name in feature_names if name not in sent]
    unknown = [name for name in sent if name not in feature_names]
    if missing or unknown or len(set(sent)) != len(sent):
        raise BadRequest(
            f'"data.names" must be the model\'s features {list(feature_names)}; '
            f"missing {missing}, unknown {unknown}",
            INVALID_FEATURES,
        )
    return rows[:, [sent.index(name) for name in feature_names]]
