"""KServe's inference request and response bodies (V1 and V2 protocols) as rows and predictions.

Pure functions: a body in, arrays out, or a :class:`PayloadError` that says what is wrong with it.
A request is parsed once into :class:`RequestRows` (positional rows, or columns by feature name);
:meth:`RequestRows.to_matrix` then lays it out in a reference's feature order. A classifier's response
may carry its class probabilities beside its predictions (``modelloop_contracts.PROBABILITIES_KEY``: a
V1 response's key, a V2 response's output): they are kept when they are one row of probabilities per
prediction, else ignored (:class:`ProbabilitiesIgnored` says why) while the predictions still count.
Seldon's messages are :mod:`~modelloop_detector.seldon`'s.

What the loggers send most, one row and its one prediction, is also read without numpy
(:func:`request_row`, :func:`one_prediction`): a numpy call costs more than the whole of such a body.
Each of them reads exactly what the general functions read from such a body, and answers None for
anything else, which the general functions then read (and refuse, with their messages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from modelloop_contracts import PROBABILITIES_KEY

FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]


class PayloadError(ValueError):
    """A request or response body that cannot be read as rows or predictions."""


@dataclass(frozen=True)
class RequestRows:
    """The rows of one inference request, before they are matched to a reference's features.

    Exactly one of ``positional`` (an ``(n, d)`` array, float when every value is a number) and
    ``columns`` (feature name -> ``n`` values) is set. ``names``, where the request named the positional
    columns (Seldon's ``data.names``), are their features' names.
    """

    count: int
    positional: npt.NDArray[Any] | None = None
    columns: Mapping[str, npt.NDArray[Any]] | None = None
    names: tuple[str, ...] | None = None

    def to_matrix(self, features: Sequence[str], categorical: Mapping[int, CategoryCodes]) -> FloatArray:
        """The rows as an ``(n, len(features))`` float array in ``features``' order.

        Categorical columns (by index) are replaced by their category codes; every other value
        must be a number.
        """
        width = len(features)
        if self.columns is not None:
            names = set(self.columns)
            if names != set(features):
                if len(names) == 1 and width == 1:
                    raw: npt.NDArray[Any] = next(iter(self.columns.values())).reshape(self.count, 1)
                else:
                    missing = [name for name in features if name not in names]
                    unknown = sorted(names.difference(features))
                    raise PayloadError(
                        f"the rows' features do not match the reference's {list(features)}: "
                        + "; ".join(
                            part
                            for part in (
                                f"missing {missing}" if missing else "",
                                f"unknown {unknown}" if unknown else "",
                            )
                            if part
                        )
                    )
            else:
                raw = np.empty((self.count, width), dtype=object)
                for index, name in enumerate(features):
                    raw[:, index] = self.columns[name]
        else:
            assert self.positional is not None
            raw = self.positional
            if raw.shape[1] != width:
                raise PayloadError(
                    f"rows have {raw.shape[1]} values, the reference has {width} features {list(features)}"
                )
            if self.names is not None and self.names != tuple(features) and width > 1:
                raw = raw[:, _column_order(self.names, features)]
        if not categorical:
            if raw.dtype == np.float64:
                return raw
            return _as_float(raw, features)
        matrix = np.empty((self.count, width), dtype=np.float64)
        numeric = [index for index in range(width) if index not in categorical]
        if numeric:
            matrix[:, numeric] = _as_float(raw[:, numeric], [features[index] for index in numeric])
        for index, codes in categorical.items():
            matrix[:, index] = codes.encode(raw[:, index])
        return matrix


def _column_order(names: Sequence[str], features: Sequence[str]) -> list[int]:
    """Where each of ``features`` is among the named columns ``names`` (the same names, in any order)."""
    if len(set(names)) != len(names) or set(names) != set(features):
        missing = [name for name in features if name not in names]
        unknown = sorted(set(names).difference(features))
        duplicated = sorted({name for name in names if names.count(name) > 1})
        parts = (
            f"missing {missing}" if missing else "",
            f"unknown {unknown}" if unknown else "",
            f"named twice {duplicated}" if duplicated else "",
        )
        raise PayloadError(
            f"the rows' features do not match the reference's {list(features)}: "
            + "; ".join(part for part in parts if part)
        )
    position = {name: index for index, name in enumerate(names)}
    return [position[name] for name in features]


class CategoryCodes:
    """Category value -> integer code of one categorical column, starting from the reference's values.

    Values first seen after the reference get new codes (up to ``limit``; past it they share one
    "other" code), so that a window's rows can be written back with their original values.
    """

    def __init__(self, reference_values: Sequence[Any], *, limit: int = 1000) -> None:
        self._codes: dict[Any, int] = {}
        self._values: list[Any] = []
        self._limit = limit
        for value in reference_values:
            self._code(value)
        self.other = float(limit)

    @staticmethod
    def _key(value: Any) -> Any:
        # 1, 1.0 and "1" read from CSV, JSON or a BYTES tensor must be the same category.
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
        if isinstance(value, bool | int | float | np.number):
            return float(value)
        return str(value)

    def _code(self, value: Any) -> float:
        key = self._key(value)
        code = self._codes.get(key)
        if code is None:
            if len(self._values) >= self._limit:
                return self.other
            code = len(self._values)
            self._codes[key] = code
            self._values.append(value.item() if isinstance(value, np.generic) else value)
        return float(code)

    def code(self, value: Any) -> float:
        """The code of ``value`` (a new one for a value not seen yet, within the limit)."""
        return self._code(value)

    def encode(self, values: npt.NDArray[Any]) -> FloatArray:
        """The codes of ``values``."""
        return np.fromiter((self._code(value) for value in values), dtype=np.float64, count=len(values))

    def decode(self, codes: FloatArray) -> list[Any]:
        """The category values of ``codes`` (``None`` for the "other" code)."""
        values = self._values
        return [values[int(code)] if code < len(values) else None for code in codes]


def _as_float(raw: npt.NDArray[Any], features: Sequence[str]) -> FloatArray:
    try:
        return raw.astype(np.float64)
    except (TypeError, ValueError):
        for column, name in enumerate(features):
            for value in raw[:, column]:
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise PayloadError(
                        f"feature {name!r} is numeric in the reference, but a row has {value!r}"
                    ) from None
        raise PayloadError("the rows are not numbers") from None


def parse_request(body: Any) -> RequestRows:
    """The rows of a V1 (``instances``/``inputs`` rows) or V2 (``inputs`` tensors) request body."""
    if not isinstance(body, dict):
        raise PayloadError("the request body must be a JSON object with 'instances' or 'inputs'")
    if "instances" in body:
        return parse_rows(body["instances"], "instances")
    inputs = body.get("inputs")
    if inputs is None:
        raise PayloadError("the request body has neither 'instances' (V1) nor 'inputs' (V1 or V2)")
    if isinstance(inputs, list) and inputs and all(_is_v2_tensor(item) for item in inputs):
        return _v2_rows(inputs)
    return parse_rows(inputs, "inputs")


def _is_v2_tensor(item: Any) -> bool:
    return isinstance(item, dict) and "data" in item and "shape" in item


def parse_rows(rows: Any, key: str) -> RequestRows:
    """A list of rows (``key`` names it in errors): lists of values, or objects by feature name."""
    if not isinstance(rows, list) or not rows:
        raise PayloadError(f"'{key}' must be a non-empty list of rows")
    if all(isinstance(row, dict) for row in rows):
        names = list(rows[0])
        if any(list(row) != names and set(row) != set(names) for row in rows):
            raise PayloadError(f"the object rows of '{key}' do not all have the same features")
        columns = {name: np.array([row[name] for row in rows], dtype=object) for name in names}
        return RequestRows(count=len(rows), columns=columns)
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        if not all(isinstance(row, list) for row in rows) or len({len(row) for row in rows}) != 1:
            raise PayloadError(f"'{key}' must be a list of rows of equal length (lists or objects)") from None
        array = np.empty((len(rows), len(rows[0])), dtype=object)
        array[:] = rows
    if array.ndim != 2:
        raise PayloadError(f"'{key}' must be a list of rows, each a list of feature values or an object")
    return RequestRows(count=array.shape[0], positional=array)


def _v2_rows(tensors: list[dict[str, Any]]) -> RequestRows:
    arrays = [(str(tensor.get("name", "")), _tensor(tensor)) for tensor in tensors]
    if len(arrays) == 1 and arrays[0][1].ndim == 2:
        return RequestRows(count=arrays[0][1].shape[0], positional=arrays[0][1])
    columns: dict[str, npt.NDArray[Any]] = {}
    for name, array in arrays:
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise PayloadError(
                f"input tensor {name!r} has shape {list(array.shape)}: send one tensor of shape [n, d], "
                "or one tensor of shape [n] per feature"
            )
        if name in columns:
            raise PayloadError(f"input tensor {name!r} appears twice")
        columns[name] = array
    counts = {len(array) for array in columns.values()}
    if len(counts) != 1:
        raise PayloadError("the per-feature input tensors do not have the same number of rows")
    return RequestRows(count=counts.pop(), columns=columns)


def _tensor(tensor: dict[str, Any]) -> npt.NDArray[Any]:
    name, shape, data = tensor.get("name"), tensor["shape"], tensor["data"]
    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise PayloadError(f"tensor {name!r} has an invalid shape {shape!r}")
    numeric = str(tensor.get("datatype", "")).upper() != "BYTES"
    try:
        array = np.asarray(data, dtype=np.float64 if numeric else object)
    except (TypeError, ValueError):
        raise PayloadError(f"tensor {name!r} has data that is not {tensor.get('datatype')}") from None
    if array.size != math.prod(shape) or not shape:
        raise PayloadError(
            f"tensor {name!r} has {array.size} values, its shape {shape} needs {math.prod(shape)}"
        )
    return array.reshape(shape)


class ProbabilitiesIgnored(StrEnum):
    """Why a response's probabilities were ignored (its predictions still count): the ``reason`` label of
    ``modelloop_detector_probabilities_ignored_total``."""

    SHAPE = "shape"
    """Not a list of rows of numbers of one length (a V2 output: not a numeric ``[n, k]`` tensor)."""
    ROWS = "rows"
    """Not one row per prediction."""
    RANGE = "range"
    """A value that is not finite or lies outside [0, 1]."""
    CLASSES = "classes"
    """Rows of another length than the version's classes (its holdout's)."""


PROBABILITY_TOLERANCE = 1e-6
"""How far outside [0, 1] a probability may lie and still be read (then clipped): a float32 softmax's
rounding, such as 1.0000001."""


@dataclass(frozen=True)
class ResponsePredictions:
    """The predictions of one inference response, one per request row, and the version that made them.

    ``probabilities``: a classifier's ``(n, k)`` class probabilities, where the response had usable ones;
    ``ignored`` says why the response's probabilities were not (None when it had none, or they were used).
    """

    values: ObjectArray
    model_version: str | None
    probabilities: FloatArray | None = None
    ignored: ProbabilitiesIgnored | None = None


def parse_response(body: Any) -> ResponsePredictions:
    """The predictions of a V1 (``predictions``) or V2 (``outputs``) response body, and its probabilities
    (V1: ``probabilities``; V2: the output named ``probabilities``)."""
    if not isinstance(body, dict):
        raise PayloadError("the response body must be a JSON object with 'predictions' or 'outputs'")
    version = body.get("model_version")
    model_version = None if version is None or version == "" else str(version)
    if "predictions" in body:
        values = response_values(body["predictions"], "predictions")
        given = body.get(PROBABILITIES_KEY)
    elif isinstance(body.get("outputs"), list) and body["outputs"]:
        outputs = body["outputs"]
        output = outputs[0]
        if not _is_v2_tensor(output):
            raise PayloadError("the response's first output is not a V2 tensor with 'shape' and 'data'")
        shape = output["shape"]
        if isinstance(shape, list) and len(shape) == 2 and shape[1] == 1:
            shape = [shape[0]]
        if not isinstance(shape, list) or len(shape) != 1:
            raise PayloadError(
                f"output {output.get('name')!r} has shape {shape!r}; one value per row is needed"
            )
        values = response_values(output["data"], f"output {output.get('name')!r}")
        if len(values) != shape[0]:
            raise PayloadError(f"output {output.get('name')!r} has {len(values)} values for shape {shape}")
        given = _probabilities_output(outputs)
        if given is not None:
            given = _v2_probabilities(given)
    else:
        raise PayloadError("the response body has neither 'predictions' (V1) nor 'outputs' (V2)")
    if given is None:
        return ResponsePredictions(values=values, model_version=model_version)
    probabilities, ignored = read_probabilities(given, len(values))
    return ResponsePredictions(values, model_version, probabilities, ignored)


def _v2_probabilities(output: dict[str, Any]) -> Any:
    # A V2 output of shape [n, k]; anything else is given as it is, for read_probabilities to refuse.
    if not _is_v2_tensor(output) or str(output.get("datatype", "")).upper() == "BYTES":
        return output
    try:
        return _tensor(output)
    except PayloadError:
        return output


def read_probabilities(given: Any, rows: int) -> tuple[FloatArray | None, ProbabilitiesIgnored | None]:
    """``given`` as ``(rows, k)`` class probabilities; or None and why they are ignored. On the hot path:
    one array conversion and two reductions (NaN carries through them, and fails the range check)."""
    try:
        array = np.asarray(given, dtype=np.float64)
    except (TypeError, ValueError):
        return None, ProbabilitiesIgnored.SHAPE
    if array.ndim != 2 or not array.shape[1]:
        return None, ProbabilitiesIgnored.SHAPE
    if array.shape[0] != rows:
        return None, ProbabilitiesIgnored.ROWS
    low, high = _lowest(array, axis=None), _highest(array, axis=None)
    if not (low >= -PROBABILITY_TOLERANCE and high <= 1.0 + PROBABILITY_TOLERANCE):
        return None, ProbabilitiesIgnored.RANGE
    if low < 0.0 or high > 1.0:
        np.clip(array, 0.0, 1.0, out=array)
    return array, None


# The ufuncs' reductions themselves: ndarray.min() and max() add a few microseconds each on small arrays.
_lowest, _highest = np.minimum.reduce, np.maximum.reduce


def response_values(values: Any, what: str) -> ObjectArray:
    """One prediction per row (a class or a number; ``[x]`` is ``x``); ``what`` names them in errors."""
    if not isinstance(values, list) or not values:
        raise PayloadError(f"{what} must be a non-empty list")
    flat = [value[0] if isinstance(value, list) and len(value) == 1 else value for value in values]
    if any(isinstance(value, list | dict) for value in flat):
        raise PayloadError(f"{what} must hold one value per row (a class or a number)")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


# --- one row, without numpy ---------------------------------------------------------------------

_FLOATS = frozenset({float})
_NUMBERS = frozenset({float, int})


def float_row(values: Any) -> list[float] | None:
    """``values`` when it is a non-empty list of numbers (JSON's floats, or whole numbers, made floats),
    as ``np.asarray(values, dtype=np.float64)`` reads them; None for anything else (booleans, text,
    lists, numbers too large for a float...)."""
    if type(values) is not list or not values:
        return None
    if _FLOATS.issuperset(map(type, values)):
        return values
    if not _NUMBERS.issuperset(map(type, values)):
        return None
    try:
        return [float(value) for value in values]
    except OverflowError:
        return None


def one_row(rows: Any) -> list[Any] | None:
    """The row of a list of exactly one row (a non-empty list), else None. Its values are not checked:
    whoever reads them as numbers does (:func:`float_row`, or the window's packing)."""
    if type(rows) is not list or len(rows) != 1:
        return None
    row = rows[0]
    return row if type(row) is list and row else None


def request_row(body: Any) -> list[Any] | None:
    """The one row of a request of one row, as :func:`parse_request` lays it out: V1's ``instances`` (or
    ``inputs`` rows), or V2's one numeric input tensor of shape ``[1, d]``; else None. Its values are not
    checked (:func:`one_row`): where they are all numbers (or booleans), :func:`parse_request` reads them
    as a ``(1, d)`` float array of the same values."""
    if type(body) is not dict:
        return None
    if "instances" in body:
        return one_row(body["instances"])
    inputs = body.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if not _is_v2_tensor(tensor):
        return one_row(inputs)
    return _tensor_row(tensor)


def _tensor_row(tensor: dict[str, Any]) -> list[Any] | None:
    """The row of a numeric V2 tensor of shape ``[1, d]`` (its data flat or nested), else None; its values
    not checked (:func:`one_row`)."""
    shape, data = tensor["shape"], tensor["data"]
    if (
        type(shape) is not list
        or len(shape) != 2
        or type(shape[0]) is not int
        or shape[0] != 1
        or type(shape[1]) is not int
        or type(data) is not list
        or not data
        or str(tensor.get("datatype", "")).upper() == "BYTES"
    ):
        return None
    row = one_row(data) if len(data) == 1 and type(data[0]) is list else data
    return row if row is not None and len(row) == shape[1] else None


class OnePrediction(NamedTuple):
    """A response of one prediction, read without numpy: what :class:`ResponsePredictions` says of it, its
    probabilities (where used) one row of floats."""

    value: Any
    model_version: str | None
    probabilities: list[float] | None = None
    ignored: ProbabilitiesIgnored | None = None


def one_prediction(body: Any) -> OnePrediction | None:
    """A V1 response of one prediction (``{"predictions": [x]}``, with ``probabilities`` and
    ``model_version`` where given) or a V2 one (an output of shape ``[1]`` or ``[1, 1]``), as
    :func:`parse_response` reads it; else None."""
    if type(body) is not dict:
        return None
    if "predictions" in body:
        value = one_value(body["predictions"])
        if value is NOT_ONE:
            return None
        given = body.get(PROBABILITIES_KEY)
    else:
        outputs = body.get("outputs")
        if type(outputs) is not list or not outputs:
            return None
        output = outputs[0]
        if not _is_v2_tensor(output) or output["shape"] not in _ONE_VALUE_SHAPES:
            return None
        shape = output["shape"]
        if not all(type(size) is int for size in shape):
            return None
        value = one_value(output["data"])
        if value is NOT_ONE:
            return None
        given = _probabilities_output(outputs)
        if given is not None:
            given = _v2_probability_rows(given)
            if given is None:
                return None
    version = body.get("model_version")
    model_version = None if version is None or version == "" else str(version)
    if given is None:
        return _new(OnePrediction, (value, model_version, None, None))
    read = probability_row(given)
    if read is None:
        return None
    return _new(OnePrediction, (value, model_version, *read))


# A named tuple made with every field, without its __new__ (a Python function): half the cost, per event.
_new = tuple.__new__


NOT_ONE: Any = object()
"""What :func:`one_value` answers for values that are not one prediction."""
_ONE_VALUE_SHAPES = ([1], [1, 1])


def one_value(values: Any) -> Any:
    """The one prediction of a list of one (``[x]`` or ``[[x]]``, as :func:`response_values` reads
    them), or a marker that it is not that."""
    if type(values) is not list or len(values) != 1:
        return NOT_ONE
    value = values[0]
    if type(value) is list and len(value) == 1:
        value = value[0]
    if isinstance(value, (list, dict)):  # a tuple: half the time of a union, on the hot path
        return NOT_ONE
    return value


def _v2_probability_rows(output: Any) -> list[Any] | None:
    """A V2 ``probabilities`` output of shape ``[1, k]`` as one row in a list, else None (its values are
    checked by :func:`probability_row`)."""
    if not _is_v2_tensor(output):
        return None
    row = _tensor_row(output)
    return None if row is None else [row]


def probability_row(given: Any) -> tuple[list[float] | None, ProbabilitiesIgnored | None] | None:
    """:func:`read_probabilities` of one row given as ``[[p, ...]]`` of numbers, as a list; None when
    ``given`` is not that."""
    if type(given) is not list or len(given) != 1:
        return None
    row = float_row(given[0])
    if row is None:
        return None
    low, high = min(row), max(row)
    total = sum(row)  # NaN if a value is: min and max alone may miss one
    if total != total or low < -PROBABILITY_TOLERANCE or high > 1.0 + PROBABILITY_TOLERANCE:
        return None, ProbabilitiesIgnored.RANGE
    if low < 0.0 or high > 1.0:
        row = [0.0 if value < 0.0 else 1.0 if value > 1.0 else value for value in row]
    return row, None


def _probabilities_output(outputs: list[Any]) -> Any:
    """A V2 response's output named ``probabilities`` after its first, if there is one."""
    return next(
        (item for item in outputs[1:] if isinstance(item, dict) and item.get("name") == PROBABILITIES_KEY),
        None,
    )
