"""The work queue every controller reconciles through: kopf's event handlers only ``add`` a key, the
queue's own workers run the reconcile.

Why not kopf's own machinery:

- kopf's timers and daemons put a finalizer on every object they serve. An object with a finalizer cannot
  be deleted while the operator is away (scaled down, crash-looping, uninstalled); a requeue-after here is
  a timer of this process only, and leaves nothing on the object.
- kopf runs the handlers of one object in that object's own worker, one event after another. A handler
  that reconciles inline (API calls, Prometheus queries) makes the events of that object pile up behind
  it; a handler that only schedules returns at once, so kopf's per-object workers never back up.

What the queue promises, as client-go's rate-limited work queue does for Go controllers:

- one pending run per key: adds coalesce, the earliest due time wins, a later one never delays it;
- the runs of one key never overlap: a key added while it runs is run once more afterwards;
- at most ``workers`` reconciles at once, keys served first-due first-served;
- a reconcile asks for its next run by returning seconds (requeue-after); a failing one is retried with
  capped exponential back-off and jitter, per key, so that one broken object does not hammer the API
  server and a thousand failing together do not retry in lockstep.

Time is the running loop's ``loop.time()`` only, so that tests can fast-forward it (looptime).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from modelloop.kube import ApiException, api_message
from modelloop.machinery import metrics

__all__ = ["Key", "OnFailure", "QueueStats", "Reconcile", "WorkQueue"]

Key: TypeAlias = Hashable
# A queue is generic in its key type, so that a controller's reconcile can take its own key type (an
# object's (namespace, name)): a Callable[[tuple[str, str]], ...] is no Callable[[Hashable], ...].
K = TypeVar("K", bound=Key)
Reconcile: TypeAlias = Callable[[K], Awaitable[float | None]]
"""Reconciles one key: returns None when done, or the seconds after which to run it again."""
OnFailure: TypeAlias = Callable[[K, BaseException, int], Awaitable[None]]
"""Called after a reconcile raised, with the key's consecutive failure count (1, 2, ...)."""

# 2 ** 1000 already dwarfs any cap; a larger exponent would overflow the float conversion.
_MAX_BACKOFF_EXPONENT = 1000

logger = logging.getLogger(__name__)


@dataclass
class QueueStats:
    """Counters for observability: ``added`` (accepted adds), ``processed`` (reconciles finished, failed
    or not), ``failed`` (reconciles that raised), ``requeued`` (reconciles that asked to run again)."""

    added: int = 0
    processed: int = 0
    failed: int = 0
    requeued: int = 0


class WorkQueue(Generic[K]):
    """A per-key, debounced, rate-limited work queue with bounded concurrency; see the module docstring.

    ``add`` and the other methods are called from the running event loop (they are synchronous and never
    block); workers start on the first ``add``.
    """

    def __init__(
        self,
        name: str,
        reconcile: Reconcile[K],
        *,
        workers: int = 8,
        debounce: float = 0.2,
        backoff_base: float = 0.5,
        backoff_cap: float = 300.0,
        jitter: float = 0.1,
        on_failure: OnFailure[K] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a work queue needs at least one worker, not {workers}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter is a fraction of the delay in [0, 1], not {jitter}")
        self.name = name
        self.stats = QueueStats()
        self._reconcile = reconcile
        self._workers = workers
        self._debounce = debounce
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._jitter = jitter
        self._on_failure = on_failure
        self._rng = rng if rng is not None else random.Random()

        # A key is in exactly one of: waiting for its timer (_timers), due and waiting for a worker
        # (_queued), or running (_running, with _dirty holding the due time of one more run).
        self._timers: dict[K, asyncio.TimerHandle] = {}
        # Due time and add order of every key with a timer or in the ready queue.
        self._due: dict[K, tuple[float, int]] = {}
        self._queued: set[K] = set()
        self._ready: deque[K] = deque()
        self._running: set[K] = set()
        self._dirty: dict[K, float] = {}
        self._forgotten: set[K] = set()
        self._failures: dict[K, int] = {}
        self._sequence = 0

        # Timers due in the same loop iteration fire in the order of the loop's heap, which is not stable
        # for equal times; they are collected here and enter the ready queue sorted by (due, add order).
        self._fired: list[K] = []
        self._flush: asyncio.Handle | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup: asyncio.Event | None = None
        self._paused = False
        self._closed = False

    # The public surface.

    def add(self, key: K, after: float = 0.0, *, debounce: bool = True) -> None:
        """Have ``key`` reconciled ``after`` seconds plus the debounce from now, or earlier if it is
        already due earlier. ``debounce=False`` skips the debounce: for an event that has nothing to
        wait for (a new object: nothing of it can come in a burst yet). A no-op after ``shutdown``."""
        if self._closed:
            return
        loop = self._start()
        self.stats.added += 1
        self._forgotten.discard(key)  # the object is back (or was never gone)
        self._schedule(key, loop.time() + max(0.0, after) + (self._debounce if debounce else 0.0))

    def forget(self, key: K) -> None:
        """The object is gone: drop its pending run, its failure count and its dirty mark. A reconcile of
        it that is running now is not cancelled, but is not run again."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._queued:
            self._queued.discard(key)
            # Not in the deque yet if its timer fired in this loop iteration (then it is in _fired).
            if key in self._ready:
                self._ready.remove(key)
        self._due.pop(key, None)
        self._dirty.pop(key, None)
        self._failures.pop(key, None)
        if key in self._running:
            self._forgotten.add(key)

    def pause(self) -> None:
        """Workers stop taking keys (running reconciles finish); timers go on filling the ready queue."""
        self._paused = True

    def resume(self) -> None:
        """Workers take keys again, first due first."""
        self._paused = False
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def paused(self) -> bool:
        """Whether the workers are held by ``pause``."""
        return self._paused

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop for good: later adds are no-ops, pending runs are dropped, running reconciles get
        ``timeout`` seconds to finish before they are cancelled. Idempotent."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._timers.clear()
        self._due.clear()
        self._queued.clear()
        self._ready.clear()
        self._fired.clear()
        self._dirty.clear()
        if self._wakeup is not None:
            self._wakeup.set()  # idle workers see _closed and end
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            logger.warning(
                "work queue %s: cancelling %s, still running after %gs", self.name, task.get_name(), timeout
            )
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def depth(self) -> int:
        """How many keys are due and wait for a worker (keys whose timers are not due yet not counted)."""
        return len(self._queued)

    def scheduled(self) -> int:
        """How many keys have a pending timer."""
        return len(self._timers)

    def due_time(self, key: K) -> float | None:
        """The ``loop.time()`` at which ``key`` is (or was, if it waits for a worker) due; for a running
        key, when its next run is due; None if nothing is pending for it."""
        if key in self._due:
            return self._due[key][0]
        return self._dirty.get(key)

    # Scheduling.

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
            self._tasks = [
                self._loop.create_task(self._work(), name=f"{self.name}-worker-{number}")
                for number in range(self._workers)
            ]
        return self._loop

    def _schedule(self, key: K, due: float) -> None:
        """One pending run per key, the earliest due time wins."""
        assert self._loop is not None
        if self._closed:
            return
        if key in self._running:
            self._dirty[key] = min(due, self._dirty.get(key, math.inf))
            return
        if key in self._queued:
            return  # due already: nothing can be earlier
        timer = self._timers.get(key)
        if timer is not None:
            if due >= timer.when():
                return
            timer.cancel()
        self._sequence += 1
        self._due[key] = (due, self._sequence)
        self._timers[key] = self._loop.call_at(due, self._fire, key)

    def _fire(self, key: K) -> None:
        del self._timers[key]
        self._queued.add(key)
        self._fired.append(key)
        if self._flush is None:
            assert self._loop is not None
            # Runs after every timer of this loop iteration has fired.
            self._flush = self._loop.call_soon(self._enqueue_fired)

    def _enqueue_fired(self) -> None:
        self._flush = None
        # A key forgotten (and perhaps fired again) since it fired is no longer queued, or is listed twice.
        fired = [key for key in dict.fromkeys(self._fired) if key in self._queued and key in self._due]
        self._fired.clear()
        fired.sort(key=self._due.__getitem__)
        self._ready.extend(fired)
        if fired and self._wakeup is not None:
            self._wakeup.set()

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _backoff(self, failures: int) -> float:
        exponent = min(failures - 1, _MAX_BACKOFF_EXPONENT)
        delay = min(self._backoff_cap, self._backoff_base * 2.0**exponent)
        return delay * self._rng.uniform(1.0 - self._jitter, 1.0 + self._jitter)

    # The workers.

    async def _work(self) -> None:
        assert self._wakeup is not None
        while not self._closed:
            if self._paused or not self._ready:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key = self._ready.popleft()
            self._queued.discard(key)
            due_at, _ = self._due.pop(key)
            metrics.QUEUE_WAIT_SECONDS.labels(self.name).observe(max(0.0, self._loop_time() - due_at))
            self._running.add(key)
            try:
                due = await self._process(key)
            finally:
                self._running.discard(key)
            if due is not None:
                self._schedule(key, due)

    async def _process(self, key: K) -> float | None:
        """Run one reconcile of ``key``; return when to run it next, or None."""
        assert self._loop is not None
        next_due = math.inf
        started = self._loop.time()
        try:
            requeue_after = await self._reconcile(key)
        except asyncio.CancelledError as error:
            # Our own cancellation (shutdown) ends the worker; a CancelledError that only escaped the
            # reconcile (a future cancelled elsewhere) is a failure like any other, or the key would
            # never run again and the worker would be lost.
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            next_due = await self._failed(key, error)
        except Exception as error:
            next_due = await self._failed(key, error)
        else:
            metrics.RECONCILES.labels(self.name, "success").inc()
            self._failures.pop(key, None)
            if requeue_after is not None:
                self.stats.requeued += 1
                # No debounce: the reconcile asked for this very time.
                next_due = self._loop.time() + max(0.0, requeue_after)
        self.stats.processed += 1
        metrics.RECONCILE_SECONDS.labels(self.name).observe(self._loop.time() - started)
        if key in self._forgotten:
            self._forgotten.discard(key)
            self._failures.pop(key, None)
            return None
        next_due = min(next_due, self._dirty.pop(key, math.inf))
        return None if next_due == math.inf else next_due

    async def _failed(self, key: K, error: BaseException) -> float:
        """Count, report and log a failure; return when to retry."""
        assert self._loop is not None
        self.stats.failed += 1
        metrics.RECONCILES.labels(self.name, "error").inc()
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        if isinstance(error, ApiException):
            logger.warning("reconcile of %s %s failed: %s", self.name, key, api_message(error))
        else:
            logger.exception("reconcile of %s %s failed", self.name, key, exc_info=error)
        if self._on_failure is not None:
            try:
                await self._on_failure(key, error, failures)
            except Exception:
                logger.exception("on_failure of %s %s failed", self.name, key)
        return self._loop.time() + self._backoff(failures)
