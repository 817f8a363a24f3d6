"""The operator's side of the drift detector (runtimes/detector): it tells the detector which versions a
service serves and where their reference samples are, and asks it for its recent rows as a dataset.

The registration is sent at every evaluation: the detector builds a version's detectors once and reuses
them, so a repeated registration costs it nothing, and a detector that restarted is told again at once.

The detector's URL is a tenant's, so each call has a total deadline (connecting and reading the whole
answer), reads at most ``MAX_ANSWER_BYTES``, and waits for one of ``CALLS_PER_HOST`` connections per
host; of an answer, only the detector's own JSON error message reaches status and events (truncated):
any other body is told as ``HTTP <status> from <host>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from modelloop_contracts.detector import (
    DEFAULT_ENDPOINT,
    ExportedDataset,
    ExportRequest,
    InvalidMessage,
    Registration,
    VersionSpec,
)

from modelloop.api.inferenceservice import RolloutVersions
from modelloop.serving.analysis import ECHO_LIMIT, host_of, shown_url

TIMEOUT_SECONDS = 10.0
CALLS_PER_HOST = 4
MAX_ANSWER_BYTES = 1 << 20


class DetectorError(Exception):
    """The detector did not do what was asked; the message says why, as it answered."""


def detector_versions(
    versions: Iterable[Mapping[str, Any]], served: RolloutVersions
) -> dict[str, VersionSpec]:
    """The registration's ``versions``: the service's stable version (endpoint default) and its canary
    (endpoint canary), each with its reference sample as its ModelVersion records it."""
    by_number = {v.get("spec", {}).get("version"): v for v in versions}
    registered: dict[str, VersionSpec] = {}
    for number, endpoint in ((served.stable, DEFAULT_ENDPOINT), (served.canary, "canary")):
        version = by_number.get(number)
        artifact = ((version or {}).get("spec") or {}).get("artifact") or {}
        if number is None or not artifact.get("referenceUri"):
            continue
        predictions = artifact.get("referencePredictionsUri") or None
        registered[str(number)] = VersionSpec(str(artifact["referenceUri"]), predictions, endpoint)
    return registered


class DetectorClient:
    """Talks to drift detectors; one connection pool (at most CALLS_PER_HOST connections to a host), made
    on first use in the running loop."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def register(
        self,
        url: str,
        namespace: str,
        service: str,
        model: str,
        versions: Mapping[str, VersionSpec],
        target: str | None,
        mmd: bool = False,
    ) -> None:
        """Tell the detector what ``service`` serves; ``mmd`` asks it for the MMD detector too (it loads
        PyTorch only for services that ask)."""
        body = Registration(model, dict(versions), target or None, mmd=mmd or None).to_json()
        await self._call("PUT", _service_url(url, "services", namespace, service), body)

    async def export(
        self, url: str, namespace: str, service: str, uri_prefix: str, target: str | None
    ) -> ExportedDataset:
        body = ExportRequest(uri_prefix, target_column=target or None).to_json()
        answer = await self._call("POST", _service_url(url, "export", namespace, service), body)
        try:
            return ExportedDataset.from_json(answer)
        except InvalidMessage as error:
            raise DetectorError(str(error)) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit_per_host=CALLS_PER_HOST)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        shown = shown_url(url)
        try:
            async with self._session.request(method, url, json=body) as response:
                answer = await _read_answer(response.content, MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DetectorError(f"the detector at {shown} is unreachable ({type(error).__name__})") from error
        if len(answer) > MAX_ANSWER_BYTES:
            raise DetectorError(f"the detector at {shown} answered more than {MAX_ANSWER_BYTES} bytes")
        if status >= 400:
            message = _error_text(answer)
            told = f"{status}: {message}" if message is not None else f"HTTP {status} from {host_of(url)}"
            raise DetectorError(f"the detector at {shown} answered {told}")
        try:
            parsed = json.loads(answer) if answer else {}
        except ValueError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}


# A metric that reads the MMD detector's series: `detector="mmd"`, or a regular expression naming it.
_READS_MMD = re.compile(r'detector\s*(=|=~)\s*"[^"]*mmd')


def reads_mmd(queries: Iterable[str]) -> bool:
    """Whether any of a DriftPolicy's metric queries reads the MMD detector's verdicts."""
    return any(_READS_MMD.search(query) for query in queries)


def _service_url(base: str, what: str, namespace: str, service: str) -> str:
    return f"{base.rstrip('/')}/v1/{what}/{quote(namespace, safe='')}/{quote(service, safe='')}"


async def _read_answer(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer to its end, or its first ``limit`` bytes when it is longer."""
    answer = bytearray()
    while len(answer) < limit:
        chunk = await content.read(limit - len(answer))
        if not chunk:
            break
        answer += chunk
    return bytes(answer)


def _error_text(answer: bytes) -> str | None:
    """The detector's own error message (its JSON error shape, ``{"error": "..."}``), truncated; None for
    any other body, which is never shown."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and parsed["error"]:
        return str(parsed["error"])[:ECHO_LIMIT]
    return None
