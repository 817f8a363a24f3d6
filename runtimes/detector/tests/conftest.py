"""Shared set-up: reference files like the trainer's, real CloudEvents, ``modelloop-detector`` as a process.

Data are numpy draws with fixed seeds (nothing is downloaded): four numeric features, and for the
categorical tests a ``colour`` column.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pandas as pd
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from modelloop_detector.artifacts import ArtifactRoots

DETECTOR = str(Path(sys.executable).with_name("modelloop-detector"))
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
STARTUP_TIMEOUT = 180.0  # a deadline, not a pause: generous for a loaded 2-core machine
REQUEST_TIMEOUT = 180


def numeric_rows(count: int, *, seed: int, shift: float = 0.0) -> np.ndarray:
    """``count`` rows of the four features, drawn around fixed means (plus ``shift`` each)."""
    rng = np.random.default_rng(seed)
    means = np.array([5.8, 3.0, 3.7, 1.2])
    return np.round(rng.normal(means + shift, [0.8, 0.4, 1.7, 0.7], size=(count, len(FEATURES))), 3)


def write_reference(folder: Path, rows: np.ndarray, columns: Sequence[str] = FEATURES) -> str:
    """The reference CSV the trainer writes; returns its file:// URI."""
    path = folder / "reference.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False, lineterminator="\n")
    return path.as_uri()


def write_predictions(folder: Path, predictions: Sequence[Any]) -> str:
    """A predictions file (one ``prediction`` column); returns its file:// URI."""
    path = folder / "reference_predictions.csv"
    pd.DataFrame({"prediction": list(predictions)}).to_csv(path, index=False, lineterminator="\n")
    return path.as_uri()


Mode = Literal["binary", "structured"]


def inference_event(
    kind: Literal["request", "response"],
    event_id: str,
    body: Any,
    *,
    namespace: str = "ml",
    service: str = "iris",
    endpoint: str = "default",
) -> CloudEvent:
    """A CloudEvent as KServe's payload logger makes it."""
    attributes = {
        "type": REQUEST if kind == "request" else RESPONSE,
        "source": f"http://localhost:9081/{service}",
        "id": event_id,
        "inferenceservicename": service,
        "namespace": namespace,
        "component": "predictor",
        "endpoint": endpoint,
    }
    return CloudEvent(attributes, json.dumps(body).encode())


def encode(event: CloudEvent, mode: Mode) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and body of ``event`` in ``mode``."""
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    if mode == "binary":
        headers["content-type"] = "application/json"
    return dict(headers), body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Detector:
    """A running ``modelloop-detector`` and a client for it."""

    process: subprocess.Popen[bytes]
    url: str
    client: httpx.Client

    def post_event(self, event: CloudEvent, mode: Mode = "binary") -> httpx.Response:
        headers, body = encode(event, mode)
        return self.client.post("/", headers=headers, content=body)

    def send_pair(
        self,
        event_id: str,
        request: Any,
        response: Any,
        *,
        mode: Mode = "binary",
        response_first: bool = False,
        **where: str,
    ) -> None:
        events = [
            inference_event("request", event_id, request, **where),
            inference_event("response", event_id, response, **where),
        ]
        for event in reversed(events) if response_first else events:
            reply = self.post_event(event, mode)
            assert reply.status_code == 202, reply.text

    def send_rows(
        self, rows: np.ndarray, predictions: Sequence[Any], *, prefix: str, batch: int = 10, **where: str
    ) -> list[str]:
        """Send ``rows`` as V1 requests of ``batch`` rows; returns the request ids."""
        ids = []
        for start in range(0, len(rows), batch):
            event_id = f"{prefix}-{start}"
            self.send_pair(
                event_id,
                {"instances": rows[start : start + batch].tolist()},
                {"predictions": list(predictions[start : start + batch])},
                **where,
            )
            ids.append(event_id)
        return ids

    def register(self, service: str, body: dict[str, Any], namespace: str = "ml") -> httpx.Response:
        return self.client.put(f"/v1/services/{namespace}/{service}", json=body)

    def status(self, service: str, namespace: str = "ml") -> dict[str, Any]:
        reply = self.client.get(f"/v1/services/{namespace}/{service}")
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def wait_for(
        self, service: str, check: Any, *, timeout: float = 20.0, namespace: str = "ml"
    ) -> dict[str, Any]:
        """Poll the service's state until ``check(state)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status(service, namespace)
            if check(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last state: {json.dumps(state, indent=1)}")
            time.sleep(0.05)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of /metrics by sample name."""
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples


# Every file the tests write is under pytest's base temporary folder: the detectors' artifact root.
ROOTS_VARIABLE = "MODELLOOP_DETECTOR_ARTIFACT_ROOTS"


def start_detector(*args: str, env: dict[str, str] | None = None) -> Detector:
    """``modelloop-detector`` as a process, with ``env`` on top of the tests' (which names the artifact
    root that the ``artifact_root`` fixture set)."""
    port = free_port()
    process = subprocess.Popen(
        [DETECTOR, "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    # A deadline per request, not a pause: the first registration loads the detectors' libraries, which
    # took over 30 s with the trainer's tests running beside these (`make checks` runs two at a time).
    client = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"modelloop-detector exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        try:
            if client.get("/healthz").status_code == 200:
                return Detector(process, url, client)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("modelloop-detector did not start")
        time.sleep(0.1)


def stop_detector(detector: Detector) -> int:
    detector.client.close()
    detector.process.send_signal(signal.SIGTERM)
    try:
        return detector.process.wait(timeout=20)
    finally:
        if detector.process.stderr:
            detector.process.stderr.close()


FAST_ARGS = (
    "--window-rows", "200",
    "--min-rows", "50",
    "--evaluate-every-rows", "50",
    "--evaluate-every-seconds", "0.5",
    "--min-verdict-interval", "0.1",
    "--mmd",
    "--mmd-permutations", "20",
    "--device", "cpu",
)  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """pytest's base temporary folder, as the artifact root of every detector the tests start."""
    root = tmp_path_factory.getbasetemp().resolve().as_uri()
    previous = os.environ.get(ROOTS_VARIABLE)
    os.environ[ROOTS_VARIABLE] = root
    yield root
    if previous is None:
        os.environ.pop(ROOTS_VARIABLE, None)
    else:
        os.environ[ROOTS_VARIABLE] = previous


def artifact_roots() -> ArtifactRoots:
    """The roots of in-process services: what ``artifact_root`` set."""
    return ArtifactRoots.from_env(os.environ)


@pytest.fixture(scope="session")
def detector() -> Iterator[Detector]:
    """One detector process for the tests that register services of their own names."""
    running = start_detector(*FAST_ARGS)
    yield running
    stop_detector(running)


@pytest.fixture(scope="session")
def reference_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """300 reference rows of the four numeric features."""
    return write_reference(tmp_path_factory.mktemp("reference"), numeric_rows(300, seed=1))
