"""DriftPolicy against a real API server, a real operator and a real Prometheus that scrapes the drift
signal every second.

The signal comes from a small exporter whose value each test sets: it stands in for the drift detector
here, where the subject is the policy's logic (window, cooldown, dedupe, budget, inconclusive, refused
queries). The whole loop with the real detector is e2e/test_drift_loop.py.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, condition, free_port, running_operator, wait_for
from e2e.kubelet import HOLD
from e2e.prometheus import Prometheus, running_prometheus

QUERY = 'max(e2e_drift_score{service="{{name}}"})'


class SignalExporter:
    """Serves ``e2e_drift_score{service="iris"} <value>`` at /metrics; no value, no series."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.port = free_port()
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = "# TYPE e2e_drift_score gauge\n"
                if exporter.value is not None:
                    body += f'e2e_drift_score{{service="iris"}} {exporter.value}\n'
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def signal(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[SignalExporter, Prometheus, subprocess.Popen[bytes]]]:
    exporter = SignalExporter()
    exporter.thread.start()
    try:
        with running_prometheus(tmp_path / "prometheus") as prometheus:
            prometheus.set_targets([(exporter.address, {})])
            wait_for(
                lambda: prometheus.targets_up([exporter.address]), timeout=30, what="the exporter scraped"
            )
            env = {"MODELLOOP_PROMETHEUS_URL": prometheus.url}
            with running_operator(cluster, namespace, tmp_path / "operator.log", env=env) as operator:
                yield exporter, prometheus, operator
    finally:
        exporter.server.shutdown()


def drift_policy(
    window: str = "4s", cooldown: str = "1h", query: str = QUERY, max_retrainings: int = 3
) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {"name": "iris-drift"},
        "spec": {
            "target": {"inferenceService": "iris"},
            "metrics": [
                {"name": "feature-drift", "query": query, "threshold": 0.3, "comparison": "GreaterThan"}
            ],
            "window": window,
            "cooldown": cooldown,
            "evaluationInterval": "1s",
            "budget": {"maxRetrainings": max_retrainings, "period": "24h"},
            "retrain": {
                # Held: kwok keeps the training pod Running, so the retraining stays in flight.
                "labels": dict(HOLD),
                "trainingRunTemplate": {
                    "image": "ghcr.io/modelloop/trainer:0.1.0",
                    "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                    "output": {"modelName": "iris"},
                },
            },
        },
    }


def policy_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(cluster.get("driftpolicy", "iris-drift", namespace).get("status") or {})


def wait_phase(
    cluster: Cluster, namespace: str, phase: str, timeout: float = 60, saying: str = "", **fields: Any
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = policy_status(cluster, namespace)
        if (
            status.get("phase") == phase
            and saying in status.get("message", "")
            and all(status.get(k) == v for k, v in fields.items())
        ):
            return status
        return None

    return wait_for(reached, timeout=timeout, what=f"DriftPolicy {phase} {fields}")


def retraining_runs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "trainingruns", namespace=namespace, selector="modelloop.dev/drift-policy=iris-drift"
    )["items"]
    return items


def evaluated_after(cluster: Cluster, namespace: str, moment: str, timeout: float = 60) -> dict[str, Any]:
    """The status once an evaluation later than ``moment`` (an RFC 3339 time) is recorded."""
    limit = _parse(moment)

    def later() -> dict[str, Any] | None:
        status = policy_status(cluster, namespace)
        last = status.get("lastEvaluationTime")
        return status if last and _parse(last) > limit else None

    return wait_for(later, timeout=timeout, what=f"an evaluation after {moment}")


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def _window_end(status: dict[str, Any], seconds: int) -> str:
    start = _parse(status["breachStartTime"]).timestamp() + seconds
    return datetime.fromtimestamp(start).astimezone().isoformat()


def events(cluster: Cluster, namespace: str) -> list[str]:
    return [
        e["reason"]
        for e in cluster.get("events", namespace=namespace)["items"]
        if e["involvedObject"]["name"] == "iris-drift"
    ]


def test_a_breach_held_for_the_window_starts_one_retraining_and_no_other_while_it_is_in_flight(
    cluster: Cluster, namespace: str, signal: Any
) -> None:
    exporter, _, _ = signal
    exporter.value = 0.1
    cluster.apply(drift_policy(), namespace)
    wait_phase(cluster, namespace, "Watching", lastValue="feature-drift=0.1")

    exporter.value = 0.7
    breached = wait_phase(cluster, namespace, "Breached")
    assert breached["breachStartTime"] and "window 4s" in breached["message"]
    status = wait_phase(cluster, namespace, "Retraining", timeout=60)

    runs = retraining_runs(cluster, namespace)
    assert [r["metadata"]["name"] for r in runs] == [status["lastTrainingRun"]]
    trigger = runs[0]["spec"]["triggeredBy"]
    assert (trigger["kind"], trigger["name"]) == ("DriftPolicy", "iris-drift")
    assert trigger["evidence"]["feature-drift"].startswith("0.7 (breach when > 0.3) at ")
    assert 'max(e2e_drift_score{service="iris"})' in trigger["evidence"]["feature-drift"]
    assert trigger["evidence"]["window"] == "4s"
    assert runs[0]["spec"]["image"] == "ghcr.io/modelloop/trainer:0.1.0"
    assert runs[0]["metadata"]["labels"]["sim.modelloop.dev/outcome"] == "Hold", "the policy's labels"
    assert status["retrainingsInPeriod"] == 1

    # The run cannot train here (no kubelet runs its pod): it stays in flight, and the drift goes on.
    # A second breach confirmed meanwhile starts nothing.
    again = wait_for(
        lambda: (
            (s := policy_status(cluster, namespace)).get("reason") == "RetrainingInFlight"
            and "starts no other retraining" in s.get("message", "")
            and s
        ),
        timeout=60,
        what="a second breach confirmed while the retraining is in flight",
    )
    assert again["phase"] == "Retraining"
    assert len(retraining_runs(cluster, namespace)) == 1
    # The skip is an event of the pass that evaluates: the status above can come from a pass the window's
    # end woke, which evaluates nothing, a moment before it; and kopf posts events after the status write.
    wait_for(
        lambda: {"RetrainingStarted", "RetrainingSkipped"} <= set(events(cluster, namespace)),
        timeout=30,
        what="the events RetrainingStarted and RetrainingSkipped",
    )
    assert len(retraining_runs(cluster, namespace)) == 1


def test_a_breach_that_does_not_hold_for_the_window_starts_nothing(
    cluster: Cluster, namespace: str, signal: Any
) -> None:
    exporter, _, _ = signal
    exporter.value = 0.7
    cluster.apply(drift_policy(window="8s"), namespace)
    breached = wait_phase(cluster, namespace, "Breached")
    exporter.value = 0.1
    wait_phase(cluster, namespace, "Watching", lastValue="feature-drift=0.1")
    exporter.value = 0.7
    # Evaluations go on past the end of the first breach's window: it was broken, so nothing starts.
    status = evaluated_after(cluster, namespace, _window_end(breached, 8))
    assert status["breachStartTime"] != breached["breachStartTime"]
    assert retraining_runs(cluster, namespace) == []


def test_a_second_breach_inside_the_cooldown_starts_nothing_and_the_budget_caps_retrainings(
    cluster: Cluster, namespace: str, signal: Any
) -> None:
    exporter, _, _ = signal
    exporter.value = 0.7
    cluster.apply(drift_policy(window="2s", cooldown="1h"), namespace)
    first = wait_phase(cluster, namespace, "Retraining")
    # The retraining is over (its run deleted, as a failed one would be): the drift goes on, but the
    # cooldown holds.
    cluster.kubectl("delete", "trainingrun", first["lastTrainingRun"], "-n", namespace)
    # First the cooldown after the retraining; then, once the new breach held its window, that breach.
    cooling = wait_phase(cluster, namespace, "CoolingDown", saying="Drift confirmed, but the cooldown")
    assert cooling["reason"] == "Cooldown" and cooling["lastTrainingRun"] == first["lastTrainingRun"]
    assert retraining_runs(cluster, namespace) == []

    # With the cooldown over at once, the budget of one retraining a day still holds.
    cluster.apply(drift_policy(window="2s", cooldown="1s", max_retrainings=1), namespace)
    capped = wait_phase(cluster, namespace, "Breached", reason="BudgetExhausted")
    assert "spend the budget of 1" in capped["message"]
    assert retraining_runs(cluster, namespace) == []


def test_without_prometheus_the_policy_is_inconclusive_and_starts_nothing(
    cluster: Cluster, namespace: str, signal: Any
) -> None:
    exporter, prometheus, _ = signal
    exporter.value = 0.7
    cluster.apply(drift_policy(window="3s"), namespace)
    wait_phase(cluster, namespace, "Breached")
    prometheus.stop()
    try:
        down = wait_phase(cluster, namespace, "Inconclusive")
        assert "unreachable" in down["message"] and "never taken for a breach" in down["message"]
        ready = condition(cluster.get("driftpolicy", "iris-drift", namespace), "Ready")
        assert ready is not None and ready["status"] == "Unknown"
        later = evaluated_after(cluster, namespace, down["lastEvaluationTime"])
        evaluated_after(cluster, namespace, later["lastEvaluationTime"])
        evaluated_after(cluster, namespace, _shift(later["lastEvaluationTime"], 4))
        assert retraining_runs(cluster, namespace) == []
        assert policy_status(cluster, namespace)["phase"] == "Inconclusive"
    finally:
        prometheus.start()
    # Back, the breach must hold a whole window again before anything starts.
    wait_phase(cluster, namespace, "Retraining")


def test_a_query_prometheus_refuses_makes_the_policy_degraded_with_prometheus_message(
    cluster: Cluster, namespace: str, signal: Any
) -> None:
    cluster.apply(drift_policy(query="$(rm -rf /)"), namespace)
    status = wait_phase(cluster, namespace, "Degraded", reason="QueryRefused")
    assert "refused the query: bad_data" in status["message"]
    assert "parse error" in status["message"], "Prometheus's own message"
    ready = condition(cluster.get("driftpolicy", "iris-drift", namespace), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "QueryRefused")
    # kopf posts the event after the status write: waited for, not read once.
    wait_for(lambda: "QueryRefused" in events(cluster, namespace), timeout=30, what="a QueryRefused event")
    assert retraining_runs(cluster, namespace) == []


def _shift(moment: str, seconds: int) -> str:
    return datetime.fromtimestamp(_parse(moment).timestamp() + seconds).astimezone().isoformat()
