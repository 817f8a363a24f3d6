"""The peering gate: a replica that kopf's peering pauses stops acting and writing until it resumes.

kopf pauses its watch streams when a peer of higher priority is alive, but work the operator queued
itself (a rollout step due in five minutes, a back-off retry) would still run and write. The gate reads
the same peering objects kopf keeps and applies kopf's own rule (any live peer of a higher or the same
priority pauses this one), pausing every work queue; on resume the queues go on, and the watch streams
kopf restarts bring every object's event again, so the replica that takes over picks every key up from
its indexes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from modelloop import kube

logger = logging.getLogger(__name__)
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


def peering_paused(
    peers: Mapping[str, Mapping[str, Any]], identity: str, priority: int, now: datetime.datetime
) -> bool:
    """Whether a replica of ``identity`` and ``priority`` must stand by, given a peering object's status
    (``{id: {priority, lifetime, lastseen}}``): kopf's rule, a live other peer of a higher priority, or of
    the same one (kopf then pauses both rather than let two act)."""
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        if not lastseen:
            continue
        seen = datetime.datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        alive = seen + datetime.timedelta(seconds=int(info.get("lifetime") or 60)) > now
        if alive and int(info.get("priority") or 0) >= priority:
            return True
    return False


async def read_peers(
    client: kube.KubeClient, name: str, namespaces: Iterable[str]
) -> list[Mapping[str, Any]]:
    """The status of the peering objects named ``name``: the ClusterKopfPeering when ``namespaces`` is
    empty, else the KopfPeering of each namespace (those that exist)."""
    base = f"/apis/{PEERING_GROUP}/{PEERING_VERSION}"
    paths = (
        [f"{base}/clusterkopfpeerings/{name}"]
        if not namespaces
        else [f"{base}/namespaces/{namespace}/kopfpeerings/{name}" for namespace in namespaces]
    )
    found = [await client.get(path) for path in paths]
    return [dict(obj.get("status") or {}) for obj in found if obj is not None]


class PeeringGate:
    """Polls the peering objects and pauses (or resumes) the work through ``on_pause``/``on_resume``."""

    def __init__(
        self,
        client: kube.KubeClient,
        name: str,
        namespaces: Iterable[str],
        identity: str,
        priority: int,
        on_pause: Callable[[], None],
        on_resume: Callable[[], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self.client = client
        self.name = name
        self.namespaces = tuple(namespaces)
        self.identity = identity
        self.priority = priority
        self.interval = interval
        self._on_pause = on_pause
        self._on_resume = on_resume
        # As kopf does, a replica with peering starts paused until the peering object says otherwise.
        self.paused = True

    async def run(self) -> None:
        """Check forever (until cancelled), every ``interval`` seconds."""
        self._on_pause()
        while True:
            try:
                statuses = await read_peers(self.client, self.name, self.namespaces)
            except Exception as error:  # an unreadable peering object keeps the last decision
                logger.warning("cannot read peering %s: %s", self.name, kube.api_message(error))
            else:
                now = datetime.datetime.now(datetime.UTC)
                paused = any(peering_paused(s, self.identity, self.priority, now) for s in statuses)
                await self._set(paused)
            await asyncio.sleep(self.interval)

    async def _set(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            logger.info("standing by: a peer of higher priority is active (peering %s)", self.name)
            self._on_pause()
        else:
            logger.info("active: no peer of higher priority (peering %s)", self.name)
            await self._on_resume()
