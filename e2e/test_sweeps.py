"""Sweeps that learn, end to end: a Bayesian search over a range, trials trained for real by the trainer
(run by the stand-in kubelet with each pod's own command and environment), their progress read from the
pods' logs through the API server, hopeless trials stopped early, a SIGKILL of the operator mid-sweep, and
the largest sweep the API admits keeping its status under etcd's limit."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, KubectlError, running_operator, wait_for, wait_for_event
from e2e.kubelet import HOLD, TRAINER_BIN, Execution, run_pod
from modelloop.cli.render import render_trials
from modelloop.naming import ANNOTATION_TRIAL_PARAMS

pytestmark = pytest.mark.skipif(
    not (TRAINER_BIN / "modelloop-train").exists(),
    reason="the trainer runtime is not installed (make trainer-venv)",
)
FAST_PROGRESS = {"MODELLOOP_TRIAL_PROGRESS_SECONDS": "1"}


class Kubelet:
    """The stand-in kubelet for held pods, in the background: each pod's program runs in its own thread as
    soon as kwok starts the pod, and is killed when the pod is deleted (a trial stopped early)."""

    def __init__(self, cluster: Cluster, namespace: str, workdir: Path) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kubelet")
        self.runs: dict[str, tuple[threading.Event, Future[Execution]]] = {}
        self.jobs_seen: dict[str, set[str]] = {}  # Job name: the uids it has had
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._done.wait(0.5):
            try:
                self.sync()
            except Exception as error:  # the API server may be busy for a moment; the next sync tries again
                print(f"kubelet: {error}")

    def sync(self) -> None:
        pods = self.cluster.get("pods", namespace=self.namespace)["items"]
        present = {p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}
        for pod in pods:
            uid = pod["metadata"]["uid"]
            held = (pod["metadata"].get("labels") or {}).get("sim.modelloop.dev/outcome") == HOLD[
                "sim.modelloop.dev/outcome"
            ]
            if held and uid not in self.runs and (pod.get("status") or {}).get("phase") == "Running":
                stop = threading.Event()
                self.runs[uid] = (stop, self.pool.submit(self._run, pod, stop))
        for uid, (stop, _) in self.runs.items():
            if uid not in present:
                stop.set()
        for job in self.cluster.get("jobs", namespace=self.namespace)["items"]:
            self.jobs_seen.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])

    def _run(self, pod: dict[str, Any], stop: threading.Event) -> Execution:
        try:
            return run_pod(self.cluster, pod, self.workdir, 300, stop)
        except KubectlError as error:
            # The pod was deleted (a trial stopped early) just as its program ended, before this stand-in's
            # next sync saw it go: nothing to report it to, as a kubelet would find.
            if not stop.is_set() and "NotFound" not in str(error):
                raise
            return Execution(pod["metadata"]["name"], -9, "", "")

    def executions(self) -> list[Execution]:
        return [future.result() for _, future in self.runs.values() if future.done()]

    @contextmanager
    def running(self) -> Iterator[Kubelet]:
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join()
            for stop, _ in self.runs.values():
                stop.set()
            self.pool.shutdown(wait=True)


def sweep_run(name: str, artifacts: Path, **sweep: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "labels": dict(HOLD)},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "TorchMLP", "epochs": 40, "seed": 1, "batch_size": 256},
            "dataset": {"uri": "sklearn://digits", "format": "sklearn", "targetColumn": "target"},
            "backoffLimit": 0,
            "output": {"modelName": "digits", "artifactUriPrefix": f"file://{artifacts}"},
            "sweep": sweep,
        },
    }


def status_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    return cluster.get("trainingrun", name, namespace).get("status") or {}


def test_a_bayesian_sweep_stops_hopeless_trials_registers_the_best_and_survives_a_kill(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    trials = 8
    run = sweep_run(
        "search",
        tmp_path,
        strategy="Bayesian",
        maxTrials=trials,
        parallelism=2,
        space={"lr": {"type": "float", "min": 1e-7, "max": 0.05, "log": True}},
        objective={"metric": "accuracy", "direction": "Maximize"},
        earlyStopping={"rule": "Median", "startStep": 4, "minTrials": 2},
    )
    kubelet = Kubelet(cluster, namespace, tmp_path)
    with kubelet.running():
        with running_operator(cluster, namespace, tmp_path / "first.log", env=FAST_PROGRESS) as first:
            cluster.apply(run, namespace)
            # Killed while trials train: the third trial has started, the sweep is far from done.
            wait_for(
                lambda: (status_of(cluster, "search", namespace).get("trialsStarted") or 0) >= 3,
                timeout=240,
                what="the third trial to start",
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
        with running_operator(cluster, namespace, tmp_path / "second.log", env=FAST_PROGRESS):
            status = wait_for(
                lambda: (
                    (s := status_of(cluster, "search", namespace)).get("phase") in ("Succeeded", "Failed")
                    and s.get("modelVersion")
                    and s
                ),
                timeout=420,
                interval=1,
                what="the sweep to finish and register",
            )

    print(render_trials(cluster.get("trainingrun", "search", namespace)))  # what `modelloop trials` shows
    assert status["phase"] == "Succeeded", status
    assert status["trialsStarted"] == trials
    recorded = status["trials"]
    assert [t["index"] for t in recorded] == list(range(trials))
    # No duplicate trial: one Job per trial index, never created twice (a new uid would be a second Job).
    assert len(kubelet.jobs_seen) == trials
    assert all(len(uids) == 1 for uids in kubelet.jobs_seen.values()), kubelet.jobs_seen
    ran = kubelet.executions()
    assert len(ran) == trials
    # Each trial ran with the parameters it records, which are those its Job was created with.
    jobs = {j["metadata"]["name"]: j for j in cluster.get("jobs", namespace=namespace)["items"]}
    for trial in recorded:
        assert 1e-7 <= trial["params"]["lr"] <= 0.05
        if trial["jobName"] in jobs:
            assert (
                json.loads(jobs[trial["jobName"]]["metadata"]["annotations"][ANNOTATION_TRIAL_PARAMS])
                == (trial["params"])
            )

    pruned = [t for t in recorded if t["phase"] == "Pruned"]
    assert pruned, [(t["index"], t["phase"], t.get("curve", {}).get("values", [])[-3:]) for t in recorded]
    for trial in pruned:
        stop = trial["pruning"]
        assert stop["rule"] == "Median" and stop["step"] >= 4
        assert stop["value"] < stop["threshold"]
        # Its curve shows why: by the step it was stopped, it never reached the median.
        steps = trial["curve"]["steps"]
        assert (
            max(v for s, v in zip(steps, trial["curve"]["values"], strict=True) if s <= stop["step"])
            < (stop["threshold"])
        )
        assert not any(
            j["metadata"]["name"] == trial["jobName"]
            for j in cluster.get("jobs", namespace=namespace)["items"]
        ), "a stopped trial's Job is deleted"
    wait_for_event(
        cluster,
        namespace,
        lambda e: e["reason"] == "TrialPruned" and "worse than the median" in e["message"],
        what="a TrialPruned event",
    )

    succeeded = [t for t in recorded if t["phase"] == "Succeeded"]
    best = max(succeeded, key=lambda t: (t["metrics"]["accuracy"], -t["index"]))
    assert status["bestTrial"] == best["index"]
    version = cluster.get("modelversion", status["modelVersion"], namespace)
    assert version["spec"]["lineage"]["params"]["lr"] == best["params"]["lr"]
    assert version["spec"]["metrics"]["accuracy"] == best["metrics"]["accuracy"]
    # Every completed trial's curve was read from its log while it ran or when it ended.
    assert all(t.get("curve") for t in succeeded)
    # Once status records a finished trial, its Job goes (the operator keeps no trial it is done with in
    # memory); the best trial's stays, as the ModelVersion's lineage names it.
    wait_for(
        lambda: (
            [j["metadata"]["name"] for j in cluster.get("jobs", namespace=namespace)["items"]]
            == [best["jobName"]]
        ),
        timeout=60,
        what="only the best trial's Job to be left",
    )


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("operator")
def test_the_largest_sweep_the_api_admits_keeps_its_status_under_etcds_limit(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """1,000 trials of 16 parameters whose values are the longest strings admitted: recorded whole they
    would need ~2.5 MB of status, with a hundred of them running at once. The operator keeps the newest
    within its budget, counts the rest, and every status write succeeds to the end. Trials are not held:
    kwok ends each pod a moment after it starts."""
    values = {f"p{i:02d}": [f"{i:02d}-{k:02d}-" + "x" * 122 for k in range(100)] for i in range(16)}
    run = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "largest"},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "output": {"modelName": "iris"},
            "sweep": {
                "strategy": "Random",
                "maxTrials": 1000,
                "parallelism": 100,
                "parameters": values,
                "objective": {"metric": "accuracy"},
                # The worst case for the operator's memory too: it follows every trial's Job to the end.
                "retainTrialJobs": True,
            },
        },
    }
    cluster.apply(run, namespace)

    status = wait_for(
        lambda: (s := status_of(cluster, "largest", namespace)).get("phase") in ("Succeeded", "Failed") and s,
        timeout=480,
        interval=2,
        what="all 1,000 trials to finish",
    )

    assert status["trialsStarted"] == 1000
    assert status["trialsDropped"] > 0
    assert len(status["trials"]) + status["trialsDropped"] == 1000
    assert len(json.dumps(status)) < 1024 * 1024
    # No trial reported a result (kwok runs nothing): the run says so, it does not hang.
    assert status["reason"] == "NoSuccessfulTrial"
    jobs = cluster.get("jobs", namespace=namespace)["items"]
    assert len(jobs) == 1000
    annotations = [json.loads(j["metadata"]["annotations"][ANNOTATION_TRIAL_PARAMS]) for j in jobs]
    assert len({tuple(sorted(a.items())) for a in annotations}) == 1000, "every trial a distinct combination"
