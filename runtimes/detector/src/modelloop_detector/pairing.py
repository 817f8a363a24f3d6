"""Pairing a request event with its response event by CloudEvent id, whichever arrives first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

Half = TypeVar("Half")


class Pairing(Generic[Half]):
    """Halves by key, oldest first; a half unpaired for ``max_seconds`` expires, and the oldest go
    first past ``max_waiting`` halves or ``max_bytes`` of their sizes.

    Not thread-safe: its owner serializes access. Called for every event: a waiting half is kept as a
    plain ``(half, since, size)`` tuple.
    """

    def __init__(self, *, max_seconds: float, max_waiting: int, max_bytes: int | None = None) -> None:
        self._waiting: OrderedDict[tuple[str, ...], tuple[Half, float, int]] = OrderedDict()
        self.max_seconds = max_seconds
        self.max_waiting = max_waiting
        self.max_bytes = max_bytes
        self.bytes = 0
        """The sizes of the waiting halves, summed."""

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(
        self, key: tuple[str, ...], half: Half, now: float, size: int = 0
    ) -> tuple[Half | None, list[Half]]:
        """The other half of ``key`` if it waits (taking it), else None (``half`` then waits);
        and the halves expired meanwhile."""
        waiting = self._waiting
        other = waiting.pop(key, None)
        # expire()'s first test, inline: the oldest half is young enough, almost always.
        young = not waiting or next(iter(waiting.values()))[1] >= now - self.max_seconds
        if other is not None:
            self.bytes -= other[2]
            return other[0], [] if young else self.expire(now)
        waiting[key] = (half, now, size)
        self.bytes += size
        expired = [] if young else self.expire(now)
        while len(waiting) > self.max_waiting or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(waiting) > 1
        ):
            oldest = waiting.popitem(last=False)[1]
            self.bytes -= oldest[2]
            expired.append(oldest[0])
        return None, expired

    def expire(self, now: float) -> list[Half]:
        """Remove and return the halves that waited longer than ``max_seconds``."""
        waiting = self._waiting
        horizon = now - self.max_seconds
        expired: list[Half] = []
        while waiting:
            half, since, size = next(iter(waiting.values()))
            if since >= horizon:
                break
            waiting.popitem(last=False)
            self.bytes -= size
            expired.append(half)
        return expired
