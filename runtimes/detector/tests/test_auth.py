"""Kubernetes identities on the detector's API (``--auth kubernetes``): which access each call needs, the
401/403/503 a caller gets, the caches (on virtual time), that ingestion never waits for the API server, and
the client's requests, deadline and bounds against a local HTTPS server. The real API server is
e2e/test_detector_auth.py's."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import inference_event
from modelloop_detector.auth import (
    AUTH_VARIABLE,
    KUBE_CA_FILE_VARIABLE,
    KUBE_TOKEN_FILE_VARIABLE,
    KUBE_URL_VARIABLE,
    Access,
    AuthMode,
    Authorizer,
    AuthSettings,
    Identity,
    KubeReviewer,
    ReviewUnavailable,
    bearer_token,
    required_access,
)
from modelloop_detector.cli import build_detector, build_parser, main
from modelloop_detector.limits import Refused
from modelloop_detector.tenancy import Tenancy

TOKEN = "eyJhbGciOiJSUzI1NiJ9.editor-token.signature"
EDITOR = Identity("system:serviceaccount:team-a:editor", "uid-1", ("system:serviceaccounts",))
FEEDBACK = Access("team-a", "iris", "feedback", "create")
REGISTER = Access("team-a", "iris", "drift", "update")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeReviewer:
    """The API server's answers, scripted: who each token is, and what each identity may do."""

    tokens: dict[str, Identity] = field(default_factory=lambda: {TOKEN: EDITOR})
    allowed: set[tuple[str, Access]] = field(default_factory=lambda: {(EDITOR.username, FEEDBACK)})
    unavailable: bool = False
    gate: threading.Event | None = None
    """When set, every review waits for it: a slow API server."""
    entered: threading.Event = field(default_factory=threading.Event)
    authentications: int = 0
    authorizations: int = 0

    def authenticate(self, token: str) -> Identity | None:
        self.authentications += 1
        self._answer()
        return self.tokens.get(token)

    def authorize(self, identity: Identity, access: Access) -> bool:
        self.authorizations += 1
        self._answer()
        return (identity.username, access) in self.allowed

    def _answer(self) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "the test never let the review finish"
        if self.unavailable:
            raise ReviewUnavailable("connection refused")


def bearer(token: str = TOKEN) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def check(authorizer: Authorizer, headers: list[tuple[bytes, bytes]], access: Access = FEEDBACK) -> int:
    """The status a call gets: 200 when allowed, else the refusal's."""

    async def run() -> int:
        try:
            await authorizer.check(headers, access)
        except Refused as exc:
            return exc.status
        return 200

    return asyncio.run(run())


# --- which access each call needs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "resource", "subresource", "verb"),
    [
        ("POST", "feedback", "feedback", "create"),
        ("PUT", "services", "drift", "update"),
        ("DELETE", "services", "drift", "update"),
        ("POST", "export", "drift", "update"),
        ("GET", "services", "drift", "get"),
    ],
)
def test_each_call_needs_its_verb_on_its_subresource_of_the_inferenceservice(
    method: str, resource: str, subresource: str, verb: str
) -> None:
    access = required_access(method, resource, "team-a", "iris")
    assert access == Access("team-a", "iris", subresource, verb)
    assert access.resource_attributes() == {
        "group": "modelloop.dev",
        "resource": "inferenceservices",
        "subresource": subresource,
        "namespace": "team-a",
        "name": "iris",
        "verb": verb,
    }


def test_a_call_the_api_does_not_have_needs_no_review() -> None:
    assert required_access("GET", "feedback", "team-a", "iris") is None
    assert required_access("PATCH", "services", "team-a", "iris") is None


# --- the Authorization header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([], "no Authorization header"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], "not 'Bearer <token>'"),
        ([(b"authorization", b"Bearer ")], "not 'Bearer <token>'"),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], "more than one"),
        ([(b"authorization", b"Bearer " + b"x" * 20_000)], "at most 16384"),
        ([(b"authorization", "Bearer tök€n".encode())], "characters a token cannot have"),
    ],
)
def test_a_missing_or_malformed_authorization_is_401_with_a_bearer_challenge(
    headers: list[tuple[bytes, bytes]], message: str
) -> None:
    with pytest.raises(Refused) as refused:
        bearer_token(headers)
    assert refused.value.status == 401
    assert refused.value.headers == ((b"www-authenticate", b"Bearer"),)
    assert message in str(refused.value)
    assert "dXNlcjpwYXNz" not in str(refused.value) and "xxxx" not in str(refused.value)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token([(b"Authorization", b"bearer abc.def")]) == "abc.def"


# --- the authorizer's answers and caches, on virtual time -----------------------------------------------


def test_an_allowed_caller_is_reviewed_once_then_again_after_a_minute() -> None:
    clock, reviewer = Clock(), FakeReviewer()
    authorizer = Authorizer(reviewer, clock=clock)
    assert check(authorizer, bearer()) == 200
    clock.now += 59
    assert check(authorizer, bearer()) == 200
    assert (reviewer.authentications, reviewer.authorizations) == (1, 1)
    clock.now += 1
    assert check(authorizer, bearer()) == 200
    assert (reviewer.authentications, reviewer.authorizations) == (2, 2)
    authorizer.close()


def test_a_denied_caller_is_403_naming_the_access_and_a_new_grant_counts_after_ten_seconds() -> None:
    clock, reviewer = Clock(), FakeReviewer()
    authorizer = Authorizer(reviewer, clock=clock)

    async def refusal() -> Refused:
        with pytest.raises(Refused) as refused:
            await authorizer.check(bearer(), REGISTER)
        return refused.value

    refused = asyncio.run(refusal())
    assert refused.status == 403
    message = str(refused)
    assert "system:serviceaccount:team-a:editor" in message
    assert "update inferenceservices/drift (modelloop.dev) 'iris' in namespace 'team-a'" in message
    assert TOKEN not in message
    reviewer.allowed.add((EDITOR.username, REGISTER))  # a RoleBinding is created
    clock.now += 9
    assert check(authorizer, bearer(), REGISTER) == 403
    clock.now += 1
    assert check(authorizer, bearer(), REGISTER) == 200
    # The identity was remembered for a minute: only the decision was asked again.
    assert (reviewer.authentications, reviewer.authorizations) == (1, 2)
    authorizer.close()


def test_a_token_the_api_server_does_not_authenticate_is_401_and_remembered_ten_seconds() -> None:
    clock, reviewer = Clock(), FakeReviewer()
    authorizer = Authorizer(reviewer, clock=clock)
    assert check(authorizer, bearer("bogus")) == 401
    clock.now += 9.9
    assert check(authorizer, bearer("bogus")) == 401
    assert reviewer.authentications == 1 and reviewer.authorizations == 0
    clock.now += 0.1
    reviewer.tokens["bogus"] = EDITOR  # say, a token the API server now accepts
    assert check(authorizer, bearer("bogus")) == 200
    authorizer.close()


def test_an_unavailable_api_server_fails_closed_with_503_and_nothing_is_remembered() -> None:
    clock, reviewer = Clock(), FakeReviewer(unavailable=True)
    authorizer = Authorizer(reviewer, clock=clock)
    assert check(authorizer, bearer()) == 503
    assert check(authorizer, bearer()) == 503
    assert reviewer.authentications == 2
    reviewer.unavailable = False
    assert check(authorizer, bearer()) == 200
    # And an outage after the identity is known: the decision cannot be made, so 503 again.
    reviewer.unavailable = True
    assert check(authorizer, bearer(), Access("team-a", "iris", "drift", "get")) == 503
    authorizer.close()


def test_the_caches_hold_a_hash_of_the_token_never_the_token_and_stay_bounded() -> None:
    reviewer = FakeReviewer()
    authorizer = Authorizer(reviewer, clock=Clock(), max_entries=100)
    for index in range(300):
        assert check(authorizer, bearer(f"bogus-{index}")) == 401
    assert len(authorizer.identities) == 100
    assert check(authorizer, bearer()) == 200
    keys = list(authorizer.identities._entries) + [key for key, _ in authorizer.decisions._entries]
    assert hashlib.sha256(TOKEN.encode()).digest() in keys
    assert all(isinstance(key, bytes) and TOKEN.encode() not in key for key in keys)
    authorizer.close()


def test_callers_with_the_same_token_at_once_share_one_review() -> None:
    gate = threading.Event()
    reviewer = FakeReviewer(gate=gate)
    authorizer = Authorizer(reviewer, clock=Clock())

    async def many() -> list[int]:
        async def one() -> int:
            try:
                await authorizer.check(bearer(), FEEDBACK)
            except Refused as exc:
                return exc.status
            return 200

        calls = [asyncio.ensure_future(one()) for _ in range(20)]
        await asyncio.to_thread(reviewer.entered.wait, 30)
        gate.set()
        return await asyncio.gather(*calls)

    assert asyncio.run(many()) == [200] * 20
    assert (reviewer.authentications, reviewer.authorizations) == (1, 1)
    authorizer.close()


def test_past_the_reviews_in_flight_a_caller_is_told_to_come_back_503() -> None:
    gate = threading.Event()
    reviewer = FakeReviewer(gate=gate)
    authorizer = Authorizer(reviewer, clock=Clock(), max_in_flight=2)

    async def flood() -> list[int]:
        async def one(token: str) -> int:
            try:
                await authorizer.check(bearer(token), FEEDBACK)
            except Refused as exc:
                return exc.status
            return 200

        waiting = [asyncio.ensure_future(one(f"t{index}")) for index in range(2)]
        await asyncio.sleep(0)  # both reviews start (no time passes)
        third = await one("t3")
        gate.set()
        return [*await asyncio.gather(*waiting), third]

    assert asyncio.run(flood()) == [401, 401, 503]
    authorizer.close()


# --- the HTTP application ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: dict[str, Any]


@dataclass
class App:
    detector: Any
    reviewer: FakeReviewer
    clock: Clock

    def refused(self, reason: str) -> float:
        return float(self.detector.metrics.refused.labels(reason)._value.get())

    async def call(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> tuple[Answer, int]:
        """The answer, and how many times the app read the request's body."""
        reads = 0
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
        await self.detector.app(scope, receive, send)
        start, content = sent
        payload = content["body"]
        answer = Answer(
            start["status"],
            dict(start["headers"]),
            json.loads(payload) if start["headers"][0][1] == b"application/json" else {},
        )
        return answer, reads

    def sync(self, *args: Any, **kwargs: Any) -> tuple[Answer, int]:
        return asyncio.run(self.call(*args, **kwargs))


@pytest.fixture
def app() -> Iterator[App]:
    clock, reviewer = Clock(), FakeReviewer()
    authorizer = Authorizer(reviewer, clock=clock)
    detector = build_detector(build_parser().parse_args(["--no-mmd"]), authorizer=authorizer)
    yield App(detector, reviewer, clock)
    authorizer.close()  # the evaluation loops never started


def test_a_call_without_a_token_is_401_with_the_challenge_counted_and_its_body_never_read(app: App) -> None:
    answer, reads = app.sync("PUT", "/v1/services/team-a/iris", body=b'{"model": "iris"}')
    assert answer.status == 401
    assert answer.headers[b"www-authenticate"] == b"Bearer"
    assert "Authorization" in answer.body["error"]
    assert reads == 0
    assert app.refused("unauthenticated") == 1
    assert app.reviewer.authentications == 0


def test_a_forbidden_call_is_403_counted_and_its_body_never_read(app: App) -> None:
    answer, reads = app.sync("PUT", "/v1/services/team-a/iris", bearer(), b'{"model": "iris"}')
    assert answer.status == 403, answer.body
    assert "may not update inferenceservices/drift" in answer.body["error"]
    assert reads == 0
    assert app.refused("forbidden") == 1


def test_an_allowed_call_goes_through(app: App) -> None:
    answer, reads = app.sync("POST", "/v1/feedback/team-a/iris", bearer(), b'{"labels": []}')
    assert answer.status == 404, answer.body  # allowed, and then: nothing is registered as team-a/iris
    assert "not registered" in answer.body["error"]
    assert reads == 1


def test_a_path_naming_what_no_inferenceservice_can_be_called_asks_the_api_server_nothing(app: App) -> None:
    for path in ("/v1/services/Team_A/iris", "/v1/feedback/team-a/" + "x" * 64):
        answer, reads = app.sync("POST" if "feedback" in path else "GET", path, bearer())
        assert answer.status == 400 and "the path's" in answer.body["error"], answer.body
        assert reads == 0
    assert app.reviewer.authentications == 0
    assert app.refused("invalid_name") == 2


def test_an_unavailable_api_server_is_503_counted(app: App) -> None:
    app.reviewer.unavailable = True
    answer, _ = app.sync("GET", "/v1/services/team-a/iris", bearer())
    assert answer.status == 503
    assert app.refused("auth_unavailable") == 1


def test_ingestion_metrics_and_health_need_no_token(app: App) -> None:
    event = inference_event("request", "e1", {"instances": [[1, 2, 3, 4]]}, namespace="team-a")
    headers = [(f"ce-{k}".encode(), str(v).encode()) for k, v in event.get_attributes().items()]
    answer, _ = app.sync("POST", "/", [*headers, (b"content-type", b"application/json")], event.get_data())
    assert answer.status == 202
    assert app.sync("GET", "/healthz")[0].status == 200
    assert app.sync("GET", "/metrics")[0].status == 200
    assert app.reviewer.authentications == 0


def test_ingestion_goes_on_while_the_api_server_is_slow(app: App) -> None:
    app.reviewer.gate = threading.Event()
    event = inference_event("request", "e2", {"instances": [[1, 2, 3, 4]]}, namespace="team-a")
    headers = [(f"ce-{k}".encode(), str(v).encode()) for k, v in event.get_attributes().items()]
    headers.append((b"content-type", b"application/json"))

    async def scenario() -> tuple[int, int]:
        waiting = asyncio.ensure_future(app.call("GET", "/v1/services/team-a/iris", bearer()))
        await asyncio.to_thread(app.reviewer.entered.wait, 30)
        ingested, _ = await app.call("POST", "/", headers, event.get_data())  # the review still hangs
        assert not waiting.done()
        app.reviewer.gate.set()  # type: ignore[union-attr]
        (answer, _) = await waiting
        return ingested.status, answer.status

    assert asyncio.run(scenario()) == (202, 403)


def test_the_namespace_check_comes_first_and_asks_the_api_server_nothing() -> None:
    reviewer = FakeReviewer()
    authorizer = Authorizer(reviewer, clock=Clock())
    detector = build_detector(
        build_parser().parse_args(["--no-mmd"]), tenancy=Tenancy("team-b"), authorizer=authorizer
    )
    app = App(detector, reviewer, Clock())
    answer, reads = app.sync("GET", "/v1/services/team-a/iris", bearer())
    assert answer.status == 403 and "serves namespace 'team-b' only" in answer.body["error"]
    assert reads == 0 and reviewer.authentications == 0
    assert app.refused("namespace") == 1 and app.refused("forbidden") == 0
    authorizer.close()


# --- the settings ---------------------------------------------------------------------------------


def test_none_is_the_default_and_kubernetes_reads_the_api_server_from_the_environment(tmp_path: Path) -> None:
    assert AuthSettings.parse("", {}).mode is AuthMode.NONE
    assert AuthSettings.parse(" None ", {}).mode is AuthMode.NONE
    explicit = AuthSettings.parse(
        "kubernetes",
        {
            KUBE_URL_VARIABLE: "https://127.0.0.1:6443/",
            KUBE_TOKEN_FILE_VARIABLE: "/t/token",
            KUBE_CA_FILE_VARIABLE: "/t/ca.crt",
        },
    )
    assert explicit == AuthSettings(AuthMode.KUBERNETES, "https://127.0.0.1:6443", "/t/token", "/t/ca.crt")
    in_pod = AuthSettings.parse(
        "kubernetes",
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
        service_account_dir=tmp_path,
    )
    assert in_pod.url == "https://[fd00::1]:443"
    assert in_pod.token_file == str(tmp_path / "token") and in_pod.ca_file == str(tmp_path / "ca.crt")


@pytest.mark.parametrize(
    ("mode", "env", "named"),
    [
        ("kerberos", {}, AUTH_VARIABLE),
        ("kubernetes", {}, KUBE_URL_VARIABLE),
        ("kubernetes", {KUBE_URL_VARIABLE: "http://127.0.0.1:6443"}, KUBE_URL_VARIABLE),
        ("kubernetes", {KUBE_URL_VARIABLE: "https://127.0.0.1:port"}, KUBE_URL_VARIABLE),
        ("kubernetes", {KUBE_URL_VARIABLE: "https://u:p@127.0.0.1"}, KUBE_URL_VARIABLE),
    ],
)
def test_a_setting_that_cannot_work_is_a_value_error_naming_the_variable(
    mode: str, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        AuthSettings.parse(mode, env)


def test_the_detector_stops_at_start_naming_an_unreadable_token_file_or_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tls: TlsFiles
) -> None:
    monkeypatch.setenv(KUBE_URL_VARIABLE, "https://127.0.0.1:1")
    monkeypatch.setenv(KUBE_TOKEN_FILE_VARIABLE, str(tmp_path / "missing"))
    monkeypatch.setenv(KUBE_CA_FILE_VARIABLE, str(tls.ca))
    with pytest.raises(SystemExit) as exited:
        main(["--auth", "kubernetes"])
    assert exited.value.code == 2
    assert KUBE_TOKEN_FILE_VARIABLE in capsys.readouterr().err
    monkeypatch.setenv(KUBE_CA_FILE_VARIABLE, str(tmp_path / "missing-ca"))
    with pytest.raises(SystemExit):
        main(["--auth", "kubernetes"])
    assert KUBE_CA_FILE_VARIABLE in capsys.readouterr().err
    monkeypatch.setenv(AUTH_VARIABLE, "kubernetes")
    assert build_parser().parse_args([]).auth == "kubernetes"


# --- the client, against a local HTTPS server ------------------------------------------------------


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a certificate for 127.0.0.1 it signed."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@dataclass
class Seen:
    path: str
    authorization: str
    body: dict[str, Any]


class ApiServer:
    """An HTTPS server that answers reviews as ``answer`` says and records what it was sent."""

    def __init__(self, tls: TlsFiles, answer: Callable[[Seen], tuple[int, bytes]]) -> None:
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                seen = Seen(self.path, self.headers["Authorization"], json.loads(self.rfile.read(length)))
                outer.seen.append(seen)
                status, body = answer(seen)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up on purpose (a bound, a deadline, a CA it refuses)

        self.server = Server(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kube_answer(seen: Seen) -> tuple[int, bytes]:
    """The API server's answers: the editor's token is the editor, who may create feedback only."""
    if seen.path.endswith("/tokenreviews"):
        if seen.body["spec"]["token"] != TOKEN:
            return 201, json.dumps({"status": {"authenticated": False, "error": "invalid"}}).encode()
        user = {
            "username": EDITOR.username,
            "uid": "uid-1",
            "groups": list(EDITOR.groups),
            "extra": {"k": "v"},
        }
        return 201, json.dumps({"status": {"authenticated": True, "user": user}}).encode()
    allowed = seen.body["spec"]["resourceAttributes"]["subresource"] == "feedback"
    return 201, json.dumps({"status": {"allowed": allowed}}).encode()


@pytest.fixture
def own_token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("detector-token-1\n")
    return path


def reviewer_for(server: ApiServer, tls: TlsFiles, own_token: Path, **options: Any) -> KubeReviewer:
    settings = AuthSettings(AuthMode.KUBERNETES, server.url, str(own_token), str(tls.ca))
    return KubeReviewer(settings, **options)


def test_the_client_posts_token_and_access_reviews_with_the_detectors_rotating_token(
    tls: TlsFiles, own_token: Path
) -> None:
    server = ApiServer(tls, kube_answer)
    try:
        reviewer = reviewer_for(server, tls, own_token)
        identity = reviewer.authenticate(TOKEN)
        assert identity == Identity(EDITOR.username, "uid-1", EDITOR.groups, (("k", ("v",)),))
        assert reviewer.authenticate("bogus") is None
        own_token.write_text("detector-token-2")  # the kubelet rotated it
        assert reviewer.authorize(identity, FEEDBACK) is True
        assert reviewer.authorize(identity, REGISTER) is False
    finally:
        server.close()
    token_review, _, access_review, _ = server.seen
    assert token_review.path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert token_review.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": TOKEN},
    }
    assert token_review.authorization == "Bearer detector-token-1"
    assert access_review.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert access_review.authorization == "Bearer detector-token-2"
    assert access_review.body["spec"] == {
        "user": EDITOR.username,
        "uid": "uid-1",
        "groups": list(EDITOR.groups),
        "extra": {"k": ["v"]},
        "resourceAttributes": FEEDBACK.resource_attributes(),
    }


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (403, b'{"kind": "Status"}', "system:auth-delegator"),
        (500, b"oops", "answered 500"),
        (201, b"not json", "has no status"),
        (201, b'{"status": {"authenticated": true}}', "named no user"),
        (201, b'{"status": "x"}' + b" " * 2_000_000, "larger than"),
    ],
)
def test_an_api_server_that_does_not_answer_a_review_is_unavailable(
    tls: TlsFiles, own_token: Path, status: int, body: bytes, message: str
) -> None:
    server = ApiServer(tls, lambda seen: (status, body))
    try:
        with pytest.raises(ReviewUnavailable, match=message):
            reviewer_for(server, tls, own_token).authenticate(TOKEN)
    finally:
        server.close()


def test_a_stalled_api_server_is_given_up_on_at_the_deadline(tls: TlsFiles, own_token: Path) -> None:
    release = threading.Event()

    def stall(seen: Seen) -> tuple[int, bytes]:
        release.wait(timeout=30)
        return 201, b"{}"

    server = ApiServer(tls, stall)
    try:
        reviewer = reviewer_for(server, tls, own_token, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ReviewUnavailable, match="did not answer"):
            reviewer.authenticate(TOKEN)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        server.close()


def test_an_api_server_whose_certificate_the_ca_did_not_sign_is_unavailable(
    tls: TlsFiles, own_token: Path, tmp_path: Path
) -> None:
    server = ApiServer(tls, kube_answer)
    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(tls.cert.read_bytes())  # a certificate, but not the CA
    try:
        settings = AuthSettings(AuthMode.KUBERNETES, server.url, str(own_token), str(other_ca))
        with pytest.raises(ReviewUnavailable, match="SSLCertVerificationError"):
            KubeReviewer(settings).authenticate(TOKEN)
        assert server.seen == []
    finally:
        server.close()


def test_with_an_audience_the_token_review_asks_for_it_and_a_token_for_another_is_unauthenticated(
    tls: TlsFiles, own_token: Path
) -> None:
    def answer(seen: Seen) -> tuple[int, bytes]:
        asked = seen.body["spec"].get("audiences") or []
        # The API server answers which of the audiences asked the token is valid for: the editor's token
        # is for the detector's audience, another token only for the API server's.
        valid = ["modelloop-detector"] if seen.body["spec"]["token"] == TOKEN else ["https://kubernetes"]
        audiences = [a for a in asked if a in valid]
        user = {"username": EDITOR.username, "uid": "uid-1", "groups": list(EDITOR.groups)}
        status = {"authenticated": bool(audiences), "user": user, "audiences": audiences}
        return 201, json.dumps({"status": status}).encode()

    server = ApiServer(tls, answer)
    try:
        settings = AuthSettings(
            AuthMode.KUBERNETES, server.url, str(own_token), str(tls.ca), audience="modelloop-detector"
        )
        reviewer = KubeReviewer(settings)
        assert reviewer.authenticate(TOKEN) == Identity(EDITOR.username, "uid-1", EDITOR.groups)
        assert reviewer.authenticate("an-api-server-token") is None
    finally:
        server.close()
    assert [seen.body["spec"]["audiences"] for seen in server.seen] == [["modelloop-detector"]] * 2


def test_an_answer_without_the_audience_asked_for_is_unauthenticated(tls: TlsFiles, own_token: Path) -> None:
    # An authenticator that ignores audiences answers authenticated with none: not good enough.
    def answer(seen: Seen) -> tuple[int, bytes]:
        user = {"username": EDITOR.username, "uid": "uid-1", "groups": list(EDITOR.groups)}
        return 201, json.dumps({"status": {"authenticated": True, "user": user}}).encode()

    server = ApiServer(tls, answer)
    try:
        settings = AuthSettings(AuthMode.KUBERNETES, server.url, str(own_token), str(tls.ca), "aud")
        assert KubeReviewer(settings).authenticate(TOKEN) is None
    finally:
        server.close()


def test_the_audience_setting_is_read_and_bounded(own_token: Path, tls: TlsFiles) -> None:
    env = {
        "MODELLOOP_DETECTOR_KUBE_URL": "https://127.0.0.1:6443",
        "MODELLOOP_DETECTOR_KUBE_TOKEN_FILE": str(own_token),
        "MODELLOOP_DETECTOR_KUBE_CA_FILE": str(tls.ca),
    }
    assert AuthSettings.parse("kubernetes", env).audience == ""
    parsed = AuthSettings.parse("kubernetes", {**env, "MODELLOOP_DETECTOR_AUDIENCE": " modelloop-detector "})
    assert parsed.audience == "modelloop-detector"
    assert "audience modelloop-detector" in str(parsed)
    for bad in ("two words", "x" * 254):
        with pytest.raises(ValueError, match="MODELLOOP_DETECTOR_AUDIENCE"):
            AuthSettings.parse("kubernetes", {**env, "MODELLOOP_DETECTOR_AUDIENCE": bad})
