"""Reading KServe's V1 and V2 request and response bodies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelloop_detector.payloads import (
    CategoryCodes,
    PayloadError,
    ProbabilitiesIgnored,
    one_prediction,
    parse_request,
    parse_response,
    request_row,
)
from modelloop_detector.window import RowWindow

FEATURES = ("a", "b", "c")


def matrix(body: Any, categorical: dict[int, CategoryCodes] | None = None) -> np.ndarray:
    return parse_request(body).to_matrix(FEATURES, categorical or {})


def test_v1_instances_are_rows_in_order() -> None:
    assert matrix({"instances": [[1, 2, 3], [4, 5, 6.5]]}).tolist() == [[1, 2, 3], [4, 5, 6.5]]


def test_v1_inputs_is_a_synonym_of_instances() -> None:
    assert matrix({"inputs": [[1, 2, 3]]}).tolist() == [[1, 2, 3]]


def test_v1_object_rows_are_laid_out_by_feature_name() -> None:
    body = {"instances": [{"c": 3, "a": 1, "b": 2}, {"b": 5, "c": 6, "a": 4}]}
    assert matrix(body).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_one_tensor_of_shape_n_by_d_is_n_rows() -> None:
    body = {"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    assert matrix(body).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_nested_data_is_accepted_like_flat_data() -> None:
    body = {
        "inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6]]}]
    }
    assert matrix(body).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_one_tensor_per_feature_is_columns_by_name() -> None:
    body = {
        "inputs": [
            {"name": name, "shape": [2], "datatype": "FP32", "data": values}
            for name, values in (("c", [3, 6]), ("a", [1, 4]), ("b", [2, 5]))
        ]
    }
    assert matrix(body).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1, 2]]}, "rows have 2 values, the reference has 3 features"),
        ({"instances": [{"a": 1, "b": 2}]}, "missing ['c']"),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, "unknown ['d']"),
        ({"instances": [[1, "x", 3]]}, "feature 'b' is numeric in the reference, but a row has 'x'"),
    ],
)
def test_rows_that_do_not_fit_the_reference_are_refused(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=r".*" + message.replace("[", r"\[").replace("]", r"\]")):
        matrix(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2, 3], "must be a JSON object"),
        ({"rows": [[1, 2, 3]]}, "neither 'instances'"),
        ({"instances": []}, "non-empty list of rows"),
        ({"instances": [1, 2, 3]}, "list of rows"),
        ({"instances": [[1, 2], [1, 2, 3]]}, "rows of equal length"),
        ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]}]}, "has 2 values"),
        ({"inputs": [{"name": "x", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "shape"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_request(body)


def test_categorical_columns_become_codes_and_unseen_values_get_new_ones() -> None:
    codes = CategoryCodes(["red", "green"])
    rows = parse_request({"instances": [[1, "green", 3], [4, "blue", 6], [7, "red", 9]]})
    assert rows.to_matrix(FEATURES, {1: codes}).tolist() == [[1, 1, 3], [4, 2, 6], [7, 0, 9]]
    assert codes.decode(np.array([0.0, 1.0, 2.0])) == ["red", "green", "blue"]


def test_numeric_categories_match_across_int_float_and_text() -> None:
    codes = CategoryCodes([1, 2])
    assert codes.encode(np.array([1.0, "2", 2, 1], dtype=object)).tolist() == [0, 1, 1, 0]


def test_v1_response_predictions_and_model_version() -> None:
    response = parse_response({"predictions": [0, 2, [1]], "model_version": 3})
    assert response.values.tolist() == [0, 2, 1]
    assert response.model_version == "3"


def test_v2_response_takes_the_first_output() -> None:
    body = {
        "model_name": "iris",
        "model_version": "4",
        "outputs": [{"name": "output-0", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]}],
    }
    response = parse_response(body)
    assert response.values.tolist() == ["setosa", "virginica"]
    assert response.model_version == "4"


def test_a_response_without_version_leaves_it_to_the_endpoint() -> None:
    assert parse_response({"predictions": [1.5]}).model_version is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"result": [1]}, "neither 'predictions'"),
        ({"predictions": [[0.1, 0.9]]}, "one value per row"),
        ({"outputs": [{"name": "o", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}, "one value per row"),
        ({"outputs": [{"name": "o", "shape": [3], "data": [1, 2]}]}, "has 2 values"),
    ],
)
def test_malformed_responses_say_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_response(body)


def test_v1_probabilities_are_one_row_per_prediction() -> None:
    response = parse_response({"predictions": [0, 1], "probabilities": [[0.9, 0.1], [0.25, 0.75]]})
    assert response.probabilities is not None
    assert response.probabilities.tolist() == [[0.9, 0.1], [0.25, 0.75]]
    assert response.ignored is None


def test_v2_probabilities_are_the_output_named_probabilities() -> None:
    body = {
        "model_version": "4",
        "outputs": [
            {"name": "output-0", "shape": [2], "datatype": "INT64", "data": [0, 1]},
            {"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [0.9, 0.1, 0.25, 0.75]},
        ],
    }
    response = parse_response(body)
    assert response.values.tolist() == [0, 1]
    assert response.probabilities is not None
    assert response.probabilities.tolist() == [[0.9, 0.1], [0.25, 0.75]]


def test_a_response_without_probabilities_has_none_and_ignores_nothing() -> None:
    response = parse_response({"predictions": [1.5]})
    assert (response.probabilities, response.ignored) == (None, None)


def test_a_float32_rounding_past_one_is_read_and_clipped() -> None:
    response = parse_response({"predictions": [1], "probabilities": [[0.0, 1.0000001]]})
    assert response.probabilities is not None and response.probabilities.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize(
    ("probabilities", "reason"),
    [
        ([[0.9, 0.1]], ProbabilitiesIgnored.ROWS),
        ([[0.9, 0.1], [0.2]], ProbabilitiesIgnored.SHAPE),
        ([0.9, 0.1], ProbabilitiesIgnored.SHAPE),
        ([["a", "b"], ["c", "d"]], ProbabilitiesIgnored.SHAPE),
        ("0.9", ProbabilitiesIgnored.SHAPE),
        ([[0.9, 0.1], [1.5, -0.5]], ProbabilitiesIgnored.RANGE),
        ([[0.9, 0.1], [None, 0.5]], ProbabilitiesIgnored.RANGE),
    ],
)
def test_unusable_probabilities_are_ignored_and_the_predictions_kept(probabilities: Any, reason: str) -> None:
    response = parse_response({"predictions": [0, 1], "probabilities": probabilities})
    assert response.values.tolist() == [0, 1]
    assert (response.probabilities, response.ignored) == (None, reason)


def test_a_v2_probabilities_output_of_the_wrong_shape_is_ignored() -> None:
    body = {
        "outputs": [
            {"name": "output-0", "shape": [2], "datatype": "INT64", "data": [0, 1]},
            {"name": "probabilities", "shape": [4], "datatype": "FP32", "data": [0.9, 0.1, 0.25, 0.75]},
        ],
    }
    response = parse_response(body)
    assert (response.probabilities, response.ignored) == (None, ProbabilitiesIgnored.SHAPE)


def _general_row(body: Any) -> Any:
    try:
        rows = parse_request(body)
    except PayloadError:
        return "refused"
    if rows.positional is None or rows.count != 1:
        return "not one positional row"
    try:
        return rows.to_matrix(FEATURES, {}).tolist()[0]
    except PayloadError:
        return "not numbers"


def _fast_row(body: Any) -> Any:
    row = request_row(body)
    if row is None:
        return None
    try:  # what the service does with it: the window's packing
        return np.frombuffer(RowWindow(len(FEATURES), max_rows=1, max_seconds=1).pack_row(*row)).tolist()
    except Exception:
        return None


TENSOR = {"name": "x", "shape": [1, 3], "datatype": "FP32"}


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[1.5, 2.5, 3.5]]},
        {"instances": [[1, 2, 3]]},
        {"instances": [[True, 2.0, 3]]},
        {"instances": [[2**70, 2.0, -0.0]]},
        {"instances": [[float("nan"), float("inf"), 1e-300]]},
        {"instances": [["1.5", 2.0, 3.0]]},
        {"instances": [[None, 2.0, 3.0]]},
        {"instances": [[[1.0], 2.0, 3.0]]},
        {"instances": [[1.0, 2.0]]},
        {"instances": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]},
        {"instances": [{"a": 1.0, "b": 2.0, "c": 3.0}]},
        {"instances": [[]]},
        {"instances": []},
        {"instances": None},
        {"inputs": [[1.0, 2.0, 3.0]]},
        {"inputs": [{**TENSOR, "data": [1.0, 2.0, 3.0]}]},
        {"inputs": [{**TENSOR, "data": [[1.0, 2.0, 3.0]]}]},
        {"inputs": [{**TENSOR, "data": [1, 2, 3], "datatype": "INT64"}]},
        {"inputs": [{**TENSOR, "data": ["1", "2", "3"], "datatype": "BYTES"}]},
        {"inputs": [{**TENSOR, "data": [1.0, 2.0]}]},
        {"inputs": [{**TENSOR, "shape": [3, 1], "data": [1.0, 2.0, 3.0]}]},
        {"inputs": [{**TENSOR, "shape": [1.0, 3], "data": [1.0, 2.0, 3.0]}]},
        {"inputs": [{**TENSOR, "shape": [1, 3], "data": []}]},
        {"inputs": [{**TENSOR, "data": [1.0, 2.0, 3.0]}, {**TENSOR, "name": "y", "data": [1.0, 2.0, 3.0]}]},
        {"neither": [[1.0, 2.0, 3.0]]},
        [[1.0, 2.0, 3.0]],
    ],
)
def test_a_one_row_request_read_without_numpy_is_the_general_readers_row(body: Any) -> None:
    """request_row (and the window's packing after it) answers the row parse_request reads, or nothing,
    leaving the body to parse_request."""
    fast = _fast_row(body)
    if fast is not None:
        assert repr(fast) == repr(_general_row(body))  # repr: NaN equals nothing


def test_the_common_one_row_requests_are_read_without_numpy() -> None:
    assert _fast_row({"instances": [[1.5, 2, True]]}) == [1.5, 2.0, 1.0]
    assert _fast_row({"inputs": [{**TENSOR, "data": [[1.0, 2.0, 3.0]]}]}) == [1.0, 2.0, 3.0]


def _general_prediction(body: Any) -> Any:
    try:
        read = parse_response(body)
    except PayloadError:
        return "refused"
    if len(read.values) != 1:
        return "not one"
    probabilities = None if read.probabilities is None else read.probabilities[0].tolist()
    return read.values.tolist()[0], read.model_version, probabilities, read.ignored


PROBABILITIES = {"name": "probabilities", "shape": [1, 2], "datatype": "FP32"}


@pytest.mark.parametrize(
    "body",
    [
        {"predictions": [1]},
        {"predictions": ["setosa"], "model_version": 3},
        {"predictions": [[2.5]], "model_version": ""},
        {"predictions": [[1, 2]]},
        {"predictions": [{"a": 1}]},
        {"predictions": [None]},
        {"predictions": [1, 2]},
        {"predictions": []},
        {"predictions": [1], "probabilities": [[0.25, 0.75]]},
        {"predictions": [1], "probabilities": [[0, 1]]},
        {"predictions": [1], "probabilities": [[-1e-7, 1.0000001]]},
        {"predictions": [1], "probabilities": [[-0.1, 1.1]]},
        {"predictions": [1], "probabilities": [[float("nan"), 0.5]]},
        {"predictions": [1], "probabilities": [[0.5, float("inf")]]},
        {"predictions": [1], "probabilities": [[0.5, True]]},
        {"predictions": [1], "probabilities": [[0.5, "0.5"]]},
        {"predictions": [1], "probabilities": [[]]},
        {"predictions": [1], "probabilities": [[0.5], [0.5]]},
        {"predictions": [1], "probabilities": [0.5, 0.5]},
        {"predictions": [1], "probabilities": "high"},
        {"outputs": [{"name": "p", "shape": [1], "datatype": "INT64", "data": [2]}]},
        {"outputs": [{"name": "p", "shape": [1, 1], "datatype": "INT64", "data": [[2]]}]},
        {"outputs": [{"name": "p", "shape": [1.0], "datatype": "INT64", "data": [2]}]},
        {"outputs": [{"name": "p", "shape": [2], "datatype": "INT64", "data": [2]}]},
        {
            "outputs": [
                {"name": "p", "shape": [1], "datatype": "INT64", "data": [1]},
                {**PROBABILITIES, "data": [0.25, 0.75]},
            ]
        },
        {
            "outputs": [
                {"name": "p", "shape": [1], "datatype": "INT64", "data": [1]},
                {**PROBABILITIES, "data": [[0.25, 0.75]]},
            ],
            "model_version": "4",
        },
        {
            "outputs": [
                {"name": "p", "shape": [1], "datatype": "INT64", "data": [1]},
                {**PROBABILITIES, "shape": [2], "data": [0.25, 0.75]},
            ]
        },
        {
            "outputs": [
                {"name": "p", "shape": [1], "datatype": "INT64", "data": [1]},
                {**PROBABILITIES, "data": [1.5, -0.5]},
            ]
        },
        {"outputs": [{"name": "p", "shape": [1]}]},
        {"outputs": []},
        {"nothing": 1},
    ],
)
def test_a_one_prediction_response_read_without_numpy_is_the_general_readers(body: Any) -> None:
    """one_prediction answers what parse_response reads of a response of one prediction (its value,
    version, probabilities or why they are ignored), or nothing, leaving the body to parse_response."""
    fast = one_prediction(body)
    if fast is not None:
        read = (fast.value, fast.model_version, fast.probabilities, fast.ignored)
        assert repr(read) == repr(_general_prediction(body))


def test_the_common_one_prediction_responses_are_read_without_numpy() -> None:
    assert one_prediction({"predictions": [1], "probabilities": [[0.25, 0.75]], "model_version": "3"}) == (
        1,
        "3",
        [0.25, 0.75],
        None,
    )
    assert one_prediction({"predictions": [1], "probabilities": [[0.5, 1.5]]}) == (
        1,
        None,
        None,
        ProbabilitiesIgnored.RANGE,
    )
