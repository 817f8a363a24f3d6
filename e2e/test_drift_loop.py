"""The whole loop, end to end, with no step done by the test: the input shifts and labels show accuracy
falling; the detector reports drift, the DriftPolicy confirms it over its window, a TrainingRun trains on
data that includes the shift, the new version is validated against the champion on the same data, and the
InferenceService rolls it out step by step under analysis and promotes it. The test only plays the
kubelet (e2e/loop.py says what runs for real) and sends the traffic and the ground truth.

The loop closes on each serving backend: KServe (its agent logs the payloads) and Seldon Core v1 (the
stand-in for Seldon's executor logs them, as the executor does; e2e/seldon.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, wait_for
from e2e.loop import (
    BACKENDS,
    LOOP_TEST_SECONDS,
    POLICY,
    SERVICE,
    drift_loop,
    drift_policy,
    retraining_runs,
    run_the_loop,
    runtimes_installed,
    serve_the_first_model,
    status_of,
    wait_status,
    wait_watching,
)
from e2e.seldon import SeldonStandIn
from e2e.test_monitoring import (
    CHECKED_BY_THE_LOOP,
    GRAFANA_VALUES,
    OPERATOR_JOB,
    dashboard,
    has_a_number,
    instantiate,
)

pytestmark = pytest.mark.skipif(
    not runtimes_installed(),
    reason="the trainer, model server and detector runtimes are not installed (make setup)",
)


def lineage(cluster: Cluster, version: str, namespace: str) -> str:
    modelloop = Path(sys.executable).with_name("modelloop")
    result = subprocess.run(
        [str(modelloop), "lineage", version, "-n", namespace],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.timeout(LOOP_TEST_SECONDS)
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            backend,
            id=backend,
            marks=pytest.mark.skipif(
                not runtimes_installed(backend), reason=f"the {backend} model server runtime is not installed"
            ),
        )
        for backend in BACKENDS
    ],
)
def test_drift_retrains_validates_on_the_same_data_and_promotes_the_new_model_with_no_human(
    cluster: Cluster, namespace: str, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # KServe's controller (a session fixture) is started for the KServe loop only.
    kserve = request.getfixturevalue("kserve") if backend == "kserve" else None
    with drift_loop(cluster, namespace, tmp_path, kserve, backend=backend) as loop:
        serve_the_first_model(loop)
        cluster.apply(drift_policy(loop), namespace)
        with loop.traffic() as (traffic, load):
            watching = wait_watching(cluster, namespace)
            assert watching["evidence"]["input-drift"] == "0"
            timings = run_the_loop(loop, traffic)
            assert all(code == 200 for (_, code) in load.responses()), load.responses()

        # The dashboard's drift and retraining panels had data while the new version was the challenger:
        # the detector's verdicts and the feedback accuracy of the champion it replaced, and the retraining
        # the policy started, as Prometheus scraped them. (Asked at that moment: the old champion's series
        # end with its promotion, and on KServe the new one is served without the payload logger here, see
        # ServingKubelet: one KServe agent per host.) The panels read the detector's and the operator's
        # series only, which are the same on either backend.
        history = status_of(cluster, "modelversion", "iris-v2", namespace)["history"]
        challenger_since = next(entry["time"] for entry in history if entry["stage"] == "Challenger")
        values = GRAFANA_VALUES | {"job": OPERATOR_JOB, "namespace": namespace}
        for panel in dashboard()["panels"]:
            if panel["title"] not in CHECKED_BY_THE_LOOP:
                continue
            for target in panel["targets"]:
                query = instantiate(target["expr"], values)
                series = loop.prometheus.query_series(query, at=challenger_since)
                assert has_a_number(series), f"no data for the panel {panel['title']!r}: {query}"
        state = loop.detector.state(namespace)
        logged = loop.serving.executor_counts() if isinstance(loop.serving, SeldonStandIn) else {}
        print(f"{backend} timings:", json.dumps(timings), "\ndetector:", json.dumps(state)[:2000])
        if backend == "seldon":
            # The champion's executor logged to the detector, and the detector took every event.
            print("executor events:", logged)
            assert logged[f"{SERVICE}-v2"]["sent"] > 0, logged
            assert all(counts["failed"] == counts["dropped"] == 0 for counts in logged.values()), logged

    # The retraining: one run, started by the policy with its evidence and the detector's recent data.
    runs = retraining_runs(cluster, namespace)
    assert len(runs) == 1
    run = runs[0]
    trigger = run["spec"]["triggeredBy"]
    assert (trigger["kind"], trigger["name"]) == ("DriftPolicy", POLICY)
    assert set(trigger["evidence"]) >= {"breachStart", "confirmedAt", "window", "recentData"}
    assert any(key in trigger["evidence"] for key in ("input-drift", "accuracy"))
    recent = run["spec"]["dataset"]["additional"]
    assert len(recent) == 1 and recent[0]["hash"].startswith("sha256:")
    recent_file = Path(recent[0]["uri"].removeprefix("file://"))
    assert recent_file.exists()
    shifted_rows = [line for line in recent_file.read_text().splitlines()[1:] if line]
    assert len(shifted_rows) >= 50, "the run learnt from the data that drifted"
    run_status = status_of(cluster, "trainingrun", run["metadata"]["name"], namespace)
    assert run_status["champion"] == "iris-v1", "the trainer evaluated the champion"

    # Validated against the champion on the same held-out rows, and better there.
    version = cluster.get("modelversion", "iris-v2", namespace)
    evaluation = version["spec"]["championEvaluation"]
    assert evaluation["version"] == "iris-v1"
    assert version["spec"]["metrics"]["accuracy"] > evaluation["metrics"]["accuracy"]
    champion_check = next(c for c in version["status"]["checks"] if c["name"] == "champion/accuracy")
    assert champion_check["passed"] and champion_check.get("sameData") is True
    assert "on the same held-out data" in champion_check["message"]

    # Promoted: the new champion serves; the old one is archived.
    service = status_of(cluster, "inferenceservices.modelloop.dev", SERVICE, namespace)
    assert (service["phase"], service["stableVersion"]) == ("Promoted", 2)
    assert status_of(cluster, "modelversion", "iris-v2", namespace)["stage"] == "Champion"
    assert status_of(cluster, "modelversion", "iris-v1", namespace)["stage"] == "Archived"

    # `modelloop lineage` of the new champion names the DriftPolicy and its evidence.
    text = lineage(cluster, "iris-v2", namespace)
    assert f"← triggered by DriftPolicy {POLICY}" in text
    assert "breachStart=" in text and "recentData=" in text
    assert "← TrainingRun " + run["metadata"]["name"] in text


@pytest.mark.timeout(LOOP_TEST_SECONDS)
def test_a_retrained_model_worse_than_the_champion_on_the_same_data_is_rejected_and_never_served(
    cluster: Cluster, namespace: str, kserve: Any, tmp_path: Path
) -> None:
    with drift_loop(cluster, namespace, tmp_path, kserve) as loop:
        serve_the_first_model(loop)
        # A retraining that learns less: a one-split tree on the old data only.
        policy = drift_policy(loop, recent_data=False, estimator="DecisionTreeClassifier", max_depth=1)
        cluster.apply(policy, namespace)
        with loop.traffic() as (traffic, load):
            wait_watching(cluster, namespace)
            traffic.shifted = True
            runs = wait_for(lambda: retraining_runs(cluster, namespace), timeout=180, what="the retraining")
            done = wait_status(
                cluster, "trainingrun", runs[0]["metadata"]["name"], namespace, timeout=300, phase="Succeeded"
            )
            rejected = wait_status(cluster, "modelversion", done["modelVersion"], namespace, phase="Rejected")
            assert "worse than champion iris-v1" in rejected["message"]
            assert "on the same held-out data" in rejected["message"]
            # The policy's retraining is over; the cooldown holds the next one back.
            wait_status(cluster, "driftpolicy", POLICY, namespace, timeout=60, phase="CoolingDown")
            service = status_of(cluster, "inferenceservices.modelloop.dev", SERVICE, namespace)
            assert service["stableVersion"] == 1 and service.get("canaryVersion") is None
            assert load.sent_to(lambda pod, _: "-v2-" in pod) == 0, "the rejected version served no request"
        assert len(retraining_runs(cluster, namespace)) == 1
