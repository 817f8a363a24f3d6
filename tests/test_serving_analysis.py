"""Canary analysis: how a query's answer is read and judged, and what an unreachable Prometheus means."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from modelloop.api import Analysis, AnalysisMetric, MeasurementPhase
from modelloop.serving.analysis import (
    Prometheus,
    PrometheusUnreachable,
    QueryContext,
    judge,
    sample_value,
)

ERROR_RATE = AnalysisMetric(name="error-rate", query="rate(errors[1m])", max=0.05)
ACCURACY = AnalysisMetric(name="accuracy", query="avg(accuracy)", min=0.9)
BAND = AnalysisMetric(name="latency", query="p99", min=0.1, max=0.5)


# Judging one value.


@pytest.mark.parametrize(
    ("metric", "value"), [(ERROR_RATE, 0.01), (ERROR_RATE, 0.05), (BAND, 0.1), (BAND, 0.3)]
)
def test_a_value_within_its_bounds_passes(metric: AnalysisMetric, value: float) -> None:
    result = judge(metric, metric.query, value)
    assert (result.metric, result.phase, result.value) == (metric.name, MeasurementPhase.PASSED, value)


def test_a_value_above_its_max_fails_naming_the_query_the_value_and_the_bound() -> None:
    result = judge(ERROR_RATE, 'rate(errors{v="2"}[1m])', 0.2)
    assert (result.phase, result.value) == (MeasurementPhase.FAILED, 0.2)
    assert result.message == 'error-rate: rate(errors{v="2"}[1m]) = 0.2, above its max 0.05'


def test_a_value_below_its_min_fails_naming_the_query_the_value_and_the_bound() -> None:
    result = judge(ACCURACY, "avg(accuracy)", 0.75)
    assert result.phase == MeasurementPhase.FAILED
    assert result.message == "accuracy: avg(accuracy) = 0.75, below its min 0.9"


@pytest.mark.parametrize("value", [None, float("nan")])
def test_no_value_or_nan_is_inconclusive(value: float | None) -> None:
    result = judge(ERROR_RATE, "rate(errors[1m])", value)
    assert (result.phase, result.value) == (MeasurementPhase.INCONCLUSIVE, None)
    assert "no data for rate(errors[1m])" in result.message


def test_an_error_is_inconclusive_and_says_what_went_wrong() -> None:
    result = judge(ERROR_RATE, "q", 0.0, "Prometheus at http://p is unreachable")
    assert result.phase == MeasurementPhase.INCONCLUSIVE
    assert "unreachable" in result.message


# Reading a query's answer.


def test_the_first_sample_of_a_vector_is_its_value() -> None:
    vector = [
        {"metric": {"pod": "a"}, "value": [1700000000.1, "0.25"]},
        {"metric": {"pod": "b"}, "value": [1700000000.1, "0.75"]},
    ]
    assert sample_value(vector) == 0.25


def test_a_scalar_is_its_value() -> None:
    assert sample_value([1700000000.1, "3"]) == 3.0


def test_an_empty_vector_has_no_value() -> None:
    assert sample_value([]) is None
    assert sample_value(None) is None


def test_a_nan_sample_reads_as_nan_and_is_judged_inconclusive() -> None:
    value = sample_value([{"metric": {}, "value": [1.0, "NaN"]}])
    assert judge(ERROR_RATE, "q", value).phase == MeasurementPhase.INCONCLUSIVE


# Query placeholders.


def test_a_query_names_the_service_and_both_versions() -> None:
    context = QueryContext(namespace="ml", name="iris", version=3, stable_version=2)
    template = '{namespace="{{namespace}}", service="{{ name }}-v{{version}}"} / on() v{{stableVersion}}'
    assert context.render(template) == '{namespace="ml", service="iris-v3"} / on() v2'


def test_a_missing_stable_version_renders_empty() -> None:
    assert QueryContext("ml", "iris", 3).render("v{{stableVersion}}") == "v"


def test_a_query_without_placeholders_is_left_as_it_is() -> None:
    assert QueryContext("ml", "iris", 3).render("up{job='{{other}}'}") == "up{job='{{other}}'}"


# Asking Prometheus.


def analysis(url: str | None = None, *metrics: AnalysisMetric) -> Analysis:
    return Analysis(prometheus_url=url, metrics=list(metrics or (ERROR_RATE, ACCURACY)))


@pytest.mark.asyncio
async def test_without_any_prometheus_url_every_metric_is_inconclusive_saying_what_to_set() -> None:
    results = await Prometheus(default_url=None).measure(analysis(), QueryContext("ml", "iris", 2))
    assert [r.metric for r in results] == ["error-rate", "accuracy"]
    assert {r.phase for r in results} == {MeasurementPhase.INCONCLUSIVE}
    assert all("MODELLOOP_PROMETHEUS_URL" in r.message for r in results)
    assert all("prometheusUrl" in r.message for r in results)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_prometheus_where_nothing_listens_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnreachable, match="unreachable"):
        Prometheus(default_url=url, timeout=2).query(url, "up")


@pytest.mark.asyncio
async def test_an_unreachable_prometheus_makes_every_metric_inconclusive() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    results = await Prometheus(default_url=url, timeout=2).measure(analysis(), QueryContext("ml", "iris", 2))
    assert {r.phase for r in results} == {MeasurementPhase.INCONCLUSIVE}
    assert all(url in r.message for r in results)


class FakePrometheusHandler(BaseHTTPRequestHandler):
    """Stands in for Prometheus's HTTP API (GET /api/v1/query); the e2e suite runs the real Prometheus.

    It answers each query with the value in ``values`` (absent: an empty vector), or with ``status``."""

    values: ClassVar[dict[str, str]] = {}
    status: ClassVar[int] = 200
    body: ClassVar[bytes | None] = None
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        type(self).seen.append(query)
        if url.path != "/api/v1/query":
            self._answer(404, b"not found")
        elif self.status != 200 or self.body is not None:
            self._answer(self.status, self.body or b'{"status":"error","error":"parse error"}')
        else:
            value = self.values.get(query)
            result: list[Any] = [] if value is None else [{"metric": {}, "value": [1700000000.0, value]}]
            data = {"resultType": "vector", "result": result}
            self._answer(200, json.dumps({"status": "success", "data": data}).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class FakePrometheus:
    url: str
    handler: type[FakePrometheusHandler]


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    handler = type("Handler", (FakePrometheusHandler,), {"values": {}, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield FakePrometheus(f"http://127.0.0.1:{server.server_address[1]}", handler)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.asyncio
async def test_each_metric_is_queried_with_its_placeholders_and_judged(prometheus: FakePrometheus) -> None:
    handler = prometheus.handler
    latency = AnalysisMetric(name="latency", query='p99{service="{{name}}-v{{version}}"}', max=0.5)
    handler.values.update({"rate(errors[1m])": "0.01", 'p99{service="iris-v2"}': "0.9"})
    results = await Prometheus(default_url=prometheus.url).measure(
        analysis(None, ERROR_RATE, latency), QueryContext("ml", "iris", 2, 1)
    )
    assert [(r.metric, r.phase, r.value) for r in results] == [
        ("error-rate", MeasurementPhase.PASSED, 0.01),
        ("latency", MeasurementPhase.FAILED, 0.9),
    ]
    assert sorted(handler.seen) == sorted(["rate(errors[1m])", 'p99{service="iris-v2"}'])
    assert 'p99{service="iris-v2"} = 0.9, above its max 0.5' in results[1].message


@pytest.mark.asyncio
async def test_the_services_own_prometheus_url_wins_over_the_default(prometheus: FakePrometheus) -> None:
    prometheus.handler.values["rate(errors[1m])"] = "0.02"
    nowhere = f"http://127.0.0.1:{free_port()}"
    results = await Prometheus(default_url=nowhere).measure(
        analysis(prometheus.url, ERROR_RATE), QueryContext("ml", "iris", 2)
    )
    assert [(r.phase, r.value) for r in results] == [(MeasurementPhase.PASSED, 0.02)]


@pytest.mark.asyncio
async def test_a_query_with_no_samples_is_inconclusive(prometheus: FakePrometheus) -> None:
    results = await Prometheus(default_url=prometheus.url).measure(
        analysis(None, ERROR_RATE), QueryContext("ml", "iris", 2)
    )
    assert [r.phase for r in results] == [MeasurementPhase.INCONCLUSIVE]
    assert "no data for rate(errors[1m])" in results[0].message


def test_a_query_prometheus_refuses_is_unreachable_saying_so(prometheus: FakePrometheus) -> None:
    prometheus.handler.status = 400
    with pytest.raises(PrometheusUnreachable, match="refused the query"):
        Prometheus(default_url=prometheus.url).query(prometheus.url, "rate(")


def test_an_answer_that_is_not_json_is_unreachable(prometheus: FakePrometheus) -> None:
    prometheus.handler.body = b"<html>a proxy's error page</html>"
    with pytest.raises(PrometheusUnreachable):
        Prometheus(default_url=prometheus.url).query(prometheus.url, "up")
