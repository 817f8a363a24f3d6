"""Shared set-up: artifacts in the trainer's layout, and ``seldon-core-microservice`` run as a process.

Artifacts come from scikit-learn's bundled datasets (nothing is downloaded): ``model.joblib`` is written
here as runtimes/trainer writes it; TorchMLP artifacts (``model.onnx``, with ``model.pt`` + ``model.json``)
are trained and exported by the trainer itself, run from its environment (.venvs/trainer), and its
PyTorch model says what they should predict (``modelloop_contracts.testing``, shared with the KServe
server's tests). Servers run with the environment the image sets (see the
Dockerfile), on free ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import requests
from modelloop_contracts.testing import TrainedMLP, train_mlp
from prometheus_client.parser import text_string_to_metric_families
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

MICROSERVICE = str(Path(sys.executable).with_name("seldon-core-microservice"))
INTERFACE = "modelloop_seldon.ModelloopModel"
TRAINER = Path(__file__).resolve().parents[3] / ".venvs" / "trainer" / "bin" / "modelloop-train"
# What the Dockerfile sets: the metrics path Seldon's operator uses, gRPC off, lean answers.
IMAGE_ENV = {
    "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
    "GRPC_WORKERS": "0",
    "INCLUDE_METRICS_IN_CLIENT_RESPONSE": "false",
}
# Seldon's operator sets these on a graph's container; the tests choose them, or leave them unset.
SELDON_ENV = (
    "SELDON_DEPLOYMENT_ID",
    "PREDICTOR_ID",
    "PREDICTOR_LABELS",
    "PREDICTIVE_UNIT_ID",
    "PREDICTIVE_UNIT_IMAGE",
    "MODELLOOP_MODEL_VERSION",
    "MODELLOOP_ARTIFACT_DIGEST",
    "MODELLOOP_TERMINATION_LOG",
    "MODELLOOP_SERVE_PROBABILITIES",
)
STARTUP_TIMEOUT = 180.0  # a deadline, not a pause: generous for a loaded 2-core machine


@pytest.fixture(scope="session")
def iris_frame() -> pd.DataFrame:
    """Iris as the trainer reads it: 4 named numeric features and a string ``species`` target."""
    bunch = datasets.load_iris(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    frame["species"] = [str(bunch.target_names[index]) for index in bunch.target]
    return frame


@pytest.fixture(scope="session")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory, iris_frame: pd.DataFrame) -> Path:
    """A classifier pipeline (median imputer, random forest) with string labels, in ``model.joblib``."""
    folder = tmp_path_factory.mktemp("iris-sklearn")
    pipeline = make_pipeline(
        SimpleImputer(strategy="median"), RandomForestClassifier(n_estimators=20, random_state=0)
    )
    pipeline.fit(iris_frame.drop(columns=["species"]), iris_frame["species"])
    joblib.dump(pipeline, folder / "model.joblib")
    return folder


@pytest.fixture(scope="session")
def diabetes_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Ridge regressor on diabetes (no imputer) in ``model.joblib``."""
    folder = tmp_path_factory.mktemp("diabetes-sklearn")
    features, target = datasets.load_diabetes(return_X_y=True, as_frame=True)
    joblib.dump(Ridge(alpha=0.1).fit(features, target), folder / "model.joblib")
    return folder


@pytest.fixture(scope="session")
def trained_iris_mlp(tmp_path_factory: pytest.TempPathFactory, iris_frame: pd.DataFrame) -> TrainedMLP:
    """A TorchMLP classifier on iris (labels as names, from a CSV file), trained by the trainer."""
    data = tmp_path_factory.mktemp("iris-data") / "iris.csv"
    iris_frame.rename(columns={"species": "target"}).to_csv(data, index=False)
    params = {"task": "classification", "hidden_sizes": [16], "epochs": 100, "lr": 0.03, "batch_size": 32}
    features = iris_frame.drop(columns=["species"])
    return train_mlp(TRAINER, tmp_path_factory.mktemp("iris-mlp"), data.as_uri(), features, params)


@pytest.fixture(scope="session")
def trained_diabetes_mlp(tmp_path_factory: pytest.TempPathFactory) -> TrainedMLP:
    """A TorchMLP regressor on diabetes, trained by the trainer."""
    features = datasets.load_diabetes(as_frame=True).data
    params = {"task": "regression", "hidden_sizes": [8], "epochs": 50, "lr": 0.01, "batch_size": 64}
    return train_mlp(TRAINER, tmp_path_factory.mktemp("diabetes-mlp"), "sklearn://diabetes", features, params)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Samples = list[tuple[str, dict[str, str], float]]


@dataclass
class RunningServer:
    """A ``seldon-core-microservice`` process, its REST and metrics URLs, and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log: Path
    grpc_port: int | None = None

    def predict(self, body: Any) -> requests.Response:
        """POST ``body`` (JSON) to Seldon's prediction endpoint."""
        return requests.post(f"{self.url}/api/v1.0/predictions", json=body, timeout=10)

    def predict_rows(self, rows: Any, **data: Any) -> requests.Response:
        return self.predict({"data": {"ndarray": rows, **data}})

    def samples(self) -> Samples:
        """Every sample the metrics server exports: name, labels, value."""
        text = requests.get(self.metrics_url, timeout=10).text
        return [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``; 0 when there are none."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples()
            if sample_name == name and labels.items() <= sample_labels.items()
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    log_dir: Path,
    model_uri: str | Path,
    *,
    version: str | int | None = None,
    env: dict[str, str] | None = None,
    grpc: bool = False,
    wait: bool = True,
) -> RunningServer:
    """Start the wrapper as Seldon's operator runs the image, and return once it answers."""
    parameters: list[dict[str, str]] = [{"name": "model_uri", "type": "STRING", "value": str(model_uri)}]
    if version is not None:
        kind = "INT" if isinstance(version, int) else "STRING"
        parameters.append({"name": "model_version", "type": kind, "value": str(version)})
    http_port, metrics_port = free_port(), free_port()
    child_env = {key: value for key, value in os.environ.items() if key not in SELDON_ENV}
    child_env |= IMAGE_ENV | {"PREDICTIVE_UNIT_PARAMETERS": json.dumps(parameters)} | (env or {})
    grpc_port = None
    if grpc:
        grpc_port = free_port()
        child_env |= {"GRPC_WORKERS": "1", "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc_port)}
    command = [MICROSERVICE, INTERFACE, f"--http-port={http_port}", f"--metrics-port={metrics_port}"]
    log = log_dir / f"seldon-{http_port}.log"
    with log.open("wb") as output:
        # A session of its own: the wrapper forks a metrics server, a multiprocessing manager and
        # gunicorn workers, which stop_server ends together.
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=log_dir,
            start_new_session=True,
        )
    server = RunningServer(
        process,
        f"http://127.0.0.1:{http_port}",
        f"http://127.0.0.1:{metrics_port}/prometheus",
        log,
        grpc_port,
    )
    if wait:
        try:
            wait_until_serving(server)
        except Exception:
            stop_server(server)
            raise
    return server


def wait_until_serving(server: RunningServer, timeout: float = STARTUP_TIMEOUT) -> None:
    """Return once the REST worker and the metrics server both answer; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    pending = [f"{server.url}/health/ping", server.metrics_url]
    while pending:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not answer in {timeout:.0f} s:\n{server.output()}")
        try:
            if requests.get(pending[0], timeout=5).status_code == 200:
                pending.pop(0)
                continue
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or a worker still loading the model (slow on a busy machine)
        time.sleep(0.1)


def stop_server(server: RunningServer) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL for what outlives 20 s."""
    group = server.process.pid
    try:
        os.killpg(group, signal.SIGTERM)
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        server.process.wait(timeout=10)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(group, signal.SIGKILL)
    if server.process.poll() is None:
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with :func:`start_server`; every one is stopped at the end of the module."""
    started: list[RunningServer] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def starter(model_uri: str | Path, **kwargs: Any) -> RunningServer:
        server = start_server(log_dir, model_uri, **kwargs)
        started.append(server)
        return server

    yield starter
    for server in started:
        stop_server(server)
