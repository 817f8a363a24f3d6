"""The operator's side of the drift detector (runtimes/detector): it tells the detector which versions a
service serves and where their reference samples are, and asks it for its recent rows as a dataset.

The registration is sent at every evaluation: the detector builds a version's detectors once and reuses
them, so a repeated registration costs it nothing, and a detector that restarted is told again at once.

The detector's URL is a tenant's, so each call has a total deadline (connecting and reading the whole
answer), reads at most ``MAX_ANSWER_BYTES``, and waits for one of ``CALLS_PER_HOST`` connections per
host; of an answer, only the detector's own JSON error message reaches status and events (truncated):
any other body is told as ``HTTP <status> from <host>``.

Every call carries ``Authorization: Bearer <token>``, the token in ``Settings.detector_token_file``
(``MODELLOOP_DETECTOR_TOKEN_FILE``, by default ``settings.DETECTOR_TOKEN``: a projected ServiceAccount token
for the audience ``modelloop-detector``, which the API server takes for nothing else, never the pod's own
token, since the detector's URL is a tenant's), read again whenever the file changes (the kubelet rotates
it); no header while the file does not exist. The detector checks it with
the API server (a TokenReview, then a SubjectAccessReview on ``inferenceservices/drift``): a 401 or 403 is
a DetectorError that says what to grant. The token itself is never logged nor put in any message, and
redirects are not followed, so that it goes to the detector's URL only.
"""

from __future__ import annotations

import json
import os
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
from modelloop.settings import detector_token_file

TIMEOUT_SECONDS = 10.0
CALLS_PER_HOST = 4
MAX_ANSWER_BYTES = 1 << 20
MAX_TOKEN_BYTES = 16 << 10
"""A ServiceAccount token is a JWT of one or two kilobytes: a longer file is not a token."""
TOKEN_VARIABLE = "MODELLOOP_DETECTOR_TOKEN_FILE"
DRIFT_RULE = "{apiGroups: [modelloop.dev], resources: [inferenceservices/drift], verbs: [get, update]}"
"""What the operator's ClusterRole grants so that detectors take its registrations and exports."""
_TOKEN = re.compile(r"[\x21-\x7e]+")


class DetectorError(Exception):
    """The detector did not do what was asked; the message says why, as it answered."""


def detector_versions(
    versions: Iterable[Mapping[str, Any]], served: RolloutVersions
) -> dict[str, VersionSpec]:
    """The registration's ``versions``: the service's stable version (endpoint default) and its canary
    (endpoint canary), each with its reference sample, the model's predictions on it and its held-out rows
    as its ModelVersion records them; a version without a reference sample is left out."""
    by_number = {v.get("spec", {}).get("version"): v for v in versions}
    registered: dict[str, VersionSpec] = {}
    for number, endpoint in ((served.stable, DEFAULT_ENDPOINT), (served.canary, "canary")):
        version = by_number.get(number)
        artifact = ((version or {}).get("spec") or {}).get("artifact") or {}
        if number is None or not artifact.get("referenceUri"):
            continue
        registered[str(number)] = VersionSpec(
            str(artifact["referenceUri"]),
            _optional_uri(artifact.get("referencePredictionsUri")),
            endpoint,
            holdout_uri=_optional_uri(artifact.get("holdoutUri")),
        )
    return registered


def _optional_uri(value: Any) -> str | None:
    return str(value) if value else None


class TokenFile:
    """The bearer token in a file, read again only when the file changed: a call costs one ``stat``. A
    rotated token (the kubelet swaps a symlink, or the file is rewritten) has another inode, time or size."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._token: str | None = None

    def token(self) -> str | None:
        """The token; None while the file does not exist or is empty. DetectorError when it cannot be
        read or holds no token (one word of printable ASCII, at most MAX_TOKEN_BYTES)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._seen = self._token = None
            return None
        except OSError as error:
            raise self._unreadable(error) from None
        seen = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return self._token
        try:
            with open(self.path, "rb") as file:
                raw = file.read(MAX_TOKEN_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._unreadable(error) from None
        text = raw.decode("ascii", errors="replace").strip()
        if len(raw) > MAX_TOKEN_BYTES or (text and not _TOKEN.fullmatch(text)):
            raise DetectorError(
                f"{self.path} ({TOKEN_VARIABLE}) holds no bearer token: one line of printable ASCII of at "
                f"most {MAX_TOKEN_BYTES} bytes"
            )
        self._seen, self._token = seen, text or None
        return self._token

    def _unreadable(self, error: OSError) -> DetectorError:
        why = error.strerror or type(error).__name__
        return DetectorError(f"cannot read the detector token file {self.path} ({TOKEN_VARIABLE}): {why}")


class DetectorClient:
    """Talks to drift detectors; one connection pool (at most CALLS_PER_HOST connections to a host), made
    on first use in the running loop. ``token_file`` holds the token shown to them (None:
    ``MODELLOOP_DETECTOR_TOKEN_FILE`` or the detector-audience token, as ``Settings`` reads it)."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS, token_file: str | None = None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.token_file = TokenFile(token_file if token_file is not None else detector_token_file())
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
        await self._call("PUT", _service_url(url, "services", namespace, service), body, namespace)

    async def export(
        self, url: str, namespace: str, service: str, uri_prefix: str, target: str | None
    ) -> ExportedDataset:
        body = ExportRequest(uri_prefix, target_column=target or None).to_json()
        answer = await self._call("POST", _service_url(url, "export", namespace, service), body, namespace)
        try:
            return ExportedDataset.from_json(answer)
        except InvalidMessage as error:
            raise DetectorError(str(error)) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, url: str, body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        token = self.token_file.token()
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit_per_host=CALLS_PER_HOST)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        shown = shown_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await _read_answer(response.content, MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DetectorError(f"the detector at {shown} is unreachable ({type(error).__name__})") from error
        if len(answer) > MAX_ANSWER_BYTES:
            raise DetectorError(f"the detector at {shown} answered more than {MAX_ANSWER_BYTES} bytes")
        if status in (401, 403):
            raise DetectorError(self._refusal(shown, status, _error_text(answer, token), namespace, token))
        if status >= 300:
            message = _error_text(answer, token)
            told = f"{status}: {message}" if message is not None else f"HTTP {status} from {host_of(url)}"
            raise DetectorError(f"the detector at {shown} answered {told}")
        try:
            parsed = json.loads(answer) if answer else {}
        except ValueError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}

    def _refusal(
        self, shown: str, status: int, message: str | None, namespace: str, token: str | None
    ) -> str:
        """What a 401 or 403 of the detector means, and what to do about it (never the token)."""
        said = f": {message}" if message else ""
        path = self.token_file.path
        if status == 401 and token is None:
            return (
                f"the detector at {shown} answered 401{said}: the operator sent no token, as {path} "
                f"({TOKEN_VARIABLE}) does not exist or is empty; mount a projected ServiceAccount token for "
                f"the detector's audience (MODELLOOP_DETECTOR_AUDIENCE) there, as the chart does"
            )
        if status == 401:
            return (
                f"the detector at {shown} answered 401{said}: the API server did not authenticate the token "
                f"in {path} ({TOKEN_VARIABLE}) for the detector's audience (a projected token's audience "
                "must be the detector's MODELLOOP_DETECTOR_AUDIENCE), or the detector cannot ask it (its "
                "ServiceAccount needs the ClusterRole system:auth-delegator)"
            )
        return (
            f"the detector at {shown} answered 403{said}: grant the operator's ServiceAccount the rule "
            f"{DRIFT_RULE} in namespace {namespace} (manifests/operator/rbac.yaml's ClusterRole has it)"
        )


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


def _error_text(answer: bytes, token: str | None = None) -> str | None:
    """The detector's own error message (its JSON error shape, ``{"error": "..."}``), truncated, with
    ``token`` blacked out should the detector echo it; None for any other body, which is never shown."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and parsed["error"]:
        message = str(parsed["error"])
        if token:
            message = message.replace(token, "<token>")
        return message[:ECHO_LIMIT]
    return None
