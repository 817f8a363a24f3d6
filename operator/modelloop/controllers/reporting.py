"""Where a Review becomes a status patch and an event, and the foundation's handlers that produce one.

This module is kopf I/O only; what status should say is decided in ``modelloop.review``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from modelloop.api import GROUP, VERSION
from modelloop.review import Review, Verdict, review_spec


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post an event on ``obj`` (a body, or a slim copy with apiVersion, kind and metadata); the message is
    cut to the 1024 characters an event keeps."""
    kopf.event(dict(obj), type=type_, reason=reason, message=message[:1024])  # type: ignore[arg-type]


def apply_review(review: Review, body: kopf.Body, patch: kopf.Patch) -> None:
    """Patch the status fields of ``review`` and post its event, if any."""
    for key, value in review.status.items():
        patch.status[key] = value
    if review.event is not None:
        post_event(body, review.event.type, review.event.reason, review.event.message)


def register_spec_review(plural: str, model: type[pydantic.BaseModel], accepted: Verdict) -> None:
    """Review the spec of every object of ``plural`` when created, changed, or found at start-up."""

    def review(
        spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, body: kopf.Body, patch: kopf.Patch, **_: Any
    ) -> None:
        apply_review(review_spec(model, spec, status, int(meta["generation"]), accepted), body, patch)

    handler_id = "review-spec"
    kopf.on.resume(GROUP, VERSION, plural, id=handler_id)(review)
    kopf.on.create(GROUP, VERSION, plural, id=handler_id)(review)
    kopf.on.update(GROUP, VERSION, plural, field="spec", id=handler_id)(review)
