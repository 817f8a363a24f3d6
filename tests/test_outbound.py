"""The operator's calls to the URLs tenants name (Prometheus, drift detectors), against real local HTTP
servers on real sockets: each call ends by its deadline however slowly a server sends, one slow host cannot
take the query pool from the others, nothing of a body but the expected JSON error (truncated) reaches
status, and a URL outside the cluster admin's allowlist is refused without a request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop.controllers.driftpolicy import DriftPolicyController
from modelloop.controllers.inferenceservice import InferenceServiceController
from modelloop.drift.detector import DetectorClient, DetectorError
from modelloop.machinery.executors import QUERY_THREADS, query_pool
from modelloop.serving.analysis import (
    ECHO_LIMIT,
    QUERIES_PER_HOST,
    QUERIES_PER_SHARED_HOST,
    Prometheus,
    PrometheusRefused,
    PrometheusUnreachable,
)
from modelloop.settings import URL_NOT_ALLOWED, Settings

SUCCESS = json.dumps(
    {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "1"]}]}}
).encode()
SECRET = "the-body-of-an-internal-service"
ANALYSIS_METRIC = {"name": "error-rate", "query": "q", "max": 1}


@dataclass
class Server:
    """A local HTTP server that answers every request as ``answer`` says and counts them; with
    ``trickle``, it sends its answer one byte a second (the status line and headers too, with
    ``trickle="all"``), until the client goes or the server stops."""

    status: int = 200
    body: bytes = SUCCESS
    trickle: str | None = None
    requests: int = 0
    arrived: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.requests >= count, timeout)


def serve(server: Server) -> Iterator[Server]:
    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            with server.arrived:
                server.requests += 1
                server.arrived.notify_all()
            head = (
                f"HTTP/1.0 {server.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(server.body)}\r\n\r\n"
            ).encode()
            if server.trickle is None:
                self.wfile.write(head + server.body)
                return
            if server.trickle == "body":
                self.wfile.write(head)
                head = b""
            for byte in head + server.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if server.stopping.wait(1.0):  # one byte a second, until the test ends
                    return

        def do_GET(self) -> None:
            with contextlib.suppress(OSError):  # the client gave up: what the deadline is for
                self.handle_one()

        do_PUT = do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    thread = threading.Thread(target=http.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{http.server_address[1]}"
    try:
        yield server
    finally:
        server.stopping.set()
        http.shutdown()
        http.server_close()
        thread.join()


@pytest.fixture
def healthy() -> Iterator[Server]:
    yield from serve(Server())


@pytest.fixture
def slow() -> Iterator[Server]:
    yield from serve(Server(trickle="body", body=b" " * 100))


# A query's deadline.


@pytest.mark.parametrize("trickle", ["body", "all"])
@pytest.mark.asyncio
async def test_a_query_ends_by_its_deadline_however_slowly_the_server_sends(trickle: str) -> None:
    for slow in serve(Server(trickle=trickle, body=b" " * 100)):
        prometheus = Prometheus(default_url=None, timeout=1.5)
        started = time.monotonic()
        with pytest.raises(PrometheusUnreachable, match=r"did not answer within 1.5s"):
            # The bound only keeps a broken deadline from hanging the suite.
            await asyncio.wait_for(prometheus.run_query(slow.url, "up"), timeout=10)
        assert time.monotonic() - started < 1.5 + 1.0


@pytest.mark.asyncio
async def test_one_slow_host_leaves_the_query_pool_to_the_others(slow: Server, healthy: Server) -> None:
    pool = query_pool()
    prometheus = Prometheus(default_url=None, timeout=3, executor=pool)
    try:
        stuck = [asyncio.create_task(prometheus.run_query(slow.url, "up")) for _ in range(QUERY_THREADS)]
        assert await asyncio.to_thread(slow.wait_for_requests, QUERIES_PER_HOST)

        value = await asyncio.wait_for(prometheus.run_query(healthy.url, "up"), timeout=2)

        assert value == 1.0
        assert not any(task.done() for task in stuck), "the slow host's queries are still held"
        assert slow.requests == QUERIES_PER_HOST, "the others wait for the host's turn, not in threads"
        outcomes = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(outcome, PrometheusUnreachable) for outcome in outcomes), outcomes
        assert prometheus._hosts == {}, "no host is remembered once its queries are done"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_the_default_prometheus_and_three_saturated_hosts_leave_a_thread_to_a_fourth() -> None:
    assert QUERIES_PER_SHARED_HOST + 3 * QUERIES_PER_HOST < QUERY_THREADS


@pytest.mark.asyncio
async def test_the_default_prometheus_shared_by_every_team_gets_a_larger_share(slow: Server) -> None:
    pool = query_pool()
    prometheus = Prometheus(default_url=slow.url, timeout=2, executor=pool)
    try:
        held = [asyncio.create_task(prometheus.run_query(slow.url, "up")) for _ in range(QUERY_THREADS)]
        assert await asyncio.to_thread(slow.wait_for_requests, QUERIES_PER_SHARED_HOST)
        assert slow.requests == QUERIES_PER_SHARED_HOST
        await asyncio.gather(*held, return_exceptions=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_an_answer_larger_than_the_limit_is_refused() -> None:
    for big in serve(Server(body=b"[" + b" " * (2 << 20) + b"]")):
        with pytest.raises(PrometheusUnreachable, match="more than 1048576 bytes"):
            Prometheus(default_url=None, timeout=5).query(big.url, "up")


# What of an answer reaches status.


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, f"<html>{SECRET}</html>"), (500, json.dumps({"secret": SECRET})), (200, f"{SECRET}")],
)
def test_a_body_that_is_not_prometheuss_answer_or_error_is_never_shown(status: int, body: str) -> None:
    for server in serve(Server(status=status, body=body.encode())):
        with pytest.raises(PrometheusUnreachable) as raised:
            Prometheus(default_url=None, timeout=5).query(server.url, "up")
        message = str(raised.value)
        assert SECRET not in message
        if status != 200:
            assert f"HTTP {status} from 127.0.0.1:{server.url.rsplit(':', 1)[1]}" in message


def test_prometheuss_own_error_is_shown_truncated() -> None:
    error = {"status": "error", "errorType": "bad_data", "error": "parse error: " + "x" * 1000}
    for server in serve(Server(status=400, body=json.dumps(error).encode())):
        with pytest.raises(PrometheusRefused, match="refused the query: bad_data: parse error: x") as raised:
            Prometheus(default_url=None, timeout=5).query(server.url, "rate(")
        assert str(raised.value).count("x") <= ECHO_LIMIT


def test_credentials_in_a_url_are_never_shown() -> None:
    for server in serve(Server(status=503, body=b"down")):
        url = server.url.replace("http://", "http://admin:hunter2@")
        with pytest.raises(PrometheusUnreachable) as raised:
            Prometheus(default_url=None, timeout=5).query(url, "up")
        assert "hunter2" not in str(raised.value) and "admin" not in str(raised.value)


@pytest.mark.asyncio
async def test_the_detectors_answers_are_bounded_alike(slow: Server) -> None:
    client = DetectorClient(timeout=1.5)
    started = time.monotonic()
    with pytest.raises(DetectorError, match="unreachable"):
        await asyncio.wait_for(client.register(slow.url, "ml", "iris", "iris", {}, None), timeout=10)
    assert time.monotonic() - started < 1.5 + 1.0
    for server in serve(Server(status=404, body=f"<html>{SECRET}</html>".encode())):
        with pytest.raises(DetectorError, match=r"answered HTTP 404 from 127\.0\.0\.1:") as raised:
            await client.register(server.url, "ml", "iris", "iris", {}, None)
        assert SECRET not in str(raised.value)
    for server in serve(Server(status=409, body=json.dumps({"error": "e" * 1000}).encode())):
        with pytest.raises(DetectorError, match="answered 409: eee") as raised:
            await client.register(server.url, "ml", "iris", "iris", {}, None)
        assert str(raised.value).count("e" * 10) <= ECHO_LIMIT // 10
    await client.close()


# The cluster admin's allowlist.


def test_the_allowlist_matches_scheme_host_port_and_whole_path_segments() -> None:
    settings = Settings(
        allowed_url_prefixes=(
            "http://prometheus.monitoring.svc:9090",
            "https://thanos.example.com/api/",
            "http://drift-detector.{namespace}.svc:8080/",
        )
    )
    allowed = [
        "http://prometheus.monitoring.svc:9090",
        "http://Prometheus.monitoring.svc:9090/prometheus",
        "https://thanos.example.com:443/api/tenant-a",
        "http://drift-detector.ml.svc:8080",
    ]
    refused = [
        "http://prometheus.monitoring.svc:9091",  # another port
        "https://prometheus.monitoring.svc:9090",  # another scheme
        "http://prometheus.monitoring.svc.evil.example:9090",  # a longer host
        "http://prometheus.monitoring.svc:9090@evil.example/",  # credentials: the host is evil.example
        "https://thanos.example.com/apiary",  # a longer segment
        "https://thanos.example.com/api/../admin",  # climbs out
        "http://drift-detector.other-team.svc:8080",  # another namespace's detector
        "http://prometheus.monitoring.svc:9090/?x=1",
    ]
    assert [url for url in allowed if settings.url_refusal(url, "ml") is not None] == []
    assert [url for url in refused if settings.url_refusal(url, "ml") is None] == []
    assert Settings().url_refusal("http://anything:1", "ml") is None, "no allowlist allows every URL"


def test_the_allowlist_is_read_from_the_environment_and_a_bad_prefix_refused() -> None:
    env = {"MODELLOOP_ALLOWED_URL_PREFIXES": " http://prometheus:9090/ ,, http://detector.{namespace}:80 "}
    assert Settings.from_env(env).allowed_url_prefixes == (
        "http://prometheus:9090/",
        "http://detector.{namespace}:80",
    )
    with pytest.raises(ValueError, match="MODELLOOP_ALLOWED_URL_PREFIXES: 'prometheus:9090'"):
        Settings.from_env({"MODELLOOP_ALLOWED_URL_PREFIXES": "prometheus:9090"})


def drift_policy(prometheus: str, detector: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"inferenceService": "iris"},
        "prometheus": {"url": prometheus},
        "metrics": [{"name": "drift", "query": "max(drift)", "threshold": 0.3, "comparison": "GreaterThan"}],
        "retrain": {
            "trainingRunTemplate": {
                "image": "trainer:1",
                "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                "output": {"modelName": "iris"},
            }
        },
    }
    if detector is not None:
        spec["detector"] = {"url": detector}
    meta = {"namespace": "ml", "name": "iris-drift", "uid": "p1", "generation": 1, "resourceVersion": "3"}
    return {"apiVersion": "modelloop.dev/v1alpha1", "kind": "DriftPolicy", "metadata": meta, "spec": spec}


def drift_controller(
    obj: dict[str, Any], settings: Settings
) -> tuple[DriftPolicyController, RecordingClient]:
    client = RecordingClient()
    indexes = {
        "drift_policies": {("ml", "iris-drift"): [obj]},
        "inference_services": {},
        "model_versions": {},
        "training_runs": {},
    }
    return DriftPolicyController(settings, indexes, client), client


def test_a_drift_policy_naming_a_url_outside_the_allowlist_is_refused_without_a_request(
    healthy: Server, posted: list[tuple[str, str, str]]
) -> None:
    settings = Settings(allowed_url_prefixes=("http://prometheus.monitoring.svc:9090/",))
    made, client = drift_controller(drift_policy(healthy.url, detector=healthy.url), settings)

    asyncio.run(made.objects.reconcile(("ml", "iris-drift")))

    assert healthy.requests == 0
    [status] = client.statuses
    assert (status["phase"], status["reason"]) == ("Degraded", URL_NOT_ALLOWED)
    [ready] = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", URL_NOT_ALLOWED)
    assert f"spec.prometheus.url: {healthy.url} is not called" in ready["message"]
    assert f"spec.detector.url: {healthy.url} is not called" in ready["message"]
    assert "http://prometheus.monitoring.svc:9090/" in ready["message"]
    [(kind, reason, message)] = posted
    assert (kind, reason) == ("Warning", URL_NOT_ALLOWED) and "spec.prometheus.url" in message


def test_a_drift_policy_within_the_allowlist_is_queried(
    healthy: Server, posted: list[tuple[str, str, str]]
) -> None:
    made, client = drift_controller(drift_policy(healthy.url), Settings(allowed_url_prefixes=(healthy.url,)))

    asyncio.run(made.objects.reconcile(("ml", "iris-drift")))

    assert healthy.requests == 1
    assert client.statuses[-1]["reason"] != URL_NOT_ALLOWED


def test_an_inference_services_analysis_url_outside_the_allowlist_is_refused(
    healthy: Server, posted: list[tuple[str, str, str]]
) -> None:
    obj = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"namespace": "ml", "name": "iris", "uid": "s1", "generation": 1, "resourceVersion": "3"},
        "spec": {
            "model": {"name": "iris"},
            "rollout": {
                "steps": [50, 100],
                "analysis": {
                    "prometheusUrl": healthy.url,
                    "metrics": [{"name": "e", "query": "q", "max": 1}],
                },
            },
        },
    }
    client = RecordingClient()
    indexes = {"inference_services": {("ml", "iris"): [obj]}, "model_versions": {}}
    settings = Settings(allowed_url_prefixes=("http://prometheus.monitoring.svc:9090/",))
    made = InferenceServiceController(settings, indexes, client)

    asyncio.run(made.objects.reconcile(("ml", "iris")))

    assert healthy.requests == 0 and client.applied == []
    [status] = client.statuses
    assert status["reason"] == URL_NOT_ALLOWED
    assert f"spec.rollout.analysis.prometheusUrl: {healthy.url} is not called" in status["message"]
    assert [(t, r) for t, r, _ in posted] == [("Warning", URL_NOT_ALLOWED)]
