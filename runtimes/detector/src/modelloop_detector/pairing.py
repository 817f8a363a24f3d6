"""Pairing a request event with its response event by CloudEvent id, whichever arrives first."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

Half = TypeVar("Half")


@dataclass(frozen=True)
class Waiting(Generic[Half]):
    """A half that waits for its other half since ``since``."""

    half: Half
    since: float
    size: int = 0


class Pairing(Generic[Half]):
    """Halves by key, oldest first; a half unpaired for ``max_seconds`` expires, and the oldest go
    first past ``max_waiting`` halves or ``max_bytes`` of their sizes.

    Not thread-safe: its owner serializes access.
    """

    def __init__(self, *, max_seconds: float, max_waiting: int, max_bytes: int | None = None) -> None:
        self._waiting: OrderedDict[tuple[str, ...], Waiting[Half]] = OrderedDict()
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
        other = self._waiting.pop(key, None)
        if other is not None:
            self.bytes -= other.size
            return other.half, self.expire(now)
        self._waiting[key] = Waiting(half, now, size)
        self.bytes += size
        expired = self.expire(now)
        while len(self._waiting) > self.max_waiting or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self._waiting) > 1
        ):
            oldest = self._waiting.popitem(last=False)[1]
            self.bytes -= oldest.size
            expired.append(oldest.half)
        return None, expired

    def expire(self, now: float) -> list[Half]:
        """Remove and return the halves that waited longer than ``max_seconds``."""
        horizon = now - self.max_seconds
        expired = []
        while self._waiting:
            key, oldest = next(iter(self._waiting.items()))
            if oldest.since >= horizon:
                break
            del self._waiting[key]
            self.bytes -= oldest.size
            expired.append(oldest.half)
        return expired
