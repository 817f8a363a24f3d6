"""Operator-wide kopf settings, applied once at start-up."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modelloop.api import GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping under our own annotation prefix and post only the events we choose."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf.event() posts our own events; kopf's routine handler logs stay out of `kubectl describe`.
    settings.posting.level = logging.WARNING
    # Reconnect the watch streams now and then, so that a silently dropped connection heals itself.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
