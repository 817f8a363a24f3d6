"""A model's history: every version's stage changes on one timeline, and who was Champion when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.cli.render import render_timeline
from modelloop.registry.history import StageEntry, champion_at, parse_time, timeline, versions_of


def version(number: int, *history: tuple[str, str, str], model: str = "iris") -> dict[str, Any]:
    """A ModelVersion whose history is (time, stage, reason) entries, oldest first."""
    return {
        "metadata": {"name": f"{model}-v{number}"},
        "spec": {"modelName": model, "version": number},
        "status": {"history": [{"time": t, "stage": s, "reason": r} for t, s, r in history]},
    }


V1 = version(
    1,
    ("2026-10-01T00:00:00Z", "Candidate", "Registered"),
    ("2026-10-01T01:00:00Z", "Champion", "Promoted"),
    ("2026-10-20T12:00:00Z", "Archived", "ReplacedByChampion"),
)
V2 = version(
    2,
    ("2026-10-20T11:00:00Z", "Candidate", "Registered"),
    ("2026-10-20T12:00:00Z", "Champion", "Promoted"),
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_timeline_merges_every_versions_changes_by_time() -> None:
    changes = timeline([V2, V1])

    assert [(c.version, c.stage) for c in changes] == [
        ("iris-v1", "Candidate"),
        ("iris-v1", "Champion"),
        ("iris-v2", "Candidate"),
        ("iris-v1", "Archived"),  # at the same second as v2's promotion: the lower version first
        ("iris-v2", "Champion"),
    ]
    assert changes[0] == StageEntry(at("2026-10-01T00:00:00+00:00"), "iris-v1", "Candidate", "Registered")


def test_timeline_skips_history_entries_without_a_readable_time() -> None:
    broken = version(3, ("yesterday", "Candidate", "Registered"))
    broken["status"]["history"].append({"stage": "Champion"})

    assert timeline([broken]) == []


def test_versions_of_selects_by_model_name_and_orders_by_version_number() -> None:
    v10 = version(10)
    objects = [v10, version(1, model="wine"), V2, V1]

    assert versions_of(objects, "iris") == [V1, V2, v10]


@pytest.mark.parametrize(
    ("moment", "champion"),
    [
        ("2026-09-30T00:00:00+00:00", None),  # before any version
        ("2026-10-01T00:30:00+00:00", None),  # v1 registered, not yet promoted
        ("2026-10-01T01:00:00+00:00", "iris-v1"),  # the very moment of the promotion counts
        ("2026-10-10T00:00:00+00:00", "iris-v1"),
        ("2026-10-20T12:00:00+00:00", "iris-v2"),
        ("2026-11-01T00:00:00+00:00", "iris-v2"),
    ],
)
def test_champion_at_names_the_version_that_was_champion_then(moment: str, champion: str | None) -> None:
    found = champion_at([V1, V2], at(moment))

    assert (found.version if found else None) == champion


def test_champion_at_prefers_the_version_that_entered_champion_last_when_two_were() -> None:
    # v1 was promoted but the archive of v1 never happened, as in a history written by hand.
    v1 = version(1, ("2026-10-01T01:00:00Z", "Champion", "Promoted"))

    found = champion_at([V2, v1], at("2026-11-01T00:00:00+00:00"))

    assert found == StageEntry(at("2026-10-20T12:00:00+00:00"), "iris-v2", "Champion", "Promoted")


def test_champion_at_ignores_a_version_archived_before_the_moment() -> None:
    assert champion_at([V1], at("2026-10-21T00:00:00+00:00")) is None


def test_parse_time_reads_rfc3339_and_takes_a_date_as_its_start_in_utc() -> None:
    assert parse_time("2026-11-01T00:00:00Z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T02:00:00+02:00") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T00:00:00.5-05:00").utcoffset() == -timedelta(hours=5)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("2026-11-01T00:00:00", "has no time zone"),
        ("last tuesday", "is not a time"),
        ("2026-13-01", "is not a time"),
    ],
)
def test_parse_time_refuses_what_is_not_an_unambiguous_time(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_time(text)


def test_render_timeline_aligns_columns_and_writes_times_in_utc() -> None:
    text = render_timeline(timeline([V1]))

    assert text.splitlines() == [
        "TIME                  VERSION  STAGE      REASON              MESSAGE",
        "2026-10-01T00:00:00Z  iris-v1  Candidate  Registered          -",
        "2026-10-01T01:00:00Z  iris-v1  Champion   Promoted            -",
        "2026-10-20T12:00:00Z  iris-v1  Archived   ReplacedByChampion  -",
    ]
