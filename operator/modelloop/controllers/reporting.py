"""Events, and the spec review that InferenceService and DriftPolicy get until their own logic comes.

This module is kopf I/O only; what status should say is decided in ``modelloop.review``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import pydantic

from modelloop.api import GROUP, VERSION, CrdInfo
from modelloop.conditions import utc_now
from modelloop.objects import slim_object
from modelloop.review import ReviewOutcome, review_spec
from modelloop.runtime.status import StatusWriter
from modelloop.runtime.workqueue import WorkQueue

ObjectKey = tuple[str, str]
logger = logging.getLogger(__name__)


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post an event on ``obj`` (a body, or a slim copy with apiVersion, kind and metadata); the message is
    cut to the 1024 characters an event keeps."""
    kopf.event(dict(obj), type=type_, reason=reason, message=message[:1024])  # type: ignore[arg-type]


class SpecReviewer:
    """Reviews the spec of every object of one kind (in its index ``index``) and reports it in status,
    through the work queue and the one status writer."""

    def __init__(
        self,
        kind: str,
        plural: str,
        model: type[pydantic.BaseModel],
        accepted: ReviewOutcome,
        index: Callable[[], Mapping[Any, Any]],
    ) -> None:
        self.kind = kind
        self.model = model
        self.accepted = accepted
        self._index = index
        self.writer = StatusWriter(plural)
        self.queue = WorkQueue(kind, self.reconcile)

    def known_keys(self) -> list[ObjectKey]:
        return list(self._index().keys())

    def forget(self, key: ObjectKey) -> None:
        self.queue.forget(key)
        self.writer.forget(key)

    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = next(iter(self._index().get(key, ())), None)
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            await self.writer.reconcile(obj, self._review, f"{self.kind} {key[0]}/{key[1]}")
        return None

    async def _review(self, obj: dict[str, Any]) -> None:
        generation = int(obj["metadata"].get("generation") or 1)
        review = review_spec(
            self.model, obj.get("spec") or {}, obj.get("status") or {}, generation, self.accepted, utc_now()
        )
        await self.writer.write(obj, review.status)
        if review.event is not None:
            meta = obj["metadata"]
            logger.info(
                "%s %s/%s is %s (%s)",
                self.kind,
                meta["namespace"],
                meta["name"],
                review.status["phase"],
                review.event.reason,
            )
            post_event(obj, review.event.type, review.event.reason, review.event.message)


def watch_reviewed_kind(info: CrdInfo, attribute: str) -> None:
    """Register the index (named ``attribute``) and the event handler of a kind whose controller is the
    SpecReviewer at ``memo.runtime.<attribute>``."""

    async def index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[ObjectKey, Any]:
        return {(namespace or "", name): slim_object(body)}

    async def on_event(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        reviewer: SpecReviewer = getattr(memo.runtime, attribute)
        if type == "DELETED":
            reviewer.forget((namespace or "", name))
        else:
            reviewer.queue.add((namespace or "", name))

    kopf.index(GROUP, VERSION, info.plural, id=attribute)(index)
    kopf.on.event(GROUP, VERSION, info.plural, id=f"on_{attribute}")(on_event)
