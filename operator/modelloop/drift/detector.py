"""The operator's side of the drift detector (runtimes/detector): it tells the detector which versions a
service serves and where their reference samples are, and asks it for its recent rows as a dataset.

The registration is sent at every evaluation: the detector builds a version's detectors once and reuses
them, so a repeated registration costs it nothing, and a detector that restarted is told again at once.
"""

from __future__ import annotations

import json
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

TIMEOUT_SECONDS = 10.0


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
    """Talks to drift detectors; one connection pool, made on first use in the running loop."""

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
    ) -> None:
        body = Registration(model, dict(versions), target or None).to_json()
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
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.request(method, url, json=body) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DetectorError(f"the detector at {url} is unreachable ({type(error).__name__})") from error
        if status >= 400:
            raise DetectorError(f"the detector at {url} answered {status}: {_error_text(text)}")
        try:
            parsed = json.loads(text) if text else {}
        except json.JSONDecodeError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}


def _service_url(base: str, what: str, namespace: str, service: str) -> str:
    return f"{base.rstrip('/')}/v1/{what}/{quote(namespace, safe='')}/{quote(service, safe='')}"


def _error_text(text: str) -> str:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])[:300]
    return text[:300]
