"""The metrics reach a real Prometheus (Debian's, ``make prometheus-bin``) that scrapes the metrics port.

Skipped where ``prometheus`` is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import RunningServer, free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (make prometheus-bin)"
)

SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]
SELDON_ENV = {"SELDON_DEPLOYMENT_ID": "iris", "PREDICTOR_ID": "canary", "PREDICTIVE_UNIT_ID": "classifier"}
TIMEOUT = 60.0


class Prometheus:
    """A Prometheus server on 127.0.0.1 and its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def wait_for(
        self, promql: str, expected: dict[frozenset[tuple[str, str]], float], *, by: tuple[str, ...]
    ) -> None:
        """Poll ``promql`` until its series, told apart by the labels ``by``, have the ``expected`` values."""
        deadline = time.monotonic() + TIMEOUT
        seen: dict[frozenset[tuple[str, str]], float] = {}
        while time.monotonic() < deadline:
            seen = {
                frozenset((label, series["metric"][label]) for label in by): float(series["value"][1])
                for series in self.query(promql)
            }
            if seen == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{promql}: expected {expected}, Prometheus has {seen}")


@pytest.fixture(scope="module")
def scraped_server(serve: Callable[..., RunningServer], iris_artifact: Path) -> RunningServer:
    return serve(iris_artifact, version=7, env=SELDON_ENV)


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, scraped_server: RunningServer
) -> Iterator[Prometheus]:
    """Prometheus scraping the server's metrics port every second, with its data in a temporary folder."""
    assert PROMETHEUS is not None
    folder = tmp_path_factory.mktemp("prometheus")
    metrics_target = scraped_server.metrics_url.removeprefix("http://").removesuffix("/prometheus")
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "seldon",
                "metrics_path": "/prometheus",
                "static_configs": [{"targets": [metrics_target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not start:\n{(folder / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def test_prometheus_scrapes_the_counters_with_the_version_and_seldons_labels(
    scraped_server: RunningServer, prometheus: Prometheus
) -> None:
    assert scraped_server.predict_rows([SETOSA, SETOSA, VIRGINICA]).status_code == 200
    assert scraped_server.predict_rows([SETOSA[:3]]).status_code == 400
    assert scraped_server.predict({"data": {"ndarray": [["a", "b", "c", "d"]]}}).status_code == 400

    seldon = (
        '{job="seldon",version="7",deployment_name="iris",predictor_name="canary",model_name="classifier"}'
    )
    prometheus.wait_for(
        f"modelloop_seldon_requests_total{seldon}",
        {frozenset({("code", "200")}): 1, frozenset({("code", "400")}): 2},
        by=("code",),
    )
    prometheus.wait_for(
        f"modelloop_seldon_errors_total{seldon}",
        {
            frozenset({("reason", "invalid_features")}): 2,
            frozenset({("reason", "invalid_message")}): 0,
            frozenset({("reason", "model_rejected")}): 0,
            frozenset({("reason", "internal")}): 0,
        },
        by=("reason",),
    )
    prometheus.wait_for(
        f"modelloop_seldon_predictions_total{seldon}",
        {
            frozenset({("class", "setosa")}): 2,
            frozenset({("class", "versicolor")}): 0,
            frozenset({("class", "virginica")}): 1,
        },
        by=("class",),
    )
    # The README's error ratio, over the counters themselves rather than their rates.
    ratio = prometheus.query(
        'sum(modelloop_seldon_errors_total{deployment_name="iris",version="7"})'
        ' / sum(modelloop_seldon_requests_total{deployment_name="iris",version="7"})'
    )
    assert float(ratio[0]["value"][1]) == pytest.approx(2 / 3)
