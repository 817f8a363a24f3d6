"""InferenceService rollouts on Seldon Core v1, end to end, with every real part that runs here:

- the operator server-side applies SeldonDeployments to the local API server, where Seldon's real CRD
  (v1.18.2, ../shared/crds) checks every one of them;
- Seldon Core's Go operator is not served by the Go module proxy, so its controller cannot run here: a
  stand-in (e2e/seldon.py) plays its part, running each predictor's model server and writing the
  SeldonDeployment's status as Seldon's controller does;
- the model servers are modelloop's real Seldon wrapper (runtimes/seldon, seldon-core 1.17.1) serving
  models the real trainer produced on real data;
- a load generator (e2e/traffic.py) splits real requests by the SeldonDeployment's weights and mirrors
  them to a shadow predictor, as Seldon's service orchestrator does;
- a real Prometheus scrapes the servers' Seldon metrics, and the rollout's analysis queries it.

Every write to the SeldonDeployment is watched: none may carry non-shadow weights that do not sum to
100 (Seldon's webhook, which is not in its CRD, would refuse it).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import BackgroundLoop, Cluster, running_operator, wait_for
from e2e.kubelet import TRAINER_BIN
from e2e.models import Trained, model_version
from e2e.prometheus import Prometheus, running_prometheus
from e2e.seldon import GROUP, PLURAL, PREDICTOR_LABEL, SELDON_BIN, VERSION, SeldonStandIn, seldon_weights
from e2e.test_rollout import IRIS_ROW, stage, status, wait_status
from e2e.traffic import LoadGenerator
from e2e.watches import ResumableWatch

needs_runtimes = pytest.mark.skipif(
    not (TRAINER_BIN / "modelloop-train").exists() or not (SELDON_BIN / "seldon-core-microservice").exists(),
    reason="the trainer and Seldon model server runtimes are not installed (make trainer-venv seldon-venv)",
)

# deployment_name is seldon-core's own label (from SELDON_DEPLOYMENT_ID); namespace is the scrape target's.
SELECT = 'namespace="{{namespace}}",deployment_name="{{name}}",version="{{version}}"'
ERROR_RATE = (
    f"sum(rate(modelloop_seldon_errors_total{{{SELECT}}}[20s]) or vector(0))"
    f" / sum(rate(modelloop_seldon_requests_total{{{SELECT}}}[20s]))"
)
SELDON = f"{PLURAL}.{GROUP}"


def seldon_service(name: str, rollout: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "iris"},
            "backend": "seldon",
            "predictor": {"minReplicas": 1, "resources": {"cpu": "100m", "memory": "256Mi"}},
            "rollout": rollout,
            **spec,
        },
    }


def champion_challenger(shadow: bool = False, step_interval: str = "6s") -> dict[str, Any]:
    """The classic champion/challenger split: 90/10, then the challenger takes all; the version that lost
    its traffic keeps its predictor at 0 for a short scale-down delay."""
    return {
        "steps": [10, 100],
        "stepInterval": step_interval,
        "shadow": shadow,
        "scaleDownDelay": "4s",
        "analysis": {
            "interval": "3s",
            "failureLimit": 0,
            "inconclusiveLimit": 100,
            "metrics": [{"name": "error-rate", "query": ERROR_RATE, "max": 0.05}],
        },
    }


class WriteRecorder(BackgroundLoop):
    """Watches one SeldonDeployment and records the predictors of every version written: (name, traffic,
    shadow) each. A watch sees every write, not a poll's sample; it resumes from the last version seen when
    the server ends a watch request, and lists again when that version has expired (410 Gone), recording
    the version the list shows (``relists`` counts those)."""

    def __init__(self, stand_in: SeldonStandIn, name: str) -> None:
        super().__init__("seldon-write-recorder")
        self.versions: list[tuple[str, tuple[tuple[str, int, bool], ...]]] = []
        self.error: BaseException | None = None
        self._watch = ResumableWatch(
            stand_in.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            stand_in.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=30,
        )

    @property
    def relists(self) -> int:
        """How many times the watch expired (410 Gone) and was listed again."""
        return self._watch.relists

    def start(self) -> None:
        super().start()
        # Writes made once the recorder is entered are all seen: its watch starts from the list's version.
        wait_for(
            lambda: self._watch.listed.is_set() or self.error is not None,
            timeout=30,
            what="the SeldonDeployment write recorder's first list",
        )
        assert self.error is None, f"the write recorder cannot list: {self.error!r}"

    def stop(self) -> None:
        self._stopping.set()
        self._watch.stop()
        super().stop()

    def _loop(self) -> None:
        try:
            for event in self._watch.events():
                if event["type"] == "DELETED":
                    continue
                obj = event["object"]
                predictors = tuple(
                    (p["name"], int(p.get("traffic") or 0), bool(p.get("shadow")))
                    for p in obj["spec"].get("predictors") or ()
                )
                if not self.versions or self.versions[-1][1] != predictors:
                    self.versions.append((obj["metadata"]["resourceVersion"], predictors))
        except Exception as error:  # recorded for the test to fail on: a silent recorder would pass it
            if not self._stopping.is_set():
                self.error = error

    def weights(self) -> list[dict[str, int]]:
        """The non-shadow weights of each distinct version written, in order."""
        return [{n: t for n, t, shadow in predictors if not shadow} for _, predictors in self.versions]

    def assert_every_write_sums_to_100(self) -> None:
        assert self.error is None, f"the write recorder stopped: {self.error!r}"
        assert self.versions, "the write recorder saw no version of the SeldonDeployment"
        for resource_version, predictors in self.versions:
            total = sum(traffic for _, traffic, shadow in predictors if not shadow)
            assert total == 100, (
                f"resourceVersion {resource_version} has weights {predictors} (listed again {self.relists} "
                "times after its watch expired)"
            )


@pytest.fixture
def seldon(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[Prometheus, SeldonStandIn, subprocess.Popen[bytes]]]:
    """Prometheus, the Seldon stand-in, and the operator (analysis against that Prometheus)."""
    with (
        running_prometheus(tmp_path / "prometheus") as prometheus,
        SeldonStandIn(cluster, namespace, tmp_path / "seldon", prometheus) as stand_in,
        running_operator(
            cluster, namespace, tmp_path / "operator.log", env={"MODELLOOP_PROMETHEUS_URL": prometheus.url}
        ) as operator,
    ):
        yield prometheus, stand_in, operator


def on(predictor: str) -> Any:
    return lambda _pod, labels: labels.get(PREDICTOR_LABEL) == predictor


@needs_runtimes
def test_champion_challenger_at_90_10_promotes_a_healthy_challenger_and_rolls_back_an_unhealthy_one(
    cluster: Cluster, namespace: str, seldon: Any, trained: dict[str, Trained]
) -> None:
    _, stand_in, _ = seldon
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    cluster.apply(seldon_service("iris", champion_challenger()), namespace)
    first = wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    assert first["backend"] == "seldon" and first.get("deploymentMode") is None
    assert first["backendState"]["state"] == "Available"
    assert first["url"].endswith("/api/v1.0/predictions")
    stand_in.wait_serving(["iris-v1"])

    with (
        LoadGenerator(stand_in, seldon_weights(stand_in, "iris"), rate_per_s=25, payload=IRIS_ROW) as load,
        WriteRecorder(stand_in, "iris") as recorder,
    ):
        cluster.apply(model_version(2, trained["iris-b"]), namespace)
        challenger = wait_status(cluster, "iris", namespace, canaryVersion=2, canaryTraffic=10, timeout=90)
        assert challenger["stableVersion"] == 1 and challenger["canaryWeight"] == 10
        wait_for(
            lambda: stage(cluster, "iris-v2", namespace) == "Challenger", timeout=30, what="v2 Challenger"
        )
        wait_status(cluster, "iris", namespace, phase="Promoted", stableVersion=2, timeout=120)
        wait_for(lambda: stage(cluster, "iris-v2", namespace) == "Champion", timeout=30, what="v2 Champion")
        # 90/10, then the challenger alone, v1 kept at 0 until its scale-down delay is over; v2 answered
        # its share.
        assert {"v1": 90, "v2": 10} in recorder.weights()
        wait_for(lambda: recorder.weights()[-1] == {"v2": 100}, timeout=30, what="v1 dropped after its delay")
        assert {"v2": 100, "v1": 0} in recorder.weights()
        assert load.sent_to(on("v2")) > 0
        assert all(code == 200 for (pod, code) in load.responses() if pod.endswith("-v2")), load.responses()

        # A challenger that cannot answer the requests it gets fails its error-rate analysis at 10%.
        cluster.apply(model_version(3, trained["wine"]), namespace)
        wait_status(cluster, "iris", namespace, canaryVersion=3, timeout=60)
        rolled_back = wait_status(cluster, "iris", namespace, phase="RolledBack", timeout=120)
        assert rolled_back["stableVersion"] == 2 and rolled_back["rolledBackVersion"] == 3
        assert "error-rate" in rolled_back["message"] and "above its max 0.05" in rolled_back["message"]
        wait_status(cluster, "iris", namespace, phase="RolledBack", canaryVersion=None, timeout=60)
        # Status is written before the SeldonDeployment: the write that drops v3 comes just after.
        wait_for(lambda: recorder.weights()[-1] == {"v2": 100}, timeout=30, what="v3 dropped")
    recorder.assert_every_write_sums_to_100()
    challenged = [w for w in recorder.weights() if "v3" in w]
    assert challenged and all(w["v3"] in (0, 10) for w in challenged), recorder.weights()
    # Once dropped, v3 is never written back (not even at 0).
    with_v3 = [i for i, w in enumerate(recorder.weights()) if "v3" in w]
    assert with_v3 == list(range(with_v3[0], with_v3[-1] + 1)), recorder.weights()
    assert recorder.weights()[-1] == {"v2": 100}
    assert stage(cluster, "iris-v2", namespace) == "Champion"


@needs_runtimes
def test_shadow_mirrors_traffic_before_the_steps_and_a_challenger_failing_in_shadow_gets_no_user_traffic(
    cluster: Cluster, namespace: str, seldon: Any, trained: dict[str, Trained]
) -> None:
    _, stand_in, _ = seldon
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    cluster.apply(seldon_service("iris", champion_challenger(shadow=True, step_interval="8s")), namespace)
    wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
    stand_in.wait_serving(["iris-v1"])
    with (
        LoadGenerator(stand_in, seldon_weights(stand_in, "iris"), rate_per_s=25, payload=IRIS_ROW) as load,
        WriteRecorder(stand_in, "iris") as recorder,
    ):
        cluster.apply(model_version(2, trained["iris-b"]), namespace)
        shadowing = wait_status(
            cluster, "iris", namespace, canaryVersion=2, shadow=True, reason="StepRunning"
        )
        assert shadowing["canaryWeight"] == 0 and shadowing["canaryTraffic"] == 0
        wait_for(lambda: load.mirrored_to(on("v2")) >= 20, timeout=60, what="mirrored requests to v2")
        assert load.sent_to(on("v2")) == 0  # no user saw an answer of the challenger
        wait_status(cluster, "iris", namespace, canaryVersion=2, canaryTraffic=10, timeout=60)
        wait_for(lambda: load.sent_to(on("v2")) > 0, timeout=30, what="user requests to v2 at 10%")
        wait_status(cluster, "iris", namespace, phase="Promoted", stableVersion=2, timeout=120)
        wait_for(lambda: recorder.weights()[-1] == {"v2": 100}, timeout=30, what="v1 dropped after its delay")
        # Mirrored (v2 a shadow at 0), then 90/10, then the challenger alone (v1 at 0 for its delay).
        assert [predictors for _, predictors in recorder.versions][:5] == [
            (("v1", 100, False),),
            (("v1", 100, False), ("v2", 0, True)),
            (("v1", 90, False), ("v2", 10, False)),
            (("v2", 100, False), ("v1", 0, False)),
            (("v2", 100, False),),
        ]

        cluster.apply(model_version(3, trained["wine"]), namespace)
        wait_status(cluster, "iris", namespace, canaryVersion=3, shadow=True, timeout=60)
        rolled_back = wait_status(cluster, "iris", namespace, phase="RolledBack", timeout=120)
        assert rolled_back["rolledBackVersion"] == 3 and rolled_back["stableVersion"] == 2
        wait_status(cluster, "iris", namespace, canaryVersion=None, timeout=60)
        wait_for(lambda: recorder.weights()[-1] == {"v2": 100}, timeout=30, what="v3 dropped")
    assert load.mirrored_to(on("v3")) > 0
    assert load.sent_to(on("v3")) == 0
    recorder.assert_every_write_sums_to_100()
    assert all(w.get("v3", 0) == 0 for w in recorder.weights()), recorder.weights()


@needs_runtimes
def test_a_killed_operator_resumes_the_seldon_rollout_at_the_same_weights(
    cluster: Cluster, namespace: str, tmp_path: Path, trained: dict[str, Trained]
) -> None:
    steps = [10, 30, 60, 100]
    cluster.apply(model_version(1, trained["iris-a"]), namespace)
    cluster.apply(seldon_service("iris", {"steps": steps, "stepInterval": "8s"}), namespace)
    log = tmp_path / "operator.log"
    with SeldonStandIn(cluster, namespace, tmp_path / "seldon", None) as stand_in:
        with running_operator(cluster, namespace, log):
            wait_status(cluster, "iris", namespace, phase="Stable", stableVersion=1)
        with WriteRecorder(stand_in, "iris") as recorder:
            cluster.apply(model_version(2, trained["iris-b"]), namespace)
            for index in range(len(steps) - 1):
                with running_operator(cluster, namespace, log) as operator:
                    reached = wait_status(
                        cluster, "iris", namespace, stepIndex=index, canaryTraffic=steps[index], timeout=60
                    )
                    operator.send_signal(signal.SIGKILL)
                    operator.wait(timeout=10)
                after = status(cluster, "iris", namespace)
                assert (after["stepIndex"], after["canaryWeight"]) == (index, reached["canaryWeight"])
            with running_operator(cluster, namespace, log):
                wait_status(cluster, "iris", namespace, phase="Promoted", stableVersion=2, timeout=60)
    recorder.assert_every_write_sums_to_100()
    canary = [w.get("v2") for w in recorder.weights() if "v2" in w]
    # Each operator took over from status alone: the same weights, one step at a time, never back.
    assert canary == [10, 30, 60, 100], recorder.weights()


def test_switching_the_backend_is_refused_at_admission_and_one_backend_serves(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(model_version(1, Trained("file:///models/iris/1", {"accuracy": 0.95})), namespace)
    cluster.apply(seldon_service("iris", {"steps": [100]}), namespace)
    # Served on Seldon (no Seldon controller runs in this test: the deployment stays Creating).
    wait_for(
        lambda: cluster.kubectl("get", SELDON, "iris", "-n", namespace, check=False).returncode == 0,
        timeout=60,
        what="the SeldonDeployment",
    )
    refused = cluster.kubectl(
        "patch",
        "inferenceservices.modelloop.dev",
        "iris",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"backend": "kserve"}}',
        check=False,
    )
    assert refused.returncode != 0
    assert "spec.backend" in refused.stderr and "cannot change" in refused.stderr
    kept = cluster.get("inferenceservices.modelloop.dev", "iris", namespace)
    assert kept["spec"]["backend"] == "seldon"
    # A KServe-only setting on a Seldon service, and shadow on a KServe one, are refused too.
    for name, spec in [
        ("mixed", {"backend": "seldon", "kserve": {"deploymentMode": "Standard"}}),
        ("kserve-shadow", {"rollout": {"steps": [100], "shadow": True}}),
    ]:
        result = cluster.apply_result(
            {**seldon_service(name, {"steps": [100]}), "spec": {"model": {"name": "iris"}, **spec}}, namespace
        )
        assert result.returncode != 0 and "spec." in result.stderr
    kserve = cluster.kubectl("get", "inferenceservices.serving.kserve.io", "-n", namespace, "-o", "name")
    assert kserve.stdout == ""
    seldon = cluster.kubectl("get", SELDON, "-n", namespace, "-o", "name")
    assert seldon.stdout.split() == [f"seldondeployment.{GROUP}/iris"]
