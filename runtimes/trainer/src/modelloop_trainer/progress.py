"""Progress lines: the held-out metrics after each training step, printed to stdout as training goes.

The operator reads a trial's pod log through the Kubernetes API (as Katib's StdOut metrics collector
does) and parses these lines to stop unpromising trials of a hyperparameter search early. One line
per reported step, flushed at once::

    modelloop:progress {"step":3,"metrics":{"accuracy":0.9,"f1_macro":0.89}}

``step`` is an integer from 1 (the epoch, or the boosting stage); ``metrics`` holds finite floats
named as in the final result's ``metrics``. A line is compact JSON after the prefix and one space,
at most :data:`MAX_LINE_BYTES` bytes. At most :data:`MAX_REPORTED_STEPS` steps of a run are reported
(see :class:`StepFilter`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from typing import TextIO

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "modelloop:progress"
# The line, documented: <step> is an int >= 1, each <value> a finite float; compact JSON, no spaces.
PROGRESS_FORMAT = PROGRESS_PREFIX + ' {"step":<step>,"metrics":{"<name>":<value>,...}}'
MAX_LINE_BYTES = 1024
MAX_REPORTED_STEPS = 1000


def progress_line(step: int, metrics: Mapping[str, float]) -> str | None:
    """The progress line for ``step`` (without its newline), or None when no metric is finite.

    Non-finite values are left out; metrics are dropped from the end while the line is too long.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"a progress step is an integer >= 1, got {step!r}")
    values = {str(name): float(value) for name, value in metrics.items()}
    finite = [(name, value) for name, value in values.items() if math.isfinite(value)]
    while finite:
        body = json.dumps({"step": step, "metrics": dict(finite)}, separators=(",", ":"), allow_nan=False)
        line = f"{PROGRESS_PREFIX} {body}"
        if len(line.encode()) <= MAX_LINE_BYTES:
            return line
        finite.pop()
    return None


def emit_progress(step: int, metrics: Mapping[str, float], stream: TextIO | None = None) -> bool:
    """Print the progress line for ``step`` to ``stream`` (stdout) and flush; whether a line was written.

    A stream that cannot be written to never fails the training: the line is lost, the run goes on.
    """
    line = progress_line(step, metrics)
    if line is None:
        return False
    out = sys.stdout if stream is None else stream
    try:
        out.write(line + "\n")
        out.flush()
    except (OSError, ValueError) as exc:  # a closed or broken stdout
        log.debug("cannot write progress line for step %d: %s", step, exc)
        return False
    return True


class StepFilter:
    """Which of a run's ``planned`` steps are reported: all of them up to :data:`MAX_REPORTED_STEPS`,
    else every k-th (k = ceil(planned / MAX_REPORTED_STEPS)) and the last, so that no more than
    MAX_REPORTED_STEPS lines are printed and step numbers stay epoch or stage numbers.
    A run that stops before ``planned`` (early stopping) still reports its actual last step
    (see :meth:`last_missing`); that keeps within the bound too.
    """

    def __init__(self, planned: int) -> None:
        self.planned = max(1, planned)
        self.stride = -(-self.planned // MAX_REPORTED_STEPS)
        self.reported = 0  # the last step reported

    def wants(self, step: int) -> bool:
        return step > self.reported and (step % self.stride == 0 or step == self.planned)

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        """Emit ``step``'s line (the caller has checked :meth:`wants`)."""
        emit_progress(step, metrics)
        self.reported = step

    def last_missing(self, step: int) -> bool:
        """Whether ``step``, the run's actual last one, still needs its line."""
        return step > self.reported
