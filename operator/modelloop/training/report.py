"""How a TrainingRun reports itself: the Ready condition and the events, decided from the status the
plan computed and the status the run had. Pure: the controller writes what this returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelloop.api import TrainingRunPhase, TrainingRunStatus
from modelloop.conditions import with_condition
from modelloop.reasons import API_REFUSED, INVALID_SPEC, READY, Event
from modelloop.training.observe import IMAGE_PROBLEMS

WARNING_REASONS = frozenset({INVALID_SPEC, API_REFUSED, "Unschedulable", "ResultMissing", *IMAGE_PROBLEMS})
_ENDED = (TrainingRunPhase.SUCCEEDED, TrainingRunPhase.FAILED)


@dataclass(frozen=True)
class RunReport:
    """The whole status to write (every field the operator owns: one it leaves unset is removed) and the
    event that marks the change."""

    status: TrainingRunStatus
    event: Event | None


def report_run(
    previous: TrainingRunStatus, status: TrainingRunStatus, generation: int, now: datetime
) -> RunReport:
    """Complete ``status`` (phase, reason, message and the rest) with observedGeneration and the Ready
    condition, and choose the event: one when the run ends, and a Warning when it gets stuck for a new
    reason (a start is in the Job's and the pod's own events: one write fewer per run)."""
    phase = status.phase or TrainingRunPhase.PENDING
    reason = status.reason or phase.value
    message = status.message or ""
    conditions = with_condition(
        previous.conditions,
        type_=READY,
        status="True" if phase == TrainingRunPhase.SUCCEEDED else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    full = status.model_copy(update={"observed_generation": generation, "conditions": conditions})
    if full == previous:
        return RunReport(full, None)
    warning = phase == TrainingRunPhase.FAILED or reason in WARNING_REASONS
    ended = previous.phase != phase and phase in _ENDED
    event = None
    if ended or (warning and previous.reason != reason):
        event = Event("Warning" if warning else "Normal", reason, message or phase.value)
    return RunReport(full, event)


def report_refusal(
    previous: TrainingRunStatus, reason: str, message: str, generation: int, now: datetime
) -> RunReport:
    """The status of a run the operator cannot act on (``reason``: its spec is invalid, or the API server
    refuses a request for good): the phase and the rest stay, Ready turns False with the reason."""
    status = previous.model_copy(
        update={"phase": previous.phase or TrainingRunPhase.PENDING, "reason": reason, "message": message}
    )
    return report_run(previous, status, generation, now)
