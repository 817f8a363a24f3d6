"""The shell every object controller's pass runs in, written once.

A pass of a TrainingRun, an InferenceService or a DriftPolicy has the same outline around its kind's own
work: take the object from its kopf index (or this process's newer copy of it), skip it when it is gone or
being deleted, parse its spec and its status once, refuse what cannot be parsed (in status, with the field
named, and a Warning event), run the kind's pass inside the status writer's conflict retry, and turn a
request the API server refuses for good (a 4xx that no retry changes, or a kind it does not serve) into
status and an event, once per message. ``ObjectReconciler`` is that outline; a controller gives it the
kind's pass (``act``) and how its status reads when refused (``refusal``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from modelloop import kube
from modelloop.machinery import events
from modelloop.machinery.status import ObjectKey, StatusWriter
from modelloop.reasons import API_REFUSED, INVALID_SPEC, INVALID_STATUS, describe_validation_error

SpecT = TypeVar("SpecT", bound=pydantic.BaseModel)
StatusT = TypeVar("StatusT")
# What the API server answers the same however often it is asked: the request itself is refused (400,
# 403, 422), or the kind is not served (404 on a create or an apply).
REFUSED_FOR_GOOD = (*kube.PERMANENT_STATUSES, 404)


class Refused(Exception):
    """The object cannot be acted on as it is (raised by a kind's spec parser or its pass): ``reason`` and
    ``message`` go to its status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Parsed(Generic[SpecT, StatusT]):
    """One object as a pass sees it: as read, its spec and status parsed, and its generation."""

    obj: dict[str, Any]
    spec: SpecT
    status: StatusT
    generation: int

    @property
    def key(self) -> ObjectKey:
        meta = self.obj["metadata"]
        return (str(meta["namespace"]), str(meta["name"]))


def unreadable_status_message(error: pydantic.ValidationError) -> str:
    """What a refused object's status says when the status itself cannot be parsed (reason
    INVALID_STATUS), naming each field as a user writes it."""
    return f"status cannot be read, left as it is: {describe_validation_error(error, prefix='status')}"


async def write_refusal(
    writer: StatusWriter, obj: Mapping[str, Any], status: Mapping[str, Any], reason: str, message: str
) -> None:
    """Write a refused object's ``status``; post a Warning event (``reason``, the status's message or else
    ``message``) when its message is new: a refusal that stays is told once, not on every pass."""
    await writer.write(obj, status)
    if (obj.get("status") or {}).get("message") != status.get("message"):
        events.post_event(obj, "Warning", reason, str(status.get("message") or message))


# The status of a refused object: from its status as read, its generation, the reason and the message.
Refusal = Callable[[Mapping[str, Any], int, str, str], Mapping[str, Any]]


class ObjectReconciler(Generic[SpecT, StatusT]):
    """Runs one kind's passes: see the module's docstring."""

    def __init__(
        self,
        kind: str,
        index: str,
        indexes: Mapping[str, Any],
        writer: StatusWriter,
        parse_spec: Callable[[dict[str, Any]], SpecT],
        parse_status: Callable[[Mapping[str, Any]], StatusT],
        act: Callable[[Parsed[SpecT, StatusT]], Awaitable[float | None]],
        refusal: Refusal,
        *,
        view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        failure_message: Callable[[kube.ApiException], str] = kube.api_message,
    ) -> None:
        """``parse_spec`` and ``parse_status`` raise pydantic.ValidationError (or ``Refused``) on what they
        cannot read; ``view`` turns the index's form of an object into the one a pass reads (by default,
        as it is); ``failure_message`` words a refused request for status."""
        self.kind = kind
        self.index = index
        self.indexes = indexes
        self.writer = writer
        self._parse_spec = parse_spec
        self._parse_status = parse_status
        self._act = act
        self._refusal = refusal
        self._view = view
        self._failure_message = failure_message

    def current(self, key: ObjectKey) -> dict[str, Any] | None:
        """The object ``key`` to act on (the index's, or this process's newer copy), or None when it is
        gone or being deleted."""
        obj = self.writer.current(self.indexes[self.index], key)
        if obj is None or self._view is None:
            return obj
        return self._view(obj)

    async def reconcile(self, key: ObjectKey) -> float | None:
        """One pass of the object ``key``: what its ``act`` returns (when to look again), or None."""
        obj = self.current(key)
        if obj is None:
            return None
        return await self.writer.reconcile(obj, self.run, f"{self.kind} {key[0]}/{key[1]}")

    async def run(self, obj: dict[str, Any]) -> float | None:
        """Parse ``obj`` and act on it; refuse it (in status) when it cannot be parsed."""
        generation = int(obj["metadata"].get("generation") or 1)
        try:
            spec = self._parse_spec(obj)
        except pydantic.ValidationError as error:
            await self.refuse(obj, INVALID_SPEC, describe_validation_error(error))
            return None
        except Refused as refused:
            await self.refuse(obj, refused.reason, refused.message)
            return None
        try:
            status = self._parse_status(obj.get("status") or {})
        except pydantic.ValidationError as error:
            await self.refuse(obj, INVALID_STATUS, unreadable_status_message(error))
            return None
        try:
            return await self._act(Parsed(obj, spec, status, generation))
        except Refused as refused:  # what the pass found it cannot do
            await self.refuse(obj, refused.reason, refused.message)
            return None

    async def refuse(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """Write the refusal's status; post a Warning event when its message is new."""
        generation = int(obj["metadata"].get("generation") or 1)
        status = self._refusal(obj.get("status") or {}, generation, reason, message)
        await write_refusal(self.writer, obj, status, reason, message)

    async def report_failure(self, key: ObjectKey, error: BaseException, failures: int) -> None:
        """The work queue's failure hook: a request the API server refuses for good reaches the status and
        an event, once per message; other failures are only logged by the queue, which backs off."""
        if not (isinstance(error, kube.ApiException) and error.status in REFUSED_FOR_GOOD):
            return
        obj = self.current(key)
        if obj is None:
            return
        try:
            await self.refuse(obj, API_REFUSED, self._failure_message(error))
        except (kube.Conflict, kube.ApiException):
            return  # the next pass reports it
