"""InferenceService rollouts end to end, on the local control plane with every real part that runs here:

- KServe's own controller (built from its Go module) reconciles the KServe InferenceService the operator
  writes into Deployments and Services (Standard mode), and its webhook adds the storage initializer;
- the stand-in kubelet (e2e/serving.py) runs modelloop's real model server from exactly the pod spec
  KServe produced, serving models the real trainer produced on real data;
- a stand-in gateway (e2e/traffic.py) sends real requests, split by the weights of the HTTPRoute the
  operator owns (no gateway data plane runs here);
- a real Prometheus scrapes the servers, and the rollout's analysis queries it.

In Knative mode, Knative Serving's controller cannot run here: a stand-in (e2e/knative.py) sets the
Knative Services' status from their spec as Knative would; KServe's controller reads it back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from e2e.harness import ROOT, BackgroundLoop, Cluster, KubectlError, running_operator, wait_for
from e2e.kubelet import TRAINER_BIN
from e2e.models import Trained, model_version
from e2e.prometheus import Prometheus, running_prometheus
from e2e.serving import SERVER_BIN, ServingKubelet
from e2e.traffic import LoadGenerator, httproute_weights

pytestmark = pytest.mark.skipif(
    not (TRAINER_BIN / "modelloop-train").exists() or not (SERVER_BIN / "modelloop-serve").exists(),
    reason="the trainer and model server runtimes are not installed (make trainer-venv server-venv)",
)

RUNTIME = ROOT / "runtimes" / "server" / "clusterservingruntime.yaml"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
SELECT = 'namespace="{{namespace}}",version="{{version}}"'
ERROR_RATE = (
    f'sum(rate(modelloop_server_requests_total{{{SELECT},code=~"4..|5.."}}[20s]) or vector(0))'
    f" / sum(rate(modelloop_server_requests_total{{{SELECT}}}[20s]))"
)
KSERVE = "inferenceservices.serving.kserve.io"
V = TypeVar("V")


def inference_service(name: str, mode: str, rollout: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "iris"},
            "kserve": {"deploymentMode": mode},
            "predictor": {"minReplicas": 1, "resources": {"cpu": "100m", "memory": "256Mi"}},
            "rollout": rollout,
            **spec,
        },
    }


def analysed(step_interval: str = "6s", **analysis: Any) -> dict[str, Any]:
    return {
        "steps": [25, 50, 100],
        "stepInterval": step_interval,
        "analysis": {
            "interval": "3s",
            "failureLimit": 0,
            "inconclusiveLimit": 100,
            "metrics": [{"name": "error-rate", "query": ERROR_RATE, "max": 0.05}],
            **analysis,
        },
    }


def deployment_exists(cluster: Cluster, namespace: str, name: str) -> bool:
    found = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "name", check=False)
    return found.returncode == 0


def status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    return cluster.get("inferenceservices.modelloop.dev", name, namespace).get("status") or {}


def wait_status(
    cluster: Cluster, name: str, namespace: str, timeout: float = 120, **expected: Any
) -> dict[str, Any]:
    """Wait until the InferenceService's status has every ``expected`` value; fail with the last status."""
    last: list[dict[str, Any]] = [{}]

    def matches() -> dict[str, Any] | None:
        last[0] = status(cluster, name, namespace)
        return last[0] if all(last[0].get(k) == v for k, v in expected.items()) else None

    try:
        return wait_for(
            matches, timeout=timeout, interval=0.5, what=f"InferenceService {name} with {expected}"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\nlast status: {json.dumps(last[0], indent=1)}") from None


def stage(cluster: Cluster, version: str, namespace: str) -> str | None:
    return (cluster.get("modelversions.modelloop.dev", version, namespace).get("status") or {}).get("stage")


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.get("events", namespace=namespace)["items"]
    return [
        e
        for e in listed
        if e["involvedObject"].get("name") == name and e["involvedObject"]["kind"] == "InferenceService"
    ]


class ChangeRecorder(BackgroundLoop, Generic[V]):
    """Calls ``read`` every ``interval`` seconds while a test runs and records each value that differs from
    the last one recorded (a read that fails records nothing). Once stopped, it reads once more (again
    until a read succeeds): a change made before the stop is recorded even when it fell between two polls,
    as the promotion's apply does before the status a test waits on."""

    def __init__(self, name: str, read: Callable[[], V], interval: float) -> None:
        super().__init__(name)
        self._read, self._interval = read, interval
        self.seen: list[V] = []

    def _loop(self) -> None:
        while True:
            last = self._stopping.is_set()
            try:
                value = self._read()
            except KubectlError:
                time.sleep(self._interval)
                continue
            if not self.seen or self.seen[-1] != value:
                self.seen.append(value)
            if last:
                return
            self._stopping.wait(self._interval)


def route_recorder(cluster: Cluster, namespace: str, name: str) -> ChangeRecorder[dict[str, int]]:
    """Records every distinct set of the HTTPRoute's weights while a test runs (polled every 0.5 s)."""

    def weights() -> dict[str, int]:
        route = cluster.get("httproutes", name, namespace)
        return {ref["name"]: int(ref.get("weight", 1)) for ref in route["spec"]["rules"][0]["backendRefs"]}

    return ChangeRecorder("route-recorder", weights, 0.5)


@pytest.fixture
def serving(
    cluster: Cluster, namespace: str, kserve: Any, tmp_path: Path
) -> Iterator[tuple[Prometheus, ServingKubelet, subprocess.Popen[bytes]]]:
    """Prometheus, the stand-in kubelet for model-server pods, and the operator (Standard mode by
    default, analysis against that Prometheus)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RUNTIME))
    with running_prometheus(tmp_path / "prometheus") as prometheus:
        kubelet = ServingKubelet(cluster, namespace, tmp_path / "pods", prometheus)
        with kubelet:
            env = {"MODELLOOP_PROMETHEUS_URL": prometheus.url, "MODELLOOP_KSERVE_MODE": "Standard"}
            with running_operator(cluster, namespace, tmp_path / "operator.log", env=env) as operator:
                yield prometheus, kubelet, operator


def test_a_healthy_challenger_is_promoted_step_by_step_and_an_unhealthy_one_is_rolled_back(
    cluster: Cluster, namespace: str, serving: Any, trained: dict[str, Trained]
) -> None:
    _, kubelet, _ = serving
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    rollout = {**analysed(), "scaleDownDelay": "8s"}
    cluster.apply(inference_service("iris", "Standard", rollout), namespace)
    first = wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    assert first["deploymentMode"] == "Standard"
    # KServe's controller made the stable predictor's Deployment; the stand-in kubelet serves it.
    kubelet.wait_serving(1)
    assert stage(cluster, "iris-v1", namespace) == "Champion"

    route = httproute_weights(cluster, namespace, "iris-traffic")
    with (
        LoadGenerator(kubelet, route, rate_per_s=25, payload=IRIS_ROW) as load,
        route_recorder(cluster, namespace, "iris-traffic") as recorder,
    ):
        # A newly validated version starts a rollout by itself: the service follows the model.
        cluster.apply(model_version(2, trained["iris-b"]), namespace)
        canary = wait_status(cluster, "iris", namespace, canaryVersion=2, timeout=60)
        assert canary["stableVersion"] == 1
        wait_for(
            lambda: stage(cluster, "iris-v2", namespace) == "Challenger", timeout=30, what="v2 Challenger"
        )
        promoted = wait_status(
            cluster, "iris", namespace, phase="Promoted", stableVersion=2, retiringVersion=1, timeout=180
        )
        assert promoted.get("canaryVersion") is None
        # The old version keeps its Deployment, without traffic, for the scale-down delay: KServe's controller
        # moved the stable predictor onto the canary's Deployment and kept version 1's in the canary slot.
        assert deployment_exists(cluster, namespace, "iris-v1-predictor")
        assert deployment_exists(cluster, namespace, "iris-v2-predictor")
        wait_for(
            lambda: recorder.seen[-1] == {"iris-v2-predictor": 100}, timeout=30, what="the route to v2 alone"
        )
        assert deployment_exists(cluster, namespace, "iris-v1-predictor")
        # Then it goes.
        wait_status(cluster, "iris", namespace, phase="Promoted", retiringVersion=None, timeout=60)
        wait_for(
            lambda: not deployment_exists(cluster, namespace, "iris-v1-predictor"),
            timeout=60,
            what="KServe deletes version 1's Deployment",
        )
        assert deployment_exists(cluster, namespace, "iris-v2-predictor")
        wait_for(lambda: stage(cluster, "iris-v2", namespace) == "Champion", timeout=30, what="v2 Champion")
        assert stage(cluster, "iris-v1", namespace) == "Archived"
        history = [
            h["stage"]
            for h in cluster.get("modelversions.modelloop.dev", "iris-v2", namespace)["status"]["history"]
        ]
        assert history[-2:] == ["Challenger", "Champion"]
        # The canary got real traffic, step by step, the weights always summing to 100; and it answered.
        canary_weights = [w.get("iris-v2-predictor", 0) for w in recorder.seen]
        assert [w for w in canary_weights if w][:2] == [25, 50]
        assert all(sum(w.values()) == 100 for w in recorder.seen), recorder.seen
        assert load.sent_to(lambda pod, labels: "-v2-" in pod) > 0
        assert all(code == 200 for (pod, code) in load.responses() if "-v2-" in pod), load.responses()

        # A version that cannot answer the requests it gets fails its error-rate analysis.
        cluster.apply(model_version(3, trained["wine"]), namespace)
        wait_status(cluster, "iris", namespace, canaryVersion=3, timeout=60)
        rolled_back = wait_status(cluster, "iris", namespace, phase="RolledBack", timeout=180)
        assert rolled_back["stableVersion"] == 2 and rolled_back["rolledBackVersion"] == 3
        assert "error-rate" in rolled_back["message"] and "above its max 0.05" in rolled_back["message"]
        assert "modelloop_server_requests_total" in rolled_back["message"]
        retired = wait_status(cluster, "iris", namespace, phase="RolledBack", canaryVersion=None, timeout=60)
        assert retired["stableVersion"] == 2
    assert any(
        e["reason"] == "RolledBack" and "error-rate" in e["message"]
        for e in events(cluster, namespace, "iris")
    )
    wait_for(
        lambda: stage(cluster, "iris-v3", namespace) == "Candidate", timeout=30, what="v3 back to Candidate"
    )
    assert stage(cluster, "iris-v2", namespace) == "Champion"
    # The rolled-back version is not rolled out again by itself; the route serves the champion alone.
    final = httproute_weights(cluster, namespace, "iris-traffic")()
    assert {backend.name: weight for backend, weight in final.items()} == {"iris-v2-predictor": 100}


def test_without_prometheus_the_step_holds_and_goes_on_once_it_is_back(
    cluster: Cluster, namespace: str, serving: Any, trained: dict[str, Trained]
) -> None:
    prometheus, kubelet, _ = serving
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    cluster.apply(inference_service("iris", "Standard", analysed(step_interval="8s")), namespace)
    wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    kubelet.wait_serving(1)
    route = httproute_weights(cluster, namespace, "iris-traffic")
    with LoadGenerator(kubelet, route, rate_per_s=25, payload=IRIS_ROW):
        cluster.apply(model_version(2, trained["iris-b"]), namespace)
        wait_status(cluster, "iris", namespace, canaryVersion=2, canaryTraffic=25, timeout=90)
        prometheus.stop()

        def inconclusive(count: int) -> dict[str, Any] | None:
            current = status(cluster, "iris", namespace)
            return current if (current.get("analysis") or {}).get("inconclusive", 0) >= count else None

        first = wait_for(lambda: inconclusive(1), timeout=60, what="an inconclusive measurement")
        held = wait_for(lambda: inconclusive(4), timeout=60, what="four inconclusive measurements")
        # Held: the step and its traffic stay, although the step's time (8 s) is up.
        assert (held["stepIndex"], held["canaryWeight"]) == (first["stepIndex"], first["canaryWeight"])
        assert held["phase"] == "Progressing" and held["canaryVersion"] == 2
        assert "unreachable" in held["analysis"]["measurements"][-1]["message"]
        prometheus.start()
        wait_status(cluster, "iris", namespace, phase="Promoted", stableVersion=2, timeout=180)


def test_pause_resume_abort_and_promote_now_through_the_cli_and_annotations(
    cluster: Cluster, namespace: str, serving: Any, trained: dict[str, Trained]
) -> None:
    _, kubelet, _ = serving
    cli = [str(ROOT / ".venv" / "bin" / "kubectl-modelloop"), "rollout"]

    def rollout(*args: str) -> str:
        return subprocess.run(
            [*cli, *args, "-n", namespace], env=cluster.env, capture_output=True, text=True, check=True
        ).stdout

    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    # Long steps and no analysis: only the actions move this rollout.
    cluster.apply(
        inference_service("iris", "Standard", {"steps": [25, 50, 100], "stepInterval": "1h"}), namespace
    )
    wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    cluster.apply(model_version(2, trained["iris-b"]), namespace)
    wait_status(cluster, "iris", namespace, canaryVersion=2, canaryTraffic=25, timeout=90)

    rollout("pause", "iris")
    paused = wait_status(cluster, "iris", namespace, phase="Paused", pauseReason="Requested")
    assert paused["canaryWeight"] == 25
    progressing = next(c for c in paused["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Paused")
    assert "Paused" in rollout("status", "iris")
    rollout("resume", "iris")
    wait_status(cluster, "iris", namespace, phase="Progressing", pauseReason=None)
    rollout("promote", "iris")
    wait_status(
        cluster,
        "iris",
        namespace,
        phase="Promoted",
        stableVersion=2,
        canaryVersion=None,
        reason="PromotedManually",
    )

    # The same through the annotation, as GitOps would write it: abort a canary of version 3.
    cluster.apply(model_version(3, trained["iris-a"]), namespace)
    wait_status(cluster, "iris", namespace, canaryVersion=3, canaryTraffic=25, timeout=90)
    cluster.kubectl(
        "annotate",
        "inferenceservices.modelloop.dev",
        "iris",
        "-n",
        namespace,
        "modelloop.dev/rollout-action=abort",
        "--overwrite",
    )
    aborted = wait_status(cluster, "iris", namespace, phase="RolledBack", reason="Aborted")
    assert aborted["stableVersion"] == 2 and aborted["action"] == "abort"
    wait_status(cluster, "iris", namespace, canaryVersion=None, timeout=60)
    # Acted on once: the annotation still there does nothing more; resume retries the version.
    rollout("resume", "iris")
    wait_status(cluster, "iris", namespace, canaryVersion=3, timeout=60)
    kubelet.wait_serving(2)


ROLLOUT_STATE = ("phase", "stepIndex", "canaryWeight", "canaryVersion", "stableVersion", "stepStartTime")
"""What of an InferenceService's status says where its rollout is."""


@dataclass
class Kill:
    """One SIGKILL of an operator: its process, whether it was alive just before, its exit status, and the
    rollout's status when it was killed and once it was dead."""

    pid: int
    alive: bool
    returncode: int
    before: dict[str, Any]
    after: dict[str, Any] = field(default_factory=dict)


def test_a_killed_operator_resumes_every_step_where_it_was_with_no_traffic_jump(
    cluster: Cluster, namespace: str, kserve: Any, knative: Any, tmp_path: Path, trained: dict[str, Trained]
) -> None:
    """Knative mode: SIGKILL the operator right after every step it takes, twice per step; each time a
    new operator takes over from status alone. The canary's share as KServe's InferenceService says it,
    recorded throughout, only ever goes up, one step at a time."""
    steps = [10, 20, 30, 40, 50, 100]
    # The runtime the predictors name (the serving fixture of the other tests installs it too): this test
    # must not depend on running after them.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RUNTIME))
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    cluster.apply(inference_service("iris", "Knative", {"steps": steps, "stepInterval": "12s"}), namespace)
    log = tmp_path / "operator.log"
    env = {"MODELLOOP_KSERVE_MODE": "Knative"}
    # The canary's share as KServe's InferenceService says it (None: no canary).
    recorder = ChangeRecorder(
        "canary-recorder",
        lambda: cluster.get(KSERVE, "iris", namespace)["spec"]["predictor"].get("canaryTrafficPercent"),
        0.25,
    )
    seen: list[int | None] = recorder.seen
    with running_operator(cluster, namespace, log, env=env):
        wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    recorder.start()
    try:
        cluster.apply(model_version(2, trained["iris-b"]), namespace)
        kills: list[Kill] = []
        for index in range(len(steps) - 1):
            for _ in range(2):
                with running_operator(cluster, namespace, log, env=env) as operator:
                    before = wait_status(
                        cluster, "iris", namespace, stepIndex=index, canaryVersion=2, timeout=60
                    )
                    alive = operator.poll() is None
                    operator.send_signal(signal.SIGKILL)
                    kills.append(Kill(operator.pid, alive, operator.wait(timeout=10), before))
                kills[-1].after = status(cluster, "iris", namespace)
        with running_operator(cluster, namespace, log, env=env):
            wait_status(cluster, "iris", namespace, phase="Promoted", stableVersion=2, timeout=60)
    finally:
        recorder.stop()
    # Each kill ended a live operator, by SIGKILL, mid-rollout: the canary of version 2 at the step it had
    # reached, and a later operator process each time.
    assert [k.alive and k.returncode == -signal.SIGKILL for k in kills] == [True] * len(kills)
    assert len({k.pid for k in kills}) == len(kills)
    assert [(k.before["stepIndex"], k.before["canaryWeight"]) for k in kills] == [
        (index, steps[index]) for index in range(len(steps) - 1) for _ in range(2)
    ]
    assert {(k.before["phase"], k.before["canaryVersion"], k.before["stableVersion"]) for k in kills} == {
        ("Progressing", 2, 1)
    }
    # Nothing of the rollout state was lost or redone by a kill: with no operator running it stayed as it
    # was (the step's start time included: the step was resumed, not restarted), ...
    for kill in kills:
        assert {k: kill.after.get(k) for k in ROLLOUT_STATE} == {k: kill.before.get(k) for k in ROLLOUT_STATE}
    # ... and the operator started after the second kill at each step took over and took the next step, at
    # a new start time (the one started after the first kill found the step already taken).
    for second, next_first in zip(kills[1::2], kills[2::2], strict=False):
        assert next_first.before["stepIndex"] == second.after["stepIndex"] + 1
        assert next_first.before["stepStartTime"] > second.after["stepStartTime"]
    for first, second in zip(kills[::2], kills[1::2], strict=True):
        assert second.before["stepStartTime"] == first.after["stepStartTime"]
    assert [p for p in seen if p is not None] == steps[:-1], seen
    assert seen[-1] is None  # promotion removed canaryTrafficPercent
    # The last operator derived the stages from the status alone: nothing was queued in any dead one.
    with running_operator(cluster, namespace, log, env=env):
        wait_for(lambda: stage(cluster, "iris-v2", namespace) == "Champion", timeout=30, what="v2 Champion")
        assert stage(cluster, "iris-v1", namespace) == "Archived"
    history = cluster.get("modelversions.modelloop.dev", "iris-v2", namespace)["status"]["history"]
    assert [h["stage"] for h in history] == ["Candidate", "Challenger", "Champion"]
