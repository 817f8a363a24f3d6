"""Who may call the detector's API: Kubernetes identities, checked by the API server.

With ``MODELLOOP_DETECTOR_AUTH=kubernetes`` (``--auth``) a call of the API that is not ingestion
(``POST /``, KServe's payload logger, which cannot send credentials), ``/metrics`` or ``/healthz`` must
carry ``Authorization: Bearer <token>``. As kube-rbac-proxy does, the detector asks the API server who
the token is (a TokenReview) and whether that identity may act on the InferenceService the path names
(a SubjectAccessReview on ``inferenceservices/feedback`` or ``inferenceservices/drift`` of group
``modelloop.dev``, :func:`required_access`). No usable token, or one the API server does not
authenticate: 401 with ``WWW-Authenticate: Bearer``; denied: 403 naming the verb and the resource; the API
server unreachable or erring: 503, never a pass (fail closed). Each is counted in
``modelloop_detector_refused_total{reason}`` (``unauthenticated``, ``forbidden``, ``auth_unavailable``).

Answers are cached (:class:`Authorizer`) for a short while, keyed by a hash of the token (never the token),
in bounded caches, and the reviews run in threads of their own, with a deadline each, so that a slow API
server delays only the calls that wait for it: never ingestion, never the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from modelloop_detector.limits import RefusalReason, Refused

logger = logging.getLogger(__name__)

AUTH_VARIABLE = "MODELLOOP_DETECTOR_AUTH"
KUBE_URL_VARIABLE = "MODELLOOP_DETECTOR_KUBE_URL"
KUBE_TOKEN_FILE_VARIABLE = "MODELLOOP_DETECTOR_KUBE_TOKEN_FILE"
KUBE_CA_FILE_VARIABLE = "MODELLOOP_DETECTOR_KUBE_CA_FILE"
AUDIENCE_VARIABLE = "MODELLOOP_DETECTOR_AUDIENCE"
MAX_AUDIENCE_LENGTH = 253
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA."""

GROUP = "modelloop.dev"
RESOURCE = "inferenceservices"
CHALLENGE = ((b"www-authenticate", b"Bearer"),)

MAX_TOKEN_LENGTH = 16 * 1024
"""A caller's bearer token (a ServiceAccount's JWT is one or two KiB)."""
MAX_URL_LENGTH = 2048
MAX_OWN_TOKEN_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 1024 * 1024
"""A review's answer from the API server (a TokenReview's lists the user's groups and extra)."""
MAX_QUOTED_NAME = 253
"""A user name as a 403 quotes it."""


class AuthMode(StrEnum):
    """``MODELLOOP_DETECTOR_AUTH``: whether the API checks Kubernetes identities."""

    NONE = "none"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class AuthSettings:
    """How callers are checked, and how the detector reaches the API server (``kubernetes`` only)."""

    mode: AuthMode = AuthMode.NONE
    url: str = ""
    """The API server, ``https://host[:port]``."""
    token_file: str = ""
    """The detector's own token (re-read at each review: the kubelet rotates it)."""
    ca_file: str = ""
    """The CA that signed the API server's certificate."""
    audience: str = ""
    """The audience a caller's token must be issued for (``MODELLOOP_DETECTOR_AUDIENCE``, e.g.
    ``modelloop-detector``); empty: the API server's own. A token bound to the detector's audience is
    worth nothing to the API server, so whoever a caller sends it to by mistake cannot use it there."""

    @classmethod
    def parse(
        cls, mode: str, env: Mapping[str, str], *, service_account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> AuthSettings:
        """The settings for ``mode`` (``--auth``), the API server read from ``env``: the
        ``MODELLOOP_DETECTOR_KUBE_*`` variables where set, else the pod's own (``KUBERNETES_SERVICE_HOST``
        and ``_PORT``, the ServiceAccount's token and CA). ValueError naming the variable otherwise."""
        text = mode.strip().lower()
        try:
            parsed = AuthMode(text or AuthMode.NONE)
        except ValueError:
            raise ValueError(
                f"{AUTH_VARIABLE} (--auth) must be one of {', '.join(m.value for m in AuthMode)}, "
                f"not {_short(mode)}"
            ) from None
        if parsed is AuthMode.NONE:
            return cls()
        url = env.get(KUBE_URL_VARIABLE, "").strip() or _in_cluster_url(env)
        _check_url(url)
        token_file = env.get(KUBE_TOKEN_FILE_VARIABLE, "").strip() or str(service_account_dir / "token")
        ca_file = env.get(KUBE_CA_FILE_VARIABLE, "").strip() or str(service_account_dir / "ca.crt")
        audience = env.get(AUDIENCE_VARIABLE, "").strip()
        if len(audience) > MAX_AUDIENCE_LENGTH or any(not 0x21 <= ord(c) <= 0x7E for c in audience):
            raise ValueError(
                f"{AUDIENCE_VARIABLE} must be at most {MAX_AUDIENCE_LENGTH} printable ASCII characters "
                "without blanks"
            )
        return cls(parsed, url.rstrip("/"), token_file, ca_file, audience)

    def __str__(self) -> str:
        if self.mode is AuthMode.NONE:
            return "none (the API is open to whatever reaches it)"
        audience = f"audience {self.audience}" if self.audience else "the API server's audience"
        return (
            f"kubernetes (TokenReview for {audience} and SubjectAccessReview at {self.url}, the detector's "
            f"token from {self.token_file}, CA {self.ca_file})"
        )


def _in_cluster_url(env: Mapping[str, str]) -> str:
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host:
        raise ValueError(
            f"{AUTH_VARIABLE}=kubernetes needs the API server: set {KUBE_URL_VARIABLE}, or run in a pod "
            "(KUBERNETES_SERVICE_HOST)"
        )
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{port or '443'}"


def _check_url(url: str) -> None:
    problem = ""
    if len(url) > MAX_URL_LENGTH:
        problem = f"is {len(url)} characters long; at most {MAX_URL_LENGTH}"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            problem = f"is not a URL ({exc})"
        else:
            if parts.scheme != "https" or not parts.hostname:
                problem = "must be https://host[:port] (tokens are never sent in clear)"
            elif parts.query or parts.fragment or parts.username or parts.password:
                problem = "must have no user, query or fragment"
    if problem:
        raise ValueError(f"{KUBE_URL_VARIABLE} (the API server) {problem}, not {_short(url)}")


def _short(value: str) -> str:
    return repr(value) if len(value) <= 80 else f"a value of {len(value)} characters"


@dataclass(frozen=True)
class Access:
    """What a call does: ``verb`` on ``inferenceservices/<subresource>`` ``name`` in ``namespace``."""

    namespace: str
    name: str
    subresource: str
    verb: str

    def resource_attributes(self) -> dict[str, str]:
        """A SubjectAccessReview's ``resourceAttributes``."""
        return {
            "group": GROUP,
            "resource": RESOURCE,
            "subresource": self.subresource,
            "namespace": self.namespace,
            "name": self.name,
            "verb": self.verb,
        }

    def __str__(self) -> str:
        where = f"{self.name!r} in namespace {self.namespace!r}"
        return f"{self.verb} {RESOURCE}/{self.subresource} ({GROUP}) {where}"


# (method, the path's first segment after /v1/) -> (subresource, verb); the contract with the callers' RBAC.
ACCESS = {
    ("POST", "feedback"): ("feedback", "create"),
    ("PUT", "services"): ("drift", "update"),
    ("DELETE", "services"): ("drift", "update"),
    ("POST", "export"): ("drift", "update"),
    ("GET", "services"): ("drift", "get"),
}


def required_access(method: str, resource: str, namespace: str, name: str) -> Access | None:
    """What ``method /v1/<resource>/<namespace>/<name>`` needs; None for a call the API does not have."""
    found = ACCESS.get((method, resource))
    return Access(namespace, name, *found) if found else None


@dataclass(frozen=True)
class Identity:
    """Who a token is, as the TokenReview said: what a SubjectAccessReview asks about."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_spec(self) -> dict[str, Any]:
        """A SubjectAccessReview's ``spec`` without its attributes."""
        spec: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {key: list(values) for key, values in self.extra}
        return spec

    @classmethod
    def from_user_info(cls, user: Any) -> Identity:
        """A TokenReview's ``status.user``; ReviewUnavailable if it is not one."""
        if not isinstance(user, dict) or not isinstance(user.get("username"), str) or not user["username"]:
            raise ReviewUnavailable("the TokenReview authenticated the token but named no user")
        groups, extra = user.get("groups") or [], user.get("extra") or {}
        if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)) or not isinstance(
            extra, dict
        ):
            raise ReviewUnavailable("the TokenReview's user has groups or extra that are not lists of text")
        return cls(
            username=user["username"],
            uid=str(user.get("uid") or ""),
            groups=tuple(groups),
            extra=tuple(sorted((str(k), tuple(str(v) for v in _list(vs))) for k, vs in extra.items())),
        )


def _list(values: Any) -> Iterable[Any]:
    return values if isinstance(values, list) else [values]


class ReviewUnavailable(Exception):
    """The API server could not be asked, or answered something that is not a review (503)."""


class Reviewer(Protocol):
    """Asks the API server; blocking (the :class:`Authorizer` calls it in a thread)."""

    def authenticate(self, token: str) -> Identity | None:
        """Who ``token`` is; None when the API server does not authenticate it."""

    def authorize(self, identity: Identity, access: Access) -> bool:
        """Whether ``identity`` may do ``access``."""


class KubeReviewer:
    """TokenReview and SubjectAccessReview over HTTPS, with the standard library only: one connection per
    review, a deadline of ``timeout`` seconds for the whole of it, answers read up to a bound."""

    def __init__(
        self, settings: AuthSettings, *, timeout: float = 5.0, max_answer_bytes: int = MAX_ANSWER_BYTES
    ) -> None:
        parts = urlsplit(settings.url)
        self.url = settings.url
        self._host, self._port = parts.hostname or "", parts.port or 443
        self._base_path = parts.path.rstrip("/")
        self._token_file = Path(settings.token_file)
        self.audience = settings.audience
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        try:
            self._context = ssl.create_default_context(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"{KUBE_CA_FILE_VARIABLE}: cannot load the API server's CA from {settings.ca_file}: "
                f"{type(exc).__name__}: {exc.strerror or exc}"
            ) from None
        self._own_token(error=ValueError)  # a missing token file stops the detector at start

    def authenticate(self, token: str) -> Identity | None:
        spec: dict[str, Any] = {"token": token}
        if self.audience:
            spec["audiences"] = [self.audience]
        status = self._review(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        if status.get("authenticated") is not True:
            return None
        if self.audience and self.audience not in (status.get("audiences") or ()):
            return None  # an authenticator that ignores audiences must not let another one's token in
        return Identity.from_user_info(status.get("user"))

    def authorize(self, identity: Identity, access: Access) -> bool:
        status = self._review(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {**identity.review_spec(), "resourceAttributes": access.resource_attributes()},
            },
        )
        return status.get("allowed") is True

    def _own_token(self, error: type[Exception] = ReviewUnavailable) -> str:
        try:
            with self._token_file.open("rb") as stream:
                token = stream.read(MAX_OWN_TOKEN_BYTES + 1).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise error(
                f"{KUBE_TOKEN_FILE_VARIABLE}: cannot read the detector's token from {self._token_file}: "
                f"{type(exc).__name__}"
            ) from None
        if not token or len(token) > MAX_OWN_TOKEN_BYTES:
            raise error(f"{KUBE_TOKEN_FILE_VARIABLE}: {self._token_file} holds no token")
        return token

    def _review(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        """POST ``review`` and return the answer's ``status``; ReviewUnavailable on anything else."""
        kind = review["kind"]
        deadline = time.monotonic() + self.timeout
        body = json.dumps(review).encode()
        headers = {
            "Authorization": f"Bearer {self._own_token()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        connection = http.client.HTTPSConnection(
            self._host, self._port, timeout=self.timeout, context=self._context
        )
        try:
            connection.request("POST", self._base_path + path, body=body, headers=headers)
            _left(connection, deadline)
            response = connection.getresponse()
            answer = self._read(connection, response, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise ReviewUnavailable(
                f"the API server at {self.url} did not answer the {kind}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            connection.close()
        if response.status not in (200, 201):
            hint = (
                " (the detector's ServiceAccount needs the ClusterRole system:auth-delegator)"
                if response.status in (401, 403)
                else ""
            )
            raise ReviewUnavailable(f"the API server answered {response.status} to the {kind}{hint}")
        try:
            status = json.loads(answer).get("status")
        except (ValueError, AttributeError):
            status = None
        if not isinstance(status, dict):
            raise ReviewUnavailable(f"the API server's answer to the {kind} has no status")
        return status

    def _read(
        self, connection: http.client.HTTPSConnection, response: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            _left(connection, deadline)
            chunk = response.read(64 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_answer_bytes:
                raise ReviewUnavailable(
                    f"the API server's answer is larger than {self.max_answer_bytes} bytes"
                )
            chunks.append(chunk)


def _left(connection: http.client.HTTPSConnection, deadline: float) -> None:
    """Let the next socket operation wait only for what is left of the review's deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the review's deadline passed")
    if connection.sock is not None:
        connection.sock.settimeout(left)


K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    expires: float


class TtlCache(Generic[K, V]):
    """At most ``max_entries`` answers, each until its own expiry; the least recently used goes first."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()

    def get(self, key: K) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: K, value: V, seconds: float) -> None:
        self._entries[key] = _Entry(value, self._clock() + seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


T = TypeVar("T")
Runner = Callable[[Callable[[], T]], Awaitable[T]]


class Authorizer:
    """Checks a call's bearer token against the API server through ``reviewer``, with caches: an
    authenticated token and an allowed access are remembered ``allowed_seconds``, an unauthenticated token
    and a denied access ``denied_seconds`` (so that a new RoleBinding takes effect soon), an unavailable
    API server never. Concurrent calls that need the same review share it; at most ``max_in_flight``
    reviews wait at once (more: 503), run by ``run`` (default: ``workers`` threads of the authorizer's
    own, so that registrations and exports keep theirs)."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        clock: Callable[[], float] = time.monotonic,
        allowed_seconds: float = 60.0,
        denied_seconds: float = 10.0,
        max_entries: int = 4096,
        max_in_flight: int = 32,
        workers: int = 8,
        run: Runner[Any] | None = None,
    ) -> None:
        self.reviewer = reviewer
        self.allowed_seconds = allowed_seconds
        self.denied_seconds = denied_seconds
        self.max_in_flight = max_in_flight
        self.identities: TtlCache[bytes, Identity | None] = TtlCache(max_entries, clock)
        self.decisions: TtlCache[tuple[bytes, Access], bool] = TtlCache(max_entries, clock)
        self._executor: ThreadPoolExecutor | None = None
        if run is None:
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auth-review")
            run = self._in_thread
        self._run = run
        self._in_flight: dict[tuple[object, ...], asyncio.Future[Any]] = {}

    async def _in_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        """Stop the review threads (a review in flight finishes within its deadline)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self, headers: Iterable[tuple[bytes, bytes]], access: Access) -> Identity:
        """The caller's identity, if its token is authenticated and allowed ``access``; else Refused:
        401 (with ``WWW-Authenticate: Bearer``), 403, or 503 when the API server cannot tell."""
        token = bearer_token(headers)
        key = hashlib.sha256(token.encode()).digest()
        identity = await self._identity(key, token)
        if identity is None:
            raise Refused(
                RefusalReason.UNAUTHENTICATED,
                "the bearer token was not authenticated by the Kubernetes API server (TokenReview)",
                401,
                CHALLENGE,
            )
        if not await self._allowed(key, identity, access):
            raise Refused(
                RefusalReason.FORBIDDEN,
                f"{_quoted(identity.username)} may not {access}: ask for a Role that grants it",
                403,
            )
        return identity

    async def _identity(self, key: bytes, token: str) -> Identity | None:
        cached = self.identities.get(key)
        if cached is not None:
            return cached.value

        def remember(identity: Identity | None) -> None:
            seconds = self.allowed_seconds if identity is not None else self.denied_seconds
            self.identities.put(key, identity, seconds)

        identity: Identity | None = await self._shared(
            ("authn", key), lambda: self.reviewer.authenticate(token), remember
        )
        return identity

    async def _allowed(self, key: bytes, identity: Identity, access: Access) -> bool:
        cached = self.decisions.get((key, access))
        if cached is not None:
            return cached.value

        def remember(allowed: bool) -> None:
            seconds = self.allowed_seconds if allowed else self.denied_seconds
            self.decisions.put((key, access), allowed, seconds)

        allowed: bool = await self._shared(
            ("authz", key, access), lambda: self.reviewer.authorize(identity, access), remember
        )
        return allowed

    async def _shared(
        self, key: tuple[object, ...], call: Callable[[], T], remember: Callable[[T], None]
    ) -> T:
        """The review ``key`` names, run once however many calls wait for it, and remembered."""
        pending = self._in_flight.get(key)
        if pending is None:
            if len(self._in_flight) >= self.max_in_flight:
                raise Refused(
                    RefusalReason.AUTH_UNAVAILABLE,
                    f"{len(self._in_flight)} reviews are waiting for the Kubernetes API server: try again",
                    503,
                )
            pending = asyncio.ensure_future(self._review(call, remember))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: a caller that hangs up does not cancel the review the others wait for.
        result: T = await asyncio.shield(pending)
        return result

    def _forget(self, key: tuple[object, ...], done: asyncio.Future[Any]) -> None:
        self._in_flight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: nobody may be left to await it

    async def _review(self, call: Callable[[], T], remember: Callable[[T], None]) -> T:
        try:
            result: T = await self._run(call)
        except ReviewUnavailable as exc:
            logger.warning("cannot check a caller's token: %s", exc)
            raise Refused(
                RefusalReason.AUTH_UNAVAILABLE,
                "the Kubernetes API server could not check the token (see the detector's log): try again",
                503,
            ) from None
        except Exception as exc:  # a bug or a timeout in the client: fail closed, but say so
            logger.exception("checking a caller's token failed")
            raise Refused(
                RefusalReason.AUTH_UNAVAILABLE,
                f"the token could not be checked ({type(exc).__name__}): try again",
                503,
            ) from None
        remember(result)
        return result


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token of the one ``Authorization: Bearer <token>`` header; Refused (401) otherwise, with a
    message that never repeats what was sent."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    problem = ""
    if not values:
        problem = "no Authorization header: send 'Authorization: Bearer <token>' (a Kubernetes token)"
    elif len(values) > 1:
        problem = "more than one Authorization header"
    else:
        scheme, _, token = values[0].strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            problem = "the Authorization header is not 'Bearer <token>'"
        elif len(token) > MAX_TOKEN_LENGTH:
            problem = f"the bearer token is {len(token)} bytes long; at most {MAX_TOKEN_LENGTH}"
        elif not all(0x21 <= byte <= 0x7E for byte in token):
            problem = "the bearer token has characters a token cannot have"
        else:
            return token.decode("ascii")
    raise Refused(RefusalReason.UNAUTHENTICATED, problem, 401, CHALLENGE)


def _quoted(name: str) -> str:
    return repr(name) if len(name) <= MAX_QUOTED_NAME else repr(name[:MAX_QUOTED_NAME] + "...")


def build_authorizer(settings: AuthSettings) -> Authorizer | None:
    """The authorizer ``settings`` ask for (None: ``none``); ValueError naming the variable when the CA or
    the detector's token cannot be read."""
    if settings.mode is AuthMode.NONE:
        return None
    return Authorizer(KubeReviewer(settings))
