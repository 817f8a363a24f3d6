"""Requests to feature rows, predictions to responses: KServe's V1 dicts and V2 InferRequests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from modelloop_server.payloads import features_from_request, prediction_response

NAMES = ["a", "b", "c"]


def v2_request(*inputs: InferInput) -> InferRequest:
    return InferRequest(model_name="m", infer_inputs=list(inputs), request_id="r-1")


def test_v1_rows_become_a_float_matrix() -> None:
    rows = features_from_request({"instances": [[1, 2, 3], [4, 5, 6]]}, NAMES, 3)

    assert rows.dtype == np.float64
    assert rows.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v1_objects_are_ordered_by_the_models_feature_names_and_missing_ones_are_nan() -> None:
    rows = features_from_request({"instances": [{"c": 3, "a": 1, "b": 2}, {"a": 4, "c": 6}]}, NAMES, 3)

    assert rows[0].tolist() == [1, 2, 3]
    assert rows[1, 0] == 4 and np.isnan(rows[1, 1]) and rows[1, 2] == 6


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": []}, "non-empty list"),
        ({}, "non-empty list"),
        ({"instances": [1, 2, 3]}, "list of numbers"),
        ({"instances": [[1, 2], [3]]}, "list of numbers"),
        ({"instances": [[1, 2]]}, "3 feature values, got 2"),
        ({"instances": [{"a": 1}, [1, 2, 3]]}, "mixes objects"),
    ],
)
def test_malformed_v1_requests_are_invalid_input(payload: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        features_from_request(payload, NAMES, 3)


def test_v1_objects_need_a_model_with_feature_names() -> None:
    with pytest.raises(InvalidInput, match="no feature names"):
        features_from_request({"instances": [{"a": 1}]}, None, None)


def test_a_v2_rows_by_features_tensor_becomes_the_matrix() -> None:
    tensor = InferInput(name="x", shape=[2, 3], datatype="FP32", data=[1, 2, 3, 4, 5, 6])

    assert features_from_request(v2_request(tensor), NAMES, 3).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_tensors_per_feature_are_stacked_in_the_models_order() -> None:
    tensors = [
        InferInput(name=name, shape=[2], datatype="INT64", data=[i, i * 10])
        for i, name in enumerate(NAMES, 1)
    ]

    assert features_from_request(v2_request(*tensors[::-1]), NAMES, 3).tolist() == [[1, 2, 3], [10, 20, 30]]


def test_v2_tensors_per_feature_must_name_every_feature() -> None:
    tensors = [InferInput(name=name, shape=[1], datatype="FP64", data=[1.0]) for name in NAMES[:2]]

    with pytest.raises(InvalidInput, match=r"missing \['c'\]"):
        features_from_request(v2_request(*tensors), NAMES, 3)


def test_v2_bytes_are_not_features() -> None:
    tensor = InferInput(name="x", shape=[1], datatype="BYTES", data=["a"])

    with pytest.raises(InvalidInput, match="BYTES"):
        features_from_request(v2_request(tensor), NAMES, 3)


def test_a_v1_answer_lists_the_predictions_and_names_the_version() -> None:
    assert prediction_response({"instances": [[1]]}, np.array(["x", "y"]), "m", "1") == {
        "predictions": ["x", "y"],
        "model_version": "1",
    }


def test_a_v2_answer_carries_labels_as_bytes_and_numbers_in_their_datatype() -> None:
    request = v2_request(InferInput(name="x", shape=[2, 3], datatype="FP32", data=[0] * 6))

    labels = prediction_response(request, np.array(["x", "y"]), "m", "7")
    values = prediction_response(request, np.array([1.5, 2.5]), "m", "7")

    assert isinstance(labels, InferResponse) and isinstance(values, InferResponse)
    assert (labels.id, labels.model_name, labels.model_version) == ("r-1", "m", "7")
    assert (labels.outputs[0].datatype, labels.outputs[0].data) == ("BYTES", ["x", "y"])
    assert (values.outputs[0].datatype, values.outputs[0].shape, values.outputs[0].data) == (
        "FP64",
        [2],
        [1.5, 2.5],
    )


def test_a_v1_answer_carries_a_classifiers_probabilities_beside_the_predictions() -> None:
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]])

    answer = prediction_response({"instances": [[1], [2]]}, np.array(["y", "x"]), "m", "1", probabilities)

    assert answer == {
        "predictions": ["y", "x"],
        "probabilities": [[0.25, 0.75], [1.0, 0.0]],
        "model_version": "1",
    }


def test_a_v2_answer_carries_a_classifiers_probabilities_as_a_second_fp64_output() -> None:
    request = v2_request(InferInput(name="x", shape=[2, 3], datatype="FP32", data=[0] * 6))
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)

    answer = prediction_response(request, np.array(["y", "x"]), "m", "7", probabilities)

    assert isinstance(answer, InferResponse)
    body, _ = answer.to_rest()
    assert isinstance(body, dict)
    assert body["outputs"] == [
        {"name": "output-0", "shape": [2], "datatype": "BYTES", "data": ["y", "x"]},
        {"name": "probabilities", "shape": [2, 2], "datatype": "FP64", "data": [0.25, 0.75, 1.0, 0.0]},
    ]


def test_a_v2_answer_in_binary_carries_the_probabilities_in_binary_too() -> None:
    request = InferRequest(
        model_name="m",
        infer_inputs=[InferInput(name="x", shape=[1, 3], datatype="FP32", data=[0] * 3)],
        request_id="r-2",
        parameters={"binary_data_output": True},
    )
    probabilities = np.array([[0.125, 0.875]])

    answer = prediction_response(request, np.array([1.5]), "m", "7", probabilities)

    assert isinstance(answer, InferResponse)
    body, json_length = answer.to_rest()
    assert isinstance(body, bytes) and json_length is not None
    head, tail = json.loads(body[:json_length]), body[json_length:]
    assert [(output["name"], output["datatype"], output["shape"]) for output in head["outputs"]] == [
        ("output-0", "FP64", [1]),
        ("probabilities", "FP64", [1, 2]),
    ]
    assert [output["parameters"]["binary_data_size"] for output in head["outputs"]] == [8, 16]
    assert np.frombuffer(tail[8:], dtype=np.float64).tolist() == [0.125, 0.875]


def test_a_regressors_answers_carry_no_probabilities() -> None:
    request = v2_request(InferInput(name="x", shape=[1, 3], datatype="FP32", data=[0] * 3))

    v1 = prediction_response({"instances": [[1]]}, np.array([1.5]), "m", "1")
    v2 = prediction_response(request, np.array([1.5]), "m", "1")

    assert "probabilities" not in v1
    assert [output.name for output in v2.outputs] == ["output-0"]
