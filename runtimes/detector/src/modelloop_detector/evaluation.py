"""The threads that judge windows: one for the fast detectors, one for MMD.

Each loop wakes when ingestion says a window has enough new rows, or every
``evaluate_every_seconds``; it judges every version that :func:`evaluation_due` says is due.
MMD has its own thread so that a slow permutation test never delays the KS verdicts.

Two bounds keep judging from taking the core that ingestion needs:

* a loop passes at most once per ``min_verdict_seconds`` (MMD, the costly joint test, at most once
  per ``evaluate_every_seconds``): at thousands of rows a second, ``evaluate_every_rows`` alone would
  re-judge a window that has barely changed many times between two Prometheus scrapes;
* the duty cap below, for a verdict slower than that (MMD on a CPU).

:meth:`EvaluationLoop.pass_once` is one pass, and returns how long to rest after it; the thread only
waits. Time is read from an injected clock, so the tests drive passes in virtual time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from modelloop_detector.detectors import Verdict
from modelloop_detector.service import DriftService, LoopKind, WindowSettings

logger = logging.getLogger(__name__)

VerdictObserver = Callable[[Verdict, float], None]
# The share of a core each loop may take: after a pass that took t seconds, it rests
# t * (1 / duty - 1) seconds, so that verdicts never starve ingestion. A CPU permutation test takes
# seconds and would otherwise run back to back while rows stream in (on a GPU it takes milliseconds
# and the rest is negligible); KS at a high event rate would judge every few milliseconds.
DUTY: dict[LoopKind, float] = {"fast": 0.25, "mmd": 0.2}


class EvaluationLoop:
    """A daemon thread that judges the versions due for loop ``kind``."""

    def __init__(
        self,
        service: DriftService,
        kind: LoopKind,
        observe: VerdictObserver | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.service = service
        self.kind = kind
        self.clock = clock
        self._observe = observe or (lambda verdict, seconds: None)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"modelloop-detector-{kind}", daemon=True)
        service.add_waker(self._wakeup.set)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the verdict in progress, if any."""
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        interval = self.service.window_settings.evaluate_every_seconds
        while not self._stopping.is_set():
            self._wakeup.wait(interval)
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            rest = self.pass_once()
            if rest > 0:
                self._stopping.wait(rest)

    def pass_once(self) -> float:
        """One pass: expire old rows (the fast loop), judge what is due; returns the seconds to rest
        before the next pass (0 when nothing was judged)."""
        if self.kind == "fast":
            self.service.expire()
        started = self.clock()
        if not self.run_once():
            return 0.0
        return rest_after(self.kind, self.clock() - started, self.service.window_settings)

    def run_once(self) -> int:
        """Judge every version due now; returns how many were judged."""
        judged = 0
        for state, version in self.service.due(self.kind):
            if self._stopping.is_set():
                break
            started = self.clock()
            try:
                verdicts = self.service.judge(state, version, self.kind)
            except Exception:
                logger.exception(
                    "%s/%s version %s: the %s detectors failed",
                    state.namespace,
                    state.name,
                    version.name,
                    self.kind,
                )
                continue
            seconds = self.clock() - started
            for verdict in verdicts:
                self._observe(verdict, verdict.seconds if len(verdicts) > 1 else seconds)
            judged += 1
        return judged


def rest_after(kind: LoopKind, spent: float, settings: WindowSettings) -> float:
    """How long loop ``kind`` rests after a pass that took ``spent`` seconds: enough to keep it to its
    :data:`DUTY` share of a core, and to start passes at most ``min_verdict_seconds`` apart (MMD's at
    most ``evaluate_every_seconds`` apart)."""
    floor = settings.min_verdict_seconds
    if kind == "mmd":
        floor = max(floor, settings.evaluate_every_seconds)
    return max(spent * (1 / DUTY[kind] - 1), floor - spent)
