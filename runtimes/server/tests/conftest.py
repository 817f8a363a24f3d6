"""Shared set-up: real artifacts in the trainer's layout, and ``modelloop-serve`` run as a process.

scikit-learn artifacts are written here the way runtimes/trainer writes them (``model.joblib``);
TorchMLP artifacts (``model.onnx``, with ``model.pt`` + ``model.json``) are trained and exported by the
trainer itself, run from its environment (.venvs/trainer; the tests that need one skip without it), and
its PyTorch model says what they should predict (``modelloop_contracts.testing``, shared with the Seldon
server's tests). The data are scikit-learn's bundled datasets, so nothing
is downloaded.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import pandas as pd
import pytest
from modelloop_contracts.testing import TrainedMLP, train_mlp
from prometheus_client.parser import text_string_to_metric_families
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

SERVE = str(Path(sys.executable).with_name("modelloop-serve"))
TRAINER = Path(__file__).resolve().parents[3] / ".venvs" / "trainer" / "bin" / "modelloop-train"
STARTUP_TIMEOUT = 180.0  # a deadline, not a pause: generous for a loaded 2-core machine
READY_LINE = "Uvicorn running on"


@pytest.fixture(scope="session")
def iris_frame() -> pd.DataFrame:
    """Iris as the trainer reads it: 4 named numeric features and a string ``species`` target."""
    bunch = datasets.load_iris(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    frame["species"] = [str(bunch.target_names[index]) for index in bunch.target]
    return frame


@pytest.fixture(scope="session")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory, iris_frame: pd.DataFrame) -> Path:
    """A classifier pipeline (median imputer, random forest) in ``model.joblib``, as the trainer writes it."""
    folder = tmp_path_factory.mktemp("iris-sklearn")
    pipeline = make_pipeline(
        SimpleImputer(strategy="median"), RandomForestClassifier(n_estimators=20, random_state=0)
    )
    pipeline.fit(iris_frame.drop(columns=["species"]), iris_frame["species"])
    joblib.dump(pipeline, folder / "model.joblib")
    return folder


@pytest.fixture(scope="session")
def diabetes_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Ridge regressor on diabetes in ``model.joblib``."""
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


@dataclass
class RunningServer:
    """A ``modelloop-serve`` process, its base URL, and its output (drained as it comes)."""

    process: subprocess.Popen[str]
    url: str
    name: str
    output: list[str] = field(default_factory=list)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics, keyed by its name and labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        """One sample's value; 0 when the series does not exist (yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def v1(self, instances: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/models/{self.name}:predict", json={"instances": instances}, timeout=10
        )

    def v2(self, inputs: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/{self.name}/infer", json={"inputs": inputs}, timeout=10)


def start_server(
    model_dir: Path, *args: str, name: str = "model", env: dict[str, str] | None = None
) -> RunningServer:
    """Start ``modelloop-serve`` on a free port and return once Uvicorn says it is listening."""
    port = free_port()
    process = subprocess.Popen(
        [SERVE, f"--model_name={name}", f"--model_dir={model_dir}", f"--http_port={port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    server = RunningServer(process, f"http://127.0.0.1:{port}", name)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        # Keeps reading for the server's whole life: a full pipe would block its logging.
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            stop_server(server)
            raise TimeoutError(
                f"modelloop-serve did not start in {STARTUP_TIMEOUT:.0f} s:\n{''.join(server.output)}"
            ) from None
        if line is None:
            process.wait(timeout=10)
            raise RuntimeError(f"modelloop-serve exited with {process.returncode}:\n{''.join(server.output)}")
        if READY_LINE in line:
            return server


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start servers with :func:`start_server`; all of them are stopped at the end of the module."""
    started: list[RunningServer] = []

    def starter(model_dir: Path, *args: str, **kwargs: Any) -> RunningServer:
        server = start_server(model_dir, *args, **kwargs)
        started.append(server)
        return server

    yield starter
    for server in started:
        stop_server(server)
