"""How a TrainingRun reports itself: the Ready condition, observedGeneration, and which events it posts.

Every status these tests produce is checked, as the status writer dumps it, against the TrainingRunStatus
model, as the CRD's schema would check it: a key the model does not know, or a value of the wrong shape,
fails here first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelloop.api import TrainingRunStatus
from modelloop.machinery.status import status_json, status_patch
from modelloop.reasons import API_REFUSED
from modelloop.training.report import report_refusal, report_run

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
STAMP = "2026-11-27T10:00:00Z"


def planned(**fields: Any) -> TrainingRunStatus:
    """A status as a plan computes it, from its fields as status names them."""
    return TrainingRunStatus.model_validate(fields)


def valid(status: TrainingRunStatus) -> dict[str, Any]:
    """``status`` as written (None removes a key), checked against the status model."""
    written = {k: v for k, v in status_json(status).items() if v is not None}
    TrainingRunStatus.model_validate(written)
    return written


def read(status: TrainingRunStatus) -> TrainingRunStatus:
    """``status`` as the next pass reads it back."""
    return TrainingRunStatus.model_validate(valid(status))


def test_every_key_the_operator_owns_is_in_the_status_model() -> None:
    report = report_run(TrainingRunStatus(), planned(phase="Running"), 1, NOW)

    fields = {f.alias or name for name, f in TrainingRunStatus.model_fields.items()}
    # Written, or removed when unset: a key the model does not know never reaches the API server.
    assert set(status_json(report.status)) == fields


def test_a_running_run_is_not_ready_and_its_start_posts_no_event() -> None:
    report = report_run(
        TrainingRunStatus(), planned(phase="Running", reason="Running", message="Training."), 3, NOW
    )

    status = valid(report.status)
    assert status["observedGeneration"] == 3
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Running")
    assert ready["observedGeneration"] == 3 and ready["lastTransitionTime"] == STAMP
    assert report.event is None


@pytest.mark.parametrize(
    ("phase", "reason", "event_type", "ready"),
    [("Succeeded", "Succeeded", "Normal", "True"), ("Failed", "BackoffLimitExceeded", "Warning", "False")],
)
def test_the_end_of_a_run_posts_one_event(phase: str, reason: str, event_type: str, ready: str) -> None:
    running = read(report_run(TrainingRunStatus(), planned(phase="Running"), 1, NOW).status)

    report = report_run(running, planned(phase=phase, reason=reason, message="Done."), 1, NOW)

    assert valid(report.status)["conditions"][0]["status"] == ready
    assert report.event is not None and (report.event.type, report.event.reason) == (event_type, reason)
    again = report_run(read(report.status), planned(phase=phase, reason=reason, message="Done."), 1, NOW)
    assert again.event is None  # the same status again: nothing to announce


def test_a_run_stuck_for_a_new_reason_warns_once_per_reason() -> None:
    stuck = {"phase": "Pending", "reason": "Unschedulable", "message": "0/4 nodes are available."}
    first = report_run(TrainingRunStatus(), planned(**stuck), 1, NOW)
    assert first.event is not None and first.event.type == "Warning"

    later = report_run(
        read(first.status), planned(**{**stuck, "message": "0/5 nodes are available."}), 1, NOW
    )

    assert later.event is None
    assert later.status.message == "0/5 nodes are available."


def test_a_key_the_plan_no_longer_sets_is_removed() -> None:
    previous = read(
        report_run(
            TrainingRunStatus(), planned(phase="Pending", reason="InvalidSpec", message="x"), 1, NOW
        ).status
    )

    report = report_run(previous, planned(phase="Pending", jobName="j"), 2, NOW)

    written = status_json(report.status)
    assert written["reason"] is None and written["message"] is None  # merge patch: removed
    assert valid(report.status)["jobName"] == "j"


def test_a_refused_request_keeps_the_phase_and_carries_the_servers_own_message() -> None:
    previous = read(report_run(TrainingRunStatus(), planned(phase="Pending", jobName="j"), 1, NOW).status)
    refusal = '422 Unprocessable Entity: Job.batch "j" is invalid: metadata.labels: Invalid value'

    report = report_refusal(previous, API_REFUSED, refusal, 1, NOW)

    status = valid(report.status)
    assert status["phase"] == "Pending" and status["jobName"] == "j"
    assert status["reason"] == API_REFUSED
    assert refusal in status["message"]
    assert status["conditions"][0]["reason"] == API_REFUSED
    assert report.event is not None and report.event.type == "Warning"


def test_a_sweeps_trial_counts_are_written_with_its_status() -> None:
    status = planned(
        phase="Running", reason="SweepRunning", message="m", trials=[], trialsStarted=4, trialsDropped=1
    )
    report = report_run(TrainingRunStatus(), status, 1, datetime(2026, 1, 1, tzinfo=UTC))
    assert (report.status.trials_started, report.status.trials_dropped) == (4, 1)


# A sweep's status as the API server returns it: times in whole seconds, a metric that is a whole number
# as an integer, trials with only the keys that were written.
STORED: dict[str, Any] = {
    "phase": "Running",
    "reason": "SweepRunning",
    "message": "1/3 trials finished, 1 running (parallelism 1).",
    "observedGeneration": 2,
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "SweepRunning",
            "message": "1/3 trials finished, 1 running (parallelism 1).",
            "lastTransitionTime": "2026-11-27T09:00:00Z",
            "observedGeneration": 2,
        }
    ],
    "startTime": "2026-11-27T09:00:05Z",
    "trialsStarted": 2,
    "trialsDropped": 0,
    "bestTrial": 0,
    "trials": [
        {
            "index": 0,
            "params": {"lr": 0.1, "depth": 3, "warm": True},
            "phase": "Succeeded",
            "metrics": {"accuracy": 1},
            "jobName": "search-0",
            "curve": {"steps": [1, 2], "values": [0.5, 1]},
            "rungs": [0.5],
            "suggestedAfter": 0,
            "finishedOrder": 0,
        },
        {
            "index": 1,
            "params": {"lr": 0.01, "depth": 5, "warm": False},
            "phase": "Pruned",
            "jobName": "search-1",
            "pruning": {"step": 2, "value": 0.25, "threshold": 0.5, "rule": "Median"},
            "suggestedAfter": 0,
            "finishedOrder": 1,
        },
    ],
}


def test_a_status_read_and_reported_again_unchanged_writes_nothing() -> None:
    previous = TrainingRunStatus.model_validate(STORED)

    report = report_run(previous, previous.model_copy(), 2, NOW)

    assert status_patch(STORED, report.status) == {}
    assert report.event is None
