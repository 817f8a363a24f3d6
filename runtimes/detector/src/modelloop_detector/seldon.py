"""Seldon Core v1's logged inferences: its payload logger's CloudEvents and its SeldonMessage bodies.

Read from seldon-core 1.17's service orchestrator (the executor, ``SeldonIO/seldon-core`` at ``v1.17.1``):

- ``executor/predictor/predictor_process.go`` (``logPayload``): a graph node with a ``logger`` logs the
  message it receives (a request) and the message it answers (a response), each as its own log request,
  with a new UUID as the event id, the node's name as ``ModelId`` and the prediction's ``puid`` (the
  ``Seldon-Puid`` header, which ``executor/api/rest/middlewares.go``'s ``puidHeader`` sets to a new UUID
  where the caller sent none) as ``RequestId``. The event ids of a request and its response differ: the
  ``requestid`` extension pairs them.
- ``executor/logger/worker.go`` (``sendCloudEvent``) and ``executor/logger/types.go``: a CloudEvents 1.0
  event in HTTP binary mode (sdk-go v1.2.0's ``HTTPBinaryV1``; ``executor/go.mod``) with ``Ce-Specversion:
  1.0``, ``Ce-Id``, ``Ce-Type`` (``io.seldon.serving.inference.request``, ``...response``, or
  ``io.seldon.serving.feedback``), ``Ce-Source`` (the executor's own URL, ``http://<hostname>:<port>/``),
  ``Ce-Time``, and the extensions ``Ce-Modelid`` (the graph node), ``Ce-Requestid`` (the puid),
  ``Ce-Inferenceservicename`` (the SeldonDeployment's name), ``Ce-Namespace``, ``Ce-Endpoint`` (the
  predictor's name) and ``Ce-Protocol`` (the deployment's protocol: ``seldon``, ``v2``/``kfserving`` or
  ``tensorflow``); ``Content-Type`` is the message's (``application/json`` over REST; gRPC's
  ``application/protobuf`` bodies are not JSON, and are dropped as ``invalid_json``), the body the message
  as it was sent (gzip undone by ``payload.DecompressBytes``; ``executor/logger/dispatcher.go`` starts the
  workers).

A SeldonMessage (the ``seldon`` protocol) carries rows in ``data.ndarray`` (a list of rows) or
``data.tensor`` (``{"shape": [n, d], "values": [...]}``), with ``data.names`` naming the columns where the
caller named them; modelloop's model server answers with its predictions in ``data`` and the version and
a classifier's class probabilities in ``meta.tags`` (``model_version``, ``probabilities``). ``jsonData``,
``strData`` and ``binData`` carry no rows: such a message is an invalid payload.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from modelloop_contracts import PROBABILITIES_KEY

from modelloop_detector.payloads import (
    NOT_ONE,
    OnePrediction,
    PayloadError,
    RequestRows,
    ResponsePredictions,
    one_row,
    one_value,
    parse_rows,
    probability_row,
    read_probabilities,
    response_values,
)

REQUEST_TYPE = "io.seldon.serving.inference.request"
RESPONSE_TYPE = "io.seldon.serving.inference.response"
REQUEST_ID_EXTENSION = "requestid"
"""The extension that carries the prediction's puid: what pairs a request with its response."""
PROTOCOL_EXTENSION = "protocol"
SELDON_PROTOCOL = "seldon"
"""The ``protocol`` extension of SeldonMessage bodies; the others (``v2``, ``kfserving``, ``tensorflow``)
send KServe's V1/V2 bodies (TensorFlow Serving's are V1's shape)."""
VERSION_TAG = "model_version"


def parse_seldon_request(body: Any) -> RequestRows:
    """The rows of a SeldonMessage request: ``data.ndarray`` or ``data.tensor``, named by ``data.names``."""
    data = _data(body, "request")
    if "ndarray" in data:
        rows = parse_rows(data["ndarray"], "data.ndarray")
    elif "tensor" in data:
        count, array = _tensor_rows(data["tensor"])
        rows = RequestRows(count=count, positional=array)
    else:
        raise PayloadError("the request's 'data' has neither 'ndarray' nor 'tensor'")
    names = data.get("names")
    if not names:
        return rows
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise PayloadError("'data.names' must be a list of feature names")
    if rows.positional is None:
        raise PayloadError("'data.names' names columns, but the rows of 'data.ndarray' are objects")
    if len(names) != rows.positional.shape[1]:
        raise PayloadError(
            f"'data.names' names {len(names)} columns, the rows have {rows.positional.shape[1]} values"
        )
    return RequestRows(count=rows.count, positional=rows.positional, names=tuple(names))


def parse_seldon_response(body: Any) -> ResponsePredictions:
    """The predictions of a SeldonMessage response (``data.ndarray`` or ``data.tensor``), its version and
    its class probabilities (``meta.tags``)."""
    data = _data(body, "response")
    if "ndarray" in data:
        values = response_values(data["ndarray"], "data.ndarray")
    elif "tensor" in data:
        tensor = data["tensor"]
        array, _ = _tensor_array(tensor)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise PayloadError(f"'data.tensor' has shape {list(array.shape)}; one value per row is needed")
        values = response_values(array.tolist(), "data.tensor")
    else:
        raise PayloadError("the response's 'data' has neither 'ndarray' nor 'tensor'")
    meta = body.get("meta")
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if not isinstance(tags, dict):
        return ResponsePredictions(values=values, model_version=None)
    version = tags.get(VERSION_TAG)
    model_version = None if version is None or version == "" else str(version)
    given = tags.get(PROBABILITIES_KEY)
    if given is None:
        return ResponsePredictions(values=values, model_version=model_version)
    probabilities, ignored = read_probabilities(given, len(values))
    return ResponsePredictions(values, model_version, probabilities, ignored)


def seldon_request_row(body: Any) -> tuple[list[Any], tuple[str, ...] | None] | None:
    """The one row of a SeldonMessage request of one row in ``data.ndarray``, and the names of its columns
    (``data.names``, None without), as :func:`parse_seldon_request` lays them out; else None. Its values
    are not checked (:func:`~modelloop_detector.payloads.one_row`)."""
    if type(body) is not dict:
        return None
    data = body.get("data")
    if type(data) is not dict or "ndarray" not in data:
        return None
    row = one_row(data["ndarray"])
    if row is None:
        return None
    names = data.get("names")
    if not names:
        return row, None
    if type(names) is not list or len(names) != len(row) or not all(type(name) is str for name in names):
        return None
    return row, tuple(names)


def seldon_one_prediction(body: Any) -> OnePrediction | None:
    """A SeldonMessage response of one prediction in ``data.ndarray``, its version and probabilities from
    ``meta.tags``, as :func:`parse_seldon_response` reads it; else None."""
    if type(body) is not dict:
        return None
    data = body.get("data")
    if type(data) is not dict or "ndarray" not in data:
        return None
    value = one_value(data["ndarray"])
    if value is NOT_ONE:
        return None
    meta = body.get("meta")
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if not isinstance(tags, dict):
        return OnePrediction(value, None)
    version = tags.get(VERSION_TAG)
    model_version = None if version is None or version == "" else str(version)
    given = tags.get(PROBABILITIES_KEY)
    if given is None:
        return OnePrediction(value, model_version)
    read = probability_row(given)
    if read is None:
        return None
    return OnePrediction(value, model_version, *read)


def _data(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PayloadError(f"the {what} must be a SeldonMessage, a JSON object with 'data'")
    data = body.get("data")
    if isinstance(data, dict):
        return data
    status = body.get("status")
    if isinstance(status, dict) and status.get("status") == "FAILURE":
        raise PayloadError(f"the {what} is a failure ({status.get('code')}), not predictions")
    sent = next((key for key in ("jsonData", "strData", "binData") if key in body), None)
    raise PayloadError(
        f"the {what} has no 'data' with rows in 'ndarray' or 'tensor'"
        + (f" ('{sent}' carries no rows)" if sent else "")
    )


def _tensor_array(tensor: Any) -> tuple[Any, list[int]]:
    message = '\'data.tensor\' must be {"shape": [...], "values": [numbers]}'
    if not isinstance(tensor, dict):
        raise PayloadError(message)
    shape, values = tensor.get("shape"), tensor.get("values")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(size, int) and size >= 0 for size in shape)
    ):
        raise PayloadError(message)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PayloadError(message) from None
    if array.size != math.prod(shape):
        raise PayloadError(
            f"'data.tensor' has {array.size} values, its shape {shape} needs {math.prod(shape)}"
        )
    return array.reshape(shape), shape


def _tensor_rows(tensor: Any) -> tuple[int, Any]:
    array, shape = _tensor_array(tensor)
    if array.ndim != 2 or not shape[0]:
        raise PayloadError(f"'data.tensor' has shape {shape}; rows need [rows, features]")
    return int(shape[0]), array
