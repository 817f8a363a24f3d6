"""A trial's progress, read from its pod's log: the trainer prints one line per step (epoch or stage).

    modelloop:progress {"step": 3, "metrics": {"accuracy": 0.91, "f1": 0.90}}

Katib collects metrics the same way from a container's standard output. Reading the log through the API
server needs no rights in the training pod and no sidecar; the operator reads the tail of each running
trial's log (``LOG_TAIL_LINES`` lines, at most ``LOG_LIMIT_BYTES``) at most every poll interval, so a
trainer that prints a lot costs the operator no more than one that prints little.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from modelloop.api.sweep import MAX_CURVE_POINTS

PREFIX = "modelloop:progress "
LOG_TAIL_LINES = 2 * MAX_CURVE_POINTS
LOG_LIMIT_BYTES = 64 * 1024
MAX_LINE = 1024
MAX_METRICS = 16

Point = tuple[int, Mapping[str, float]]


def parse_progress(log: str) -> list[Point]:
    """The (step, metrics) points of a log, in step order, one per step (the last line of a step wins).
    Lines that are not progress lines, too long, or malformed are skipped: the log is the trainer's to
    write, and nothing in it may take the operator's memory or break a reconcile."""
    points: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        if not line.startswith(PREFIX) or len(line) > MAX_LINE:
            continue
        try:
            body = json.loads(line[len(PREFIX) :])
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        step, metrics = body.get("step"), body.get("metrics")
        if not isinstance(step, int) or isinstance(step, bool) or step < 1 or not isinstance(metrics, dict):
            continue
        values = {
            str(name): float(value)
            for name, value in list(metrics.items())[:MAX_METRICS]
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }
        if values:
            points[step] = values
    return [(step, points[step]) for step in sorted(points)[:MAX_CURVE_POINTS]]
