"""The building blocks of the canary e2e tests, on their own: a real Prometheus scraping real servers, the
stand-in kubelet for model-server pods, and the stand-in gateway's load generator. No operator runs."""

from __future__ import annotations

import subprocess
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from e2e.harness import SHARED_CRDS, Cluster, wait_for
from e2e.prometheus import (
    Prometheus,
    PrometheusQueryError,
    PrometheusUnavailable,
    label_name,
    running_prometheus,
)
from e2e.serving import SERVER_BIN, ServingKubelet, UnsupportedStorageUri, initialize_storage
from e2e.traffic import (
    Backend,
    LoadGenerator,
    WeightedPicker,
    fixed_weights,
    httproute_weights,
    knative_weights,
)

# A stand-in for `modelloop-serve` with the same arguments, environment, endpoints and request counter:
# it proves that the stand-in kubelet runs what the pod says, with what the storage initializer fetched.
STAND_IN_SERVER = textwrap.dedent(
    """
    import argparse, json, os, pathlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name")
    parser.add_argument("--model_dir")
    parser.add_argument("--http_port", type=int)
    args = parser.parse_args()
    weight = float((pathlib.Path(args.model_dir) / "weight.txt").read_text())
    version = os.environ["MODELLOOP_MODEL_VERSION"]
    requests = Counter("modelloop_server_requests", "", ["model", "version", "protocol", "code"])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, body, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v2/health/ready":
                self.answer(200, {"ready": True})
            elif self.path == "/metrics":
                self.answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self.answer(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != f"/v1/models/{args.model_name}:predict":
                return self.answer(404, {"error": "no such model"})
            try:
                predictions = [weight * sum(float(x) for x in row) for row in body["instances"]]
            except (TypeError, ValueError):
                code, answer = 400, {"error": "each instance must be a list of numbers"}
            else:
                code, answer = 200, {"predictions": predictions}
            requests.labels(args.model_name, version, "v1", str(code)).inc()
            self.answer(code, answer)

    ThreadingHTTPServer(("127.0.0.1", args.http_port), Handler).serve_forever()
    """
)


# A model for the real server: y = x0 + 2 x1, as the trainer would save it.
FIT_LINEAR_MODEL = textwrap.dedent(
    """
    import sys, joblib
    from sklearn.linear_model import LinearRegression
    joblib.dump(LinearRegression().fit([[0, 0], [1, 0], [0, 1]], [0, 1, 2]), sys.argv[1])
    """
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus, stopped at the end."""
    with running_prometheus(tmp_path / "prometheus") as running:
        yield running


@pytest.fixture
def counter_server() -> Iterator[tuple[str, Counter]]:
    """A small real HTTP server exporting one counter, as (host:port, counter)."""
    registry = CollectorRegistry()
    counter = Counter("harness_demo_requests", "Requests of the demo exporter.", registry=registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_file_sd_targets_and_tells_no_data_from_no_answer(
    prometheus: Prometheus, counter_server: tuple[str, Counter]
) -> None:
    address, counter = counter_server
    counter.inc(7)

    prometheus.set_targets(
        [(address, {"pod": "demo-0", label_name("serving.kserve.io/inferenceservice"): "demo"})]
    )

    expr = 'harness_demo_requests_total{pod="demo-0", serving_kserve_io_inferenceservice="demo"}'
    assert wait_for(lambda: prometheus.query(expr) == 7, timeout=30, what="the counter scraped")
    assert prometheus.query("harness_no_such_metric") is None
    with pytest.raises(PrometheusQueryError):
        prometheus.query("sum(")

    url = prometheus.url
    prometheus.stop()
    with pytest.raises(PrometheusUnavailable):
        prometheus.query(expr)

    prometheus.start()
    assert prometheus.url == url
    # The data survives the restart, and scraping goes on from the same targets file.
    assert prometheus.query(expr) == 7
    counter.inc(3)
    assert wait_for(lambda: prometheus.query(expr) == 10, timeout=30, what="the counter scraped again")


def test_storage_initializer_copies_local_artifacts_and_refuses_remote_ones(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.joblib").write_text("model")

    initialize_storage(artifact.as_uri(), tmp_path / "from-uri")
    initialize_storage(str(artifact / "model.joblib"), tmp_path / "from-file")

    assert (tmp_path / "from-uri" / "model.joblib").read_text() == "model"
    assert (tmp_path / "from-file" / "model.joblib").read_text() == "model"
    with pytest.raises(UnsupportedStorageUri, match="s3://bucket/model"):
        initialize_storage("s3://bucket/model", tmp_path / "remote")


def predictor_pod(name: str, track: str, version: str, artifact: Path, script: Path) -> dict[str, Any]:
    """A pod shaped like KServe's predictor pods: a storage initializer, a kserve-container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "serving.kserve.io/inferenceservice": "demo",
                "component": "predictor",
                "track": track,
            },
        },
        "spec": {
            "initContainers": [
                {
                    "name": "storage-initializer",
                    "image": "kserve/storage-initializer:v0.20.0",
                    "args": [artifact.as_uri(), "/mnt/models"],
                }
            ],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "modelloop/server:dev",
                    "command": ["python3", str(script)],
                    "args": ["--model_name=demo", "--model_dir=/mnt/models", "--http_port=8080"],
                    "env": [
                        {"name": "MODELLOOP_MODEL_VERSION", "value": version},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ],
                }
            ],
        },
    }


def test_serving_kubelet_serves_predictor_pods_and_load_follows_the_httproute(
    cluster: Cluster, namespace: str, prometheus: Prometheus, tmp_path: Path
) -> None:
    cluster.install_crds(
        SHARED_CRDS / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml", what="the HTTPRoute CRD"
    )
    script = tmp_path / "stand_in_server.py"
    script.write_text(STAND_IN_SERVER)
    artifacts = {}
    for track, weight in (("stable", "1"), ("canary", "2")):
        artifacts[track] = tmp_path / f"artifact-{track}"
        artifacts[track].mkdir()
        (artifacts[track] / "weight.txt").write_text(weight)
    cluster.apply(
        [
            predictor_pod("demo-stable", "stable", "v1", artifacts["stable"], script),
            predictor_pod("demo-canary", "canary", "v2", artifacts["canary"], script),
            *(service(track) for track in ("stable", "canary")),
            http_route({"stable": 100, "canary": 0}),
        ],
        namespace,
    )

    kubelet = ServingKubelet(cluster, namespace, tmp_path / "kubelet", prometheus)
    load = LoadGenerator(
        kubelet, httproute_weights(cluster, namespace, "demo"), rate_per_s=20, payload=[1.0, 2.0]
    )
    with kubelet, load:
        endpoints = kubelet.wait_serving(["demo-stable", "demo-canary"], timeout=120)
        assert endpoints["demo-canary"].labels["track"] == "canary"
        assert "POD_NAME" in " ".join(kubelet.notes()["demo-canary"])
        wait_for(
            lambda: prometheus.targets_up([e.url.removeprefix("http://") for e in endpoints.values()]),
            timeout=30,
            what="both servers scraped",
        )

        # All the weight on stable: the canary gets nothing.
        wait_for(lambda: load.sent_to("demo-stable") >= 20, timeout=60, what="requests to stable")
        assert load.sent_to("demo-canary") == 0
        stable_ok = 'sum(modelloop_server_requests_total{pod="demo-stable", version="v1", code="200"})'
        assert wait_for(
            lambda: (prometheus.query(stable_ok) or 0) >= 10, timeout=30, what="stable's requests"
        )

        # Half the weight on a canary that rejects half of what it gets: Prometheus sees its 400s.
        load.set_fault("demo-canary", 0.5)
        cluster.apply(http_route({"stable": 50, "canary": 50}), namespace)
        canary_errors = (
            'sum(modelloop_server_requests_total{serving_kserve_io_inferenceservice="demo", track="canary",'
            ' version="v2", code="400"})'
        )
        assert wait_for(lambda: (prometheus.query(canary_errors) or 0) >= 5, timeout=60, what="canary's 400s")
        responses = load.responses()
        assert responses.get(("demo-canary", 400), 0) > 0
        assert responses.get(("demo-canary", 200), 0) > 0
        assert responses.get(("demo-stable", 400), 0) == 0

        # A deleted pod's server stops, and Prometheus no longer scrapes it.
        canary_address = endpoints["demo-canary"].url.removeprefix("http://")
        cluster.kubectl("delete", "pod", "demo-canary", "-n", namespace, "--wait=false")
        wait_for(
            lambda: "demo-canary" not in kubelet.endpoints(), timeout=60, what="the canary's server stopped"
        )
        wait_for(
            lambda: canary_address not in {t["labels"]["instance"] for t in prometheus.active_targets()},
            timeout=30,
            what="the canary's target removed",
        )
        assert kubelet.failures() == {}


@pytest.mark.skipif(not (SERVER_BIN / "modelloop-serve").exists(), reason="needs the server's environment")
def test_serving_kubelet_runs_the_real_model_server_with_the_pods_arguments(
    cluster: Cluster, namespace: str, prometheus: Prometheus, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    subprocess.run(
        [str(SERVER_BIN / "python"), "-c", FIT_LINEAR_MODEL, str(artifact / "model.joblib")],
        check=True,
        timeout=120,
    )
    pod = predictor_pod("demo-real", "stable", "v7", artifact, script=tmp_path / "unused")
    container = pod["spec"]["containers"][0]
    container["command"] = ["modelloop-serve"]  # as modelloop's ClusterServingRuntime has it
    cluster.apply(pod, namespace)
    kubelet = ServingKubelet(cluster, namespace, tmp_path / "kubelet", prometheus)
    load = LoadGenerator(kubelet, fixed_weights({Backend.of("demo", {"track": "stable"}): 1}), 1, [1.0, 2.0])

    with kubelet:
        kubelet.wait_serving(["demo-real"], timeout=180)
        assert [load.tick() for _ in range(3)] == [("demo-real", 200)] * 3
        load.set_fault("demo-real", 1.0)
        assert load.tick() == ("demo-real", 400)

        series = 'modelloop_server_requests_total{pod="demo-real", model="demo", version="v7", code="%s"}'
        assert wait_for(lambda: prometheus.query(series % 200) == 3, timeout=30, what="the 200s scraped")
        assert wait_for(lambda: prometheus.query(series % 400) == 1, timeout=30, what="the 400 scraped")


def test_knative_weights_follow_the_inferenceservice_traffic_status(
    cluster: Cluster, namespace: str, kserve: Any, knative: Any
) -> None:
    """KServe's real controller with the Knative stand-in: a 10% canary reads as 90/10 by revision."""
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "demo", "annotations": {"serving.kserve.io/deploymentMode": "Knative"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/1"}}},
    }
    cluster.apply(service, namespace)
    reader = knative_weights(cluster, namespace, "demo")
    wait_for(lambda: reader(), timeout=60, what="the first revision's traffic")
    service["spec"]["predictor"]["canaryTrafficPercent"] = 10
    service["spec"]["predictor"]["model"]["storageUri"] = "s3://m/2"
    cluster.apply(service, namespace)

    def split() -> dict[str, int] | None:
        weights = {backend.name: weight for backend, weight in reader().items()}
        return weights if len(weights) == 2 else None

    weights = wait_for(split, timeout=60, what="the 90/10 split")

    assert weights == {"demo-predictor-00001": 90, "demo-predictor-00002": 10}
    canary = next(b for b in reader() if b.name == "demo-predictor-00002")
    assert canary.matches({"serving.knative.dev/revision": "demo-predictor-00002", "component": "predictor"})
    assert not canary.matches({"serving.knative.dev/revision": "demo-predictor-00001"})


def test_weighted_picker_splits_exactly_by_weight_and_never_picks_weight_zero() -> None:
    stable, canary, idle = (
        Backend.of("stable", {"track": "stable"}),
        Backend.of("canary", {}),
        Backend.of("x", None),
    )
    picker = WeightedPicker()

    picks = [picker.pick({stable: 90, canary: 10, idle: 0}) for _ in range(100)]

    assert picks.count(canary) == 10
    assert picks.count(stable) == 90
    assert picker.pick({stable: 0}) is None
    assert not idle.matches({})


def service(track: str) -> dict[str, Any]:
    """A Service selecting one track's predictor pods, as KServe's Standard mode makes per revision."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"demo-{track}"},
        "spec": {
            "selector": {"serving.kserve.io/inferenceservice": "demo", "track": track},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


def http_route(weights: dict[str, int]) -> dict[str, Any]:
    """The HTTPRoute that splits demo's traffic between the tracks' Services."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "demo"},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": f"demo-{track}", "port": 80, "weight": weight}
                        for track, weight in weights.items()
                    ]
                }
            ]
        },
    }
