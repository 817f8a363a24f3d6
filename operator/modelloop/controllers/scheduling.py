"""Reconciles by key, soon and in the background: the pattern every modelloop controller follows.

Event handlers only schedule: a handler that waited for the reconcile would hold kopf's worker for that
object, and the object's next events (with their whole bodies) would queue up behind it. Triggers that
come while a reconcile waits join it; reconciles of one key never overlap; one that fails is retried
after a while (no kopf timer for this: kopf would put a finalizer on every object, and objects could
then not be deleted while the operator is away).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from modelloop import kube

logger = logging.getLogger(__name__)

Reconcile = Callable[[Any, Any, Mapping[str, Any]], Awaitable[None]]


class KeyedReconciler:
    """Runs ``reconcile(key, memo, indexes)`` for keys that events point at."""

    def __init__(
        self, what: str, reconcile: Reconcile, *, debounce: float = 0.2, retry: float = 10.0
    ) -> None:
        self.what = what
        self._reconcile = reconcile
        self.debounce = debounce
        self.retry = retry
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._queued: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, key: Hashable, memo: Any, indexes: Mapping[str, Any], delay: float = 0.0) -> None:
        """Reconcile ``key`` after ``delay`` plus the debounce, unless a reconcile of it is queued already."""
        if key in self._queued:
            return
        self._queued.add(key)
        task = asyncio.get_running_loop().create_task(self._soon(key, memo, indexes, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: Hashable) -> None:
        """Drop what is kept for ``key`` (its object is gone), unless a reconcile of it is pending."""
        lock = self._locks.get(key)
        if key not in self._queued and not (lock and lock.locked()):
            self._locks.pop(key, None)

    async def _soon(self, key: Hashable, memo: Any, indexes: Mapping[str, Any], delay: float) -> None:
        # Events of one object and of what it owns come in bursts: one pass after a short pause sees them all.
        await asyncio.sleep(delay + self.debounce)
        async with self._locks.setdefault(key, asyncio.Lock()):
            self._queued.discard(key)
            try:
                await self._reconcile(key, memo, indexes)
            except Exception as error:
                if isinstance(error, kube.ApiException):
                    logger.warning(
                        "reconcile of %s %s failed: %s %s", self.what, key, error.status, error.reason
                    )
                else:
                    logger.exception("reconcile of %s %s failed", self.what, key)
                self.schedule(key, memo, indexes, delay=self.retry)
