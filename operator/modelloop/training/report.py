"""How a TrainingRun reports itself: the Ready condition and the events, decided from the status the
plan computed and the status the run had. Pure: the controller writes what this returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelloop.api import TrainingRunPhase
from modelloop.conditions import set_condition
from modelloop.reasons import API_REFUSED, INVALID_SPEC, READY, Event
from modelloop.training.observe import IMAGE_PROBLEMS

WARNING_REASONS = frozenset({INVALID_SPEC, API_REFUSED, "Unschedulable", "ResultMissing", *IMAGE_PROBLEMS})
# The status keys the operator owns: each is written (or removed, when None) on every change.
STATUS_KEYS = (
    "phase", "jobName", "startTime", "completionTime", "metrics", "keyMetric", "artifactUri", "datasetHash",
    "modelVersion", "trials", "trialsStarted", "trialsDropped", "bestTrial", "champion", "reason", "message",
    "observedGeneration",
    "conditions",
)  # fmt: skip
_ENDED = (TrainingRunPhase.SUCCEEDED.value, TrainingRunPhase.FAILED.value)


@dataclass(frozen=True)
class RunReport:
    """The whole status to write (every key the operator owns) and the event that marks the change."""

    status: dict[str, Any]
    event: Event | None


def report_run(
    previous: Mapping[str, Any], status: Mapping[str, Any], generation: int, now: str
) -> RunReport:
    """Complete ``status`` (phase, reason, message and the rest) with observedGeneration and the Ready
    condition, and choose the event: one when the run ends, and a Warning when it gets stuck for a new
    reason (a start is in the Job's and the pod's own events: one write fewer per run)."""
    phase = str(status["phase"])
    reason = str(status.get("reason") or phase)
    message = str(status.get("message") or "")
    conditions = set_condition(
        previous.get("conditions"),
        type_=READY,
        status="True" if phase == TrainingRunPhase.SUCCEEDED.value else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    full = {**status, "observedGeneration": generation, "conditions": conditions}
    desired = {key: full.get(key) for key in STATUS_KEYS}
    if all(previous.get(key) == value for key, value in desired.items()):
        return RunReport(desired, None)
    warning = phase == TrainingRunPhase.FAILED.value or reason in WARNING_REASONS
    ended = previous.get("phase") != phase and phase in _ENDED
    event = None
    if ended or (warning and previous.get("reason") != reason):
        event = Event("Warning" if warning else "Normal", reason, message or phase)
    return RunReport(desired, event)


def report_refusal(
    previous: Mapping[str, Any], reason: str, message: str, generation: int, now: str
) -> RunReport:
    """The status of a run the operator cannot act on (``reason``: its spec is invalid, or the API server
    refuses a request for good): the phase and the rest stay, Ready turns False with the reason."""
    status = {
        **{key: previous.get(key) for key in STATUS_KEYS},
        "phase": previous.get("phase") or TrainingRunPhase.PENDING.value,
        "reason": reason,
        "message": message,
    }
    return report_run(previous, status, generation, now)
