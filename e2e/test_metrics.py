"""The operator's metrics, scraped from `modelloop run --metrics` while it reconciles real objects."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import Cluster, free_port, running_operator, wait_for
from e2e.test_peering import drift_policy, reported
from e2e.test_trainingrun import phase_is, training_run


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_reconciles_and_api_calls_the_operator_made(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    with running_operator(
        cluster, namespace, tmp_path / "operator.log", extra_args=["--metrics", f"127.0.0.1:{port}"]
    ):
        cluster.apply(training_run("scraped", tmp_path), namespace)
        cluster.apply(drift_policy("scraped"), namespace)
        wait_for(lambda: phase_is(cluster, "scraped", namespace, "Running"), timeout=60, what="Running")
        wait_for(lambda: reported(cluster, "scraped", namespace), timeout=60, what="the policy's status")

        # The object-state gauges read the indexes at scrape time: the run shows up once it is Running.
        seen = wait_for(
            lambda: (
                got
                if (got := scrape(port)).get(
                    ("modelloop_objects", (("kind", "TrainingRun"), ("phase", "Running")))
                )
                else None
            ),
            timeout=30,
            what="the Running TrainingRun in modelloop_objects",
        )

    def value(name: str, **labels: str) -> float:
        return seen.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("modelloop_reconciles_total", kind="TrainingRun", result="success") >= 2
    assert value("modelloop_reconciles_total", kind="DriftPolicy", result="success") >= 1
    assert value("modelloop_reconcile_duration_seconds_count", kind="TrainingRun") >= 2
    assert value("modelloop_api_requests_total", verb="POST", code="201") >= 1  # the Job
    assert value("modelloop_api_requests_total", verb="PATCH", code="200") >= 2  # statuses
    assert ("modelloop_queue_depth", (("kind", "TrainingRun"),)) in seen
    assert value("modelloop_objects", kind="DriftPolicy", phase="Inconclusive") == 1
    assert value("modelloop_training_run_oldest_pending_seconds") == 0  # none is Pending any more
    assert ("modelloop_rollout_oldest_step_seconds", ()) in seen
