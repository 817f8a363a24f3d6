"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from modelloop.machinery import events as runtime_events


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """The events posted during a test: (type, reason, message)."""
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        runtime_events,
        "post_event",
        lambda obj, type_, reason, message: events.append((type_, reason, message)),
    )
    return events
