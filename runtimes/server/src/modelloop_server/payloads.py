"""Turning KServe's decoded requests into feature rows, and predictions into responses.

V1 requests arrive as a dict (``{"instances": [[...], ...]}``, rows of numbers or objects keyed
by feature name), V2 requests as an :class:`~kserve.protocol.infer_type.InferRequest` (one
``[rows, features]`` tensor, or one ``[rows]`` tensor per named feature). Rows become a 2-D
float64 array with numpy directly: a pandas frame per request would cost more than the model.
Anything that cannot become such an array is an :class:`~kserve.errors.InvalidInput` (400).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from modelloop_contracts import PROBABILITIES_KEY

Payload: TypeAlias = dict[str, Any] | InferRequest


def features_from_request(
    payload: Payload, feature_names: Sequence[str] | None, n_features: int | None
) -> np.ndarray:
    """The request's rows as a 2-D float64 array in the model's column order."""
    if isinstance(payload, InferRequest):
        features = _features_from_v2(payload, feature_names)
    elif isinstance(payload, dict):
        features = _features_from_v1(payload, feature_names)
    else:
        # KServe hands over the raw bytes of a body whose Content-Type is not JSON.
        raise InvalidInput("the request body must be JSON, sent with Content-Type: application/json")
    if n_features is not None and features.shape[1] != n_features:
        raise InvalidInput(f"each row must have {n_features} feature values, got {features.shape[1]}")
    return features


def prediction_response(
    payload: Payload,
    predictions: np.ndarray,
    model_name: str,
    model_version: str,
    probabilities: np.ndarray | None = None,
) -> Any:
    """The V1 (``{"predictions": [...], "model_version": ...}``) or V2 (an InferResponse) answer.

    Both name the version, so that a payload logger's response event says which version answered. With a
    classifier's ``probabilities`` (float ``[rows, classes]``, in the order of the model's classes), V1 adds
    them under ``"probabilities"`` (one list per row) and V2 as a second output named ``probabilities``
    (FP64, shape ``[rows, classes]``, binary where the request asks for binary outputs, as the first).
    """
    if not isinstance(payload, InferRequest):
        answer: dict[str, Any] = {"predictions": predictions.tolist()}
        if probabilities is not None:
            answer[PROBABILITIES_KEY] = probabilities.tolist()
        answer["model_version"] = model_version
        return answer
    binary = payload.use_binary_outputs
    if predictions.dtype.kind in "OUS":
        output = InferOutput(name="output-0", shape=[len(predictions)], datatype="BYTES")
        output.set_data_from_numpy(predictions.astype(np.object_), binary_data=binary)
    else:
        output = InferOutput(
            name="output-0", shape=list(predictions.shape), datatype=from_np_dtype(predictions.dtype)
        )
        output.set_data_from_numpy(predictions, binary_data=binary)
    outputs = [output]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        second = InferOutput(name=PROBABILITIES_KEY, shape=list(probabilities.shape), datatype="FP64")
        second.set_data_from_numpy(probabilities, binary_data=binary)
        outputs.append(second)
    return InferResponse(
        response_id=payload.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=model_version,
        infer_outputs=outputs,
        use_binary_outputs=binary,
        requested_outputs=payload.request_outputs,
    )


def _features_from_v1(payload: dict[str, Any], feature_names: Sequence[str] | None) -> np.ndarray:
    # KServe's V1 decoder accepts "inputs" as a synonym of "instances"; so does this server.
    instances = payload.get("instances", payload.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('the request needs "instances": a non-empty list of rows')
    if isinstance(instances[0], dict):
        instances = _rows_from_objects(instances, feature_names)
    return _as_rows(instances, 'each of "instances" must be a list of numbers')


def _rows_from_objects(instances: list[Any], feature_names: Sequence[str] | None) -> list[list[Any]]:
    if feature_names is None:
        raise InvalidInput("this model has no feature names; send each instance as a list of numbers")
    try:
        # A missing feature becomes None, which numpy turns into NaN: the model's imputer fills it.
        return [[instance.get(name) for name in feature_names] for instance in instances]
    except AttributeError:
        raise InvalidInput('"instances" mixes objects and other values') from None


def _features_from_v2(request: InferRequest, feature_names: Sequence[str] | None) -> np.ndarray:
    inputs = request.inputs
    if not inputs:
        raise InvalidInput('the request needs "inputs": at least one tensor')
    if len(inputs) == 1:
        return _as_rows(_tensor(inputs[0]), f"input {inputs[0].name!r} must have the shape [rows, features]")
    if feature_names is None:
        raise InvalidInput("this model has no feature names; send one input of shape [rows, features]")
    by_name = {tensor.name: tensor for tensor in inputs}
    missing = [name for name in feature_names if name not in by_name]
    if missing:
        raise InvalidInput(f"inputs are named for features; missing {missing}")
    columns = [_tensor(by_name[name]).reshape(-1) for name in feature_names]
    if len({len(column) for column in columns}) != 1:
        raise InvalidInput("every feature input must have the same number of rows")
    return np.column_stack(columns).astype(np.float64, copy=False)


def _tensor(tensor: Any) -> np.ndarray:
    if tensor.datatype == "BYTES":
        raise InvalidInput(f"input {tensor.name!r} is BYTES; features are numbers")
    try:
        return np.asarray(tensor.as_numpy())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {tensor.name!r} does not match its shape and datatype: {exc}") from None


def _as_rows(values: Any, message: str) -> np.ndarray:
    try:
        rows = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInput(message) from None
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise InvalidInput(message)
    return rows
