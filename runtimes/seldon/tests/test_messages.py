"""Seldon messages into feature rows: what a request may hold, and what it is told when it cannot."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelloop_seldon.messages import (
    INVALID_FEATURES,
    INVALID_MESSAGE,
    BadRequest,
    failure_message,
    features_from_message,
)

NAMES = ("a", "b", "c")


def test_ndarray_rows_become_a_float_array() -> None:
    rows = features_from_message({"data": {"ndarray": [[1, 2, 3], [4, 5, 6]]}}, NAMES, 3)

    assert rows.dtype == np.float64
    np.testing.assert_array_equal(rows, [[1, 2, 3], [4, 5, 6]])


def test_a_tensor_is_read_row_after_row() -> None:
    message = {"data": {"tensor": {"shape": [2, 3], "values": [1, 2, 3, 4, 5, 6]}}}

    np.testing.assert_array_equal(features_from_message(message, NAMES, 3), [[1, 2, 3], [4, 5, 6]])


def test_named_columns_are_put_in_the_model_order() -> None:
    message = {"data": {"names": ["c", "a", "b"], "ndarray": [[3, 1, 2]]}}

    np.testing.assert_array_equal(features_from_message(message, NAMES, 3), [[1, 2, 3]])


def test_names_are_ignored_for_a_model_that_has_none() -> None:
    message = {"data": {"names": ["x", "y", "z"], "ndarray": [[1, 2, 3]]}}

    np.testing.assert_array_equal(features_from_message(message, None, 3), [[1, 2, 3]])


def test_null_becomes_nan_for_the_model_to_impute() -> None:
    rows = features_from_message({"data": {"ndarray": [[1, None, 3]]}}, NAMES, 3)

    assert np.isnan(rows[0, 1])


@pytest.mark.parametrize(
    ("message", "reason", "says"),
    [
        ([[1, 2, 3]], INVALID_MESSAGE, "must be a Seldon message"),
        ({"instances": [[1, 2, 3]]}, INVALID_MESSAGE, 'needs "data"'),
        ({"jsonData": {"x": 1}}, INVALID_MESSAGE, '"jsonData" is not supported'),
        ({"data": {"tftensor": {}}}, INVALID_MESSAGE, '"tftensor" is not supported'),
        ({"data": {"ndarray": [[1, 2]]}}, INVALID_FEATURES, "each row must have 3 feature values, got 2"),
        ({"data": {"ndarray": [1, 2, 3]}}, INVALID_FEATURES, "list of rows"),
        ({"data": {"ndarray": []}}, INVALID_FEATURES, "non-empty list of rows"),
        ({"data": {"ndarray": [[1, "two", 3]]}}, INVALID_FEATURES, "list of numbers"),
        ({"data": {"ndarray": [[1, 2, 3], [4, 5]]}}, INVALID_FEATURES, "list of numbers"),
        (
            {"data": {"tensor": {"shape": [2, 3], "values": [1, 2, 3]}}},
            INVALID_FEATURES,
            '"shape": [rows, features]',
        ),
        (
            {"data": {"names": ["a", "b", "x"], "ndarray": [[1, 2, 3]]}},
            INVALID_FEATURES,
            "missing ['c'], unknown ['x']",
        ),
        ({"data": {"names": ["a", "b"], "ndarray": [[1, 2, 3]]}}, INVALID_FEATURES, "name each column"),
    ],
)
def test_a_request_that_cannot_become_rows_is_a_bad_request_that_says_why(
    message: Any, reason: str, says: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        features_from_message(message, NAMES, 3)

    assert raised.value.reason == reason
    assert says in raised.value.message


def test_a_failure_carries_its_http_code_seldons_reason_and_its_metrics() -> None:
    metrics = [{"type": "COUNTER", "key": "k", "value": 1}]

    assert failure_message("no", 400, INVALID_FEATURES, metrics) == {
        "status": {"code": 400, "info": "no", "reason": "MICROSERVICE_BAD_DATA", "status": "FAILURE"},
        "meta": {"metrics": metrics},
    }
    assert failure_message("bug", 500, "internal", [])["status"]["reason"] == "MICROSERVICE_INTERNAL_ERROR"
