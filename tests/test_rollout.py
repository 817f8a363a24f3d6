"""The rollout state machine, driven pass by pass through whole rollouts on a fixed clock.

Each test plays the operator: it decides, "applies" what was decided to a backend that reports it one pass
later, and moves a clock it owns. Every status a pass produces must be a valid status of the CRD, and a
restarted operator that reads it back must decide the very same traffic.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import InferenceServiceSpec, MeasurementPhase
from modelloop.api.inferenceservice import MEASUREMENTS_KEPT, InferenceServiceStatus
from modelloop.reasons import Event
from modelloop.serving.analysis import judge
from modelloop.serving.rollout import (
    ANNOTATION_ROLLOUT_ACTION,
    MEASUREMENTS_PER_METRIC,
    Decision,
    MetricResult,
    Observed,
    Serving,
    action_verb,
    decide,
    measurement_due,
    parse_action,
    target_version,
)

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STEPS = [10, 25, 50, 100]
ERROR_RATE = 'sum(rate(errors{service="iris-v{{version}}"}[1m]))'
URL = "http://iris.ml.example.com"


def make_spec(
    *,
    rollout: bool = True,
    analysis: bool = True,
    failure_limit: int = 0,
    inconclusive_limit: int = 3,
    step_interval: str = "5m",
    metrics: list[dict[str, Any]] | None = None,
    steps: list[int] = STEPS,
    shadow: bool = False,
    **spec: Any,
) -> InferenceServiceSpec:
    body: dict[str, Any] = {"model": {"name": "iris"}, **spec}
    if shadow:
        body["backend"] = "seldon"
    if rollout:
        body["rollout"] = {"steps": steps, "stepInterval": step_interval, "shadow": shadow}
        if analysis:
            body["rollout"]["analysis"] = {
                "interval": "1m",
                "failureLimit": failure_limit,
                "inconclusiveLimit": inconclusive_limit,
                "metrics": metrics or [{"name": "error-rate", "query": ERROR_RATE, "max": 0.05}],
            }
    return InferenceServiceSpec.model_validate(body)


def model_version(number: int, phase: str | None = "Validated") -> dict[str, Any]:
    return {"spec": {"modelName": "iris", "version": number}, "status": {"phase": phase} if phase else {}}


def error_rate(spec: InferenceServiceSpec, value: float | None) -> list[MetricResult]:
    """One round of measurements of the error-rate metric, judged as the analysis judges it."""
    assert spec.rollout is not None and spec.rollout.analysis is not None
    metric = spec.rollout.analysis.metrics[0]
    return [judge(metric, metric.query, value)]


def typed(status: dict[str, Any]) -> InferenceServiceStatus:
    """A status as the operator reads it: parsed once."""
    return InferenceServiceStatus.model_validate(status)


def stored(status: InferenceServiceStatus) -> dict[str, Any]:
    """A status as the API server gives it back: JSON, without the fields written as null."""
    written: dict[str, Any] = json.loads(json.dumps(status.model_dump(mode="json", exclude_none=True)))
    return written


ROLLOUT_STATE = (
    "stableVersion",
    "canaryVersion",
    "canaryWeight",
    "shadow",
    "stepIndex",
    "stepStartTime",
    "pauseReason",
    "rolledBackVersion",
    "retiringVersion",
    "retireTime",
)


def rollout_state(status: dict[str, Any]) -> dict[str, Any]:
    """The fields that say which traffic is served (reason and message may say more on the next pass)."""
    return {key: status.get(key) for key in ROLLOUT_STATE}


@dataclass
class Service:
    """One InferenceService on a fixed clock, over a backend that serves what it was last asked: one pass
    after a decision it reports the canary traffic equal to the weight asked, current and ready."""

    spec: InferenceServiceSpec
    versions: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = START
    status: dict[str, Any] = field(default_factory=dict)
    serving: Serving | None = None
    events: list[Event] = field(default_factory=list)
    stuck: Observed | None = None  # what a backend that does not follow reports instead

    def register(self, number: int, phase: str | None = "Validated") -> None:
        self.versions = [v for v in self.versions if v["spec"]["version"] != number]
        self.versions.append(model_version(number, phase))

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def observed(self) -> Observed:
        if self.stuck is not None:
            return self.stuck
        if self.serving is None:
            return Observed()
        traffic = self.serving.weight if self.serving.canary is not None else None
        shadow = self.serving.shadow
        return Observed(exists=True, current=True, ready=True, canary_traffic=traffic, shadow=shadow, url=URL)

    def due(self) -> bool:
        return measurement_due(self.spec, typed(self.status), self.observed(), self.now)

    def step(self, action: str | None = None, measurements: list[MetricResult] | None = None) -> Decision:
        observed = self.observed()
        target = target_version(self.spec, self.versions)
        given = typed(self.status)
        before = copy.deepcopy(given)
        decision = decide(self.spec, given, target, observed, self.now, action, measurements or ())
        assert given == before, "decide must not change the status it was given"
        written = stored(decision.status)
        # A restarted operator reads the status back from the API server and decides again on what it
        # sees: the very same traffic, and nothing to announce.
        again = decide(self.spec, typed(written), target, observed, self.now)
        assert again.serving == decision.serving
        assert again.events == ()
        assert rollout_state(stored(again.status)) == rollout_state(written)
        self.status, self.serving = written, decision.serving
        self.events.extend(decision.events)
        return decision

    def run(self, minutes: int, value: float | None = 0.01) -> list[Decision]:
        """Pass once a minute for ``minutes``, measuring ``value`` whenever a measurement is due."""
        decisions = []
        for _ in range(minutes):
            self.advance(minutes=1)
            decisions.append(self.step(measurements=self.measure(value)))
        return decisions

    def measure(self, value: float | None) -> list[MetricResult]:
        return error_rate(self.spec, value) if self.due() else []

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def stable_service(spec: InferenceServiceSpec) -> Service:
    """A service serving version 1, stable, its events forgotten."""
    service = Service(spec)
    service.register(1)
    service.step()
    service.advance(seconds=10)
    service.step()
    assert service.status["phase"] == "Stable"
    service.events.clear()
    return service


def canary_service(spec: InferenceServiceSpec | None = None) -> Service:
    """Version 2 rolling out beside version 1 at 10%, the backend already giving it that traffic."""
    service = stable_service(spec or make_spec())
    service.register(2)
    service.advance(seconds=10)
    service.step()
    service.advance(seconds=1)
    service.step()
    assert service.status["reason"] == "StepRunning"
    assert service.status["canaryTraffic"] == 10
    service.events.clear()
    return service


# What to serve.


def test_nothing_is_served_before_the_model_has_a_validated_version() -> None:
    service = Service(make_spec())
    service.register(1, "Pending")
    decision = service.step()
    assert decision.serving is None
    assert (service.status["phase"], service.status["reason"]) == ("Pending", "NoValidatedVersion")
    assert "iris" in service.status["message"]


def test_the_first_deploy_serves_the_newest_validated_version() -> None:
    service = Service(make_spec())
    service.register(1)
    service.register(2)
    service.register(3, "Pending")
    service.register(4, "Rejected")
    decision = service.step()
    assert decision.serving == Serving(2)
    assert (service.status["phase"], service.status["reason"]) == ("Progressing", "Deploying")
    assert service.reasons() == ["Deploying"]
    service.advance(seconds=5)
    service.step()
    assert service.status["phase"] == "Stable"
    assert service.status["message"] == "Serving version 2."
    assert service.status["url"] == URL


def test_a_pinned_version_is_served_even_when_it_is_not_the_newest() -> None:
    service = Service(make_spec(model={"name": "iris", "version": 1}))
    service.register(1, None)
    service.register(2)
    assert service.step().serving == Serving(1)


def test_a_pinned_version_that_does_not_exist_is_not_found() -> None:
    service = Service(make_spec(model={"name": "iris", "version": 7}))
    service.register(1)
    decision = service.step()
    assert decision.serving is None
    assert (service.status["phase"], service.status["reason"]) == ("Pending", "VersionNotFound")
    assert "version 7" in service.status["message"]


def test_versions_without_a_version_number_are_ignored() -> None:
    versions = [model_version(1), {"spec": {"modelName": "iris", "version": "9"}, "status": {}}]
    assert target_version(make_spec(), versions).version == 1


# Without rollout steps.


def test_without_a_rollout_a_new_version_replaces_the_stable_one_at_once() -> None:
    service = stable_service(make_spec(rollout=False))
    service.register(2)
    decision = service.step()
    assert decision.serving == Serving(2)
    assert service.status["stableVersion"] == 2
    assert service.status.get("canaryVersion") is None
    assert service.reasons() == ["Deploying"]
    assert "replaces version 1" in service.events[0].message
    service.advance(seconds=5)
    service.step()
    assert (service.status["phase"], service.status["message"]) == ("Stable", "Serving version 2.")


def test_without_a_rollout_the_replacement_is_progressing_until_the_backend_serves_it() -> None:
    service = stable_service(make_spec(rollout=False))
    service.register(2)
    service.step()
    assert service.status["phase"] == "Progressing"
    # The backend has seen the new spec but does not serve the new version yet.
    service.stuck = Observed(exists=True, current=True, ready=False, message="revision 2 not ready")
    service.step()
    assert service.status["phase"] == "Progressing"


def test_a_backend_that_cannot_serve_the_version_degrades_the_service() -> None:
    service = stable_service(make_spec())
    service.stuck = Observed(exists=True, current=True, failed=True, message="model failed to load")
    service.step()
    assert (service.status["phase"], service.status["reason"]) == ("Degraded", "BackendFailed")
    assert "model failed to load" in service.status["message"]
    service.stuck = None
    service.step()
    assert service.status["phase"] == "Stable"


# A healthy canary.


def test_a_healthy_canary_steps_through_every_weight_after_each_interval_and_a_passing_measurement() -> None:
    service = stable_service(make_spec())
    service.register(2)
    decision = service.step()
    assert decision.serving == Serving(1, 2, 10)
    assert service.status["reason"] == "WaitingForTraffic"  # the backend has not shifted the traffic yet
    advanced: list[tuple[float, int]] = []
    while service.status["phase"] != "Promoted" and service.now < START + timedelta(hours=1):
        (decision,) = service.run(minutes=1)
        if any(e.reason == "StepAdvanced" for e in decision.events):
            assert decision.serving is not None
            advanced.append(((service.now - START).total_seconds() / 60, decision.serving.weight))
    promoted = (service.now - START).total_seconds() / 60
    # The canary began at START + 10s and each step exactly one stepInterval (5m) after the one before.
    assert advanced == [(pytest.approx(5 + 1 / 6), 25), (pytest.approx(10 + 1 / 6), 50)]
    assert promoted == pytest.approx(15 + 1 / 6)
    assert service.serving == Serving(2, retiring=1)
    assert service.status["stableVersion"] == 2
    assert service.status.get("canaryVersion") is None
    assert (service.status["phase"], service.status["reason"]) == ("Promoted", "Promoted")
    assert service.reasons() == ["CanaryStarted", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert "replaces version 1" in service.events[-1].message


def test_the_weights_asked_only_ever_grow_during_a_healthy_rollout() -> None:
    service = stable_service(make_spec())
    service.register(2)
    service.step()
    weights = [d.serving.weight for d in service.run(minutes=20) if d.serving and d.serving.canary]
    assert weights == sorted(weights)
    assert sorted(set(weights)) == [10, 25, 50]


def test_a_passing_measurement_does_not_advance_a_step_before_its_interval_is_up() -> None:
    service = canary_service()
    service.run(minutes=4)
    assert service.status["analysis"]["lastPhase"] == "Passed"
    service.advance(seconds=50)
    service.step()
    assert service.status["stepIndex"] == 0
    assert service.serving == Serving(1, 2, 10)


def test_a_step_whose_interval_is_up_waits_for_a_passing_measurement() -> None:
    service = canary_service()
    service.advance(minutes=30)
    decision = service.step()  # no measurement was ever taken
    assert service.status["stepIndex"] == 0
    assert service.status["reason"] == "StepRunning"
    assert decision.requeue_after is not None and decision.requeue_after <= 60
    assert service.due()
    service.step(measurements=error_rate(service.spec, 0.01))
    assert service.status["stepIndex"] == 1
    assert service.serving == Serving(1, 2, 25)


def test_without_analysis_steps_advance_on_time_alone() -> None:
    service = canary_service(make_spec(analysis=False))
    service.advance(minutes=4)
    service.step()
    assert service.status["stepIndex"] == 0
    service.advance(minutes=1)
    service.step()
    assert service.serving == Serving(1, 2, 25)


def test_a_step_never_advances_while_the_backend_reports_other_traffic() -> None:
    service = canary_service()
    service.run(minutes=1)
    assert service.status["analysis"]["lastPhase"] == "Passed"
    service.stuck = Observed(exists=True, current=True, ready=True, canary_traffic=0, message="pinned")
    for decision in service.run(minutes=15):
        assert decision.serving == Serving(1, 2, 10)
        assert decision.requeue_after == 2.0
        assert service.status["reason"] == "WaitingForTraffic"
    assert service.status["canaryTraffic"] == 0
    assert "10%" in service.status["message"] and "pinned" in service.status["message"]
    service.stuck = None
    service.step()
    assert service.serving == Serving(1, 2, 25)


def test_a_step_never_advances_while_the_backend_has_not_seen_the_latest_write() -> None:
    service = canary_service()
    service.run(minutes=1)
    service.stuck = Observed(exists=True, current=False, ready=True, canary_traffic=10)
    for decision in service.run(minutes=15):
        assert decision.serving == Serving(1, 2, 10)
        assert service.status["reason"] == "WaitingForTraffic"
    assert not service.due()


# Rollback.


def test_a_failed_measurement_rolls_back_first_to_no_traffic_then_retires_the_canary() -> None:
    service = canary_service()
    service.advance(minutes=1)
    decision = service.step(measurements=error_rate(service.spec, 0.2))
    assert decision.serving == Serving(1, 2, 0)
    status = service.status
    assert (status["phase"], status["reason"]) == ("RolledBack", "AnalysisFailed")
    assert status["rolledBackVersion"] == 2
    assert 'errors{service="iris-v{{version}}"}' in status["message"]
    assert "0.2" in status["message"] and "max 0.05" in status["message"]
    assert service.reasons() == ["RolledBack"]
    assert service.events[-1].type == "Warning"
    # The backend still gives the canary traffic: it is kept (at 0%) until it gets none.
    service.stuck = Observed(exists=True, current=True, ready=True, canary_traffic=10)
    decision = service.step()
    assert decision.serving == Serving(1, 2, 0)
    assert decision.requeue_after == 2.0
    service.stuck = None
    decision = service.step()  # the backend now reports the 0% asked for: kept for the scale-down delay
    assert decision.serving == Serving(1, 2, 0)
    assert decision.requeue_after == pytest.approx(30)
    service.advance(seconds=29)
    assert service.step().serving == Serving(1, 2, 0)
    service.advance(seconds=1)
    service.step()
    assert service.serving == Serving(1)
    assert service.status.get("canaryVersion") is None
    assert (service.status["phase"], service.status["rolledBackVersion"]) == ("RolledBack", 2)


def test_a_rolled_back_version_is_not_rolled_out_again_but_a_newer_one_is() -> None:
    service = canary_service()
    service.advance(minutes=1)
    service.step(measurements=error_rate(service.spec, 0.2))
    service.run(minutes=10)
    assert service.serving == Serving(1)
    assert "CanaryStarted" not in service.reasons()
    service.register(3)
    service.advance(minutes=1)
    service.step()
    assert service.serving == Serving(1, 3, 10)
    assert service.status["rolledBackVersion"] == 2
    assert service.reasons()[-1] == "CanaryStarted"


def test_the_resume_action_after_a_rollback_rolls_the_version_out_again() -> None:
    service = canary_service()
    service.advance(minutes=1)
    service.step(measurements=error_rate(service.spec, 0.2))
    service.run(minutes=2)
    service.advance(minutes=1)
    service.step(action="resume@1")
    assert service.status["action"] == "resume@1"
    assert service.status.get("rolledBackVersion") is None
    assert service.serving == Serving(1, 2, 10)
    assert service.reasons()[-2:] == ["Resumed", "CanaryStarted"]
    assert service.status["analysis"]["failed"] == 0


def test_a_failure_limit_of_one_tolerates_one_failed_measurement() -> None:
    service = canary_service(make_spec(failure_limit=1))
    service.advance(minutes=1)
    decision = service.step(measurements=error_rate(service.spec, 0.2))
    assert decision.serving == Serving(1, 2, 10)
    assert service.status["phase"] == "Progressing"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "MeasurementFailed")]
    assert "1 of 1 tolerated" in decision.events[0].message
    service.run(minutes=4)
    assert service.serving == Serving(1, 2, 25)  # the passing measurements that followed count
    service.advance(minutes=1)
    service.step(measurements=error_rate(service.spec, 0.3))
    assert (service.status["phase"], service.status["analysis"]["failed"]) == ("RolledBack", 2)
    assert service.serving == Serving(1, 2, 0)


def test_a_value_below_a_min_fails_the_analysis_too() -> None:
    metrics = [{"name": "accuracy", "query": "avg(accuracy)", "min": 0.9}]
    service = canary_service(make_spec(metrics=metrics))
    service.advance(minutes=1)
    service.step(measurements=error_rate(service.spec, 0.5))
    assert service.status["phase"] == "RolledBack"
    assert "avg(accuracy) = 0.5, below its min 0.9" in service.status["message"]


# Inconclusive measurements.


def test_inconclusive_measurements_hold_the_step_then_pause_and_resume_goes_on() -> None:
    service = canary_service(make_spec(inconclusive_limit=5))
    for decision in service.run(minutes=5, value=None):
        assert decision.serving == Serving(1, 2, 10)  # the interval is up at the fifth, still held
    assert service.status["analysis"]["inconclusive"] == 5
    assert service.status["phase"] == "Progressing"
    decision = service.run(minutes=1, value=None)[0]
    assert service.status["pauseReason"] == "Inconclusive"
    assert (service.status["phase"], service.status["reason"]) == ("Paused", "Paused")
    assert "6 inconclusive measurements" in service.status["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "AnalysisInconclusive")]
    for decision in service.run(minutes=15):
        assert decision.serving == Serving(1, 2, 10)
    assert not service.due()
    service.step(action="resume@2")
    assert service.status.get("pauseReason") is None
    assert service.status["analysis"]["inconclusive"] == 0
    assert service.serving == Serving(1, 2, 10)  # the last measurement was inconclusive: measure again
    service.run(minutes=1)
    assert service.serving == Serving(1, 2, 25)


def test_a_measurement_of_nan_is_inconclusive_and_holds_the_step() -> None:
    service = canary_service()
    service.run(minutes=5, value=float("nan"))
    assert service.status["stepIndex"] == 0
    assert service.status["analysis"]["lastPhase"] == "Inconclusive"


# Pausing and the rollout actions.


def test_spec_paused_holds_the_traffic_where_it_is() -> None:
    service = canary_service()
    service.run(minutes=1)
    service.spec = service.spec.model_copy(update={"paused": True})
    for decision in service.run(minutes=15):
        assert decision.serving == Serving(1, 2, 10)
    assert service.status["phase"] == "Paused"
    assert "spec.paused is true" in service.status["message"]
    assert not service.due()
    service.spec = service.spec.model_copy(update={"paused": False})
    service.step()
    assert service.serving == Serving(1, 2, 25)


def test_the_pause_action_holds_the_step_until_resumed() -> None:
    service = canary_service()
    service.step(action="pause@1")
    assert (service.status["phase"], service.status["pauseReason"]) == ("Paused", "Requested")
    assert service.reasons()[-1] == "Paused"
    for decision in service.run(minutes=15):
        assert decision.serving == Serving(1, 2, 10)
    service.step(action="resume@2")
    assert service.status["phase"] == "Progressing"
    service.run(minutes=1)
    assert service.serving == Serving(1, 2, 25)


def test_the_promote_action_promotes_the_canary_at_once() -> None:
    service = canary_service()
    decision = service.step(action="promote@1")
    assert decision.serving == Serving(2, retiring=1)
    assert (service.status["phase"], service.status["reason"]) == ("Promoted", "PromotedManually")
    assert (service.status["stableVersion"], service.status.get("canaryVersion")) == (2, None)


def test_a_promoted_service_keeps_the_old_version_without_traffic_for_the_scale_down_delay() -> None:
    service = canary_service()
    decision = service.step(action="promote@1")
    # Version 1 loses its traffic at once and keeps its predictor: a gateway still routing by the previous
    # split finds it.
    assert decision.serving == Serving(2, retiring=1)
    assert service.status["retiringVersion"] == 1
    service.advance(seconds=20)
    decision = service.step()
    assert decision.serving == Serving(2, retiring=1)
    assert decision.requeue_after == pytest.approx(10)
    service.advance(seconds=10)
    decision = service.step()
    assert decision.serving == Serving(2)
    assert "retiringVersion" not in service.status and "retireTime" not in service.status
    assert (service.status["phase"], service.status["stableVersion"]) == ("Promoted", 2)


def test_a_scale_down_delay_of_0s_removes_the_old_version_with_the_promotion() -> None:
    spec = make_spec()
    assert spec.rollout is not None
    spec.rollout.scale_down_delay = "0s"
    service = canary_service(spec)
    assert service.step(action="promote@1").serving == Serving(2)
    assert "retiringVersion" not in service.status


def test_a_new_version_during_the_scale_down_delay_ends_the_retirement_and_rolls_out() -> None:
    service = canary_service()
    service.step(action="promote@1")
    service.register(3)
    service.advance(seconds=5)
    decision = service.step()
    assert decision.serving == Serving(2, 3, 10)
    assert "retiringVersion" not in service.status


def test_a_scale_down_delay_outside_0s_to_1h_is_refused() -> None:
    for delay in ("61m", "2h"):
        body = {"model": {"name": "iris"}, "rollout": {"steps": [100], "scaleDownDelay": delay}}
        with pytest.raises(ValueError, match="scaleDownDelay must be between 0s and 1h"):
            InferenceServiceSpec.model_validate(body)


def test_the_abort_action_rolls_the_canary_back() -> None:
    service = canary_service()
    decision = service.step(action="abort@1")
    assert decision.serving == Serving(1, 2, 0)
    assert (service.status["phase"], service.status["reason"]) == ("RolledBack", "Aborted")
    assert service.status["rolledBackVersion"] == 2


@pytest.mark.parametrize("verb", ["promote", "abort"])
def test_promote_or_abort_without_a_rollout_warns_that_there_is_none(verb: str) -> None:
    service = stable_service(make_spec())
    decision = service.step(action=verb)
    assert decision.serving == Serving(1)
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "NoRollout")]
    assert service.status["action"] == verb


def test_an_unknown_action_is_reported_and_changes_nothing() -> None:
    service = canary_service()
    decision = service.step(action="rewind@3")
    assert decision.serving == Serving(1, 2, 10)
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "UnknownAction")]
    assert "'rewind'" in decision.events[0].message and "promote" in decision.events[0].message


def test_the_action_annotation_is_read_with_its_token_and_its_verb_without() -> None:
    assert parse_action({ANNOTATION_ROLLOUT_ACTION: " promote@17 "}) == "promote@17"
    assert parse_action({ANNOTATION_ROLLOUT_ACTION: "  "}) is None
    assert parse_action({"other": "promote"}) is None
    assert parse_action(None) is None
    assert action_verb("Promote@17") == "promote"
    assert action_verb("abort") == "abort"


# A new version mid-rollout, and the rollout removed.


def test_a_new_validated_version_mid_rollout_replaces_the_canary_from_the_first_step() -> None:
    service = canary_service(make_spec(failure_limit=1))
    service.advance(minutes=1)
    service.step(measurements=error_rate(service.spec, 0.2))
    service.run(minutes=5)
    assert service.serving == Serving(1, 2, 25)
    service.register(3)
    service.advance(seconds=10)
    decision = service.step()
    assert decision.serving == Serving(1, 3, 10)
    assert service.status["stepIndex"] == 0
    assert service.status["analysis"] == {"measurements": [], "failed": 0, "inconclusive": 0}
    assert [e.reason for e in decision.events] == ["CanaryReplaced", "CanaryStarted"]


def test_a_canary_that_is_no_longer_the_target_is_rolled_back_to_the_stable_version() -> None:
    service = canary_service()
    service.spec = service.spec.model_copy(
        update={"model": make_spec(model={"name": "iris", "version": 1}).model}
    )
    decision = service.step()
    assert decision.serving == Serving(1, 2, 0)
    assert (service.status["phase"], service.status["reason"]) == ("RolledBack", "Superseded")


def test_a_rollout_removed_from_the_spec_mid_way_promotes_the_canary() -> None:
    service = canary_service()
    service.spec = make_spec(rollout=False)
    assert service.step().serving == Serving(2, retiring=1)
    assert service.status["phase"] == "Promoted"


# Restarts.


def test_a_restarted_operator_decides_the_traffic_it_was_at_at_every_pass_of_a_rollout() -> None:
    # Service.step re-decides every pass from the stored status (as a restarted operator would) and
    # asserts the same Serving; this drives it through a promotion and a rollback.
    service = stable_service(make_spec())
    service.register(2)
    service.step()
    service.run(minutes=20)
    assert service.serving == Serving(2)
    service.register(3)
    service.step()
    service.run(minutes=2, value=0.9)
    assert (service.serving, service.status["rolledBackVersion"]) == (Serving(2), 3)


def test_a_restart_while_the_backend_still_converges_asks_for_the_same_weight_again() -> None:
    service = canary_service()
    service.run(minutes=5)
    assert service.serving == Serving(1, 2, 25)
    # The operator restarts now: the backend still reports the previous step's 10%.
    stale = Observed(exists=True, current=True, ready=True, canary_traffic=10)
    restarted = decide(
        service.spec,
        typed(service.status),
        target_version(service.spec, service.versions),
        stale,
        service.now,
    )
    assert restarted.serving == Serving(1, 2, 25)
    assert restarted.status.reason == "WaitingForTraffic"


def test_a_restart_that_lost_a_step_applied_but_not_written_steps_again_without_taking_traffic_back() -> None:
    service = canary_service()
    service.advance(minutes=5)  # the step at 10% is due
    # An operator measured, stepped to 25% and applied it, and stopped before writing it (the controller
    # writes a step after the backend's report): status says 10%, the backend serves 25%.
    ahead = Observed(exists=True, current=True, ready=True, canary_traffic=25)
    status = typed(service.status)
    target = target_version(service.spec, service.versions)
    assert measurement_due(service.spec, status, ahead, service.now)
    again = decide(service.spec, status, target, ahead, service.now, None, error_rate(service.spec, 0.01))
    assert again.serving == Serving(1, 2, 25)
    assert (again.status.reason, again.status.step_index) == ("StepAdvanced", 1)
    # A backend at some other weight is still waited for, at the weight status asks.
    other = replace(ahead, canary_traffic=50)
    assert not measurement_due(service.spec, status, other, service.now)
    assert decide(service.spec, status, target, other, service.now).serving == Serving(1, 2, 10)


def test_a_restart_that_lost_a_promotion_applied_but_not_written_promotes_again() -> None:
    service = canary_service()
    service.run(minutes=11)
    assert service.serving == Serving(1, 2, 50)
    service.advance(minutes=5)
    promoted = Observed(exists=True, current=True, ready=True, canary_traffic=100)
    status = typed(service.status)
    target = target_version(service.spec, service.versions)
    again = decide(service.spec, status, target, promoted, service.now, None, error_rate(service.spec, 0.01))
    assert again.serving == Serving(2, retiring=1)
    assert again.status.phase == "Promoted"


# When to measure.


def test_a_measurement_is_due_an_interval_after_the_step_began_and_then_every_interval() -> None:
    service = canary_service()
    begun = datetime.fromisoformat(service.status["stepStartTime"])
    service.now = begun + timedelta(seconds=59)
    assert not service.due()
    service.now = begun + timedelta(minutes=1)
    assert service.due()
    service.step(measurements=error_rate(service.spec, 0.01))
    assert not service.due()
    service.advance(seconds=59)
    assert not service.due()
    service.advance(seconds=1)
    assert service.due()


def test_no_measurement_is_due_while_paused_converging_or_without_a_canary() -> None:
    service = canary_service()
    service.advance(minutes=5)
    assert service.due()
    service.stuck = Observed(exists=True, current=True, ready=True, canary_traffic=0)
    assert not service.due()
    service.stuck = None
    assert not measurement_due(make_spec(paused=True), typed(service.status), service.observed(), service.now)
    paused = {**service.status, "pauseReason": "Requested"}
    assert not measurement_due(service.spec, typed(paused), service.observed(), service.now)
    current = typed(service.status)
    assert not measurement_due(make_spec(analysis=False), current, service.observed(), service.now)
    stable = stable_service(make_spec())
    stable.advance(hours=1)
    assert not stable.due()


# What status keeps.


def test_measurements_keep_the_last_few_of_each_metric_oldest_first() -> None:
    metrics = [
        {"name": "error-rate", "query": ERROR_RATE, "max": 0.05},
        {"name": "latency", "query": "p99", "max": 0.5},
    ]
    service = canary_service(make_spec(metrics=metrics, step_interval="1h"))
    for minute in range(6):
        service.advance(minutes=1)
        results = [
            MetricResult("error-rate", MeasurementPhase.PASSED, minute / 100, "ok"),
            MetricResult("latency", MeasurementPhase.PASSED, minute / 10, "ok"),
        ]
        service.step(measurements=results)
    kept = service.status["analysis"]["measurements"]
    assert len(kept) == 2 * MEASUREMENTS_PER_METRIC
    assert [m["value"] for m in kept if m["metric"] == "error-rate"] == [0.02, 0.03, 0.04, 0.05]
    times = [m["time"] for m in kept]
    assert times == sorted(times)


def test_measurements_never_exceed_what_status_keeps_even_when_metrics_are_renamed() -> None:
    service = canary_service(make_spec(step_interval="1h"))
    for round_, prefix in enumerate(["a"] * MEASUREMENTS_PER_METRIC + ["b", "b"]):
        service.advance(minutes=1)
        results = [
            MetricResult(f"{prefix}{i}", MeasurementPhase.PASSED, round_, "x" * 2000) for i in range(16)
        ]
        service.step(measurements=results)
    kept = service.status["analysis"]["measurements"]
    assert len(kept) == MEASUREMENTS_KEPT
    assert all(m["metric"].startswith("b") for m in kept[-32:])
    assert all(len(m["message"]) <= 1024 for m in kept)


# Shadow: mirrored traffic before the first step.


def test_a_shadow_phase_mirrors_the_traffic_for_one_interval_under_analysis_before_the_first_step() -> None:
    service = stable_service(make_spec(shadow=True, steps=[10, 100]))
    service.register(2)
    decision = service.step()
    assert decision.serving == Serving(1, 2, 0, shadow=True)
    status = service.status
    assert (status["reason"], status["shadow"], status["canaryWeight"]) == ("WaitingForTraffic", True, 0)
    assert status.get("stepIndex") is None
    assert "mirrored copy" in status["message"]
    assert service.reasons() == ["ShadowStarted"]
    served: list[Serving] = []
    while service.status["phase"] != "Promoted" and service.now < START + timedelta(hours=1):
        (decision,) = service.run(minutes=1)
        assert decision.serving is not None
        served.append(decision.serving)
    # 5 minutes mirrored (its answers reach no one), 5 at 90/10, then promoted.
    mirrored = [s for s in served if s.shadow]
    assert mirrored and all(s == Serving(1, 2, 0, shadow=True) for s in mirrored)
    assert served[len(mirrored)] == Serving(1, 2, 10)
    assert served[-1] == Serving(2, retiring=1)
    assert service.reasons() == ["ShadowStarted", "StepAdvanced", "Promoted"]
    assert service.now - START == timedelta(minutes=10, seconds=10)  # began at START + 10 s


def test_a_challenger_that_fails_analysis_in_shadow_never_gets_user_traffic() -> None:
    service = stable_service(make_spec(shadow=True, steps=[10, 100]))
    service.register(2)
    service.step()
    served = [d.serving for d in service.run(minutes=3, value=0.3)]
    assert service.status["phase"] == "RolledBack"
    assert service.status["rolledBackVersion"] == 2
    assert all(s is not None and (s.canary is None or s.weight == 0) for s in served)
    assert service.serving == Serving(1)


def test_a_step_does_not_begin_until_the_backend_reports_the_canary_mirrored() -> None:
    service = stable_service(make_spec(shadow=True, steps=[10, 100]))
    service.register(2)
    service.step()
    # A backend that gives it no traffic but does not mirror either (e.g. KServe) holds the shadow phase.
    service.stuck = Observed(exists=True, current=True, ready=True, canary_traffic=0, shadow=False)
    for decision in service.run(minutes=10):
        assert decision.serving == Serving(1, 2, 0, shadow=True)
    assert service.status["reason"] == "WaitingForTraffic"


def test_shadow_before_a_single_step_of_100_promotes_after_the_shadow_phase() -> None:
    service = stable_service(make_spec(shadow=True, steps=[100]))
    service.register(2)
    service.step()
    service.run(minutes=6)
    assert service.serving == Serving(2)
    assert service.reasons() == ["ShadowStarted", "Promoted"]


def test_the_promote_action_in_shadow_promotes_at_once() -> None:
    service = stable_service(make_spec(shadow=True, steps=[10, 100]))
    service.register(2)
    service.step()
    service.advance(seconds=5)
    decision = service.step(action="promote")
    assert decision.serving == Serving(2, retiring=1)
    assert service.status.get("shadow") is None
