"""The operator's client of the drift detector, against a real HTTP server speaking the detector's API:
what it sends, what it reads back, and a clear DetectorError for every way the detector can fail."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from modelloop_contracts.detector import Registration, VersionSpec

from modelloop.drift.detector import DetectorClient, DetectorError, reads_mmd
from modelloop.settings import DETECTOR_TOKEN, Settings


class FakeDetector:
    """An HTTP server with the detector's routes; it records what it was sent and answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, Any]] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.authorization: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.method, request.raw_path, body))
        self.authorization.append(request.headers.get("Authorization"))
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


# --- the operator's identity (the detector authenticates its callers: TokenReview, SubjectAccessReview) ---

TOKEN = "eyJhbGciOiJSUzI1NiJ9.first-token.signature"
ROTATED = "eyJhbGciOiJSUzI1NiJ9.second-token.signature"


def test_the_token_file_is_the_detector_audiences_unless_the_environment_names_another() -> None:
    # Never the pod's ServiceAccount token, which the API server would take from whoever got it.
    assert Settings.from_env({}).detector_token_file == DETECTOR_TOKEN
    assert DETECTOR_TOKEN == "/var/run/secrets/modelloop.dev/detector/token"
    named = Settings.from_env({"MODELLOOP_DETECTOR_TOKEN_FILE": " /tokens/detector "})
    assert named.detector_token_file == "/tokens/detector"


@pytest.mark.asyncio
async def test_the_token_in_the_file_is_sent_as_a_bearer_token(detector: Any, tmp_path: Path) -> None:
    fake, url = detector
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fake.answers["/v1/export/ml/iris"] = (200, {"uri": "file:///x.csv", "hash": "sha256:ab", "rows": 1})
    client = DetectorClient(token_file=str(token_file))
    await client.register(url, "ml", "iris", "iris", {}, None)
    await client.export(url, "ml", "iris", "file:///tmp/x", None)
    await client.close()
    assert fake.authorization == [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]


@pytest.mark.asyncio
async def test_the_token_file_is_named_by_the_environment(
    detector: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = detector
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("MODELLOOP_DETECTOR_TOKEN_FILE", str(token_file))
    client = DetectorClient()
    await client.register(url, "ml", "iris", "iris", {}, None)
    await client.close()
    assert fake.authorization == [f"Bearer {TOKEN}"]


@pytest.mark.asyncio
async def test_without_a_token_file_no_authorization_is_sent(detector: Any, tmp_path: Path) -> None:
    fake, url = detector
    client = DetectorClient(token_file=str(tmp_path / "absent"))
    await client.register(url, "ml", "iris", "iris", {}, None)
    (tmp_path / "empty").write_text("\n")
    empty = DetectorClient(token_file=str(tmp_path / "empty"))
    await empty.register(url, "ml", "iris", "iris", {}, None)
    await client.close()
    await empty.close()
    assert fake.authorization == [None, None]


@pytest.mark.asyncio
async def test_a_rotated_token_is_sent_from_the_next_call_on(detector: Any, tmp_path: Path) -> None:
    fake, url = detector
    # As the kubelet mounts it: `token` is a link into a timestamped folder, swapped on rotation.
    (tmp_path / "..2026_01").mkdir()
    (tmp_path / "..2026_01" / "token").write_text(TOKEN)
    (tmp_path / "..data").symlink_to("..2026_01")
    (tmp_path / "token").symlink_to("..data/token")
    client = DetectorClient(token_file=str(tmp_path / "token"))
    await client.register(url, "ml", "iris", "iris", {}, None)
    await client.register(url, "ml", "iris", "iris", {}, None)

    (tmp_path / "..2026_02").mkdir()
    (tmp_path / "..2026_02" / "token").write_text(ROTATED)
    (tmp_path / "..data_tmp").symlink_to("..2026_02")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    await client.register(url, "ml", "iris", "iris", {}, None)
    # Rewritten in place (same inode, another size) too.
    (tmp_path / "..2026_02" / "token").write_text(TOKEN + "-longer")
    await client.register(url, "ml", "iris", "iris", {}, None)
    (tmp_path / "..2026_02" / "token").unlink()
    await client.register(url, "ml", "iris", "iris", {}, None)
    await client.close()
    assert fake.authorization == [
        f"Bearer {TOKEN}",
        f"Bearer {TOKEN}",
        f"Bearer {ROTATED}",
        f"Bearer {TOKEN}-longer",
        None,
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("content", [b"two words", b"line\nbreak", b"\xff\xfe", b"x" * ((16 << 10) + 1)])
async def test_a_file_that_holds_no_token_is_a_detector_error_before_any_request(
    detector: Any, tmp_path: Path, content: bytes
) -> None:
    fake, url = detector
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    client = DetectorClient(token_file=str(token_file))
    expected = re.escape(f"{token_file} (MODELLOOP_DETECTOR_TOKEN_FILE) holds no bearer token")
    with pytest.raises(DetectorError, match=expected):
        await client.register(url, "ml", "iris", "iris", {}, None)
    await client.close()
    assert fake.received == []


@pytest.mark.asyncio
async def test_an_unreadable_token_file_is_a_detector_error_naming_it(detector: Any, tmp_path: Path) -> None:
    _, url = detector
    client = DetectorClient(token_file=str(tmp_path))  # a folder
    with pytest.raises(DetectorError, match=re.escape(f"cannot read the detector token file {tmp_path}")):
        await client.register(url, "ml", "iris", "iris", {}, None)
    await client.close()


@pytest.mark.asyncio
async def test_a_401_without_a_token_says_none_was_sent_and_how_to_send_one(
    detector: Any, tmp_path: Path
) -> None:
    fake, url = detector
    fake.answers["/v1/services/ml/iris"] = (401, {"error": "authentication required"})
    client = DetectorClient(token_file=str(tmp_path / "absent"))
    with pytest.raises(DetectorError) as raised:
        await client.register(url, "ml", "iris", "iris", {}, None)
    await client.close()
    message = str(raised.value)
    assert "answered 401: authentication required" in message
    assert (
        f"sent no token, as {tmp_path / 'absent'} (MODELLOOP_DETECTOR_TOKEN_FILE) does not exist" in message
    )


@pytest.mark.asyncio
async def test_a_401_with_a_token_says_it_was_not_authenticated_never_quoting_it(
    detector: Any, tmp_path: Path
) -> None:
    fake, url = detector
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    # Even a detector that echoes the token does not get it into the message (status, events).
    fake.answers["/v1/export/ml/iris"] = (401, {"error": f"token {TOKEN} is not valid"})
    client = DetectorClient(token_file=str(token_file))
    with pytest.raises(DetectorError) as raised:
        await client.export(url, "ml", "iris", "file:///tmp/x", None)
    await client.close()
    message = str(raised.value)
    assert "answered 401: token <token> is not valid" in message
    assert f"did not authenticate the token in {token_file} (MODELLOOP_DETECTOR_TOKEN_FILE)" in message
    assert "system:auth-delegator" in message
    assert "first-token" not in message


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", [{"error": "forbidden: cannot update inferenceservices/drift"}, {}])
async def test_a_403_names_the_rule_to_grant_in_the_services_namespace(
    detector: Any, tmp_path: Path, answer: dict[str, Any]
) -> None:
    fake, url = detector
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    fake.answers["/v1/services/team-a/iris"] = (403, answer)
    client = DetectorClient(token_file=str(token_file))
    with pytest.raises(DetectorError) as raised:
        await client.register(url, "team-a", "iris", "iris", {}, None)
    await client.close()
    message = str(raised.value)
    assert message.startswith(f"the detector at {url}v1/services/team-a/iris answered 403")
    assert (
        "grant the operator's ServiceAccount the rule {apiGroups: [modelloop.dev], resources: "
        "[inferenceservices/drift], verbs: [get, update]} in namespace team-a"
    ) in message
    assert "first-token" not in message


@pytest.mark.asyncio
async def test_a_redirect_is_not_followed_so_the_token_goes_to_the_detector_only(
    tmp_path: Path,
) -> None:
    elsewhere: list[str | None] = []

    async def redirect(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            elsewhere.append(request.headers.get("Authorization"))
            return web.json_response({})
        raise web.HTTPTemporaryRedirect("/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    client = DetectorClient(token_file=str(token_file))
    try:
        with pytest.raises(DetectorError, match=r"answered HTTP 307 from 127\.0\.0\.1"):
            await client.register(f"http://127.0.0.1:{port}", "ml", "iris", "iris", {}, None)
    finally:
        await client.close()
        await runner.cleanup()
    assert elsewhere == []
