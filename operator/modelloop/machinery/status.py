"""The one status writer, and what the operator remembers of the objects it writes.

Status is written with optimistic concurrency: every write carries the resourceVersion the decision was
based on, so a pass that planned on stale data gets a conflict instead of overwriting newer status (a
ModelVersion's append-only history could otherwise lose entries). On a conflict the controller reads the
object again and decides again (``retry_on_conflict``), as KServe's controllers do with RetryOnConflict.

kopf's indexes see our own writes only when their watch events arrive. Until then a reconcile would plan
on the status from before the write, and write the same again: ``ObjectMemory`` keeps what this process
last wrote (or read fresh) of each object, valid only for that object's uid, and gives way as soon as the
index shows that resourceVersion or a newer one. So a status edited from outside, or written by another
replica after a handover, is what the next pass starts from, and a deleted and re-created object of the
same name never inherits anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from modelloop import kube
from modelloop.slim import slim_object

ObjectKey = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
CONFLICT_ATTEMPTS = 5

logger = logging.getLogger(__name__)


class ObjectGone(Exception):
    """The object was deleted while it was reconciled: its DELETED event reconciles what follows."""


def is_newer(resource_version: str, than: str) -> bool:
    """Whether ``resource_version`` is newer than ``than``. resourceVersions are etcd revisions; were they
    ever not numbers, nothing is assumed newer than what the index shows (every write is preconditioned,
    so trusting the index can cost a conflict, never a lost write)."""
    if resource_version.isdigit() and than.isdigit():
        return int(resource_version) > int(than)
    return False


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj["metadata"]
    return (str(meta.get("namespace") or ""), str(meta["name"]))


class ObjectMemory:
    """The newest copy this process has of each object it wrote, until the index catches up."""

    def __init__(self, compact: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None) -> None:
        self._objects: dict[ObjectKey, dict[str, Any]] = {}
        # How a kind keeps an object in memory (its index's form: a TrainingRun's spec and trials as text).
        self._compact = compact or dict

    def view(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``obj`` as the index has it, or the copy remembered for it when that is newer (same uid)."""
        key = object_key(obj)
        remembered = self._objects.get(key)
        if remembered is None:
            return dict(obj)
        meta, known = obj["metadata"], remembered["metadata"]
        if known.get("uid") == meta.get("uid") and is_newer(
            str(known.get("resourceVersion") or ""), str(meta.get("resourceVersion") or "")
        ):
            return remembered
        # Another object of the same name, or the index has caught up (or seen something newer).
        del self._objects[key]
        return dict(obj)

    def remember(self, obj: Mapping[str, Any]) -> None:
        self._objects[object_key(obj)] = self._compact(obj)

    def resource_version(self, key: ObjectKey) -> str | None:
        """The resourceVersion of the copy remembered for ``key`` (this process's last write), if any."""
        remembered = self._objects.get(key)
        return None if remembered is None else str(remembered["metadata"].get("resourceVersion") or "")

    def forget(self, key: ObjectKey) -> None:
        self._objects.pop(key, None)

    def __len__(self) -> int:
        return len(self._objects)


class StatusWriter:
    """Writes the status (and the labels) of one kind of ours, never blindly; every controller uses one."""

    def __init__(
        self,
        plural: str,
        client: kube.KubeClient,
        annotations: tuple[str, ...] = (),
        compact: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``compact`` gives the form in which the objects this writer wrote are remembered (the kind's
        index's form, which its controller reads back); by default, as written."""
        self.plural = plural
        self.client = client
        self.memory = ObjectMemory(compact)
        self._annotations = annotations

    def view(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The object to plan on: the index's copy, or this process's newer one."""
        return self.memory.view(obj)

    def forget(self, key: ObjectKey) -> None:
        self.memory.forget(key)

    def wrote(self, key: ObjectKey, resource_version: str | None) -> bool:
        """Whether ``resource_version`` of the object ``key`` is this writer's own last write (its event
        brings nothing a reconcile does not know)."""
        return resource_version is not None and self.memory.resource_version(key) == resource_version

    async def write(self, obj: Mapping[str, Any], status: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """Write the keys of ``status`` (a kind's typed status, dumped here, or its JSON form) that differ
        from ``obj``'s (a merge patch: None removes a key), if ``obj`` is still at its resourceVersion;
        return the object as it is now.

        Raises kube.Conflict when the object changed since: plan again on a fresh copy.
        """
        previous = obj.get("status") or {}
        changed = status_patch(previous, status)
        if not changed:
            return dict(obj)
        namespace, name = object_key(obj)
        version = await self.client.patch_status(
            self.plural, namespace, name, changed, obj["metadata"].get("resourceVersion")
        )
        merged = {k: v for k, v in {**previous, **changed}.items() if v is not None}
        written = {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}, "status": merged}
        self.memory.remember(written)
        return written

    async def write_labels(self, obj: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
        """Set ``labels`` on ``obj`` (its other labels stay), if it is still at its resourceVersion."""
        current = obj["metadata"].get("labels") or {}
        if all(current.get(k) == v for k, v in labels.items()):
            return dict(obj)
        namespace, name = object_key(obj)
        version = await self.client.patch_labels(
            self.plural, namespace, name, labels, obj["metadata"].get("resourceVersion")
        )
        meta = {**obj["metadata"], "resourceVersion": version, "labels": {**current, **labels}}
        written = {**obj, "metadata": meta}
        self.memory.remember(written)
        return written

    def current(self, index: Mapping[ObjectKey, Any], key: ObjectKey) -> dict[str, Any] | None:
        """The object ``key`` of a kopf index, to plan on (``view``); None when it is gone or being
        deleted."""
        obj = next(iter(index.get(key, ())), None)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        return self.view(obj)

    async def reconcile(
        self, obj: Mapping[str, Any], act: Callable[[dict[str, Any]], Awaitable[T]], what: str
    ) -> T | None:
        """Run ``act`` on the newest copy of one object (``view``) and return what it returns; when a write
        in it meets a conflict, read the object again and run ``act`` on that, as ``retry_on_conflict``
        does. An object deleted meanwhile ends the reconcile (None): its DELETED event says what follows."""
        current = [self.view(obj)]

        async def attempt() -> T:
            return await act(current[0])

        async def reread(conflict: kube.Conflict) -> None:
            current[0] = await self.refresh(*conflict.key)

        try:
            return await retry_on_conflict(attempt, reread, what)
        except ObjectGone:
            return None

    async def refresh(self, namespace: str, name: str) -> dict[str, Any]:
        """Read the object from the API server (after a conflict) and remember it; raise ObjectGone when
        it no longer exists."""
        fresh = await self.client.get_object(self.plural, namespace, name)
        if fresh is None:
            self.memory.forget((namespace, name))
            raise ObjectGone(f"{self.plural} {namespace}/{name}")
        slim = slim_object(fresh, self._annotations)
        self.memory.remember(slim)
        return slim


def status_patch(previous: Mapping[str, Any], status: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """The merge patch from ``previous`` (status as read) to ``status``: the keys whose value changed, and
    None for a key that was set and is no longer. A typed status is dumped to JSON here, once."""
    wanted = status_json(status) if isinstance(status, BaseModel) else status
    return {k: v for k, v in wanted.items() if previous.get(k) != v and (v is not None or k in previous)}


def status_json(status: BaseModel) -> dict[str, Any]:
    """A typed status as the API server stores it (no nulls inside), with None for each unset top-level
    field, so that ``status_patch`` removes what a pass unset."""
    fields = type(status).model_fields
    unset = {(field.alias or name): None for name, field in fields.items()}
    return {**unset, **status.model_dump(mode="json", exclude_none=True)}


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]], on_conflict: Callable[[kube.Conflict], Awaitable[None]], what: str
) -> T:
    """Run ``attempt``; when a write in it meets a conflict, call ``on_conflict`` with it (to read a fresh
    copy of the object it names) and run it again, up to CONFLICT_ATTEMPTS times; the last conflict
    propagates (and the queue backs off)."""
    for tries in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return await attempt()
        except kube.Conflict as conflict:
            if tries == CONFLICT_ATTEMPTS:
                raise
            logger.debug("%s changed while it was reconciled (%s): deciding again", what, conflict)
            await on_conflict(conflict)
    raise AssertionError("unreachable")
