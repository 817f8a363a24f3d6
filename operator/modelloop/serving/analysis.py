"""Canary analysis: each metric's PromQL query, asked of Prometheus's HTTP API, judged against its bounds.

A query that returns no sample, or NaN, or a Prometheus that cannot be reached or answers an error, is
inconclusive: it says nothing about the canary, so the step is held (never advanced) rather than judged.

The URLs are the tenants' (an InferenceService's or a DriftPolicy's), so no Prometheus may hold up the
others: each query has one deadline for all of it (connecting, asking, and reading the whole answer, which
a server trickling bytes cannot stretch), its answer is read up to a size limit, and each host answers at
most ``QUERIES_PER_HOST`` queries at a time (the operator's default Prometheus, which the cluster admin
chose and every team shares, ``QUERIES_PER_SHARED_HOST``), fewer than the query pool's threads. A query
waiting for its
host waits in the event loop, not in a thread, so a saturated host leaves the pool to the others. Nothing
of an answer reaches status but Prometheus's own error message (truncated): any other body is told as
``HTTP <status> from <host>``, so that the operator cannot be made to read other services for a tenant.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import io
import json
import math
import socket
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from modelloop.api import Analysis, AnalysisMetric, MeasurementPhase
from modelloop.serving.rollout import MetricResult

QUERY_TIMEOUT_SECONDS = 5.0
"""The deadline of one query, waiting for its host's turn included."""
QUERIES_PER_HOST = 2
"""Queries one Prometheus (host and port) is asked at a time; well below the query pool's threads."""
QUERIES_PER_SHARED_HOST = 4
"""Queries the operator's default Prometheus (MODELLOOP_PROMETHEUS_URL) is asked at a time."""
MAX_ANSWER_BYTES = 1 << 20
"""The most of an answer that is read: a query answers one number, an answer past this is refused."""
ECHO_LIMIT = 200
"""The most characters of Prometheus's own error message that reach status and events."""


@dataclass(frozen=True)
class QueryContext:
    """What a query's placeholders stand for: {{namespace}}, {{name}}, {{version}} (the canary's) and
    {{stableVersion}}."""

    namespace: str
    name: str
    version: int
    stable_version: int | None = None

    def render(self, template: str) -> str:
        values = {
            "namespace": self.namespace,
            "name": self.name,
            "version": str(self.version),
            "stableVersion": "" if self.stable_version is None else str(self.stable_version),
        }
        for key, value in values.items():
            template = template.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
        return template


def judge(metric: AnalysisMetric, query: str, value: float | None, error: str | None = None) -> MetricResult:
    """The verdict on one value: within [min, max] passes, outside fails (the message names the query,
    the value and the bound it broke), none is inconclusive."""
    if error is not None:
        return MetricResult(metric.name, MeasurementPhase.INCONCLUSIVE, None, f"{metric.name}: {error}")
    if value is None or math.isnan(value):
        message = f"{metric.name}: no data for {query}"
        return MetricResult(metric.name, MeasurementPhase.INCONCLUSIVE, None, message)
    if metric.max is not None and value > metric.max:
        message = f"{metric.name}: {query} = {value:g}, above its max {metric.max:g}"
        return MetricResult(metric.name, MeasurementPhase.FAILED, value, message)
    if metric.min is not None and value < metric.min:
        message = f"{metric.name}: {query} = {value:g}, below its min {metric.min:g}"
        return MetricResult(metric.name, MeasurementPhase.FAILED, value, message)
    return MetricResult(metric.name, MeasurementPhase.PASSED, value, f"{metric.name}: {query} = {value:g}")


def sample_value(result: Any) -> float | None:
    """The one number a query returned: a scalar, or the first sample of a vector; None when empty."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return float(result[1])  # a scalar: [time, "value"]
    if isinstance(result, list) and result:
        first = result[0]
        if isinstance(first, dict) and "value" in first:
            return float(first["value"][1])
    return None


@dataclass
class Prometheus:
    """Queries Prometheus servers over HTTP: see the module's docstring for the limits of each query."""

    default_url: str | None
    timeout: float = QUERY_TIMEOUT_SECONDS
    """The deadline of one query, in seconds, from the moment it is asked to its whole answer."""
    executor: Executor | None = None
    """Where the blocking queries run: the operator's query pool (a slow Prometheus never holds up the
    event loop); None: the loop's default pool."""
    per_host: int = QUERIES_PER_HOST
    per_shared_host: int = QUERIES_PER_SHARED_HOST
    _hosts: dict[str, _HostTurns] = field(default_factory=dict)

    def query(self, url: str, query: str, deadline: float | None = None) -> float | None:
        """Blocking: one instant query, answered by ``deadline`` (``time.monotonic()``; by default
        ``timeout`` from now). Raises PrometheusUnreachable when there is no answer to judge."""
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        shown = shown_url(url)
        try:
            status, body = fetch(_query_url(url, query), deadline)
        except TimeoutError:
            raise PrometheusUnreachable(
                f"Prometheus at {shown} did not answer within {self.timeout:g}s"
            ) from None
        except AnswerTooLarge:
            raise PrometheusUnreachable(
                f"Prometheus at {shown} answered more than {MAX_ANSWER_BYTES} bytes: a query must "
                "return one number"
            ) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise PrometheusUnreachable(
                f"Prometheus at {shown} is unreachable ({type(error).__name__})"
            ) from error
        message = error_message(body)
        if status in (400, 422) and message is not None:
            raise PrometheusRefused(f"Prometheus at {shown} refused the query: {message}")
        if status != 200:
            told = (
                f"HTTP {status}: {message}" if message is not None else f"HTTP {status} from {host_of(url)}"
            )
            raise PrometheusUnreachable(f"Prometheus at {shown} gave no answer to judge ({told})")
        try:
            payload = json.loads(body)
            return sample_value(payload["data"]["result"]) if payload.get("status") == "success" else None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise PrometheusUnreachable(
                f"Prometheus at {shown} answered HTTP 200 with something other than a Prometheus answer"
            ) from None

    async def run_query(self, url: str, query: str) -> float | None:
        """``query`` in the executor, once its host has a turn: what it returns, or what it raises."""
        deadline = time.monotonic() + self.timeout
        host = host_of(url)
        shared = self.default_url is not None and host == host_of(self.default_url)
        limit = self.per_shared_host if shared else self.per_host
        turns = self._hosts.setdefault(host, _HostTurns(asyncio.Semaphore(limit), limit))
        turns.users += 1
        try:
            try:
                await asyncio.wait_for(turns.slots.acquire(), timeout=self.timeout)
            except TimeoutError:
                raise PrometheusUnreachable(
                    f"Prometheus at {shown_url(url)} is busy: it is asked at most {turns.limit} "
                    f"queries at a time, and none of its queries ended within {self.timeout:g}s"
                ) from None
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self.executor, functools.partial(self.query, url, query, deadline)
                )
            finally:
                turns.slots.release()
        finally:
            turns.users -= 1
            if turns.users == 0:
                del self._hosts[host]

    async def measure(self, analysis: Analysis, context: QueryContext) -> list[MetricResult]:
        """Run every metric's query once (at the same time, in the query pool) and judge each."""
        url = analysis.prometheus_url or self.default_url
        if url is None:
            error = (
                "no Prometheus to ask: set spec.rollout.analysis.prometheusUrl or MODELLOOP_PROMETHEUS_URL"
            )
            return [judge(metric, metric.query, None, error) for metric in analysis.metrics]
        return list(
            await asyncio.gather(*(self._measure(url, metric, context) for metric in analysis.metrics))
        )

    async def _measure(self, url: str, metric: AnalysisMetric, context: QueryContext) -> MetricResult:
        query = context.render(metric.query)
        try:
            value = await self.run_query(url, query)
        except PrometheusUnreachable as error:
            return judge(metric, query, None, str(error))
        return judge(metric, query, value)


@dataclass
class _HostTurns:
    """The turns of one host: its free slots, and the queries that hold or wait for one (the entry goes
    when none does, so that hosts once asked are not remembered)."""

    slots: asyncio.Semaphore
    limit: int
    users: int = 0


class PrometheusUnreachable(Exception):
    """Prometheus gave no answer to judge (connection failed, timed out, or refused the query)."""


class PrometheusRefused(PrometheusUnreachable):
    """Prometheus refused the query itself (HTTP 400 or 422: bad PromQL, a bad parameter); the message is
    Prometheus's own."""


class AnswerTooLarge(Exception):
    """An answer longer than the limit it was read with."""


def _query_url(base: str, query: str) -> str:
    return f"{base.rstrip('/')}/api/v1/query?{urlencode({'query': query})}"


def host_of(url: str) -> str:
    """``host:port`` of ``url`` (the port the scheme implies when none is written)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname or ''}:{port or default}"


def shown_url(url: str) -> str:
    """``url`` as status and logs may show it: without credentials, query or fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def error_message(body: bytes) -> str | None:
    """The error message of a body of Prometheus's JSON error shape (``{"status": "error", "errorType":
    ..., "error": ...}``), truncated to ECHO_LIMIT characters; None for any other body."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("status") != "error":
        return None
    error, kind = payload.get("error"), payload.get("errorType")
    if not isinstance(error, str) or not error:
        return None
    text = f"{kind}: {error}" if isinstance(kind, str) and kind else error
    return text[:ECHO_LIMIT]


def fetch(url: str, deadline: float, limit: int = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
    """Blocking: GET ``url``; its status and body, all of it (connecting, asking and reading) done by
    ``deadline`` (``time.monotonic()``), however slowly the server sends. Raises TimeoutError past the
    deadline, AnswerTooLarge for a body longer than ``limit``, OSError or http.client.HTTPException when
    there is no answer, ValueError for a URL that is not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {shown_url(url)}")
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed before the request")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=left)
    headers = {"Accept": "application/json"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    sock: socket.socket | None = None
    try:
        connection.connect()
        sock = connection.sock
        connection.sock = _DeadlineSocket(connection.sock, deadline)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read(limit + 1)
        if len(body) > limit:
            raise AnswerTooLarge(f"more than {limit} bytes")
        return response.status, body
    finally:
        connection.close()
        if sock is not None:
            sock.close()


class _DeadlineSocket:
    """A connected socket whose every send and receive must end by ``deadline``: each waits at most the
    time left, so that a server sending one byte at a time cannot stretch a request past it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *_: Any, **__: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Nothing: http.client closes its connection before it reads a body that ends with the
        connection, and ``fetch`` closes the socket once the answer is read."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)
