"""The result JSON: what the operator reads from the container's termination message.

Kubernetes keeps at most 4096 bytes of a termination message. A larger result is written
whole to ``result.json`` in the output folder, and the message carries a reduced copy that
points to it (``resultUri``) and says ``"truncated": true``.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from modelloop_trainer.errors import TrainerError

MESSAGE_LIMIT_BYTES = 4096
REDUCED_METRICS = 5
# The fields a reduced message keeps, in this order, when they are present.
_KEPT_FIELDS = (
    "status",
    "reason",
    "message",
    "artifactUri",
    "artifactDigest",
    "datasetHash",
    "codeVersion",
    "framework",
    "referenceUri",
    "referencePredictionsUri",
    "holdoutUri",
    "additionalRows",
)
_STRING_CAPS = (1024, 256, 64)


def failure_result(error: TrainerError) -> dict[str, Any]:
    """The result of a run that failed with ``error``."""
    return {"status": "Failed", "reason": str(error.reason), "message": error.message, **error.extra}


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics as floats, without NaN or infinities (which JSON cannot carry)."""
    values = {name: float(value) for name, value in metrics.items()}
    return {name: value for name, value in values.items() if math.isfinite(value)}


def encode(result: Mapping[str, Any]) -> str:
    """Compact JSON, UTF-8 as is."""
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fits(message: str) -> bool:
    return len(message.encode()) < MESSAGE_LIMIT_BYTES


def termination_message(result: Mapping[str, Any], result_uri: str | None) -> str:
    """The result as it goes into the termination message: whole when it fits, reduced otherwise."""
    whole = encode(result)
    if fits(whole):
        return whole
    return encode(reduced_result(result, result_uri))


def reduced_result(result: Mapping[str, Any], result_uri: str | None) -> dict[str, Any]:
    """A copy of ``result`` small enough for a termination message.

    It keeps the identifying fields, the first few metrics and the champion's evaluation (with as many
    metrics), then drops the champion, then the metrics, and finally shortens long strings until the
    encoded message fits.
    """
    base: dict[str, Any] = {key: result[key] for key in _KEPT_FIELDS if key in result}
    metrics = _first_metrics(result.get("metrics"))
    tail: dict[str, Any] = {"truncated": True}
    if result_uri is not None:
        tail["resultUri"] = result_uri
    candidates = [{**base, "metrics": metrics, **tail}, {**base, **tail}]
    champion = result.get("champion")
    if isinstance(champion, Mapping):
        candidates.insert(0, {**base, "metrics": metrics, "champion": _reduced_champion(champion), **tail})
    candidates += [
        {key: _shorten(value, cap) for key, value in {**base, **tail}.items()} for cap in _STRING_CAPS
    ]
    for candidate in candidates:
        if fits(encode(candidate)):
            return candidate
    return {"status": result.get("status", "Failed"), "truncated": True}


def _first_metrics(metrics: Any) -> dict[str, Any]:
    return dict(list(metrics.items())[:REDUCED_METRICS]) if isinstance(metrics, Mapping) else {}


def _reduced_champion(champion: Mapping[str, Any]) -> dict[str, Any]:
    reduced: dict[str, Any] = {"version": _shorten(champion.get("version"), _STRING_CAPS[1])}
    if "metrics" in champion:
        reduced["metrics"] = _first_metrics(champion["metrics"])
    if "error" in champion:
        reduced["error"] = _shorten(champion["error"], _STRING_CAPS[1])
    return reduced


def _shorten(value: Any, cap: int) -> Any:
    if isinstance(value, str) and len(value) > cap:
        return value[: cap - 1] + "…"
    return value


def write_message(path: str, message: str) -> None:
    """Write the termination message to ``path`` (normally /dev/termination-log)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(message)


def write_first_message(path: str, message: str) -> bool:
    """Write ``message`` to ``path`` unless a message is there already; whether it was written.

    For the failures of a distributed launch's processes, which share one pod's termination message: an
    exclusive lock on the file orders them, and the first one stays. An empty file (what Kubernetes
    creates before the container starts) holds no message.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        stream.seek(0)
        if stream.read(1):
            return False
        stream.truncate(0)
        stream.write(message)
        return True
