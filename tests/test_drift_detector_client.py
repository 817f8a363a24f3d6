"""The operator's client of the drift detector, against a real HTTP server speaking the detector's API:
what it sends, what it reads back, and a clear DetectorError for every way the detector can fail."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from modelloop_contracts.detector import Registration, VersionSpec

from modelloop.drift.detector import DetectorClient, DetectorError, reads_mmd


class FakeDetector:
    """An HTTP server with the detector's routes; it records what it was sent and answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, Any]] = []
        self.answers: dict[str, tuple[int, Any]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.method, request.raw_path, body))
        status, answer = self.answers.get(request.path, (200, {}))
        return web.json_response(answer, status=status)


@pytest_asyncio.fixture
async def detector() -> AsyncIterator[tuple[FakeDetector, str]]:
    fake = FakeDetector()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}/"
    await runner.cleanup()


@pytest.mark.asyncio
async def test_registration_names_the_served_versions_and_the_target_column(detector: Any) -> None:
    fake, url = detector
    client = DetectorClient()
    versions = {"3": VersionSpec("file:///m/3/reference.csv")}
    await client.register(url, "ml team", "iris", "iris", versions, "target")
    await client.close()
    body = {"referenceUri": "file:///m/3/reference.csv", "endpoint": "default"}
    assert fake.received == [
        (
            "PUT",
            "/v1/services/ml%20team/iris",
            {"model": "iris", "versions": {"3": body}, "targetColumn": "target"},
        )
    ]
    # The body is the detector's own contract: it reads it back as sent.
    assert Registration.from_json(fake.received[0][2]) == Registration("iris", versions, "target")


@pytest.mark.asyncio
async def test_a_policy_reading_mmd_asks_the_detector_for_it_and_no_other_does(detector: Any) -> None:
    fake, url = detector
    client = DetectorClient()
    versions = {"3": VersionSpec("file:///m/3/reference.csv")}
    await client.register(url, "ml", "iris", "iris", versions, None, mmd=True)
    await client.register(url, "ml", "iris", "iris", versions, None)
    await client.close()
    assert fake.received[0][2]["mmd"] is True
    assert "mmd" not in fake.received[1][2]
    assert Registration.from_json(fake.received[0][2]).mmd is True
    # The operator decides from the policy's queries: MMD only where a metric reads its series.
    assert reads_mmd(['max(modelloop_drift_verdict{namespace="a",detector="mmd"})'])
    assert reads_mmd(['max(modelloop_drift_verdict{detector=~"ks|mmd"})'])
    assert not reads_mmd(['max(modelloop_drift_verdict{detector="ks"})', "min(modelloop_feedback_accuracy)"])


@pytest.mark.asyncio
async def test_an_export_returns_the_detectors_dataset(detector: Any) -> None:
    fake, url = detector
    answer = {"uri": "s3://datasets/recent/a.csv", "hash": "sha256:ab", "rows": 200, "labelled": 150}
    fake.answers["/v1/export/ml/iris"] = (200, answer)
    client = DetectorClient()
    exported = await client.export(url, "ml", "iris", "s3://datasets/recent", None)
    await client.close()
    assert (exported.uri, exported.hash, exported.rows, exported.labelled) == (
        "s3://datasets/recent/a.csv",
        "sha256:ab",
        200,
        150,
    )
    assert fake.received[0][2] == {"uriPrefix": "s3://datasets/recent"}


@pytest.mark.asyncio
async def test_a_refusal_is_a_detector_error_with_the_detectors_own_message(detector: Any) -> None:
    fake, url = detector
    fake.answers["/v1/export/ml/iris"] = (409, {"error": "the window of ml/iris has no rows to export"})
    client = DetectorClient()
    with pytest.raises(DetectorError, match="answered 409: the window of ml/iris has no rows to export"):
        await client.export(url, "ml", "iris", "file:///tmp/x", "target")
    fake.answers["/v1/export/ml/iris"] = (200, {"uri": "file:///x.csv"})
    with pytest.raises(DetectorError, match="lacks 'hash'"):
        await client.export(url, "ml", "iris", "file:///tmp/x", "target")
    await client.close()


@pytest.mark.asyncio
async def test_an_unreachable_detector_is_a_detector_error_not_a_crash() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = DetectorClient(timeout=2)
    with pytest.raises(DetectorError, match="unreachable"):
        await client.register(f"http://127.0.0.1:{port}", "ml", "iris", "iris", {}, None)
    await client.close()
