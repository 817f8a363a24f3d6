"""Events on our objects, posted through kopf (which batches and rate-limits them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

ObjectKey = tuple[str, str]
logger = logging.getLogger(__name__)


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post an event on ``obj`` (a body, or a slim copy with apiVersion, kind and metadata); the message is
    cut to the 1024 characters an event keeps."""
    kopf.event(dict(obj), type=type_, reason=reason, message=message[:1024])  # type: ignore[arg-type]
