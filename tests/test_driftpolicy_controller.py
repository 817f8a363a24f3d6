"""The DriftPolicy controller's glue, with an injected client and stand-ins for Prometheus and the
detector (both are HTTP services the e2e tests run for real): what it reads, asks and writes, in which
order. The decisions are ``drift.policy.decide``'s (tests/test_drift_policy.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop import kube
from modelloop.controllers.driftpolicy import DriftPolicyController
from modelloop.drift.detector import DetectorError
from modelloop.serving.analysis import PrometheusRefused, PrometheusUnreachable
from modelloop.settings import Settings

KEY = ("ml", "iris-drift")
pytestmark = pytest.mark.usefixtures("posted")


def policy(status: dict[str, Any] | None = None, detector: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"inferenceService": "iris"},
        "prometheus": {"url": "http://prometheus:9090"},
        "metrics": [
            {
                "name": "drift",
                "query": 'max(score{service="{{name}}"})',
                "threshold": 0.3,
                "comparison": "GreaterThan",
            }
        ],
        "window": "0s",
        "cooldown": "1h",
        "retrain": {
            "trainingRunTemplate": {
                "image": "trainer:1",
                "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                "output": {"modelName": "iris"},
            }
        },
    }
    if detector:
        spec["detector"] = {"url": "http://detector:8080"}
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {
            "namespace": "ml",
            "name": "iris-drift",
            "uid": "p1",
            "generation": 1,
            "resourceVersion": "3",
        },
        "spec": spec,
        "status": status or {},
    }


SERVICE = {
    "metadata": {"namespace": "ml", "name": "iris"},
    "spec": {"model": {"name": "iris"}},
    "status": {"stableVersion": 2},
}
VERSION_2 = {
    "metadata": {"namespace": "ml", "name": "iris-v2"},
    "spec": {"version": 2, "artifact": {"uri": "file:///m/2", "referenceUri": "file:///m/2/reference.csv"}},
}


class Prometheus:
    """Answers every query with ``value`` and records it; a query naming a key of ``answers`` gets that
    answer instead (an exception is raised, as the real one raises it)."""

    def __init__(
        self, value: float | None, answers: dict[str, float | Exception | None] | None = None
    ) -> None:
        self.value = value
        self.answers = answers or {}
        self.queries: list[tuple[str, str]] = []

    async def run_query(self, url: str, query: str) -> float | None:
        self.queries.append((url, query))
        answer = next((a for key, a in self.answers.items() if key in query), self.value)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Detector:
    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.registered: list[tuple[Any, ...]] = []
        self.mmd: list[bool] = []

    async def register(
        self,
        url: str,
        namespace: str,
        service: str,
        model: str,
        versions: Any,
        target: Any,
        mmd: bool = False,
    ) -> None:
        if self.down:
            raise DetectorError(f"the detector at {url} is unreachable")
        self.registered.append(
            (namespace, service, model, {k: v.to_json() for k, v in versions.items()}, target)
        )
        self.mmd.append(mmd)


def controller(
    obj: dict[str, Any],
    value: float | None,
    runs: dict[Any, Any] | None = None,
    detector: Detector | None = None,
    answers: dict[str, float | Exception | None] | None = None,
    versions: list[dict[str, Any]] | None = None,
) -> tuple[DriftPolicyController, RecordingClient, Prometheus]:
    # The API server has the policy as the index does, unless a test says otherwise.
    client = RecordingClient(objects={("driftpolicies", *KEY): obj})
    indexes = {
        "drift_policies": {KEY: [obj]},
        "inference_services": {("ml", "iris"): [SERVICE]},
        "model_versions": {("ml", "iris"): versions or [VERSION_2]},
        "training_runs": runs or {},
    }
    made = DriftPolicyController(Settings(), indexes, client)
    prometheus = Prometheus(value, answers)
    made.prometheus = prometheus  # type: ignore[assignment]
    made.detector = detector or Detector()  # type: ignore[assignment]
    return made, client, prometheus


def test_a_breach_starts_its_training_run_then_writes_status_once(posted: list[tuple[str, str, str]]) -> None:
    made, client, prometheus = controller(policy(), 0.9)

    requeue = asyncio.run(made.objects.reconcile(KEY))

    assert prometheus.queries == [("http://prometheus:9090", 'max(score{service="iris"})')]
    # The policy is read from the API server once, right before the run is made (and not again).
    [read, create, write] = client.calls
    assert read == ("get", "driftpolicies", "iris-drift")
    assert create[0] == "create" and create[1].startswith("iris-drift-")
    assert write == ("patch_status", "iris-drift")
    [status] = client.statuses
    assert status["phase"] == "Retraining" and status["lastTrainingRun"] == create[1]
    assert ("Normal", "RetrainingStarted") in [(t, r) for t, r, _ in posted]
    assert requeue is not None and 0 < requeue <= 60


def test_a_pass_before_the_next_evaluation_queries_nothing() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    evaluated = {"phase": "Watching", "lastResult": "Watching", "observedGeneration": 1,
                 "lastEvaluationTime": now.isoformat().replace("+00:00", "Z")}  # fmt: skip
    made, client, prometheus = controller(policy(evaluated), 0.9)

    requeue = asyncio.run(made.objects.reconcile(KEY))

    assert prometheus.queries == []
    assert not any(call[0] == "create" for call in client.calls)
    assert requeue is not None and 50 < requeue <= 60


def test_the_detector_is_told_the_served_versions_and_an_unreachable_one_is_an_event(
    posted: list[tuple[str, str, str]],
) -> None:
    made, _, _ = controller(policy(detector=True), 0.1)
    asyncio.run(made.objects.reconcile(KEY))
    detector = made.detector
    assert isinstance(detector, Detector)
    assert detector.registered == [
        (
            "ml",
            "iris",
            "iris",
            {"2": {"referenceUri": "file:///m/2/reference.csv", "endpoint": "default"}},
            "target",
        )
    ]

    assert detector.mmd == [False]  # its metric does not read MMD: the detector loads no PyTorch for it

    down, _, _ = controller(policy(detector=True), 0.1, detector=Detector(down=True))
    asyncio.run(down.objects.reconcile(KEY))
    assert ("Warning", "DetectorUnreachable") in [(t, r) for t, r, _ in posted]


def test_a_policy_whose_metric_reads_mmd_asks_the_detector_for_it() -> None:
    obj = policy(detector=True)
    obj["spec"]["metrics"][0]["query"] = 'max(modelloop_drift_verdict{service="{{name}}",detector="mmd"})'
    made, _, _ = controller(obj, 0.1)
    asyncio.run(made.objects.reconcile(KEY))
    assert isinstance(made.detector, Detector) and made.detector.mmd == [True]


def test_the_version_the_retraining_registered_reaches_status() -> None:
    started = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    status = {"phase": "Retraining", "lastTrainingRun": "iris-drift-1", "observedGeneration": 1,
              "lastTriggerTime": started.isoformat().replace("+00:00", "Z")}  # fmt: skip
    run = {
        "metadata": {"namespace": "ml", "name": "iris-drift-1"},
        "status": {"phase": "Succeeded", "modelVersion": "iris-v3"},
    }
    made, client, _ = controller(policy(status), 0.1, runs={("ml", "iris-drift-1"): [run]})

    asyncio.run(made.objects.reconcile(KEY))

    assert client.statuses[-1]["lastModelVersion"] == "iris-v3"


def test_a_training_run_the_api_server_refuses_degrades_the_policy_with_its_message() -> None:
    made, client, _ = controller(policy(), 0.9)
    error = kube.ApiException(403, "Forbidden", '{"message": "trainingruns is forbidden"}')
    asyncio.run(made.objects.report_failure(KEY, error, 1))

    [status] = client.statuses
    assert status["phase"] == "Degraded" and status["reason"] == "ApiRequestRefused"
    assert (
        status["message"]
        == "cannot create the retraining's TrainingRun: 403 Forbidden: trainingruns is forbidden"
    )


def estimated_policy(breach_when: str | None = None) -> dict[str, Any]:
    """The policy with the detector's estimate of accuracy as its metric, and its band."""
    obj = policy()
    selector = '{service="{{name}}",model="{{model}}",version="{{version}}",metric="accuracy"}'
    estimate = {
        "lowerQuery": f"min(modelloop_estimated_performance_lower{selector})",
        "upperQuery": f"min(modelloop_estimated_performance_upper{selector})",
    }
    if breach_when:
        estimate["breachWhen"] = breach_when
    obj["spec"]["metrics"] = [
        {
            "name": "estimated-accuracy",
            "query": f"min(modelloop_estimated_performance{selector})",
            "threshold": 0.85,
            "comparison": "LessThan",
            "estimate": estimate,
        }
    ]
    return obj


def test_an_estimates_band_is_asked_of_the_same_prometheus_with_the_same_substitutions(
    posted: list[tuple[str, str, str]],
) -> None:
    answers: dict[str, float | Exception | None] = {"_lower": 0.64, "_upper": 0.78}
    made, client, prometheus = controller(estimated_policy(), 0.71, answers=answers)

    asyncio.run(made.objects.reconcile(KEY))

    selector = '{service="iris",model="iris",version="2",metric="accuracy"}'
    assert sorted(prometheus.queries) == sorted(
        [
            ("http://prometheus:9090", f"min(modelloop_estimated_performance{selector})"),
            ("http://prometheus:9090", f"min(modelloop_estimated_performance_lower{selector})"),
            ("http://prometheus:9090", f"min(modelloop_estimated_performance_upper{selector})"),
        ]
    )
    [run] = client.created
    evidence = run["spec"]["triggeredBy"]["evidence"]["estimated-accuracy"]
    assert evidence.startswith("0.71 estimated without labels, band [0.64, 0.78] (breach when < 0.85) at ")
    assert evidence.endswith(f"; query: min(modelloop_estimated_performance{selector})")
    assert client.statuses[-1]["evidence"] == {"estimated-accuracy": "0.71"}


def test_a_band_prometheus_cannot_answer_leaves_the_band_out_and_the_estimate_counts() -> None:
    unreachable = PrometheusUnreachable("Prometheus at http://prometheus:9090 did not answer within 5s")
    made, client, _ = controller(estimated_policy(), 0.71, answers={"_lower": unreachable, "_upper": None})

    asyncio.run(made.objects.reconcile(KEY))

    [run] = client.created
    evidence = run["spec"]["triggeredBy"]["evidence"]["estimated-accuracy"]
    assert evidence.startswith("0.71 estimated without labels, band: no data (breach when < 0.85) at ")
    assert client.statuses[-1]["phase"] == "Retraining"


def test_a_band_query_prometheus_refuses_degrades_the_policy_naming_it() -> None:
    refused = PrometheusRefused(
        "Prometheus at http://prometheus:9090 refused the query: bad_data: parse error"
    )
    made, client, _ = controller(estimated_policy(), 0.71, answers={"_upper": refused})

    asyncio.run(made.objects.reconcile(KEY))

    assert not any(call[0] == "create" for call in client.calls)
    [status] = client.statuses
    assert status["phase"] == "Degraded" and status["reason"] == "QueryRefused"
    assert "estimated-accuracy: estimate.upperQuery: Prometheus at" in status["message"]
    assert "parse error" in status["message"]


def test_a_whole_band_estimate_whose_band_has_no_data_is_inconclusive() -> None:
    made, client, _ = controller(estimated_policy("WholeBand"), 0.71, answers={"_upper": None, "_lower": 0.6})

    asyncio.run(made.objects.reconcile(KEY))

    assert not any(call[0] == "create" for call in client.calls)
    assert client.statuses[-1]["phase"] == "Inconclusive"


def test_the_detector_is_told_the_held_out_rows_of_the_served_version() -> None:
    artifact = {**VERSION_2["spec"]["artifact"], "holdoutUri": "file:///m/2/holdout.csv"}
    version = {**VERSION_2, "spec": {**VERSION_2["spec"], "artifact": artifact}}
    made, _, _ = controller(policy(detector=True), 0.1, versions=[version])

    asyncio.run(made.objects.reconcile(KEY))

    assert isinstance(made.detector, Detector)
    [(_, _, _, versions, _)] = made.detector.registered
    assert versions["2"]["holdoutUri"] == "file:///m/2/holdout.csv"


def test_a_breach_the_index_still_shows_but_the_api_server_has_acted_on_starts_no_second_run() -> None:
    """A replica that has just taken over still has, in its index, the policy as it was before it stood
    by: breached for five minutes, past the window. Meanwhile the replica it replaced acted on that
    breach (its run started, the breach cleared). The pass reads the policy again before it creates
    anything, and decides on that copy: the run in flight, no second run."""
    now = datetime.now(UTC).replace(microsecond=0)
    stale = policy(
        {
            "phase": "Breached",
            "lastResult": "Breached",
            "observedGeneration": 1,
            "breachStartTime": iso(now - timedelta(minutes=5)),
        }
    )
    acted = policy(
        {
            "phase": "Retraining",
            "lastResult": "Breached",
            "observedGeneration": 1,
            "lastTrainingRun": "iris-drift-1",
            "lastTriggerTime": iso(now - timedelta(seconds=30)),
            "retrainings": [iso(now - timedelta(seconds=30))],
        }
    )
    acted["metadata"]["resourceVersion"] = "9"
    running = {"metadata": {"namespace": "ml", "name": "iris-drift-1"}, "status": {"phase": "Running"}}
    made, client, _ = controller(stale, 0.9, runs={("ml", "iris-drift-1"): [running]})
    client.objects[("driftpolicies", *KEY)] = acted

    asyncio.run(made.objects.reconcile(KEY))

    assert not client.created, f"a second run was created: {client.created}"
    assert [c for c in client.calls if c[0] == "create"] == []
    # Decided on the fresh copy (a status patch carries what changed from it): the run in flight holds
    # off another, whatever the metric says.
    [status] = client.statuses
    assert status["message"] == (
        "TrainingRun iris-drift-1 is Running; the breach it confirms starts no other retraining"
    )
    assert "phase" not in status and "lastTrainingRun" not in status  # unchanged from the fresh copy


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
