"""Stages of a model's versions: Candidate → Challenger → Champion → Archived, and their history.

A model has at most one Champion: promoting a version archives the one before it. Only a Validated
version may become Challenger or Champion. Every change appends to the version's ``status.history``, so
that "which version was champion on a given day" can be answered long after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelloop.api import ModelStage, ModelVersionPhase

MAX_HISTORY = 64  # the CRD's bound on status.history; the oldest entries go first
_SERVING_STAGES = (ModelStage.CHALLENGER, ModelStage.CHAMPION)


@dataclass(frozen=True)
class StageChange:
    """A request to move one version of a model to a stage."""

    name: str
    stage: ModelStage
    reason: str
    message: str


@dataclass(frozen=True)
class StageOutcome:
    """What a request changed: new statuses by version name (empty when refused or already there)."""

    statuses: dict[str, dict[str, Any]]
    refused: bool
    message: str


def parse_stage(value: str) -> ModelStage | None:
    """The stage a user wrote, in any letter case; None when it names no stage."""
    wanted = value.strip().lower()
    return next((stage for stage in ModelStage if stage.value.lower() == wanted), None)


def enter_stage(
    status: Mapping[str, Any], stage: ModelStage, reason: str, message: str, now: str
) -> dict[str, Any]:
    """``status`` with ``stage`` entered and the change appended to its history."""
    entry = {"stage": stage.value, "time": now, "reason": reason, "message": message[:1024]}
    history = [*(status.get("history") or ()), entry][-MAX_HISTORY:]
    return {**status, "stage": stage.value, "history": history}


def change_stage(statuses: Mapping[str, Mapping[str, Any]], change: StageChange, now: str) -> StageOutcome:
    """Apply ``change`` to the statuses of one model's versions (by name).

    Refused when the version does not exist or, for Challenger and Champion, is not Validated. A new
    Champion archives the previous one, whose history then says which version replaced it.
    """
    status = statuses.get(change.name)
    if status is None:
        return StageOutcome({}, True, f"{change.name} is not a version of this model")
    phase = status.get("phase") or ModelVersionPhase.PENDING.value
    if change.stage in _SERVING_STAGES and phase != ModelVersionPhase.VALIDATED.value:
        why = (
            "was rejected by validation"
            if phase == ModelVersionPhase.REJECTED.value
            else "is not validated yet"
        )
        return StageOutcome(
            {}, True, f"{change.name} {why}: only a Validated version can become {change.stage.value}"
        )
    if status.get("stage") == change.stage.value:
        return StageOutcome({}, False, f"{change.name} is {change.stage.value} already")
    changed = {change.name: enter_stage(status, change.stage, change.reason, change.message, now)}
    if change.stage == ModelStage.CHAMPION:
        for name, other in statuses.items():
            if name != change.name and other.get("stage") == ModelStage.CHAMPION.value:
                changed[name] = enter_stage(
                    other, ModelStage.ARCHIVED, "ReplacedByChampion", f"{change.name} became Champion", now
                )
    previous = status.get("stage") or "no stage"
    return StageOutcome(changed, False, f"{change.name}: {previous} → {change.stage.value}")


def champion_of(statuses: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The name of the model's Champion, if it has one (the newest, were there ever several)."""
    champions = [
        name for name, status in statuses.items() if status.get("stage") == ModelStage.CHAMPION.value
    ]
    return max(champions, key=lambda name: (_champion_since(statuses[name]), name), default=None)


def _champion_since(status: Mapping[str, Any]) -> str:
    entries = [e for e in (status.get("history") or ()) if e.get("stage") == ModelStage.CHAMPION.value]
    return str(entries[-1]["time"]) if entries else ""
