"""DriftPolicy's decision: a breach counts once it held for the whole window; no data never counts;
cooldown, budget and a retraining in flight each start nothing; Prometheus's refusal is Degraded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import DriftPolicySpec, DriftPolicyStatus
from modelloop.api.inferenceservice import RolloutVersions
from modelloop.drift import policy
from modelloop.drift.detector import detector_versions
from modelloop.drift.policy import InFlight, Measurement, PolicyDecision, run_name
from modelloop.drift.training_run import render_training_run, retraining_in_flight
from modelloop.machinery.status import status_json
from modelloop.serving.analysis import error_message

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
POLICY = "iris-drift"


def make_spec(**overrides: Any) -> DriftPolicySpec:
    spec: dict[str, Any] = {
        "target": {"inferenceService": "iris"},
        "metrics": [
            {
                "name": "feature-drift",
                "query": "max(modelloop_drift_score)",
                "threshold": 0.3,
                "comparison": "GreaterThan",
            },
            {
                "name": "accuracy",
                "query": "min(modelloop_feedback_accuracy)",
                "threshold": 0.8,
                "comparison": "LessThan",
            },
        ],
        "window": "5m",
        "cooldown": "30m",
        "evaluationInterval": "1m",
        "budget": {"maxRetrainings": 2, "period": "24h"},
        "retrain": {
            "trainingRunTemplate": {
                "image": "ghcr.io/modelloop/trainer:0.1.0",
                "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                "output": {"modelName": "iris"},
            }
        },
    }
    spec.update(overrides)
    return DriftPolicySpec.model_validate(spec)


SPEC = make_spec()


@dataclass(frozen=True)
class Decided(PolicyDecision):
    """A decision as the tests read it: its status as the API server stores it."""

    status: dict[str, Any]  # type: ignore[assignment]


def stored(status: DriftPolicyStatus) -> dict[str, Any]:
    """What the status writer makes of it (None: a field the pass unset)."""
    return status_json(status)


def decide(
    name: str,
    spec: DriftPolicySpec,
    status: dict[str, Any],
    measurements: list[Measurement] | None,
    in_flight: InFlight | None,
    now: datetime,
    generation: int,
    trained: str | None = None,
) -> Decided:
    """``policy.decide`` on a status as stored: parsed once, decided, dumped once (every decided status
    is a valid status of the CRD)."""
    typed = DriftPolicyStatus.model_validate(status)
    decision = policy.decide(name, spec, typed, measurements, in_flight, now, generation, trained)
    return Decided(**{**vars(decision), "status": stored(decision.status)})


def evaluation_due(spec: DriftPolicySpec, status: dict[str, Any], generation: int, now: datetime) -> bool:
    return policy.evaluation_due(spec, DriftPolicyStatus.model_validate(status), generation, now)


def measure(
    drift: float | None, accuracy: float | None = 0.95, at: datetime = T0, **kwargs: Any
) -> list[Measurement]:
    return [
        Measurement(SPEC.metrics[0], "max(modelloop_drift_score)", at, value=drift, **kwargs),
        Measurement(SPEC.metrics[1], "min(modelloop_feedback_accuracy)", at, value=accuracy),
    ]


def run_evaluations(
    values: list[float | None], *, start: dict[str, Any] | None = None, in_flight: InFlight | None = None
) -> tuple[dict[str, Any], list[Decided]]:
    """Evaluate once a minute from T0 with the drift values given; the status and every decision."""
    status: dict[str, Any] = dict(start or {})
    decisions = []
    for minute, value in enumerate(values):
        now = T0 + timedelta(minutes=minute)
        decision = decide(POLICY, SPEC, status, measure(value, at=now), in_flight, now, 1)
        decisions.append(decision)
        status = decision.status
    return status, decisions


def test_a_breach_that_holds_for_the_whole_window_starts_one_retraining_with_its_evidence() -> None:
    status, decisions = run_evaluations([0.5] * 6)
    started = [d for d in decisions if d.start_run]
    assert len(started) == 1
    assert started[0] is decisions[5], "confirmed at the evaluation 5 minutes after the breach began"
    assert started[0].start_run == run_name(POLICY, T0)
    evidence = started[0].evidence
    assert evidence["feature-drift"].startswith("0.5 (breach when > 0.3) at 2026-11-27T12:05:00Z")
    assert "max(modelloop_drift_score)" in evidence["feature-drift"]
    assert "accuracy" not in evidence, "only the breached metrics are evidence"
    assert evidence["breachStart"] == "2026-11-27T12:00:00Z" and evidence["window"] == "5m"
    assert status["phase"] == "Retraining" and status["lastTrainingRun"] == run_name(POLICY, T0)
    assert status["retrainingsInPeriod"] == 1
    assert [d.status["phase"] for d in decisions[:5]] == ["Breached"] * 5


def test_a_breach_that_does_not_hold_for_the_window_starts_nothing() -> None:
    status, decisions = run_evaluations([0.5, 0.5, 0.5, 0.5, 0.1, 0.5, 0.5, 0.5])
    assert not any(d.start_run for d in decisions)
    assert status["phase"] == "Breached"
    assert status["breachStartTime"] == "2026-11-27T12:05:00Z", "the window starts again after a clean one"


@pytest.mark.parametrize("gap", [None, float("nan")])
def test_no_data_is_inconclusive_never_a_breach_and_restarts_the_window(gap: float | None) -> None:
    _, decisions = run_evaluations([0.5, 0.5, 0.5, gap, 0.5, 0.5, 0.5])
    assert not any(d.start_run for d in decisions)
    assert decisions[3].status["phase"] == "Inconclusive"
    assert decisions[3].status["breachStartTime"] is None
    ready = decisions[3].status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "Unknown", "Inconclusive")


def test_prometheus_unreachable_is_inconclusive_and_says_why() -> None:
    down = [
        Measurement(m, "q", T0, error="Prometheus at http://p:9090 is unreachable (ConnectionError)")
        for m in SPEC.metrics
    ]
    status: dict[str, Any] = {"breachStartTime": "2026-11-27T11:50:00Z", "lastResult": "Breached"}
    decision = decide(POLICY, SPEC, status, down, None, T0, 1)
    assert decision.start_run is None
    assert decision.status["phase"] == "Inconclusive"
    assert (
        "unreachable" in decision.status["message"]
        and "never taken for a breach" in decision.status["message"]
    )


def test_a_query_prometheus_refuses_makes_the_policy_degraded_with_its_message() -> None:
    error = 'Prometheus at http://p:9090 refused the query: bad_data: 1:1: parse error: unexpected "$"'
    refused = [Measurement(SPEC.metrics[0], "$(rm -rf /)", T0, error=error, refused=True), *measure(0.1)[1:]]
    decision = decide(POLICY, SPEC, {}, refused, None, T0, 1)
    assert decision.status["phase"] == "Degraded" and decision.status["reason"] == "QueryRefused"
    assert "parse error" in decision.status["message"] and "feature-drift" in decision.status["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "QueryRefused")]
    assert decision.status["conditions"][0]["status"] == "False"


def test_a_second_breach_inside_the_cooldown_starts_nothing() -> None:
    status, _ = run_evaluations([0.5] * 6)
    status = {**status, "lastTrainingRun": None}  # the first retraining is over
    later = T0 + timedelta(minutes=6)
    decisions = []
    for minute in range(8):
        now = later + timedelta(minutes=minute)
        decision = decide(POLICY, SPEC, status, measure(0.6, at=now), None, now, 1)
        decisions.append(decision)
        status = decision.status
    assert not any(d.start_run for d in decisions)
    assert decisions[-1].status["phase"] == "CoolingDown"
    assert decisions[-1].skipped == "Cooldown"
    assert "2026-11-27T12:35:00Z" in decisions[-1].status["message"], "says when the cooldown ends"


def test_a_breach_while_a_retraining_is_in_flight_starts_nothing() -> None:
    status, decisions = run_evaluations([0.5] * 8, in_flight=InFlight("TrainingRun iris-drift-1 is Running"))
    assert not any(d.start_run for d in decisions)
    assert status["phase"] == "Retraining"
    assert status["message"].startswith("TrainingRun iris-drift-1 is Running")
    assert decisions[-1].skipped == "InFlight"


def test_the_budget_of_the_period_caps_retrainings() -> None:
    spent = {"retrainings": ["2026-11-27T02:00:00Z", "2026-11-27T08:00:00Z"]}
    status, decisions = run_evaluations([0.5] * 7, start=spent)
    assert not any(d.start_run for d in decisions)
    assert status["phase"] == "Breached" and status["reason"] == "BudgetExhausted"
    assert "2026-11-28T02:00:00Z" in status["message"]
    old = {"retrainings": ["2026-11-26T02:00:00Z", "2026-11-27T08:00:00Z"]}
    _, decisions = run_evaluations([0.5] * 6, start=old)
    assert decisions[-1].start_run is not None, "a retraining older than the period no longer counts"
    assert decisions[-1].status["retrainingsInPeriod"] == 2


def test_evaluations_are_due_every_interval_and_at_once_for_a_new_spec() -> None:
    evaluated = {"lastEvaluationTime": "2026-11-27T12:00:00Z", "observedGeneration": 1}
    assert evaluation_due(SPEC, {}, 1, T0)
    assert not evaluation_due(SPEC, evaluated, 1, T0 + timedelta(seconds=59))
    assert evaluation_due(SPEC, evaluated, 1, T0 + timedelta(seconds=60))
    assert evaluation_due(SPEC, evaluated, 2, T0 + timedelta(seconds=1))


def test_the_next_evaluation_comes_when_the_window_ends_if_that_is_sooner() -> None:
    spec = make_spec(window="90s", evaluationInterval="1m")
    first = decide(POLICY, spec, {}, measure(0.5), None, T0, 1)
    assert first.requeue_after == 60
    now = T0 + timedelta(minutes=1)
    second = decide(POLICY, spec, first.status, measure(0.5, at=now), None, now, 1)
    assert second.requeue_after == 30


def test_a_pass_without_evaluation_keeps_the_breach_and_follows_the_retraining() -> None:
    status, _ = run_evaluations([0.5] * 6)
    over = decide(POLICY, SPEC, status, None, None, T0 + timedelta(minutes=6, seconds=10), 1)
    assert over.start_run is None and over.skipped is None
    assert over.status["phase"] == "CoolingDown"
    assert over.status["lastEvaluationTime"] == status["lastEvaluationTime"]


def _run(phase: str | None, version: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if version:
        status["modelVersion"] = version
    return {"metadata": {"name": "iris-drift-1"}, "status": status}


def _version(phase: str | None, stage: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "iris-v2"}, "status": {"phase": phase, "stage": stage}}


@pytest.mark.parametrize(
    ("run", "versions", "in_flight"),
    [
        (None, [], None),
        (_run(None), [], "TrainingRun iris-drift-1 is Pending"),
        (_run("Running"), [], "TrainingRun iris-drift-1 is Running"),
        (_run("Failed"), [], None),
        (_run("Succeeded"), [], "its ModelVersion is being registered"),
        (_run("Succeeded", "iris-v2"), [_version("Pending")], "is being validated"),
        (_run("Succeeded", "iris-v2"), [_version("Rejected")], None),
        (
            _run("Succeeded", "iris-v2"),
            [_version("Validated", "Challenger")],
            "is the challenger in a canary",
        ),
        (_run("Succeeded", "iris-v2"), [_version("Validated", "Champion")], None),
        (_run("Succeeded", "iris-v2"), [_version("Validated", "Candidate")], None),
        (_run("Succeeded", "iris-v2"), [], None),
    ],
)
def test_a_retraining_is_in_flight_until_its_version_is_rejected_or_past_its_canary(
    run: dict[str, Any] | None, versions: list[dict[str, Any]], in_flight: str | None
) -> None:
    found = retraining_in_flight(run, versions)
    if in_flight is None:
        assert found is None
    else:
        assert found is not None and in_flight in found.what


def test_the_retraining_run_is_the_template_with_the_trigger_and_the_recent_data() -> None:
    policy = {"metadata": {"name": POLICY, "namespace": "ml", "uid": "u-1"}}
    evidence = {"feature-drift": "0.5 (breach when > 0.3)", "window": "5m"}
    recent = {"uri": "file:///data/recent.csv", "format": "csv", "hash": "sha256:ab12"}
    run = render_training_run(policy, SPEC, "iris-drift-1764244800", evidence, recent)
    assert run["kind"] == "TrainingRun" and run["metadata"]["namespace"] == "ml"
    assert run["metadata"]["labels"]["modelloop.dev/drift-policy"] == POLICY
    assert run["spec"]["triggeredBy"] == {"kind": "DriftPolicy", "name": POLICY, "evidence": evidence}
    assert run["spec"]["dataset"]["uri"] == "sklearn://iris"
    assert run["spec"]["dataset"]["additional"] == [recent]
    assert run["spec"]["image"] == "ghcr.io/modelloop/trainer:0.1.0"
    assert not render_training_run(policy, SPEC, "x", evidence)["spec"]["dataset"].get("additional")


def test_the_detector_is_told_the_stable_and_canary_versions_with_their_references() -> None:
    def version(number: int, reference: str | None) -> dict[str, Any]:
        artifact: dict[str, Any] = {"uri": f"file:///m/{number}"}
        if reference:
            artifact.update(referenceUri=reference, referencePredictionsUri=reference + ".p")
        return {"spec": {"version": number, "artifact": artifact}}

    versions = [
        version(1, None),
        version(2, "file:///m/2/reference.csv"),
        version(3, "file:///m/3/reference.csv"),
    ]
    registered = detector_versions(versions, RolloutVersions(2, 3))
    assert {name: spec.to_json() for name, spec in registered.items()} == {
        "2": {"referenceUri": "file:///m/2/reference.csv", "endpoint": "default",
              "predictionsUri": "file:///m/2/reference.csv.p"},
        "3": {"referenceUri": "file:///m/3/reference.csv", "endpoint": "canary",
              "predictionsUri": "file:///m/3/reference.csv.p"},
    }  # fmt: skip
    assert detector_versions(versions, RolloutVersions(1, None)) == {}, (
        "a version without a reference is left out"
    )


def test_the_detector_is_told_each_versions_held_out_rows_when_it_has_them() -> None:
    artifact = {"uri": "file:///m/2", "referenceUri": "file:///m/2/reference.csv"}
    versions = [
        {"spec": {"version": 2, "artifact": {**artifact, "holdoutUri": "file:///m/2/holdout.csv"}}},
        {"spec": {"version": 3, "artifact": {**artifact, "referenceUri": "file:///m/3/reference.csv"}}},
    ]

    registered = detector_versions(versions, RolloutVersions(2, 3))

    assert registered["2"].holdout_uri == "file:///m/2/holdout.csv"
    assert registered["2"].to_json()["holdoutUri"] == "file:///m/2/holdout.csv"
    assert registered["3"].holdout_uri is None and "holdoutUri" not in registered["3"].to_json(), (
        "a version registered before the trainer wrote held-out rows has none"
    )


ESTIMATE_QUERY = 'min(modelloop_estimated_performance{service="iris",metric="accuracy"})'


def estimated_spec(comparison: str = "LessThan", breach_when: str | None = None) -> DriftPolicySpec:
    """A policy whose one metric is the detector's estimate of accuracy, with its band."""
    estimate = {
        "lowerQuery": 'min(modelloop_estimated_performance_lower{service="iris",metric="accuracy"})',
        "upperQuery": 'min(modelloop_estimated_performance_upper{service="iris",metric="accuracy"})',
    }
    if breach_when is not None:
        estimate["breachWhen"] = breach_when
    metric = {
        "name": "estimated-accuracy",
        "query": ESTIMATE_QUERY,
        "threshold": 0.85,
        "comparison": comparison,
        "estimate": estimate,
    }
    return make_spec(metrics=[metric])


def estimated(
    spec: DriftPolicySpec, value: float | None, lower: float | None, upper: float | None, at: datetime = T0
) -> list[Measurement]:
    return [Measurement(spec.metrics[0], ESTIMATE_QUERY, at, value=value, lower=lower, upper=upper)]


def confirm(spec: DriftPolicySpec, value: float, lower: float | None, upper: float | None) -> Decided:
    """Evaluate once a minute for the whole window (5m) with the same estimate; the last decision."""
    status: dict[str, Any] = {}
    for minute in range(6):
        now = T0 + timedelta(minutes=minute)
        decision = decide(POLICY, spec, status, estimated(spec, value, lower, upper, now), None, now, 1)
        status = decision.status
    return decision


def test_a_breached_estimate_is_evidence_that_says_it_was_estimated_and_gives_its_band() -> None:
    decision = confirm(estimated_spec(), 0.71, 0.64, 0.78)

    assert decision.start_run == run_name(POLICY, T0)
    assert decision.evidence["estimated-accuracy"] == (
        "0.71 estimated without labels, band [0.64, 0.78] (breach when < 0.85) at 2026-11-27T12:05:00Z; "
        f"query: {ESTIMATE_QUERY}"
    )
    assert decision.status["evidence"] == {"estimated-accuracy": "0.71"}, "status shows the value as before"
    assert decision.status["lastValue"] == "estimated-accuracy=0.71"


@pytest.mark.parametrize(
    ("lower", "upper", "band"),
    [
        (None, None, "band: no data"),
        (float("nan"), float("nan"), "band: no data"),
        (0.64, None, "band [0.64, no data]"),
        (None, 0.78, "band [no data, 0.78]"),
    ],
)
def test_a_band_without_data_is_left_out_and_the_estimate_still_counts(
    lower: float | None, upper: float | None, band: str
) -> None:
    decision = confirm(estimated_spec(), 0.71, lower, upper)

    assert decision.start_run is not None, "the estimate alone is past its threshold"
    assert decision.evidence["estimated-accuracy"].startswith(
        f"0.71 estimated without labels, {band} (breach when < 0.85) at "
    )


def test_an_estimate_within_its_threshold_is_watching_whatever_its_band() -> None:
    spec = estimated_spec()
    decision = decide(POLICY, spec, {}, estimated(spec, 0.9, 0.8, 0.97), None, T0, 1)
    assert decision.status["phase"] == "Watching" and decision.status["lastResult"] == "Watching"


@pytest.mark.parametrize(
    ("comparison", "value", "lower", "upper", "result"),
    [
        # Below 0.85 is a breach only when the band's upper bound is below it too.
        ("LessThan", 0.8, 0.7, 0.84, "Breached"),
        ("LessThan", 0.8, 0.7, 0.9, "Watching"),
        ("LessThanOrEqual", 0.8, 0.7, 0.85, "Breached"),
        ("LessThan", 0.9, 0.7, 0.8, "Watching"),  # the estimate itself must be past the threshold
        # Above 0.85 is a breach only when the band's lower bound is above it too.
        ("GreaterThan", 0.9, 0.86, 0.95, "Breached"),
        ("GreaterThan", 0.9, 0.8, 0.95, "Watching"),
        ("GreaterThanOrEqual", 0.9, 0.85, 0.95, "Breached"),
        # The bound that decides has no data: the metric cannot tell, and a breach is never guessed.
        ("LessThan", 0.8, 0.7, None, "Inconclusive"),
        ("GreaterThan", 0.9, float("nan"), 0.95, "Inconclusive"),
        ("LessThan", 0.8, None, 0.84, "Breached"),  # the other bound is not needed
    ],
)
def test_whole_band_breaches_only_when_the_bound_nearer_the_threshold_is_past_it(
    comparison: str, value: float, lower: float | None, upper: float | None, result: str
) -> None:
    spec = estimated_spec(comparison, breach_when="WholeBand")

    decision = decide(POLICY, spec, {}, estimated(spec, value, lower, upper), None, T0, 1)

    assert decision.status["lastResult"] == result


def test_whole_band_evidence_and_an_inconclusive_band_say_so() -> None:
    spec = estimated_spec(breach_when="WholeBand")

    breached = confirm(spec, 0.71, 0.64, 0.78)
    unknown = decide(POLICY, spec, {}, estimated(spec, 0.71, 0.64, None), None, T0, 1)

    assert (
        "band [0.64, 0.78] (breach when the whole band is < 0.85)" in breached.evidence["estimated-accuracy"]
    )
    assert unknown.status["phase"] == "Inconclusive"
    assert "estimated-accuracy: 0.71 (band: no data)" in unknown.status["message"]
    assert unknown.status["evidence"] == {"estimated-accuracy": "0.71 (band: no data)"}


def test_an_estimates_evidence_is_cut_at_its_limit() -> None:
    spec = estimated_spec()
    long_query = ESTIMATE_QUERY + " or vector(0)" * 200
    [measurement] = estimated(spec, 0.71, 0.64, 0.78)
    text = Measurement(spec.metrics[0], long_query, T0, value=0.71, lower=0.64, upper=0.78).evidence()

    assert len(text) == policy.EVIDENCE_TEXT_LIMIT
    assert text.startswith("0.71 estimated without labels, band [0.64, 0.78]")
    assert len(measurement.evidence()) < policy.EVIDENCE_TEXT_LIMIT


def test_only_prometheuss_own_error_shape_is_read_from_an_error_body() -> None:
    body = (
        b'{"status":"error","errorType":"bad_data","error":"1:1: parse error: unexpected character: \'$\'"}'
    )
    assert error_message(body) == "bad_data: 1:1: parse error: unexpected character: '$'"
    assert error_message(b"not json") is None
    assert error_message(b'{"status":"success","data":{}}') is None
    assert error_message(b'{"error":"no status"}') is None


def test_the_version_a_retraining_registered_is_recorded_and_a_new_retraining_forgets_it() -> None:
    status, _ = run_evaluations([0.5] * 6)
    later = T0 + timedelta(minutes=7)
    recorded = decide(POLICY, SPEC, status, None, None, later, 1, trained="iris-v3")
    assert recorded.status["lastModelVersion"] == "iris-v3"
    # Past the cooldown, a new breach held for the window starts a new run: the old version is not its.
    status = recorded.status
    start = T0 + timedelta(hours=1)
    for minute in range(6):
        now = start + timedelta(minutes=minute)
        decision = decide(POLICY, SPEC, status, measure(0.5, at=now), None, now, 1, trained="iris-v3")
        status = decision.status
    assert decision.start_run == run_name(POLICY, start)
    assert status["lastTrainingRun"] == decision.start_run and status["lastModelVersion"] is None
