"""The operator's settings: one object, read once from the environment (``MODELLOOP_*``).

Command-line options of ``modelloop run`` override the environment; both end up here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

LogFormat = Literal["plain", "full", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "full", "json")


KSERVE_MODES = ("Knative", "Standard")
TRAINING_ENGINES = ("auto", "IndexedJob", "KubeflowTrainer")
DETECTOR_TOKEN = "/var/run/secrets/modelloop.dev/detector/token"
"""Where the chart and kustomize mount the operator's token for drift detectors: a projected ServiceAccount
token for the audience ``modelloop-detector`` only, worth nothing to the API server. Never the pod's own
ServiceAccount token: the detector's URL is a tenant's, so whatever the operator shows it may be shown to
someone else."""
URL_NOT_ALLOWED = "UrlNotAllowed"
"""The reason of an object refused because it names a URL outside ``Settings.allowed_url_prefixes``."""


@dataclass(frozen=True)
class Settings:
    """How the operator runs.

    Attributes:
        namespaces: namespaces (or glob patterns) to watch; empty means the whole cluster.
        log_format: ``plain``, ``full`` (with time and logger) or ``json`` (for log collectors).
        liveness_endpoint: URL such as ``http://0.0.0.0:8080/healthz`` to serve liveness on, or None.
        metrics_address: ``host:port`` to serve Prometheus metrics on (at /metrics), or None.
        peering: name of the kopf peering object for several replicas; None runs standalone, which is
            right for a single replica. With peering, the replica of the highest priority handles
            objects and the others stand by until it goes away.
        priority: this replica's peering priority; None picks a random one, so that replicas of one
            Deployment never tie (kopf freezes all operators of equal priority).
        peering_lifetime: seconds a replica's peering entry stays alive without renewal: how long a
            standby waits for a replica that died before it takes over (kopf renews it well before).
        verbose: log at DEBUG level.
        artifact_root: where trainers store artifacts when a TrainingRun names no artifactUriPrefix.
        keep_archived: archived versions kept per model when its ModelPolicy sets no retention.
        kserve_mode: KServe deployment mode of InferenceServices that name none (Knative or Standard).
        gateway: ``namespace/name`` of the Gateway that Standard-mode HTTPRoutes attach to by default.
        prometheus_url: Prometheus that rollout analysis queries when an InferenceService names none.
        trial_progress_seconds: how often the log of each running trial of a sweep with early stopping is
            read for its progress (and the trial judged).
        allowed_url_prefixes: the URLs a tenant may have the operator call (a DriftPolicy's Prometheus and
            detector, an InferenceService's analysis Prometheus), as prefixes such as
            ``http://prometheus.monitoring.svc:9090/`` or ``http://drift-detector.{namespace}.svc:8080/``
            (``{namespace}`` stands for the object's own namespace); empty allows every URL.
        training_runtime: the Kubeflow Trainer ClusterTrainingRuntime a distributed run's TrainJob
            references when the run names none.
        training_engine: what runs distributed runs: ``auto`` (Kubeflow Trainer where its TrainJob API is
            served, else an Indexed Job), ``IndexedJob`` or ``KubeflowTrainer``.
    """

    namespaces: tuple[str, ...] = field(default_factory=tuple)
    log_format: LogFormat = "full"
    liveness_endpoint: str | None = None
    metrics_address: str | None = None
    peering: str | None = None
    priority: int | None = None
    peering_lifetime: int = 60
    verbose: bool = False
    artifact_root: str = "file:///var/lib/modelloop/artifacts"
    keep_archived: int = 10
    kserve_mode: str = "Knative"
    gateway: str = "kserve/kserve-ingress-gateway"
    prometheus_url: str | None = None
    trial_progress_seconds: float = 10.0
    allowed_url_prefixes: tuple[str, ...] = field(default_factory=tuple)
    detector_token_file: str = DETECTOR_TOKEN
    training_runtime: str = "torch-distributed"
    training_engine: str = "auto"

    def __post_init__(self) -> None:
        for prefix in self.allowed_url_prefixes:
            _url_prefix(prefix.replace("{namespace}", "namespace"))  # refuses a malformed one at start-up

    def urls_refusal(self, urls: Iterable[tuple[str, str]], namespace: str) -> str | None:
        """Why an object of ``namespace`` is refused for the URLs it names (``(field, url)`` pairs), one
        line per URL the operator must not call, naming its field; None when it may call them all."""
        lines = []
        for name, url in urls:
            why = self.url_refusal(url, namespace)
            if why is not None:
                lines.append(f"{name}: {url} is not called: {why}")
        return "; ".join(lines) or None

    def url_refusal(self, url: str, namespace: str) -> str | None:
        """Why the operator must not call ``url`` for an object of ``namespace`` (None: it may): outside
        every allowed prefix, or not a plain http(s) URL while prefixes are set."""
        if not self.allowed_url_prefixes:
            return None
        allowed = ", ".join(self.allowed_url_prefixes)
        outside = f"it is outside the URLs the operator may call ({allowed}; MODELLOOP_ALLOWED_URL_PREFIXES)"
        try:
            target = _plain_url(url)
        except ValueError as error:
            return f"{error}; {outside}"
        for prefix in self.allowed_url_prefixes:
            if _within(target, _url_prefix(prefix.replace("{namespace}", namespace))):
                return None
        return outside

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``MODELLOOP_NAMESPACES`` (comma-separated), ``MODELLOOP_LOG_FORMAT``,
        ``MODELLOOP_LIVENESS_ENDPOINT``, ``MODELLOOP_METRICS_ADDRESS``, ``MODELLOOP_PEERING``,
        ``MODELLOOP_PRIORITY``, ``MODELLOOP_PEERING_LIFETIME``, ``MODELLOOP_VERBOSE``,
        ``MODELLOOP_ARTIFACT_ROOT``, ``MODELLOOP_KEEP_ARCHIVED``, ``MODELLOOP_KSERVE_MODE``,
        ``MODELLOOP_GATEWAY``, ``MODELLOOP_PROMETHEUS_URL``, ``MODELLOOP_TRIAL_PROGRESS_SECONDS`` and
        ``MODELLOOP_ALLOWED_URL_PREFIXES`` (comma-separated), ``MODELLOOP_DETECTOR_TOKEN_FILE``,
        ``MODELLOOP_TRAINING_RUNTIME`` and ``MODELLOOP_TRAINING_ENGINE``."""
        env = os.environ if environ is None else environ
        namespaces = tuple(ns.strip() for ns in env.get("MODELLOOP_NAMESPACES", "").split(",") if ns.strip())
        log_format = env.get("MODELLOOP_LOG_FORMAT", "full").strip().lower()
        if log_format not in LOG_FORMATS:
            raise ValueError(
                f"MODELLOOP_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}"
            )
        keep = _optional_int(env, "MODELLOOP_KEEP_ARCHIVED", minimum=0)
        lifetime = _optional_int(env, "MODELLOOP_PEERING_LIFETIME", minimum=5)
        if lifetime is not None and lifetime > 600:
            raise ValueError(f"MODELLOOP_PEERING_LIFETIME must be at most 600 seconds, not {lifetime}")
        mode = env.get("MODELLOOP_KSERVE_MODE", "").strip() or cls.kserve_mode
        if mode not in KSERVE_MODES:
            raise ValueError(f"MODELLOOP_KSERVE_MODE must be one of {', '.join(KSERVE_MODES)}, not {mode!r}")
        gateway = env.get("MODELLOOP_GATEWAY", "").strip() or cls.gateway
        if gateway.count("/") != 1 or not all(gateway.split("/")):
            raise ValueError(f"MODELLOOP_GATEWAY must be namespace/name, not {gateway!r}")
        engine = env.get("MODELLOOP_TRAINING_ENGINE", "").strip() or cls.training_engine
        if engine not in TRAINING_ENGINES:
            raise ValueError(
                f"MODELLOOP_TRAINING_ENGINE must be one of {', '.join(TRAINING_ENGINES)}, not {engine!r}"
            )
        runtime = env.get("MODELLOOP_TRAINING_RUNTIME", "").strip() or cls.training_runtime
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", runtime):
            raise ValueError(f"MODELLOOP_TRAINING_RUNTIME must be a resource name, not {runtime!r}")
        return cls(
            namespaces=namespaces,
            training_runtime=runtime,
            training_engine=engine,
            log_format=log_format,
            liveness_endpoint=env.get("MODELLOOP_LIVENESS_ENDPOINT") or None,
            metrics_address=env.get("MODELLOOP_METRICS_ADDRESS") or None,
            peering=env.get("MODELLOOP_PEERING") or None,
            priority=_optional_int(env, "MODELLOOP_PRIORITY"),
            peering_lifetime=cls.peering_lifetime if lifetime is None else lifetime,
            verbose=env.get("MODELLOOP_VERBOSE", "").lower() in ("1", "true", "yes"),
            artifact_root=env.get("MODELLOOP_ARTIFACT_ROOT") or cls.artifact_root,
            keep_archived=cls.keep_archived if keep is None else keep,
            kserve_mode=mode,
            gateway=gateway,
            prometheus_url=env.get("MODELLOOP_PROMETHEUS_URL") or None,
            trial_progress_seconds=_seconds(
                env, "MODELLOOP_TRIAL_PROGRESS_SECONDS", cls.trial_progress_seconds
            ),
            allowed_url_prefixes=tuple(
                prefix.strip()
                for prefix in env.get("MODELLOOP_ALLOWED_URL_PREFIXES", "").split(",")
                if prefix.strip()
            ),
            detector_token_file=detector_token_file(env),
        )


def detector_token_file(environ: Mapping[str, str] | None = None) -> str:
    """``MODELLOOP_DETECTOR_TOKEN_FILE``, else the detector-audience token the deployments mount
    (``DETECTOR_TOKEN``)."""
    env = os.environ if environ is None else environ
    return env.get("MODELLOOP_DETECTOR_TOKEN_FILE", "").strip() or DETECTOR_TOKEN


def _optional_int(env: Mapping[str, str], name: str, minimum: int | None = None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0.5 <= value <= 3600:
        raise ValueError(f"{name} must be between 0.5 and 3600 seconds, not {value}")
    return value


@dataclass(frozen=True)
class _Url:
    """An http(s) URL as the allowlist compares it: scheme, host, port (the scheme's default when not
    written) and path."""

    scheme: str
    host: str
    port: int
    path: str


def _plain_url(url: str) -> _Url:
    """``url`` parsed; ValueError unless it is http(s) with a host and without credentials, query or
    fragment (which a prefix cannot be compared with)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("it is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("it is not an http(s) URL with a host")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError("it carries credentials, a query or a fragment")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise ValueError("its path has . or .. segments")
    default = 443 if parts.scheme == "https" else 80
    return _Url(parts.scheme, parts.hostname.lower(), port or default, parts.path or "/")


def _url_prefix(prefix: str) -> _Url:
    try:
        return _plain_url(prefix)
    except ValueError as error:
        raise ValueError(f"MODELLOOP_ALLOWED_URL_PREFIXES: {prefix!r}: {error}") from None


def _within(url: _Url, prefix: _Url) -> bool:
    """Whether ``url`` is at or below ``prefix``: the same scheme, host and port, and a path that is the
    prefix's or below it (``/api`` holds ``/api/v1``, never ``/apiary``)."""
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    base = prefix.path.rstrip("/")
    return url.path.rstrip("/") == base or url.path.startswith(base + "/")
