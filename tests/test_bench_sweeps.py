"""The pure helpers of bench/sweeps.py: the runs it creates, what the stand-in kubelet writes, and the
figures it derives (no cluster)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import sweeps

from modelloop.api import SweepStrategy, TrainingRunSpec
from modelloop.training.job import TrialPlan, render_job
from modelloop.training.observe import observe_job, slim_pod


def test_a_sweep_run_is_an_admissible_bayesian_sweep_of_its_trials() -> None:
    run = sweeps.sweep_run(7, trials=100, parallelism=5)
    spec = TrainingRunSpec.model_validate(run["spec"])
    assert spec.sweep is not None
    assert spec.sweep.strategy == SweepStrategy.BAYESIAN
    assert spec.sweep.trial_count() == 100
    assert spec.sweep.parallelism == 5
    assert set(spec.sweep.space) == {"lr", "width", "dropout"}
    assert run["metadata"]["labels"][sweeps.KUBELET_LABEL] == "complete"
    # Parallelism never exceeds the trials (the API refuses that).
    small = TrainingRunSpec.model_validate(sweeps.sweep_run(0, trials=3, parallelism=5)["spec"])
    assert small.sweep is not None and small.sweep.parallelism == 3


def test_a_single_run_is_admissible_and_has_no_sweep() -> None:
    spec = TrainingRunSpec.model_validate(sweeps.single_run(3)["spec"])
    assert spec.sweep is None


def test_the_accuracy_is_deterministic_bounded_and_highest_at_the_optimum() -> None:
    best = sweeps.synthetic_accuracy(sweeps.OPTIMUM)
    assert best == sweeps.synthetic_accuracy(dict(sweeps.OPTIMUM))
    assert abs(best - sweeps.BEST_ACCURACY) <= 0.002
    corners = [
        {"lr": lr, "width": width, "dropout": dropout}
        for lr in (1e-5, 1e-1)
        for width in (16, 512)
        for dropout in (0.0, 0.5)
    ]
    for params in corners:
        value = sweeps.synthetic_accuracy(params)
        assert 0.05 <= value < best - 0.1, params
    # Closer to the optimum scores higher (beyond the noise).
    assert sweeps.synthetic_accuracy({**sweeps.OPTIMUM, "lr": 1e-2}) > sweeps.synthetic_accuracy(
        {**sweeps.OPTIMUM, "lr": 1e-4}
    )


def test_the_operator_reads_the_stand_in_kubelets_report_as_the_trials_result() -> None:
    run = sweeps.sweep_run(1, trials=10, parallelism=2)
    run["metadata"].update(namespace="ns", uid="u-1")
    spec = TrainingRunSpec.model_validate(run["spec"])
    params = {"lr": 0.003, "width": 128, "dropout": 0.2}
    job = render_job(run, spec, "file:///bench", TrialPlan(4, params))
    template = job["spec"]["template"]
    pod = {
        "metadata": {
            "name": "sweep-0001-4-abcde",
            "namespace": "ns",
            "uid": "p-1",
            "labels": {
                **template["metadata"]["labels"],
                "batch.kubernetes.io/job-name": job["metadata"]["name"],
            },
            "annotations": template["metadata"]["annotations"],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "trainer", "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}
            ],
        },
    }
    env = sweeps.trainer_env(pod)
    assert env["MODELLOOP_TRIAL"] == "4"
    accuracy = sweeps.synthetic_accuracy(json.loads(env["MODELLOOP_PARAMS"]))
    assert accuracy == sweeps.synthetic_accuracy(params)

    status = sweeps.terminated_status(pod, sweeps.termination_message(pod["metadata"]["name"], accuracy), "T")
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["startedAt"] == "2026-01-01T00:00:01Z"
    assert terminated["exitCode"] == 0
    finished = {**pod, "status": {**pod["status"], **status}}
    complete = {
        **job,
        "status": {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "T"}]},
    }
    observation = observe_job(complete, [slim_pod(finished)])
    assert observation.result is not None
    assert observation.result.metrics == {"accuracy": accuracy}
    assert observation.result.artifact_uri == f"file:///tmp/a/{pod['metadata']['name']}/model.joblib"
    assert observation.result.framework == "sklearn"


def test_learning_compares_the_random_start_with_the_last_fifth_and_checks_the_best_trial() -> None:
    scores = {
        "a": {i: 0.5 + i / 100 for i in range(20)},  # improves steadily; best is trial 19
        "b": {i: 0.9 - i / 200 for i in range(20)},  # best is trial 0
    }
    figures = sweeps.learning(scores, {"a": 19, "b": 5}, trials=20)
    assert figures["best_accuracy_mean"] == round((0.69 + 0.9) / 2, 4)
    assert figures["best_accuracy_min"] == 0.69
    # Random start: min(10, 20 // 5) = 4 trials; the last fifth: 4 trials.
    assert figures["first_4_mean"] == pytest.approx((0.515 + 0.8925) / 2, abs=1e-4)
    assert figures["last_4_mean"] == pytest.approx((0.675 + 0.8125) / 2, abs=1e-4)
    assert figures["best_trial_mismatches"] == 1  # b reports trial 5, not 0
    assert sweeps.learning({}, {}, trials=20) == {}


def test_operator_work_takes_the_differences_of_the_operators_metrics() -> None:
    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (name, tuple(sorted(labels.items())))

    before = {
        key("modelloop_reconciles_total", kind="TrainingRun", result="success"): 10.0,
        key("modelloop_reconcile_duration_seconds_count", kind="TrainingRun"): 10.0,
        key("modelloop_reconcile_duration_seconds_sum", kind="TrainingRun"): 1.0,
        key("modelloop_api_requests_total", verb="POST", code="201"): 5.0,
        key("modelloop_api_request_duration_seconds_count", verb="POST"): 5.0,
        key("modelloop_api_request_duration_seconds_sum", verb="POST"): 0.5,
    }
    after = {
        **before,
        key("modelloop_reconciles_total", kind="TrainingRun", result="success"): 30.0,
        key("modelloop_reconciles_total", kind="ModelVersion", result="success"): 7.0,
        key("modelloop_reconcile_duration_seconds_count", kind="TrainingRun"): 30.0,
        key("modelloop_reconcile_duration_seconds_sum", kind="TrainingRun"): 3.0,
        key("modelloop_api_requests_total", verb="POST", code="201"): 15.0,
        key("modelloop_api_request_duration_seconds_count", verb="POST"): 15.0,
        key("modelloop_api_request_duration_seconds_sum", verb="POST"): 1.5,
    }
    work = sweeps.operator_work(before, after)
    assert work["reconciles"] == 20
    assert work["reconcile_mean_ms"] == 100.0
    assert work["api_post"] == 10
    assert work["api_post_mean_ms"] == 100.0


def test_median_row_reports_median_min_and_max() -> None:
    rows = [{"seconds": 3.0}, {"seconds": 1.0}, {"seconds": 2.0, "other": "x"}]
    assert sweeps.median_row(rows, ["seconds", "other", "missing"]) == {"seconds": (2.0, 1.0, 3.0)}
