"""Stages of a model's versions: Candidate → Challenger → Champion → Archived, and their history.

A model has at most one Champion: promoting a version archives the one before it. Only a Validated
version may become Challenger or Champion. Every change appends to the version's ``status.history``, so
that "which version was champion on a given day" can be answered long after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic

from modelloop.api import ModelStage, ModelVersionPhase, ModelVersionStatus, StageTransition

MAX_HISTORY = 64  # the CRD's bound on status.history; the oldest entries go first
_SERVING_STAGES = (ModelStage.CHALLENGER, ModelStage.CHAMPION)
_NEVER = datetime.min.replace(tzinfo=UTC)


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

    statuses: dict[str, ModelVersionStatus]
    refused: bool
    message: str


def parse_stage(value: str) -> ModelStage | None:
    """The stage a user wrote, in any letter case; None when it names no stage."""
    wanted = value.strip().lower()
    return next((stage for stage in ModelStage if stage.value.lower() == wanted), None)


def enter_stage(
    status: ModelVersionStatus, stage: ModelStage, reason: str, message: str, now: datetime
) -> ModelVersionStatus:
    """A copy of ``status`` with ``stage`` entered and the change appended to its history."""
    entry = StageTransition(stage=stage, time=now, reason=reason, message=message[:1024])
    entered = status.model_copy()
    entered.stage = stage
    entered.history = [*status.history, entry][-MAX_HISTORY:]
    return entered


def change_stage(
    statuses: Mapping[str, ModelVersionStatus], change: StageChange, now: datetime
) -> StageOutcome:
    """Apply ``change`` to the statuses of one model's versions (by name).

    Refused when the version does not exist or, for Challenger and Champion, is not Validated. A new
    Champion archives the previous one, whose history then says which version replaced it.
    """
    status = statuses.get(change.name)
    if status is None:
        return StageOutcome({}, True, f"{change.name} is not a version of this model")
    phase = status.phase or ModelVersionPhase.PENDING
    if change.stage in _SERVING_STAGES and phase != ModelVersionPhase.VALIDATED:
        why = "was rejected by validation" if phase == ModelVersionPhase.REJECTED else "is not validated yet"
        return StageOutcome(
            {}, True, f"{change.name} {why}: only a Validated version can become {change.stage.value}"
        )
    if status.stage == change.stage:
        return StageOutcome({}, False, f"{change.name} is {change.stage.value} already")
    changed = {change.name: enter_stage(status, change.stage, change.reason, change.message, now)}
    if change.stage == ModelStage.CHAMPION:
        for name, other in statuses.items():
            if name != change.name and other.stage == ModelStage.CHAMPION:
                changed[name] = enter_stage(
                    other, ModelStage.ARCHIVED, "ReplacedByChampion", f"{change.name} became Champion", now
                )
    previous = status.stage.value if status.stage is not None else "no stage"
    return StageOutcome(changed, False, f"{change.name}: {previous} → {change.stage.value}")


def champion_among(statuses: Mapping[str, ModelVersionStatus]) -> str | None:
    """The name of the model's Champion, if it has one (the newest, were there ever several)."""
    champions = [name for name, status in statuses.items() if status.stage == ModelStage.CHAMPION]
    return max(champions, key=lambda name: (_champion_since(statuses[name]), name), default=None)


def champion_of(stored: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``champion_among`` the statuses of one model's versions as stored (e.g. in the registry's index),
    each parsed; a status that cannot be read is skipped, as the registry leaves it out of its pass."""
    statuses: dict[str, ModelVersionStatus] = {}
    for name, status in stored.items():
        if status.get("stage") != ModelStage.CHAMPION.value:
            continue  # only a Champion's status is worth parsing
        try:
            statuses[name] = ModelVersionStatus.model_validate(status)
        except pydantic.ValidationError:
            continue
    return champion_among(statuses)


def _champion_since(status: ModelVersionStatus) -> datetime:
    entries = [entry.time for entry in status.history if entry.stage == ModelStage.CHAMPION]
    if not entries:
        return _NEVER
    # A time written without a zone is taken as UTC (as the history's readers take it).
    return entries[-1] if entries[-1].tzinfo is not None else entries[-1].replace(tzinfo=UTC)
