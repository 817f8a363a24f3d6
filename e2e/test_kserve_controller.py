"""KServe's real controller (v0.20.0, built from its Go module) on the e2e control plane: what it makes of
a hand-written InferenceService in Standard and in Knative mode, and what its webhooks add to the pods.

These tests pin down the behaviour of KServe itself that modelloop relies on, so that an upgrade of KServe
that changes it fails here first."""

from __future__ import annotations

import copy
import http.server
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, condition, wait_for
from e2e.knative import KnativeServing
from e2e.kserve import KServe, free_ports

pytestmark = pytest.mark.usefixtures("kserve")

ISVC = "inferenceservices.serving.kserve.io"
KSVC = "services.serving.knative.dev"
MODEL = {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris/1"}
TIMEOUT = 90


def isvc(name: str, mode: str, predictor: Mapping[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": dict(predictor or {"model": MODEL}), **spec},
    }


def is_true(obj: Mapping[str, Any], type_: str) -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond["status"] == "True"


def wait_ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.get(ISVC, name, namespace=namespace)
        return obj if is_true(obj, "Ready") else None

    return wait_for(ready, timeout=TIMEOUT, what=f"InferenceService {name} Ready")


def predictor_pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    """The running pods of a raw (Standard) predictor, found as its Service finds them."""
    pods = cluster.get("pods", namespace=namespace, selector=f"app={app}")["items"]
    return [pod for pod in pods if pod.get("status", {}).get("phase") == "Running"]


def container(pod: Mapping[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    containers = pod["spec"].get("initContainers" if init else "containers") or []
    found = [c for c in containers if c["name"] == name]
    assert found, f"no {'init ' if init else ''}container {name!r} in {[c['name'] for c in containers]}"
    return dict(found[0])


def test_standard_mode_makes_a_deployment_and_service_whose_pod_gets_the_storage_initializer(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(isvc("iris", "Standard"), namespace)

    obj = wait_ready(cluster, namespace, "iris")

    deployment = cluster.get("deployment", "iris-predictor", namespace=namespace)
    service = cluster.get("service", "iris-predictor", namespace=namespace)
    assert service["spec"]["selector"] == {"app": "isvc.iris-predictor"}
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": "isvc.iris-predictor"}
    assert deployment["status"].get("availableReplicas") == 1
    [pod] = predictor_pods(cluster, namespace, "isvc.iris-predictor")
    # The pod mutator (a webhook, not the controller) adds the init container that downloads the model.
    initializer = container(pod, "storage-initializer", init=True)
    assert initializer["args"] == ["s3://models/iris/1", "/mnt/models"]
    assert initializer["image"] == "kserve/storage-initializer:latest"
    server = container(pod, "kserve-container")
    assert server["image"] == "kserve-sklearnserver:replace"  # the shared ClusterServingRuntime's
    assert {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True} in server[
        "volumeMounts"
    ]

    assert service["spec"]["ports"] == [
        {"name": "iris-predictor", "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]
    hpa = cluster.get("hpa", "iris-predictor", namespace=namespace)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-predictor"

    # KServe may record the model's transition (InProgress, then UpToDate) a reconcile after Ready.
    obj = wait_for(
        lambda: (
            (o := cluster.get(ISVC, "iris", namespace=namespace))["status"]
            .get("modelStatus", {})
            .get("transitionStatus")
            == "UpToDate"
            and o
        ),
        timeout=TIMEOUT,
        what="the model's transition UpToDate",
    )
    status = obj["status"]
    assert status["deploymentMode"] == "Standard"
    assert status["clusterServingRuntimeName"] == "kserve-sklearnserver"
    assert status["modelStatus"]["copies"]["totalCopies"] == 1
    # In-cluster address: the predictor's Service; URLs: the ingress domain template's hosts.
    assert status["address"]["url"] == f"http://iris-predictor.{namespace}.svc.cluster.local"
    assert status["url"] == f"http://iris-{namespace}.example.com"
    assert status["components"]["predictor"]["url"] == f"http://iris-predictor-{namespace}.example.com"
    assert is_true(obj, "PredictorReady") and is_true(obj, "IngressReady")
    assert condition(obj, "CanaryPredictorReady") is None
    assert "canaryStatuses" not in status


def test_the_defaulter_webhook_rewrites_the_legacy_raw_deployment_mode(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(isvc("legacy", "RawDeployment"), namespace)

    obj = cluster.get(ISVC, "legacy", namespace=namespace)
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"


def test_standard_mode_canary_gets_its_own_deployment_service_and_status(
    cluster: Cluster, namespace: str
) -> None:
    canary = {
        "predictor": {"name": "challenger", "model": {**MODEL, "storageUri": "s3://models/iris/2"}},
        "trafficPercent": 20,
    }
    cluster.apply(isvc("iris", "Standard", canary=[canary]), namespace)

    def canary_ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.get(ISVC, "iris", namespace=namespace)
        return obj if is_true(obj, "Ready") and is_true(obj, "CanaryPredictorReady") else None

    obj = wait_for(canary_ready, timeout=TIMEOUT, what="InferenceService iris and its canary Ready")

    [canary_status] = obj["status"]["canaryStatuses"]
    assert {k: canary_status[k] for k in ("name", "ready", "trafficPercent")} == {
        "name": "challenger",
        "ready": True,
        "trafficPercent": 20,
    }
    assert condition(obj, "CanaryPredictorReady")["reason"] == "AllCanariesReady"  # type: ignore[index]
    stable = cluster.get("service", "iris-predictor", namespace=namespace)
    challenger = cluster.get("service", "iris-challenger-predictor", namespace=namespace)
    assert stable["spec"]["selector"] == {"app": "isvc.iris-predictor"}
    assert challenger["spec"]["selector"] == {"app": "isvc.iris-challenger-predictor"}
    deployment = cluster.get("deployment", "iris-challenger-predictor", namespace=namespace)
    assert deployment["spec"]["replicas"] == 1  # ceil(1 stable replica * 20 %)
    [pod] = predictor_pods(cluster, namespace, "isvc.iris-challenger-predictor")
    assert container(pod, "storage-initializer", init=True)["args"][0] == "s3://models/iris/2"
    [stable_pod] = predictor_pods(cluster, namespace, "isvc.iris-predictor")
    assert container(stable_pod, "storage-initializer", init=True)["args"][0] == "s3://models/iris/1"
    # v0.20.0 routes nothing by trafficPercent: its Ingress sends every host to the stable Service only.
    ingress = cluster.get("ingress", "iris", namespace=namespace)
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"iris-predictor"}

    # Removing the canary removes its Deployment, its Service and its status.
    cluster.apply(isvc("iris", "Standard"), namespace)

    def canary_gone() -> bool:
        deployments = {d["metadata"]["name"] for d in cluster.get("deployment", namespace=namespace)["items"]}
        obj = cluster.get(ISVC, "iris", namespace=namespace)
        return deployments == {"iris-predictor"} and condition(obj, "CanaryPredictorReady") is None

    wait_for(canary_gone, timeout=TIMEOUT, what="the canary's Deployment and condition to go")
    services = {s["metadata"]["name"] for s in cluster.get("service", namespace=namespace)["items"]}
    assert "iris-challenger-predictor" not in services


def test_the_validator_webhook_refuses_a_canary_list_in_knative_mode(
    cluster: Cluster, namespace: str
) -> None:
    canary = {"predictor": {"name": "challenger", "model": MODEL}, "trafficPercent": 20}

    result = cluster.apply_result(isvc("iris", "Knative", canary=[canary]), namespace)

    assert result.returncode != 0
    assert "canary is only supported in Standard deployment mode" in result.stderr


def test_knative_mode_reports_revisions_and_the_canary_traffic_split(
    cluster: Cluster, namespace: str, knative: KnativeServing
) -> None:
    manifest = isvc("iris", "Knative")
    cluster.apply(manifest, namespace)

    ksvc = wait_for(
        lambda: cluster.get(KSVC, namespace=namespace)["items"], timeout=TIMEOUT, what="the Knative Service"
    )
    assert [s["metadata"]["name"] for s in ksvc] == ["iris-predictor"]
    obj = wait_ready(cluster, namespace, "iris")
    predictor = obj["status"]["components"]["predictor"]
    assert predictor["traffic"] == [
        {"revisionName": "iris-predictor-00001", "latestRevision": True, "percent": 100}
    ]
    assert predictor["latestRolledoutRevision"] == "iris-predictor-00001"
    assert predictor["latestReadyRevision"] == predictor["latestCreatedRevision"] == "iris-predictor-00001"
    assert "previousRolledoutRevision" not in predictor
    assert obj["status"]["deploymentMode"] == "Knative"

    # A new model with canaryTrafficPercent: the new revision gets 20 %, the rolled-out one keeps 80 %.
    canary = copy.deepcopy(manifest)
    canary["spec"]["predictor"] = {
        "canaryTrafficPercent": 20,
        "model": {**MODEL, "storageUri": "s3://models/iris/2"},
    }
    cluster.apply(canary, namespace)

    def split() -> dict[str, Any] | None:
        status = cluster.get(ISVC, "iris", namespace=namespace)["status"]["components"]["predictor"]
        return status if len(status.get("traffic", [])) == 2 else None

    predictor = wait_for(split, timeout=TIMEOUT, what="a two-way traffic split")
    assert predictor["traffic"] == [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 20},
        {
            "revisionName": "iris-predictor-00001",
            "latestRevision": False,
            "percent": 80,
            "tag": "prev",
            "url": f"http://prev-iris-predictor.{namespace}.example.com",
        },
    ]
    # Still the old one: a revision counts as rolled out only once it has 100 %.
    assert predictor["latestRolledoutRevision"] == "iris-predictor-00001"
    assert predictor["latestCreatedRevision"] == "iris-predictor-00002"

    # Promotion: without canaryTrafficPercent the new revision takes all traffic.
    promoted = copy.deepcopy(canary)
    del promoted["spec"]["predictor"]["canaryTrafficPercent"]
    cluster.apply(promoted, namespace)

    def rolled_out() -> dict[str, Any] | None:
        status = cluster.get(ISVC, "iris", namespace=namespace)["status"]["components"]["predictor"]
        return status if status.get("latestRolledoutRevision") == "iris-predictor-00002" else None

    predictor = wait_for(rolled_out, timeout=TIMEOUT, what="the canary promoted")
    assert predictor["previousRolledoutRevision"] == "iris-predictor-00001"
    assert predictor["traffic"] == [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 100}
    ]


def test_a_logger_in_the_spec_puts_kserves_agent_into_the_predictor_pod(
    cluster: Cluster, namespace: str, kserve: KServe
) -> None:
    predictor = {"model": MODEL, "logger": {"url": "http://127.0.0.1:1/", "mode": "all"}}
    cluster.apply(isvc("iris", "Standard", predictor), namespace)

    wait_ready(cluster, namespace, "iris")

    [pod] = predictor_pods(cluster, namespace, "isvc.iris-predictor")
    agent = container(pod, "agent")
    assert agent["image"] == "kserve/agent:latest"
    args = agent["args"]
    assert args[args.index("--log-url") + 1] == "http://127.0.0.1:1/"
    assert args[args.index("--log-mode") + 1] == "all"
    assert args[args.index("--inference-service") + 1] == "iris"
    # The stable Service sends traffic through the agent's port, so every request is logged.
    service = cluster.get("service", "iris-predictor", namespace=namespace)
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [9081]
    assert [port["containerPort"] for port in agent["ports"]] == [9081]


def test_a_canary_pod_gets_the_agent_but_its_service_bypasses_it(cluster: Cluster, namespace: str) -> None:
    """A defect of KServe v0.20.0 that modelloop must route around: the canary inherits the stable
    predictor's logger, so its pod runs the agent on 9081, but the canary's Service is built without the
    logger and targets the model server's 8080 directly, so traffic sent to it is never logged."""
    predictor = {"model": MODEL, "logger": {"url": "http://127.0.0.1:1/", "mode": "all"}}
    canary = {"predictor": {"name": "challenger", "model": MODEL}, "trafficPercent": 10}
    cluster.apply(isvc("iris", "Standard", predictor, canary=[canary]), namespace)

    pods = wait_for(
        lambda: predictor_pods(cluster, namespace, "isvc.iris-challenger-predictor"),
        timeout=TIMEOUT,
        what="the canary's pod",
    )

    assert [port["containerPort"] for port in container(pods[0], "agent")["ports"]] == [9081]
    service = cluster.get("service", "iris-challenger-predictor", namespace=namespace)
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [8080]
    stable = cluster.get("service", "iris-predictor", namespace=namespace)
    assert [port["targetPort"] for port in stable["spec"]["ports"]] == [9081]


def test_kserves_agent_run_with_the_pods_arguments_logs_a_request_and_its_response_as_cloudevents(
    cluster: Cluster, namespace: str, kserve: KServe, tmp_path: Path
) -> None:
    predictor = {"model": MODEL, "logger": {"url": "http://127.0.0.1:1/", "mode": "all"}}
    cluster.apply(isvc("iris", "Standard", predictor), namespace)
    pods = wait_for(
        lambda: predictor_pods(cluster, namespace, "isvc.iris-predictor"), timeout=TIMEOUT, what="the pod"
    )
    agent = container(pods[0], "agent")

    # The agent built from KServe's module, as the pod runs it; only its ports and sink are local ones.
    with (
        serving(ModelServer) as model,
        serving(EventSink) as sink,
        running_agent(
            kserve.agent_binary, agent, tmp_path / "agent.log", model_port=model.port, sink_port=sink.port
        ) as port,
    ):
        answer = wait_for(
            lambda: predict(port, {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
            timeout=30,
            what="the agent to proxy",
        )
        assert answer == {"predictions": [0]}
        events = wait_for(
            lambda: sink.received if len(sink.received) >= 2 else None, timeout=30, what="2 events"
        )

    by_type = {headers["ce-type"]: (headers, body) for headers, body in events}
    request, response = (
        by_type["org.kubeflow.serving.inference.request"],
        by_type["org.kubeflow.serving.inference.response"],
    )
    assert request[0]["ce-id"] == response[0]["ce-id"]
    assert request[1] == {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    assert response[1] == {"predictions": [0]}
    for headers, _ in events:
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-inferenceservicename"] == "iris"
        assert headers["ce-namespace"] == namespace
        assert headers["ce-component"] == "predictor"


class Recording(http.server.ThreadingHTTPServer):
    received: list[tuple[dict[str, str], Any]]

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class ModelServer(http.server.BaseHTTPRequestHandler):
    """Answers every POST as a V1 model server would."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        reply(self, 200, {"predictions": [0]})

    def log_message(self, *args: Any) -> None:
        pass


class EventSink(http.server.BaseHTTPRequestHandler):
    """Records each CloudEvent (binary mode: ce-* headers, JSON body)."""

    server: Recording

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        self.server.received.append((headers, body))
        reply(self, 202, None)

    def log_message(self, *args: Any) -> None:
        pass


def reply(handler: http.server.BaseHTTPRequestHandler, code: int, body: Any) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[Recording]:
    server = Recording(("127.0.0.1", 0), handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_agent(
    binary: Path, spec: Mapping[str, Any], log_path: Path, *, model_port: int, sink_port: int
) -> Iterator[int]:
    """KServe's agent with the container's arguments and environment, its ports and log URL made local."""
    [port] = free_ports(1)
    args = with_flag(spec["args"], "--log-url", f"http://127.0.0.1:{sink_port}/")
    args = with_flag(args, "--component-port", str(model_port))
    args = with_flag(args, "--port", str(port))
    env = {e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}
    probe = json.loads(env["SERVING_READINESS_PROBE"])
    probe["tcpSocket"]["port"] = model_port
    env["SERVING_READINESS_PROBE"] = json.dumps(probe)
    # Its readiness socket is agent.sock in its working directory (hack/build-kserve.sh): the test's own
    # folder, not the checkout, where a killed agent's socket file would refuse the next run's.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )
    try:
        yield port
    finally:
        # On SIGTERM the agent drains for 30 s, as Knative's queue-proxy does; nothing here needs that.
        process.kill()
        process.wait()


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


def predict(port: int, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/iris:predict",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None
