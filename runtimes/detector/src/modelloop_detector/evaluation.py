"""The threads that judge windows: one for the fast detectors, one for MMD.

Each loop wakes when ingestion says a window has enough new rows, or every
``evaluate_every_seconds``; it judges every version that :func:`evaluation_due` says is due.
MMD has its own thread so that a slow permutation test never delays the KS verdicts.

Two bounds keep judging from taking the core that ingestion needs:

* a loop passes at most once per ``min_verdict_seconds`` (MMD, the costly joint test, at most once
  per ``evaluate_every_seconds``): at thousands of rows a second, ``evaluate_every_rows`` alone would
  re-judge a window that has barely changed many times between two Prometheus scrapes;
* the duty cap below, for a verdict slower than that (MMD on a CPU).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from modelloop_detector.detectors import Verdict
from modelloop_detector.service import DriftService, LoopKind

logger = logging.getLogger(__name__)

VerdictObserver = Callable[[Verdict, float], None]
# The share of a core each loop may take: after a pass that took t seconds, it rests
# t * (1 / duty - 1) seconds, so that verdicts never starve ingestion. A CPU permutation test takes
# seconds and would otherwise run back to back while rows stream in (on a GPU it takes milliseconds
# and the rest is negligible); KS at a high event rate would judge every few milliseconds.
DUTY: dict[LoopKind, float] = {"fast": 0.25, "mmd": 0.2}


class EvaluationLoop:
    """A daemon thread that judges the versions due for loop ``kind``."""

    def __init__(self, service: DriftService, kind: LoopKind, observe: VerdictObserver | None = None) -> None:
        self.service = service
        self.kind = kind
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
        settings = self.service.window_settings
        interval = settings.evaluate_every_seconds
        floor = settings.min_verdict_seconds
        if self.kind == "mmd":
            floor = max(floor, interval)
        while not self._stopping.is_set():
            self._wakeup.wait(interval)
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            if self.kind == "fast":
                self.service.expire()
            started = time.perf_counter()
            if self.run_once():
                spent = time.perf_counter() - started
                self._stopping.wait(max(spent * (1 / DUTY[self.kind] - 1), floor - spent))

    def run_once(self) -> int:
        """Judge every version due now; returns how many were judged."""
        judged = 0
        for state, version in self.service.due(self.kind):
            if self._stopping.is_set():
                break
            started = time.perf_counter()
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
            seconds = time.perf_counter() - started
            for verdict in verdicts:
                self._observe(verdict, verdict.seconds if len(verdicts) > 1 else seconds)
            judged += 1
        return judged
