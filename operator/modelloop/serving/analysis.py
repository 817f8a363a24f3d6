"""Canary analysis: each metric's PromQL query, run through prometheus-api-client, judged against its bounds.

A query that returns no sample, or NaN, or a Prometheus that cannot be reached or answers an error, is
inconclusive: it says nothing about the canary, so the step is held (never advanced) rather than judged.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import math
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from modelloop.api import Analysis, AnalysisMetric, MeasurementPhase
from modelloop.serving.rollout import MetricResult

QUERY_TIMEOUT_SECONDS = 5.0


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
    """Queries Prometheus servers; one client (and connection pool) per URL, reused."""

    default_url: str | None
    timeout: float = QUERY_TIMEOUT_SECONDS
    executor: Executor | None = None
    """Where the blocking queries run: the operator's query pool (a slow Prometheus never holds up the
    event loop); None: the loop's default pool."""
    _clients: dict[str, PrometheusConnect] = field(default_factory=dict)

    def client(self, url: str) -> PrometheusConnect:
        if url not in self._clients:
            # No retries inside the client: the rollout measures again at its own pace.
            self._clients[url] = PrometheusConnect(url, retry=Retry(total=0), timeout=self.timeout)
        return self._clients[url]

    def query(self, url: str, query: str) -> float | None:
        """Blocking: one instant query. Raises PrometheusUnreachable when there is no answer to judge."""
        try:
            return sample_value(self.client(url).custom_query(query))
        except PrometheusApiClientException as error:
            refusal = _refusal(str(error))
            if refusal is not None:
                raise PrometheusRefused(f"Prometheus at {url} refused the query: {refusal}") from error
            raise PrometheusUnreachable(f"Prometheus at {url} refused the query: {error}") from error
        except requests.RequestException as error:
            raise PrometheusUnreachable(
                f"Prometheus at {url} is unreachable ({type(error).__name__})"
            ) from error

    async def run_query(self, url: str, query: str) -> float | None:
        """``query`` in the executor: what it returns, or what it raises."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(self.query, url, query)
        )

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


class PrometheusUnreachable(Exception):
    """Prometheus gave no answer to judge (connection failed, timed out, or refused the query)."""


class PrometheusRefused(PrometheusUnreachable):
    """Prometheus refused the query itself (HTTP 400 or 422: bad PromQL, a bad parameter); the message is
    Prometheus's own."""


_HTTP_ERROR = re.compile(r"HTTP Status Code (\d+) \((.*)\)\s*$", re.DOTALL)


def _refusal(text: str) -> str | None:
    """Prometheus's own error message when ``text`` (prometheus-api-client's error) is a refusal of the
    query, else None. The client formats it ``HTTP Status Code 400 (b'{...json...}')``."""
    matched = _HTTP_ERROR.search(text)
    if matched is None or matched.group(1) not in ("400", "422"):
        return None
    body = matched.group(2)
    try:
        literal = ast.literal_eval(body)
        payload = json.loads(literal.decode() if isinstance(literal, bytes) else literal)
    except (ValueError, SyntaxError, UnicodeDecodeError):
        return body[:500]
    if isinstance(payload, dict) and payload.get("error"):
        kind = payload.get("errorType")
        return f"{kind}: {payload['error']}" if kind else str(payload["error"])
    return body[:500]
