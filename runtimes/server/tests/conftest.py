"""Shared set-up: real artifacts in the trainer's layout, and ``modelloop-serve`` run as a process.

Artifacts are written the way runtimes/trainer writes them (``model.joblib``; ``model.pt`` with
tensors only plus ``model.json``), from scikit-learn's bundled datasets, so nothing is downloaded.
"""

from __future__ import annotations

import json
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
import numpy as np
import pandas as pd
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

SERVE = str(Path(sys.executable).with_name("modelloop-serve"))
STARTUP_TIMEOUT = 60.0
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


@dataclass(frozen=True)
class TorchArtifact:
    """A TorchMLP artifact folder and what it should predict, computed apart from the server."""

    folder: Path
    predict: Callable[[np.ndarray], np.ndarray]


def write_torch_mlp(
    folder: Path, features: pd.DataFrame, target: np.ndarray, *, task: str, hidden_sizes: list[int]
) -> TorchArtifact:
    """Train a small MLP and write it as the trainer's TorchMLP does.

    That is model.pt (the network's state and the input preprocessing, tensors only) and model.json.
    """
    torch.manual_seed(0)
    x = features.to_numpy(dtype=np.float32)
    fill = np.nanmedian(x, axis=0).astype(np.float32)
    mean = x.mean(axis=0).astype(np.float32)
    std = x.std(axis=0).astype(np.float32)
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for size in hidden_sizes:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    architecture: dict[str, Any] = {
        "format": "modelloop-torch-mlp/v1",
        "task": task,
        "n_features": x.shape[1],
        "feature_names": [str(name) for name in features.columns],
        "hidden_sizes": hidden_sizes,
        "activation": "relu",
        "torch_version": str(torch.__version__),
    }
    inputs = torch.as_tensor((x - mean) / std)
    if task == "classification":
        classes, encoded = np.unique(target, return_inverse=True)
        outputs = torch.as_tensor(encoded, dtype=torch.long)
        architecture.update(n_outputs=len(classes), classes=[str(label) for label in classes])
        loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss()
    else:
        y_mean, y_std = float(target.mean()), float(target.std())
        outputs = torch.as_tensor((target - y_mean) / y_std, dtype=torch.float32).unsqueeze(1)
        architecture.update(n_outputs=1, target_mean=y_mean, target_std=y_std)
        loss_fn = torch.nn.MSELoss()
    layers.append(torch.nn.Linear(width, architecture["n_outputs"]))
    network = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        loss_fn(network(inputs), outputs).backward()
        optimizer.step()
    network.eval()
    state = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}
    state.update(
        {
            f"preprocess.{name}": torch.as_tensor(value)
            for name, value in (("fill", fill), ("mean", mean), ("std", std))
        }
    )
    torch.save(state, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(architecture, indent=2, sort_keys=True) + "\n")

    def predict(rows: np.ndarray) -> np.ndarray:
        z = (np.where(np.isnan(rows), fill, rows).astype(np.float32) - mean) / std
        with torch.no_grad():
            scores = network(torch.as_tensor(z, dtype=torch.float32)).numpy()
        if task == "classification":
            return np.asarray(architecture["classes"])[scores.argmax(axis=1)]
        return scores[:, 0].astype(np.float64) * architecture["target_std"] + architecture["target_mean"]

    return TorchArtifact(folder, predict)


@pytest.fixture(scope="session")
def torch_iris_artifact(tmp_path_factory: pytest.TempPathFactory, iris_frame: pd.DataFrame) -> TorchArtifact:
    """A TorchMLP classifier on iris in the trainer's layout."""
    return write_torch_mlp(
        tmp_path_factory.mktemp("iris-torch"),
        iris_frame.drop(columns=["species"]),
        iris_frame["species"].to_numpy(),
        task="classification",
        hidden_sizes=[16, 8],
    )


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
