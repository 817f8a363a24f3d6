"""Operator-wide kopf settings, applied once at start-up."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from modelloop.api import GROUP
from modelloop.naming import LABEL_TRAINING_RUN


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
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
    # Watch only the Jobs and pods that belong to TrainingRuns: the API server filters, not the operator.
    settings.watching.label_selectors["batch", "jobs"] = LABEL_TRAINING_RUN
    settings.watching.label_selectors["v1", "pods"] = LABEL_TRAINING_RUN
    # Controllers run their API calls in threads (the kubernetes client is synchronous).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
