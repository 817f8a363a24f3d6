"""How a TrainingRun reports itself: the Ready condition, observedGeneration, and which events it posts.

Every status these tests produce is checked against the TrainingRunStatus model, as the CRD's schema
would check it: a key the model does not know, or a value of the wrong shape, fails here first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from modelloop.api import TrainingRunStatus
from modelloop.reasons import API_REFUSED
from modelloop.training.report import STATUS_KEYS, report_refusal, report_run

NOW = "2026-11-27T10:00:00Z"


def valid(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` as written (None removes a key), checked against the status model."""
    written = {k: v for k, v in status.items() if v is not None}
    TrainingRunStatus.model_validate(written)
    return written


def test_every_key_the_operator_owns_is_in_the_status_model() -> None:
    fields = {f.alias or name for name, f in TrainingRunStatus.model_fields.items()}
    assert set(STATUS_KEYS) <= fields


def test_a_running_run_is_not_ready_and_its_start_posts_no_event() -> None:
    report = report_run({}, {"phase": "Running", "reason": "Running", "message": "Training."}, 3, NOW)

    status = valid(report.status)
    assert status["observedGeneration"] == 3
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Running")
    assert ready["observedGeneration"] == 3 and ready["lastTransitionTime"] == NOW
    assert report.event is None


@pytest.mark.parametrize(
    ("phase", "reason", "event_type", "ready"),
    [("Succeeded", "Succeeded", "Normal", "True"), ("Failed", "BackoffLimitExceeded", "Warning", "False")],
)
def test_the_end_of_a_run_posts_one_event(phase: str, reason: str, event_type: str, ready: str) -> None:
    running = valid(report_run({}, {"phase": "Running"}, 1, NOW).status)

    report = report_run(running, {"phase": phase, "reason": reason, "message": "Done."}, 1, NOW)

    assert valid(report.status)["conditions"][0]["status"] == ready
    assert report.event is not None and (report.event.type, report.event.reason) == (event_type, reason)
    again = report_run(valid(report.status), {"phase": phase, "reason": reason, "message": "Done."}, 1, NOW)
    assert again.event is None  # the same status again: nothing to announce


def test_a_run_stuck_for_a_new_reason_warns_once_per_reason() -> None:
    stuck = {"phase": "Pending", "reason": "Unschedulable", "message": "0/4 nodes are available."}
    first = report_run({}, stuck, 1, NOW)
    assert first.event is not None and first.event.type == "Warning"

    later = report_run(valid(first.status), {**stuck, "message": "0/5 nodes are available."}, 1, NOW)

    assert later.event is None
    assert later.status["message"] == "0/5 nodes are available."


def test_a_key_the_plan_no_longer_sets_is_removed() -> None:
    previous = valid(
        report_run({}, {"phase": "Pending", "reason": "InvalidSpec", "message": "x"}, 1, NOW).status
    )

    report = report_run(previous, {"phase": "Pending", "jobName": "j"}, 2, NOW)

    assert report.status["reason"] is None and report.status["message"] is None  # merge patch: removed
    assert valid(report.status)["jobName"] == "j"


def test_a_refused_request_keeps_the_phase_and_carries_the_servers_own_message() -> None:
    previous = valid(report_run({}, {"phase": "Pending", "jobName": "j"}, 1, NOW).status)
    refusal = '422 Unprocessable Entity: Job.batch "j" is invalid: metadata.labels: Invalid value'

    report = report_refusal(previous, API_REFUSED, refusal, 1, NOW)

    status = valid(report.status)
    assert status["phase"] == "Pending" and status["jobName"] == "j"
    assert status["reason"] == API_REFUSED
    assert refusal in status["message"]
    assert status["conditions"][0]["reason"] == API_REFUSED
    assert report.event is not None and report.event.type == "Warning"


def test_a_sweeps_trial_counts_are_written_with_its_status() -> None:
    status = {
        "phase": "Running",
        "reason": "SweepRunning",
        "message": "m",
        "trials": [],
        "trialsStarted": 4,
        "trialsDropped": 1,
    }
    report = report_run({}, status, 1, "2026-01-01T00:00:00Z")
    assert (report.status["trialsStarted"], report.status["trialsDropped"]) == (4, 1)
