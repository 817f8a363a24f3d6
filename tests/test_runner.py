"""What the operator's process sets up for itself before kopf starts."""

from __future__ import annotations

import logging
import platform

import pytest

from modelloop import runner
from modelloop.runner import limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_arenas_are_capped_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_a_malloc_arena_max_set_by_the_user_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_kopf_routine_handler_successes_are_dropped_but_failures_and_debug_are_kept() -> None:
    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)

    assert not runner._drop_routine_event_logs(record(logging.INFO, "Handler 'on_model_version' succeeded."))
    assert not runner._drop_routine_event_logs(
        record(logging.INFO, "Handler 'on_backend_object/inferenceservices.serving.kserve.io' succeeded.")
    )
    assert runner._drop_routine_event_logs(record(logging.ERROR, "Handler 'on_model_version' failed."))
    assert runner._drop_routine_event_logs(record(logging.DEBUG, "Handler 'on_model_version' succeeded."))
    assert runner._drop_routine_event_logs(record(logging.INFO, "Timer 'resync' succeeded, cheerfully."))
