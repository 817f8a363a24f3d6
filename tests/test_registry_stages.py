"""Stages of a model's versions: one Champion at a time, only Validated versions serve, history kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import ModelStage, ModelVersionStatus, StageTransition
from modelloop.registry.stages import (
    MAX_HISTORY,
    StageChange,
    champion_among,
    champion_of,
    change_stage,
    parse_stage,
)

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)


def stored(
    stage: str | None, phase: str = "Validated", since: str = "2026-11-01T00:00:00Z"
) -> dict[str, Any]:
    """A version's status as the API server returns it."""
    history = [{"stage": stage, "time": since, "reason": "Registered", "message": "x"}] if stage else []
    return {"phase": phase, "stage": stage, "history": history}


def status(
    stage: str | None, phase: str = "Validated", since: str = "2026-11-01T00:00:00Z"
) -> ModelVersionStatus:
    return ModelVersionStatus.model_validate(stored(stage, phase, since))


def test_promoting_a_version_to_champion_archives_the_previous_champion_with_the_reason() -> None:
    statuses = {"iris-v1": status("Champion"), "iris-v2": status("Candidate")}

    outcome = change_stage(statuses, StageChange("iris-v2", ModelStage.CHAMPION, "Requested", "by ops"), NOW)

    assert not outcome.refused
    assert outcome.statuses["iris-v2"].stage == "Champion"
    assert outcome.statuses["iris-v2"].history[-1] == StageTransition(
        stage=ModelStage.CHAMPION, time=NOW, reason="Requested", message="by ops"
    )
    archived = outcome.statuses["iris-v1"]
    assert archived.stage == "Archived"
    assert archived.history[-1].reason == "ReplacedByChampion"
    assert "iris-v2" in (archived.history[-1].message or "")
    assert [h.stage for h in archived.history] == ["Champion", "Archived"]
    assert statuses["iris-v1"].stage == "Champion"  # the statuses handed in are left as they were


@pytest.mark.parametrize("phase", ["Rejected", "Pending"])
@pytest.mark.parametrize("stage", [ModelStage.CHAMPION, ModelStage.CHALLENGER])
def test_only_a_validated_version_may_serve(phase: str, stage: ModelStage) -> None:
    statuses = {"iris-v1": status("Champion"), "iris-v2": status("Candidate", phase=phase)}

    outcome = change_stage(statuses, StageChange("iris-v2", stage, "Requested", ""), NOW)

    assert outcome.refused
    assert outcome.statuses == {}
    assert f"only a Validated version can become {stage.value}" in outcome.message


def test_a_rejected_version_may_still_be_archived() -> None:
    statuses = {"iris-v2": status("Candidate", phase="Rejected")}

    outcome = change_stage(statuses, StageChange("iris-v2", ModelStage.ARCHIVED, "Requested", ""), NOW)

    assert not outcome.refused
    assert outcome.statuses["iris-v2"].stage == "Archived"


def test_asking_for_the_stage_a_version_has_changes_nothing() -> None:
    outcome = change_stage(
        {"iris-v1": status("Champion")}, StageChange("iris-v1", ModelStage.CHAMPION, "R", ""), NOW
    )

    assert (outcome.refused, outcome.statuses) == (False, {})


def test_an_unknown_version_is_refused() -> None:
    outcome = change_stage({}, StageChange("iris-v9", ModelStage.ARCHIVED, "R", ""), NOW)

    assert outcome.refused


def test_history_keeps_the_latest_entries_within_the_crds_bound() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    current = status("Candidate")
    current.history = [
        StageTransition(stage=ModelStage.CANDIDATE, time=start + timedelta(days=i), reason="R", message="")
        for i in range(64)
    ]

    outcome = change_stage({"iris-v1": current}, StageChange("iris-v1", ModelStage.ARCHIVED, "R", ""), NOW)

    history = outcome.statuses["iris-v1"].history
    assert len(history) == MAX_HISTORY
    assert history[-1].time == NOW
    assert history[0].time == start + timedelta(days=1)


@pytest.mark.parametrize(
    ("written", "stage"), [("champion", "Champion"), (" Archived ", "Archived"), ("gold", None)]
)
def test_stages_are_read_in_any_letter_case(written: str, stage: str | None) -> None:
    assert parse_stage(written) == (None if stage is None else ModelStage(stage))


def test_the_champion_is_the_one_that_became_champion_last() -> None:
    statuses = {
        "iris-v1": status("Champion", since="2026-11-01T00:00:00Z"),
        "iris-v2": status("Champion", since="2026-11-02T00:00:00Z"),
        "iris-v3": status("Candidate"),
    }
    assert champion_among(statuses) == "iris-v2"
    assert champion_among({"iris-v3": status("Candidate")}) is None


def test_the_champion_of_stored_statuses_skips_one_that_cannot_be_read() -> None:
    unreadable = {**stored("Champion", since="2026-11-03T00:00:00Z"), "keyMetric": ["not", "text"]}
    stored_statuses = {
        "iris-v1": stored("Champion", since="2026-11-01T00:00:00Z"),
        "iris-v2": unreadable,
        "iris-v3": stored("Candidate"),
    }

    assert champion_of(stored_statuses) == "iris-v1"
    assert champion_of({"iris-v3": stored("Candidate"), "iris-v4": {}}) is None
