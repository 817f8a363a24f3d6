"""The whole loop on the local control plane: drift → retrain → validate → canary → promote, with no human.

On KServe (``backend="kserve"``, the default), every part is real except the pods: the operator, KServe's
controller and webhooks, KServe's agent (the payload logger) in front of the real model server, the real
drift detector, a real Prometheus that scrapes the model servers and the detector, and the real trainer.
The stand-ins play the kubelet only: they run each pod's container here, with the pod's own command and
environment (e2e/serving.py for model servers, e2e/kubelet.py for training pods), and the detector's
process stands in for its pod.

On Seldon Core v1 (``backend="seldon"``), the InferenceService is served by a SeldonDeployment that
Seldon's real CRD checks; Seldon's Go controller and its service orchestrator (the executor, Seldon's
payload logger) cannot be built here, so e2e/seldon.py stands in for both: it runs modelloop's real
Seldon wrapper for each predictor, and in front of it a stand-in for the executor that logs each request
and response to the detector as Seldon's executor does. The rest is the same: the detector, Prometheus
(scraping the wrapper's Seldon metrics), the trainer and the operator.

Used by e2e/test_drift_loop.py and by `make demo` (``python -m e2e.loop``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness import (
    ROOT,
    SHARED_CRDS,
    Cluster,
    KubectlError,
    PollingLoop,
    Timeout,
    api_server_access,
    create_token,
    free_port,
    running_operator,
    wait_for,
)
from e2e.kserve import KServe
from e2e.kubelet import HOLD, TRAINER_BIN, run_pod, running_held_pods
from e2e.prometheus import Prometheus, running_prometheus
from e2e.seldon import PUID_HEADER, SELDON_BIN, SeldonStandIn, seldon_weights
from e2e.serving import SERVER_BIN, ServingKubelet, answers_ok, terminate_process
from e2e.traffic import LoadGenerator, RouteReader, httproute_weights

DETECTOR_BIN = ROOT / ".venvs" / "detector" / "bin"
RUNTIME = ROOT / "runtimes" / "server" / "clusterservingruntime.yaml"
HTTPROUTE_CRD = SHARED_CRDS / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
MODEL = "iris"
SERVICE = "iris"
POLICY = "iris-drift"
# The shift: petal length and width read 1.8 times too large (a sensor recalibrated), the species the same.
SHIFT = (1.0, 1.0, 1.8, 1.8)
ERROR_RATE = (
    'sum(rate(modelloop_server_requests_total{namespace="{{namespace}}",version="{{version}}",'
    'code=~"4..|5.."}[20s]) or vector(0)) / '
    'sum(rate(modelloop_server_requests_total{namespace="{{namespace}}",version="{{version}}"}[20s]))'
)
# The same ratio from the Seldon wrapper's metrics (runtimes/seldon's metrics.py): seldon-core labels
# them deployment_name (the SeldonDeployment, named after the service); namespace is the scrape target's.
SELDON_SELECT = 'namespace="{{namespace}}",deployment_name="{{name}}",version="{{version}}"'
SELDON_ERROR_RATE = (
    f"sum(rate(modelloop_seldon_errors_total{{{SELDON_SELECT}}}[20s]) or vector(0))"
    f" / sum(rate(modelloop_seldon_requests_total{{{SELDON_SELECT}}}[20s]))"
)
BACKENDS = ("kserve", "seldon")
ERROR_RATES = {"kserve": ERROR_RATE, "seldon": SELDON_ERROR_RATE}
"""The rollout analysis's error ratio, by backend: each model server's own metrics."""
REQUEST_ID_HEADERS = {"kserve": "Ce-Id", "seldon": PUID_HEADER}
"""The header a request's id travels in, by backend: KServe's agent takes ``Ce-Id`` as the event id;
Seldon's executor takes ``Seldon-Puid`` as the request's puid (its events' ``Ce-Requestid``)."""
SELECT = 'namespace="{{namespace}}",service="{{name}}",version="{{version}}"'
DRIFT_QUERY = f'max(modelloop_drift_verdict{{{SELECT},detector="ks"}})'
ACCURACY_QUERY = f"min(modelloop_feedback_accuracy{{{SELECT}}})"

log = logging.getLogger(__name__)


def runtimes_installed(backend: str = "kserve") -> bool:
    """Whether the trainer, model server (KServe's, or the Seldon wrapper) and detector environments the
    loop runs are built (make setup)."""
    server = (
        SELDON_BIN / "seldon-core-microservice" if backend == "seldon" else SERVER_BIN / "modelloop-serve"
    )
    return all(
        path.exists()
        for path in (TRAINER_BIN / "modelloop-train", server, DETECTOR_BIN / "modelloop-detector")
    )


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")


def iris_rows() -> list[tuple[list[float], int]]:
    """Iris as scikit-learn ships it (read from the trainer's environment: nothing is downloaded)."""
    path = next(TRAINER_BIN.parent.glob("lib/python3*/site-packages/sklearn/datasets/data/iris.csv"))
    with path.open() as stream:
        reader = csv.reader(stream)
        next(reader)  # 150,4,setosa,versicolor,virginica
        return [([float(v) for v in row[:4]], int(row[4])) for row in reader]


DETECTOR_AUDIENCE = "modelloop-detector"


@dataclass(frozen=True)
class DetectorIdentities:
    """Who deals with the loop's detector, as on a cluster, each a ServiceAccount of the loop's namespace:
    the detector (bound to ``system:auth-delegator``: it has the API server review its callers), the
    operator (``inferenceservices/drift`` get and update: registrations, exports) and the labeller who
    posts feedback (``inferenceservices/feedback`` create, ``drift`` get). Callers' tokens are for the
    detectors' audience, as the chart mounts the operator's."""

    detector_env: Mapping[str, str]
    operator_token_file: Path
    labeller_token: str


def detector_identities(cluster: Cluster, namespace: str, workdir: Path) -> DetectorIdentities:
    accounts = ("drift-detector", "drift-registrar", "labeller")
    rules = {
        "drift-registrar": [("drift", ["get", "update"])],
        "labeller": [("feedback", ["create"]), ("drift", ["get"])],
    }
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}} for name in accounts
    ]
    for name, grants in rules.items():
        role_rules = [
            {"apiGroups": ["modelloop.dev"], "resources": [f"inferenceservices/{sub}"], "verbs": verbs}
            for sub, verbs in grants
        ]
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
             "rules": role_rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
             "roleRef": role_ref, "subjects": [subject]},
        ]  # fmt: skip
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(listing))
    delegator = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"drift-detector-{namespace}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:auth-delegator",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "drift-detector", "namespace": namespace}],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(delegator))
    own_token, operator_token = workdir / "detector-token", workdir / "operator-detector-token"
    own_token.write_text(create_token(cluster, "drift-detector", namespace))
    operator_token.write_text(create_token(cluster, "drift-registrar", namespace, DETECTOR_AUDIENCE))
    ca_file = workdir / "api-server-ca.crt"
    env = {
        "MODELLOOP_DETECTOR_AUTH": "kubernetes",
        "MODELLOOP_DETECTOR_KUBE_URL": api_server_access(cluster, ca_file),
        "MODELLOOP_DETECTOR_KUBE_TOKEN_FILE": str(own_token),
        "MODELLOOP_DETECTOR_KUBE_CA_FILE": str(ca_file),
        "MODELLOOP_DETECTOR_AUDIENCE": DETECTOR_AUDIENCE,
    }
    labeller = create_token(cluster, "labeller", namespace, DETECTOR_AUDIENCE)
    return DetectorIdentities(env, operator_token, labeller)


class Detector:
    """The drift detector's process (runtimes/detector), as its pod would run it, with short windows; with
    ``identities``, it authenticates its callers (and the loop's calls show their tokens)."""

    def __init__(self, workdir: Path, identities: DetectorIdentities | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.identities = identities
        self.log_path = workdir / "detector.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(DETECTOR_BIN / "modelloop-detector"),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--window-rows", "200", "--window-seconds", "600", "--min-rows", "50"),
            *("--evaluate-every-rows", "25", "--evaluate-every-seconds", "1"),
            *("--min-verdict-interval", "0.5", "--feedback-window", "100"),
        ]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The detector reads references and writes exports only under the artifact store: here,
                # the test's folder (artifacts/ and recent/).
                env={
                    **os.environ,
                    "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": f"file://{self.workdir}",
                    **(self.identities.detector_env if self.identities else {}),
                },
            )
        process = self.process
        wait_for(
            lambda: process.poll() is not None or answers_ok(f"{self.url}/healthz"),
            timeout=120,
            what="the drift detector",
        )
        assert process.poll() is None, f"the detector exited:\n{self.log_path.read_text()[-3000:]}"

    def stop(self) -> None:
        if self.process is not None:
            terminate_process(self.process, timeout=10)

    def _headers(self) -> dict[str, str]:
        """The labeller's credentials, where the detector asks for them."""
        if self.identities is None:
            return {}
        return {"Authorization": f"Bearer {self.identities.labeller_token}"}

    def state(self, namespace: str, service: str = SERVICE) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/v1/services/{namespace}/{service}", headers=self._headers()
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return dict(json.loads(answer.read()))

    def post_labels(self, namespace: str, labels: list[dict[str, Any]], service: str = SERVICE) -> None:
        body = json.dumps({"labels": labels}).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/feedback/{namespace}/{service}",
            data=body,
            headers={"Content-Type": "application/json", **self._headers()},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


class TrainingKubelet(PollingLoop):
    """Runs the held training pods of a namespace with the real trainer, as they appear."""

    def __init__(self, cluster: Cluster, namespace: str, workdir: Path) -> None:
        super().__init__(f"training-kubelet-{namespace}", 0.5)
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.ran: list[tuple[str, float, float, int]] = []
        """(pod, started, finished, exit code) of every pod run, in time.monotonic() seconds."""

    def sync(self) -> None:
        for pod in running_held_pods(self.cluster, self.namespace):
            started = time.monotonic()
            execution = run_pod(self.cluster, pod, self.workdir)
            self.ran.append((execution.pod, started, time.monotonic(), execution.exit_code))


@dataclass
class LabelledTraffic:
    """Real requests, one iris row each, through the payload logger (KServe's agent, or the stand-in for
    Seldon's executor), split by the route's weights, each with its id in ``id_header`` (``Ce-Id`` for
    KServe, ``Seldon-Puid`` for Seldon); the true species of every answered row goes to the detector as
    feedback under that id, a moment later, as ground truth does. ``shifted`` switches the rows to the
    shifted distribution."""

    detector: Detector
    namespace: str
    rows: list[tuple[list[float], int]]
    shifted: bool = False
    seed: int = 0
    id_header: str = "Ce-Id"
    _labels: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(init=False)
    sent_labels: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def body(self, _pod: str) -> Mapping[str, Any]:
        features, species = self._random.choice(self.rows)
        if self.shifted:
            features = [round(v * s, 2) for v, s in zip(features, SHIFT, strict=True)]
        request_id = str(uuid.uuid4())
        with self._lock:
            self._labels.append({"id": request_id, "label": species})
        return _Body({"instances": [features]}, request_id)

    def headers(self, body: Mapping[str, Any]) -> Mapping[str, str]:
        return {self.id_header: body.request_id} if isinstance(body, _Body) else {}

    def send_feedback(self) -> None:
        with self._lock:
            labels, self._labels = self._labels, []
        if labels:
            with contextlib.suppress(OSError):
                self.detector.post_labels(self.namespace, labels)
                self.sent_labels += len(labels)


class _Body(dict[str, Any]):
    def __init__(self, body: Mapping[str, Any], request_id: str) -> None:
        super().__init__(body)
        self.request_id = request_id


class _Feedback(PollingLoop):
    def __init__(self, traffic: LabelledTraffic) -> None:
        super().__init__("feedback", 0.5)
        self.traffic = traffic

    def sync(self) -> None:
        self.traffic.send_feedback()


@dataclass
class Loop:
    cluster: Cluster
    namespace: str
    workdir: Path
    prometheus: Prometheus
    detector: Detector
    serving: ServingKubelet | SeldonStandIn
    """What runs the model servers: the stand-in kubelet (KServe), or the stand-in for Seldon Core."""
    training: TrainingKubelet
    operator_args: tuple[str, ...] = ()
    operator_env: dict[str, str] = field(default_factory=dict)
    backend: str = "kserve"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts"

    def route(self) -> RouteReader:
        """The service's traffic split: KServe's HTTPRoute, or the SeldonDeployment's predictor weights."""
        if isinstance(self.serving, SeldonStandIn):
            return seldon_weights(self.serving, SERVICE)
        return httproute_weights(self.cluster, self.namespace, f"{SERVICE}-traffic")

    def wait_serving(self, version: int, timeout: float = 180) -> None:
        """Wait until ``version`` serves (on KServe: until a model-server pod serves)."""
        if isinstance(self.serving, SeldonStandIn):
            self.serving.wait_serving([f"{SERVICE}-v{version}"], timeout=timeout)
        else:
            self.serving.wait_serving(1, timeout=timeout)

    @contextlib.contextmanager
    def traffic(self, rate_per_s: float = 30) -> Iterator[tuple[LabelledTraffic, LoadGenerator]]:
        labelled = LabelledTraffic(
            self.detector, self.namespace, iris_rows(), id_header=REQUEST_ID_HEADERS[self.backend]
        )
        route = self.route()
        with (
            LoadGenerator(self.serving, route, rate_per_s, labelled.body, headers=labelled.headers) as load,
            _Feedback(labelled),
        ):
            yield labelled, load


@contextlib.contextmanager
def drift_loop(
    cluster: Cluster,
    namespace: str,
    workdir: Path,
    kserve: KServe | None,
    *,
    training_kubelet: type[TrainingKubelet] = TrainingKubelet,
    operator: bool = True,
    backend: str = "kserve",
) -> Iterator[Loop]:
    """Prometheus, the detector, the stand-ins for the pods (on KServe: the stand-in kubelet, with KServe's
    agent in front of each model server; on Seldon: the stand-in for Seldon's controller, with the
    stand-in for its executor in front of each predictor's wrapper) and the operator, for ``namespace``;
    all stopped at the end. ``kserve`` (KServe's running controller) is needed on KServe only. With
    ``operator=False`` the caller runs the operator itself, with the loop's ``operator_args`` and
    ``operator_env`` (e2e/chaos.py kills and restarts it)."""
    _check_backend(backend)
    if backend == "kserve":
        if kserve is None:
            raise ValueError("the loop on KServe needs KServe's controller running (kserve is None)")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RUNTIME))
        cluster.install_crds(HTTPROUTE_CRD, what="the HTTPRoute CRD")
    workdir.mkdir(parents=True, exist_ok=True)
    identities = detector_identities(cluster, namespace, workdir)
    detector = Detector(workdir, identities)
    detector.start()
    try:
        with running_prometheus(workdir / "prometheus") as prometheus:
            serving: ServingKubelet | SeldonStandIn
            if kserve is not None and backend == "kserve":
                serving = ServingKubelet(
                    cluster, namespace, workdir / "pods", prometheus, agent_binary=kserve.agent_binary
                )
            else:
                serving = SeldonStandIn(cluster, namespace, workdir / "pods", prometheus)
            # Prometheus scrapes the detector and the operator too (its job label as the PodMonitor sets it).
            operator_metrics = f"127.0.0.1:{free_port()}"
            serving.extra_targets = [
                (detector.address, {"job": "detector"}),
                (operator_metrics, {"job": "modelloop"}),
            ]
            training = training_kubelet(cluster, namespace, workdir / "training")
            (workdir / "training").mkdir(exist_ok=True)
            with serving, training:
                env = {
                    "MODELLOOP_PROMETHEUS_URL": prometheus.url,
                    "MODELLOOP_KSERVE_MODE": "Standard",
                    "MODELLOOP_ARTIFACT_ROOT": f"file://{workdir / 'artifacts'}",
                    # The operator shows the detector a token for its audience, as the chart mounts it.
                    "MODELLOOP_DETECTOR_TOKEN_FILE": str(identities.operator_token_file),
                }
                loop = Loop(
                    cluster, namespace, workdir, prometheus, detector, serving, training, backend=backend
                )
                loop.operator_args, loop.operator_env = ("--metrics", operator_metrics), env
                if not operator:
                    yield loop
                    return
                with running_operator(
                    cluster,
                    namespace,
                    workdir / "operator.log",
                    extra_args=loop.operator_args,
                    env=loop.operator_env,
                ):
                    yield loop
    finally:
        detector.stop()


def initial_run(artifacts: Path) -> dict[str, Any]:
    """The first model: the real trainer on scikit-learn's iris."""
    return training_run("iris-initial", artifacts)


def training_run(name: str, artifacts: Path, **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "labels": dict(HOLD)},
        "spec": training_template(artifacts, **params),
    }


def training_template(artifacts: Path, **params: Any) -> dict[str, Any]:
    return {
        "image": "ghcr.io/modelloop/trainer:0.1.0",
        "params": {"seed": 1, **(params or {"estimator": "RandomForestClassifier", "n_estimators": 30})},
        "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
        "backoffLimit": 0,
        "output": {"modelName": MODEL, "artifactUriPrefix": f"file://{artifacts}"},
        "validation": {
            "gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.5}],
            # Not worse than the champion, measured on the same held-out rows.
            "champion": {"metric": "accuracy", "direction": "Maximize"},
        },
    }


def inference_service(detector: Detector, *, backend: str = "kserve") -> dict[str, Any]:
    """Follows the model (no pinned version): each newly validated version is rolled out by itself; on
    KServe in its Standard mode, or on Seldon Core, each logging its payloads to the detector."""
    _check_backend(backend)
    on_backend: dict[str, Any] = (
        {"backend": "seldon"} if backend == "seldon" else {"kserve": {"deploymentMode": "Standard"}}
    )
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": SERVICE},
        "spec": {
            "model": {"name": MODEL},
            **on_backend,
            "predictor": {
                "minReplicas": 1,
                "resources": {"cpu": "100m", "memory": "256Mi"},
            },
            "logger": {"url": detector.url, "mode": "all"},
            "rollout": {
                "steps": [50, 100],
                "stepInterval": "4s",
                "analysis": {
                    "interval": "2s",
                    "failureLimit": 0,
                    "inconclusiveLimit": 100,
                    "metrics": [{"name": "error-rate", "query": ERROR_RATES[backend], "max": 0.05}],
                },
            },
        },
    }


def drift_policy(loop: Loop, *, recent_data: bool = True, **params: Any) -> dict[str, Any]:
    retrain: dict[str, Any] = {
        "labels": dict(HOLD),
        "trainingRunTemplate": training_template(loop.artifacts, **params),
    }
    if recent_data:
        retrain["recentData"] = {"uriPrefix": f"file://{loop.workdir / 'recent'}"}
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "target": {"inferenceService": SERVICE},
            "detector": {"url": loop.detector.url},
            "metrics": [
                {
                    "name": "input-drift",
                    "query": DRIFT_QUERY,
                    "threshold": 1,
                    "comparison": "GreaterThanOrEqual",
                },
                {"name": "accuracy", "query": ACCURACY_QUERY, "threshold": 0.85, "comparison": "LessThan"},
            ],
            "window": "4s",
            "cooldown": "1h",
            "evaluationInterval": "1s",
            "retrain": retrain,
        },
    }


def status_of(cluster: Cluster, resource: str, name: str, namespace: str) -> dict[str, Any]:
    try:
        obj = cluster.get(resource, name, namespace)
    except KubectlError:
        return {}
    return dict(obj.get("status") or {})


# The policy's first verdict needs the detector's window, a scrape and an evaluation: on a loaded 2-core
# machine (the suite's other worker running training gangs or the training engines' build) that took over
# two minutes. A test that waits this long is given LOOP_TEST_SECONDS by pytest-timeout.
WATCHING_SECONDS = 300
LOOP_TEST_SECONDS = 900


def wait_status(
    cluster: Cluster, resource: str, name: str, namespace: str, timeout: float = 120, **expected: Any
) -> dict[str, Any]:
    """The status once it has every ``expected`` value; fails at once on a Failed phase not expected."""

    seen: dict[str, Any] = {}

    def matches() -> dict[str, Any] | None:
        status = status_of(cluster, resource, name, namespace)
        seen.update(last=status)
        if status.get("phase") == "Failed" and expected.get("phase") != "Failed":
            raise AssertionError(f"{resource} {name} failed: {status.get('message')}")
        return status if status and all(status.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_for(matches, timeout=timeout, interval=0.25, what=f"{resource} {name} with {expected}")
    except Timeout as error:
        # The probe answers None for a status that does not match yet: say which status it was.
        raise Timeout(f"{error}; its last status: {seen.get('last')!r}") from None


def wait_watching(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The loop's DriftPolicy once its first verdict is Watching (up to WATCHING_SECONDS)."""
    return wait_status(
        cluster, "driftpolicy", POLICY, namespace, timeout=WATCHING_SECONDS, lastResult="Watching"
    )


def retraining_runs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = cluster.get(
        "trainingruns", namespace=namespace, selector=f"modelloop.dev/drift-policy={POLICY}"
    )["items"]
    return runs


def serve_the_first_model(loop: Loop) -> None:
    """Train iris-v1 with the real trainer, and serve it behind the payload logger of the loop's backend
    (KServe's agent, or the stand-in for Seldon's executor)."""
    cluster, namespace = loop.cluster, loop.namespace
    cluster.apply(initial_run(loop.artifacts), namespace)
    cluster.apply(inference_service(loop.detector, backend=loop.backend), namespace)
    wait_status(
        cluster,
        "inferenceservices.modelloop.dev",
        SERVICE,
        namespace,
        timeout=240,
        stableVersion=1,
        phase="Stable",
    )
    loop.wait_serving(1)


def main() -> None:
    """``python -m e2e.loop``: the whole loop for `make demo`, on the cluster of $KUBECONFIG."""
    import argparse
    import io
    import os
    import sys
    import tempfile

    from e2e.kserve import running_kserve

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--namespace", default="demo-loop")
    parser.add_argument("--backend", choices=BACKENDS, default="kserve")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    bin_dir = Path(os.environ["PATH"].split(os.pathsep)[0])
    cluster = Cluster(kubeconfig=Path(os.environ["KUBECONFIG"]), bin_dir=bin_dir, state_dir=ROOT / ".cluster")
    namespace = args.namespace
    cluster.kubectl("create", "namespace", namespace, check=False)
    workdir = Path(tempfile.mkdtemp(prefix="modelloop-loop-"))
    say = lambda text: print(f"\n\033[1m-- {text}\033[0m", flush=True)  # noqa: E731
    with contextlib.ExitStack() as stack:
        kserve = None
        if args.backend == "kserve":
            kserve = stack.enter_context(running_kserve(cluster, workdir / "kserve"))
        loop = stack.enter_context(drift_loop(cluster, namespace, workdir, kserve, backend=args.backend))
        served_by = "KServe" if args.backend == "kserve" else "Seldon Core"
        say(f"iris-v1: trained by the real trainer, served by {served_by} behind its payload logger")
        serve_the_first_model(loop)
        print(cluster.kubectl("get", "modelversions", "-n", namespace).stdout)
        cluster.apply(drift_policy(loop), namespace)
        with loop.traffic() as (traffic, _):
            wait_watching(cluster, namespace)
            print(cluster.kubectl("get", "driftpolicy", "-n", namespace).stdout)
            say("The input shifts (petal sizes read 1.8x); feedback labels show accuracy falling")
            timings = run_the_loop(loop, traffic, report=print)
        say("kubectl get modelloop")
        print(cluster.kubectl("get", "modelloop", "-n", namespace).stdout)
        say("modelloop lineage iris-v2: why the new champion exists")
        lineage = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "modelloop"), "lineage", "iris-v2", "-n", namespace],
            env=cluster.env,
            capture_output=True,
            text=True,
            check=False,
        )
        print(lineage.stdout or lineage.stderr)
        say("Time from the shift to the new champion")
        for phase, seconds in timings.items():
            print(f"  {phase:<36} {seconds:6.1f} s")
        sys.stdout.flush()
        # The stand-ins print their logs as they stop, for a test's report; the demo went well: not here.
        sys.stdout = io.StringIO()
    sys.stdout = sys.__stdout__


def run_the_loop(loop: Loop, traffic: LabelledTraffic, report: Any = lambda _: None) -> dict[str, float]:
    """Shift the input and wait, step by step, for the new champion; what each step took, in seconds."""
    cluster, namespace = loop.cluster, loop.namespace
    shifted = time.monotonic()
    traffic.shifted = True
    marks: dict[str, float] = {}
    wait_status(cluster, "driftpolicy", POLICY, namespace, timeout=120, lastResult="Breached")
    marks["detection (shift → breach seen)"] = time.monotonic()
    report("  the detector reports drift; the policy confirms it over its window")
    runs = wait_for(lambda: retraining_runs(cluster, namespace), timeout=120, what="the retraining run")
    marks["window (breach → TrainingRun)"] = time.monotonic()
    run = runs[0]["metadata"]["name"]
    report(f"  TrainingRun {run} created, with its evidence and the recent data")
    done = wait_status(cluster, "trainingrun", run, namespace, timeout=300, phase="Succeeded")
    marks["training (run → registered)"] = time.monotonic()
    version = done["modelVersion"]
    report(f"  {version} registered; validating against the champion on the same held-out data")
    judged = wait_for(
        lambda: (
            status
            if (status := status_of(cluster, "modelversion", version, namespace)).get("phase")
            in ("Validated", "Rejected")
            else None
        ),
        timeout=120,
        what=f"{version} validated or rejected",
    )
    # A rejected version is never rolled out: say so now, not after the wait for a promotion.
    assert judged["phase"] == "Validated", f"{version} was rejected: {judged.get('message')}"
    marks["validation"] = time.monotonic()
    wait_status(
        cluster,
        "inferenceservices.modelloop.dev",
        SERVICE,
        namespace,
        timeout=300,
        phase="Promoted",
        stableVersion=2,
    )
    # The registry follows the service: the loop is closed once the new version is the champion on record.
    wait_status(cluster, "modelversion", version, namespace, timeout=60, stage="Champion")
    marks["canary steps (50%, 100%) → promoted"] = time.monotonic()
    report(f"  {version} rolled out step by step under analysis, and promoted: the new champion")
    timings, last = {}, shifted
    for phase, moment in marks.items():
        timings[phase] = moment - last
        last = moment
    timings["total: shift → new champion"] = last - shifted
    return timings


if __name__ == "__main__":
    main()
