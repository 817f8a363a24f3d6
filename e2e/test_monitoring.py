"""manifests/monitoring against the real thing: the API server accepts the PrometheusRule, PodMonitor and
dashboard ConfigMap (the Prometheus Operator's real CRDs), and every query of the Grafana dashboard returns
data from a real Prometheus that scrapes a real operator, a real modelloop model server and a real Seldon
model server while they work; the operator-down alert's expression fires once the operator is gone."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import QUICKSTART, ROOT, SHARED_CRDS, Cluster, free_port, running_operator, wait_for
from e2e.prometheus import Prometheus, running_prometheus
from e2e.serving import SERVER_BIN, answers_ok, file_tail, terminate_process

MONITORING = ROOT / "manifests" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
SELDON_BIN = ROOT / ".venvs" / "seldon" / "bin"
PROMETHEUS_OPERATOR_CRDS = SHARED_CRDS / "prometheus-operator"
HTTPROUTE_CRD = SHARED_CRDS / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
OPERATOR_JOB = "modelloop"  # what manifests/monitoring/podmonitor.yaml makes the operator's job label

# The drift and retraining panels get their data in e2e/test_drift_loop.py, where the drift detector runs
# and a DriftPolicy starts a retraining; here their queries must still be valid PromQL.
CHECKED_BY_THE_LOOP = {
    "Drift score by feature",
    "Drift p-value by feature",
    "Drift verdicts",
    "Feedback accuracy",
    "Estimated and realised performance",
    "Retrainings started and skipped",
    "Retrainings in the time range",
}
# What Grafana puts in for its own variables; a minute of 1 s scrapes holds many samples.
GRAFANA_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
# A pipeline the model servers load from model.joblib, as the trainer writes it; each server's own
# environment writes it, so that it unpickles with that environment's scikit-learn and numpy.
FIT_IRIS = """
import sys
import joblib
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

iris = datasets.load_iris(as_frame=True)
labels = [str(iris.target_names[i]) for i in iris.target]
forest = RandomForestClassifier(n_estimators=10, random_state=0)
model = make_pipeline(SimpleImputer(strategy="median"), forest)
joblib.dump(model.fit(iris.data, labels), sys.argv[1] + "/model.joblib")
"""
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def instantiate(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would, from ``values``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]

    return VARIABLE.sub(value, expr)


def test_the_api_server_accepts_the_alerts_the_pod_monitor_and_the_dashboard(cluster: Cluster) -> None:
    crds = sorted(PROMETHEUS_OPERATOR_CRDS.glob("*.yaml"))
    cluster.install_crds(*crds, what="the Prometheus Operator's CRDs")
    if cluster.kubectl("get", "namespace", "modelloop-system", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "modelloop-system")

    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(MONITORING), check=False)

    assert result.returncode == 0, result.stderr
    assert "prometheusrule.monitoring.coreos.com/modelloop serverside-applied" in result.stdout
    assert "podmonitor.monitoring.coreos.com/modelloop-operator serverside-applied" in result.stdout
    assert "configmap/modelloop-dashboard serverside-applied" in result.stdout


# --- the model servers, run here as their pods would run them -----------------------------------------


def write_iris_model(python: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    subprocess.run([str(python), "-c", FIT_IRIS, str(folder)], check=True, capture_output=True, timeout=120)
    return folder


@contextlib.contextmanager
def started(command: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A model server process in a session of its own (so that its workers stop with it); stopped at
    the end."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env=dict(env),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        terminate_process(process)


def wait_serving(process: subprocess.Popen[bytes], urls: list[str], log: Path) -> None:
    wait_for(
        lambda: process.poll() is not None or all(answers_ok(url) for url in urls),
        timeout=120,
        what=f"{process.args[0]} to serve",  # type: ignore[index]
    )
    assert process.poll() is None, f"the server exited:\n{file_tail(log)}"


def post(url: str, body: Any) -> int:
    """POST ``body`` as JSON; the status code of the answer."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@dataclass(frozen=True)
class ModelServer:
    """How one model server runs here: its command, environment, where it answers, where it is scraped."""

    command: list[str]
    env: dict[str, str]
    ready: list[str]
    predict: Callable[[list[list[float]]], int]
    metrics: str
    metrics_labels: dict[str, str]
    requests: str
    """A query of how many requests Prometheus has seen it answer."""


def kserve_server(model_dir: Path, home: Path) -> ModelServer:
    """runtimes/server's modelloop-serve, as its ClusterServingRuntime runs it for version 1 of iris."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return ModelServer(
        command=[
            str(SERVER_BIN / "modelloop-serve"),
            *("--model_name", "iris", "--model_dir", str(model_dir)),
            *("--http_port", str(port), "--model_version", "1"),
        ],
        env=base_env(home, SERVER_BIN),
        ready=[f"{url}/v1/models/iris"],
        predict=lambda rows: post(f"{url}/v1/models/iris:predict", {"instances": rows}),
        metrics=f"127.0.0.1:{port}",
        metrics_labels={"pod": "iris-predictor-0"},
        requests="sum(modelloop_server_requests_total)",
    )


def seldon_server(model_dir: Path, home: Path) -> ModelServer:
    """runtimes/seldon's server with what Seldon's operator and the image give a graph node
    (runtimes/seldon/README.md), as predictor v1 of the SeldonDeployment iris."""
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    parameters = [
        {"name": "model_uri", "type": "STRING", "value": str(model_dir)},
        {"name": "model_version", "type": "STRING", "value": "1"},
    ]
    return ModelServer(
        command=[
            str(SELDON_BIN / "seldon-core-microservice"),
            "modelloop_seldon.ModelloopModel",
            f"--http-port={port}",
            f"--metrics-port={metrics_port}",
        ],
        env=base_env(home, SELDON_BIN)
        | {
            "PREDICTIVE_UNIT_PARAMETERS": json.dumps(parameters),
            "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
            "GUNICORN_WORKERS": "1",
            "GRPC_WORKERS": "0",
            "INCLUDE_METRICS_IN_CLIENT_RESPONSE": "false",
            "SELDON_DEPLOYMENT_ID": "iris",
            "PREDICTOR_ID": "v1",
            "PREDICTOR_LABELS": json.dumps({"version": "1"}),
            "PREDICTIVE_UNIT_ID": "model",
        },
        ready=[f"{url}/health/ping", f"http://127.0.0.1:{metrics_port}/prometheus"],
        predict=lambda rows: post(f"{url}/api/v1.0/predictions", {"data": {"ndarray": rows}}),
        metrics=f"127.0.0.1:{metrics_port}",
        metrics_labels={"pod": "iris-v1-model-0", "__metrics_path__": "/prometheus"},
        requests="sum(modelloop_seldon_requests_total)",
    )


def base_env(home: Path, bin_dir: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin"}


# --- the dashboard's queries --------------------------------------------------------------------------


def model_version(number: int, accuracy: float) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": f"iris-v{number}"},
        "spec": {
            "modelName": "iris",
            "version": number,
            "artifact": {"uri": f"file:///artifacts/iris/{number}/model.joblib"},
            "framework": {"name": "sklearn"},
            "metrics": {"accuracy": accuracy},
        },
    }


def served(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The status of the quickstart's InferenceService."""
    return dict(cluster.get("inferenceservice.modelloop.dev", "iris", namespace).get("status") or {})


def make_objects_of_every_kind_and_a_rollout(cluster: Cluster, namespace: str) -> None:
    """The quickstart (a TrainingRun, a policy, a champion, an InferenceService, a DriftPolicy), then a
    second version that the InferenceService rolls out beside the first."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))
    wait_for(
        lambda: served(cluster, namespace).get("stableVersion") == 1, timeout=60, what="version 1 served"
    )
    cluster.apply(model_version(2, accuracy=0.97), namespace)
    wait_for(
        lambda: served(cluster, namespace).get("canaryVersion") == 2,
        timeout=60,
        what="the canary rollout of version 2",
    )


def send_traffic(prometheus: Prometheus, server: ModelServer) -> None:
    """Predictions in two rounds that Prometheus scrapes apart, so that rates over them are numbers; the
    second round has a request the server refuses (3 features, not 4), which counts as an error."""
    for _ in range(5):
        assert server.predict(ROWS) == 200
    wait_for(
        lambda: (prometheus.query(server.requests) or 0) >= 5, timeout=30, what="the first round scraped"
    )
    for _ in range(5):
        assert server.predict(ROWS) == 200
    assert server.predict([[1.0, 2.0, 3.0]]) == 400


def has_a_number(series: list[tuple[dict[str, str], float]]) -> bool:
    """Whether a query's answer has a series whose value is a number (a ratio of rates over a window with
    too few samples is NaN)."""
    return any(not math.isnan(value) for _, value in series)


def check_variables(prometheus: Prometheus, board: Mapping[str, Any], values: Mapping[str, str]) -> None:
    """Each query variable (``label_values(metric, label)``) offers the value the panels are checked with."""
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        metric, label = found.groups()
        wanted = values[variable["name"]]
        wait_for(
            lambda m=metric, la=label, w=wanted: any(
                labels.get(la) == w for labels, _ in prometheus.query_series(m)
            ),
            timeout=60,
            what=f"${variable['name']} to offer {wanted}",
        )


def check_panels(prometheus: Prometheus, board: Mapping[str, Any], values: Mapping[str, str]) -> None:
    """Every panel's queries return data (a number, in at least one series), but for the panels
    CHECKED_BY_THE_LOOP, whose queries must still be valid PromQL here."""
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            query = instantiate(target["expr"], values)
            if panel["title"] in CHECKED_BY_THE_LOOP:
                prometheus.query_series(query)  # Prometheus refuses invalid PromQL (PrometheusQueryError)
                continue
            wait_for(
                lambda q=query: has_a_number(prometheus.query_series(q)),
                timeout=60,
                what=f"data for the panel {panel['title']!r}: {query}",
            )


@pytest.mark.skipif(
    not (SERVER_BIN / "modelloop-serve").exists() or not (SELDON_BIN / "seldon-core-microservice").exists(),
    reason="needs the model servers' environments: make server-venv seldon-venv",
)
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    board = dashboard()
    assert set(CHECKED_BY_THE_LOOP) <= {p["title"] for p in board["panels"]}, (
        "CHECKED_BY_THE_LOOP names unknown panels"
    )
    # The quickstart serves in KServe's Standard mode.
    cluster.install_crds(HTTPROUTE_CRD, what="the HTTPRoute CRD")
    servers = [
        kserve_server(write_iris_model(SERVER_BIN / "python", tmp_path / "kserve-model"), tmp_path),
        seldon_server(write_iris_model(SELDON_BIN / "python", tmp_path / "seldon-model"), tmp_path),
    ]
    metrics_address = f"127.0.0.1:{free_port()}"
    values = GRAFANA_VALUES | {"job": OPERATOR_JOB, "namespace": namespace}
    [operator_down] = [r["expr"] for r in alert_rules() if r["alert"] == "ModelloopOperatorDown"]

    with contextlib.ExitStack() as stack:
        prometheus = stack.enter_context(running_prometheus(tmp_path / "prometheus"))
        # The servers start (seconds) while the operator works.
        processes = [
            stack.enter_context(started(s.command, s.env, tmp_path / f"server-{i}.log"))
            for i, s in enumerate(servers)
        ]
        # Labelled as the PodMonitor and Prometheus's Kubernetes discovery label them.
        operator_labels = {"job": OPERATOR_JOB, "namespace": namespace, "pod": "modelloop-operator-0"}
        prometheus.set_targets(
            [
                (metrics_address, operator_labels),
                *((s.metrics, {"namespace": namespace, **s.metrics_labels}) for s in servers),
            ]
        )
        log = tmp_path / "operator.log"
        with running_operator(cluster, namespace, log, extra_args=["--metrics", metrics_address]):
            make_objects_of_every_kind_and_a_rollout(cluster, namespace)
            for i, (server, process) in enumerate(zip(servers, processes, strict=True)):
                wait_serving(process, server.ready, tmp_path / f"server-{i}.log")
                send_traffic(prometheus, server)

            check_variables(prometheus, board, values)
            check_panels(prometheus, board, values)
            assert not prometheus.query_series(operator_down), "ModelloopOperatorDown fires while it is up"

        # The operator is gone: its target goes down, and the alert's expression sees it.
        wait_for(lambda: prometheus.query_series(operator_down), timeout=60, what="ModelloopOperatorDown")


def alert_rules() -> list[dict[str, Any]]:
    [rule] = list(yaml.safe_load_all(ALERTS.read_text()))
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]
