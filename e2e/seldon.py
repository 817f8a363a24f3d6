"""A stand-in for Seldon Core v1's controller and its model pods, for the seldon backend in the e2e suite.

Seldon Core's Go operator is not served by the Go module proxy, so its controller cannot run here. Every
SeldonDeployment the operator writes is still checked by Seldon's real CRD (server-side apply on the local
API server), and the model server it names runs for real. This stand-in plays the rest, for one namespace:

- for each predictor of each SeldonDeployment it does what Seldon's controller and the kubelet would do for
  the predictor's pod: plays the storage initializer (a ``file://`` ``graph.modelUri`` is copied into a
  folder of its own, which stands for ``/mnt/models``), and runs the server the graph's ``implementation``
  names (``MODELLOOP_SERVER``: modelloop's Seldon wrapper from ``.venvs/seldon``) with the environment
  Seldon's controller gives it (``PREDICTIVE_UNIT_PARAMETERS`` with ``model_uri`` added, the ports,
  ``PREDICTIVE_UNIT_ID``, ``PREDICTOR_ID``, ``SELDON_DEPLOYMENT_ID``) plus the container's own literal env;
  one process per predictor, whatever its ``replicas``;
- once a server answers ``/health/ping`` it registers its metrics port as a Prometheus target labelled
  ``namespace``, ``seldon_deployment_id`` and ``predictor``;
- it writes the SeldonDeployment's status as Seldon's controller does: ``state`` Creating until every
  predictor serves, then Available (Failed, with the reason in ``description``, when a server cannot
  start), ``observedGeneration``, ``replicas``, ``deploymentStatus`` per predictor and ``address``;
- predictors that left the spec, and SeldonDeployments that are gone, have their servers stopped.

:func:`seldon_weights` reads a SeldonDeployment's ``spec.predictors[].traffic`` as a route for
:class:`e2e.traffic.LoadGenerator`, a ``shadow: true`` predictor as a mirror: Seldon's service orchestrator
splits by those weights and mirrors to the shadow (Seldon's status has no traffic of its own).

The payload logger: in Seldon Core v1, each predictor's pod runs Seldon's service orchestrator (the
"executor", Go, ``executor/`` in SeldonIO/seldon-core) in front of the model's container, and the executor
logs the requests and responses of every graph node whose spec has ``logger: {url, mode}``. The executor
cannot run here either (it is built from the same Go module), so for a predictor whose graph has a logger
the stand-in runs :class:`ExecutorStandIn` in front of the wrapper's REST port, and the predictor's
endpoint is the stand-in's: the load generator's requests go through it. It reproduces what seldon-core
1.17.1's executor does for one MODEL node on the REST transport and the seldon protocol, read in
SeldonIO/seldon-core at tag v1.17.1:

- ``executor/api/rest/middlewares.go`` (``puidHeader``): the request's ``Seldon-Puid`` header is the
  request's id; when it has none, a new UUID is made and set on the request; the answer carries it too;
- ``executor/api/rest/server.go`` (``predictions``) and ``executor/api/rest/client.go``: the body is
  forwarded as it came (``Chain`` keeps a SeldonMessage as is) to the model's ``/predict`` with every
  request header (``Seldon-Puid`` included) and the request's ``Content-Type``; a 200 answer goes back with
  the model's ``Content-Type`` and its body passed through Go's ``json.HTMLEscape``; another status goes back
  with the model's body; a model that cannot be reached is a 500 with a SeldonMessage ``status``
  (``CreateErrorPayload``);
- ``executor/predictor/predictor_process.go`` (``transformInput``, ``logPayload``): with mode ``all`` or
  ``request`` the request is logged before the model is called; with ``all`` or ``response`` the answer
  is logged once the model answered 200 (not an error); a ``Seldon-Skip-Logging: true`` request is not
  logged; a logger without ``url`` posts to ``REQUEST_LOGGER_DEFAULT_ENDPOINT`` (``http://default-broker``,
  as Seldon's controller sets it). Each logged payload is queued (``executor/logger/collector.go``: a
  bounded queue of 10000) and never delays or fails the prediction;
- ``executor/logger/worker.go`` and ``types.go``, with cloudevents/sdk-go v1.2.0's
  ``pkg/cloudevents/transport/http/codec_v1.go`` (``HTTPBinaryV1``): each payload is one CloudEvent 1.0,
  ``POST``-ed in binary mode: ``Ce-Specversion: 1.0``, ``Ce-Type: io.seldon.serving.inference.request``
  or ``.response``, ``Ce-Source`` the executor's own URL (``http://:<port>/``: it runs without
  ``--hostname``), ``Ce-Id`` a new UUID for every event (a request and its response do not share it),
  ``Ce-Time`` (RFC 3339, UTC), ``Content-Type`` the payload's content type, and the extensions
  ``Ce-Modelid`` (the graph node's name), ``Ce-Requestid`` (the puid: what pairs a request with its
  response, and the id a client knows its request by), ``Ce-Inferenceservicename`` (the
  SeldonDeployment's name), ``Ce-Namespace``, ``Ce-Endpoint`` (the predictor's name) and
  ``Ce-Protocol`` (``seldon``); the body is the request's or the answer's bytes as they were (a gzip
  ``Content-Encoding`` decoded first). A logger that refuses an event or cannot be reached costs that
  event only: the failure is logged (``executor.log`` in the predictor's folder) and counted.

Left out, as nothing here uses them: the gRPC transport, the other protocols (tensorflow, v2), graphs of
more than one node, the feedback endpoint's ``io.seldon.serving.feedback`` events, Kafka logging and the
executor's own metrics (Prometheus scrapes the wrapper's).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import http.client
import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.harness import ROOT, Cluster, PollingLoop, free_port, wait_for
from e2e.prometheus import Prometheus, Target
from e2e.serving import (
    MODEL_MOUNT,
    Endpoint,
    answers_ok,
    file_tail,
    initialize_storage,
    literal_env,
    terminate_process,
)
from e2e.traffic import Backend, RouteReader

GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"
SELDON_BIN = ROOT / ".venvs" / "seldon" / "bin"
# What each implementation's image runs, as seldon-config's predictor_servers would name its image.
SERVERS: Mapping[str, Sequence[str]] = {
    "MODELLOOP_SERVER": (
        "seldon-core-microservice",
        "modelloop_seldon.ModelloopModel",
        "--service-type",
        "MODEL",
    ),
}
METRICS_PATH = "/prometheus"
DEPLOYMENT_LABEL = "seldon-deployment-id"
PREDICTOR_LABEL = "predictor"

log = logging.getLogger(__name__)


@dataclass
class _Predictor:
    """One predictor's server, run here."""

    deployment: str
    name: str
    model: str
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float
    logger: Mapping[str, Any] | None = None
    """The graph's ``logger``, when it has one: an :class:`ExecutorStandIn` then runs in front."""
    executor: ExecutorStandIn | None = None
    ready: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def pod(self) -> str:
        return f"{self.deployment}-{self.name}"

    @property
    def url(self) -> str:
        """Where the predictor answers: its executor's port where one runs, else the server's."""
        return self.executor.url if self.executor is not None else f"http://127.0.0.1:{self.port}"


class SeldonStandIn(PollingLoop):
    """Runs the predictors of every SeldonDeployment of one namespace and writes their status."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        workdir: Path,
        prometheus: Prometheus | None,
        *,
        seldon_bin: Path = SELDON_BIN,
        ready_timeout: float = 120,
        interval: float = 0.5,
    ) -> None:
        super().__init__(f"seldon-stand-in-{namespace}", interval)
        self.namespace = namespace
        self.workdir = workdir
        self.prometheus = prometheus
        self.seldon_bin = seldon_bin
        self.ready_timeout = ready_timeout
        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        self._predictors: dict[tuple[str, str, str], _Predictor] = {}  # (deployment uid, name, predictor)
        self._failures: dict[str, str] = {}  # pod-like name -> why it does not serve
        self._lock = threading.Lock()
        self.join_timeout = 60.0
        self.extra_targets: list[Target] = []
        """Other scrape targets Prometheus keeps beside the model servers (e.g. a drift detector)."""

    # --- the loop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for key in list(self._predictors):
                self._stop(key)
            self._publish_targets()

    def sync(self) -> None:
        """One pass: start, probe and stop predictor servers as the specs say; write every status."""
        listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
        with self._lock:
            wanted: dict[tuple[str, str, str], tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
            for sdep in listed:
                if sdep["metadata"].get("deletionTimestamp"):
                    continue
                for predictor in sdep["spec"].get("predictors") or ():
                    key = (sdep["metadata"]["uid"], sdep["metadata"]["name"], predictor["name"])
                    wanted[key] = (sdep, predictor)
            changed = False
            for key in [k for k in self._predictors if k not in wanted]:
                self._stop(key)
                changed = True
            for key, (sdep, predictor) in wanted.items():
                pod = f"{key[1]}-{key[2]}"
                if key in self._predictors or pod in self._failures:
                    continue
                try:
                    self._predictors[key] = self._start(sdep, predictor)
                except Exception as error:
                    self._failures[pod] = f"{type(error).__name__}: {error}"
            for key, served in list(self._predictors.items()):
                if not served.ready:
                    changed |= self._probe(key, served)
            if changed:
                self._publish_targets()
            statuses = {sdep["metadata"]["name"]: (sdep, self._status_of(sdep)) for sdep in listed}
        for name, (sdep, status) in statuses.items():
            current = sdep.get("status") or {}
            if any(current.get(k) != v for k, v in status.items()):
                self._write_status(name, status)

    # --- what a test reads ----------------------------------------------------------------------------

    def endpoints(self) -> dict[str, Endpoint]:
        """Every predictor whose server is ready, by a pod-like name ``<deployment>-<predictor>``."""
        with self._lock:
            return {
                s.pod: Endpoint(
                    s.url,
                    {DEPLOYMENT_LABEL: s.deployment, PREDICTOR_LABEL: s.name},
                    s.model,
                    "seldon",
                )
                for s in self._predictors.values()
                if s.ready
            }

    def failures(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failures)

    def wait_serving(self, pods: Sequence[str], timeout: float = 120) -> dict[str, Endpoint]:
        """Wait until the predictors ``<deployment>-<predictor>`` serve; fail at once when one failed."""

        def serving() -> dict[str, Endpoint] | None:
            failed = {pod: why for pod, why in self.failures().items() if pod in pods}
            if failed:
                raise AssertionError(f"Seldon predictors failed: {failed}")
            endpoints = self.endpoints()
            return endpoints if all(pod in endpoints for pod in pods) else None

        return wait_for(serving, timeout=timeout, what=f"Seldon predictors {list(pods)} to serve")

    def log_of(self, pod: str) -> str:
        return file_tail(self.workdir / pod / "server.log", chars=100_000)

    def executor_counts(self) -> dict[str, dict[str, int]]:
        """The payload logger's events of each predictor that logs (``sent``, ``failed``, ``dropped``)."""
        with self._lock:
            return {s.pod: s.executor.counts() for s in self._predictors.values() if s.executor is not None}

    # --- one predictor --------------------------------------------------------------------------------

    def _start(self, sdep: Mapping[str, Any], predictor: Mapping[str, Any]) -> _Predictor:
        deployment, name = sdep["metadata"]["name"], predictor["name"]
        graph = predictor["graph"]
        implementation = graph.get("implementation")
        if implementation not in SERVERS:
            raise ValueError(
                f"no predictor server {implementation!r} in seldon-config (known: {list(SERVERS)})"
            )
        folder = self.workdir / f"{deployment}-{name}"
        if folder.exists():
            shutil.rmtree(folder)
        models = folder / "models"
        models.mkdir(parents=True)
        if graph.get("modelUri"):
            initialize_storage(graph["modelUri"], models)
        parameters = [p for p in graph.get("parameters") or () if p["name"] != "model_uri"]
        parameters.append({"name": "model_uri", "type": "STRING", "value": str(models)})
        notes: list[str] = []
        containers = [
            c
            for spec in predictor.get("componentSpecs") or ()
            for c in (spec.get("spec") or {}).get("containers") or ()
            if c.get("name") == graph["name"]
        ]
        env = literal_env(containers[0], notes) if containers else {}
        port, metrics_port = free_port(), free_port()
        env.update(
            PREDICTIVE_UNIT_HTTP_SERVICE_PORT=str(port),
            PREDICTIVE_UNIT_SERVICE_PORT=str(port),
            PREDICTIVE_UNIT_GRPC_SERVICE_PORT=str(free_port()),
            PREDICTIVE_UNIT_METRICS_SERVICE_PORT=str(metrics_port),
            PREDICTIVE_UNIT_METRICS_ENDPOINT=METRICS_PATH,
            PREDICTIVE_UNIT_PARAMETERS=json.dumps(parameters),
            PREDICTIVE_UNIT_ID=graph["name"],
            PREDICTOR_ID=name,
            PREDICTOR_LABELS=json.dumps(predictor.get("labels") or {}),
            SELDON_DEPLOYMENT_ID=deployment,
        )
        env = {k: v.replace(MODEL_MOUNT, str(models)) for k, v in env.items()}
        log_path = folder / "server.log"
        command = list(SERVERS[implementation])
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                env={
                    "HOME": str(folder),
                    **env,
                    "PATH": f"{self.seldon_bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
                },
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("seldon predictor %s/%s: started %s on port %d", deployment, name, command, port)
        return _Predictor(
            deployment,
            name,
            graph["name"],
            port,
            metrics_port,
            process,
            log_path,
            time.monotonic(),
            logger=graph.get("logger"),
            notes=notes,
        )

    def _probe(self, key: tuple[str, str, str], served: _Predictor) -> bool:
        """Probe one starting server; True when the set of ready servers changed."""
        if served.process.poll() is not None:
            self._failures[served.pod] = (
                f"the server exited ({served.process.returncode}):\n{file_tail(served.log_path)}"
            )
            self._stop(key)
            return True
        if not answers_ok(f"http://127.0.0.1:{served.port}/health/ping"):
            if time.monotonic() - served.started > self.ready_timeout:
                tail = file_tail(served.log_path)
                self._failures[served.pod] = f"not ready after {self.ready_timeout:.0f}s:\n{tail}"
                self._stop(key)
                return True
            return False
        if served.logger is not None:
            try:
                served.executor = self._start_executor(served)
            except Exception as error:
                self._failures[served.pod] = f"its executor cannot start: {type(error).__name__}: {error}"
                self._stop(key)
                return True
        served.ready = True
        log.info("seldon predictor %s: serving at %s", served.pod, served.url)
        return True

    def _start_executor(self, served: _Predictor) -> ExecutorStandIn:
        assert served.logger is not None
        executor = ExecutorStandIn(
            deployment=served.deployment,
            namespace=self.namespace,
            predictor=served.name,
            node=served.model,
            component_url=f"http://127.0.0.1:{served.port}",
            logger=served.logger,
            log_path=served.log_path.with_name("executor.log"),
        )
        executor.start()
        return executor

    def _stop(self, key: tuple[str, str, str]) -> None:
        served = self._predictors.pop(key)
        if served.executor is not None:
            served.executor.stop()
        terminate_process(served.process)

    # --- status and targets ---------------------------------------------------------------------------

    def _status_of(self, sdep: Mapping[str, Any]) -> dict[str, Any]:
        meta = sdep["metadata"]
        deployment = meta["name"]
        predictors = sdep["spec"].get("predictors") or ()
        served = {k[2]: s for k, s in self._predictors.items() if k[0] == meta["uid"]}
        failed = {
            p["name"]: self._failures[f"{deployment}-{p['name']}"]
            for p in predictors
            if f"{deployment}-{p['name']}" in self._failures
        }
        deployments: dict[str, Any] = {}
        for predictor in predictors:
            replicas = int(predictor.get("replicas", 1))
            ready = predictor["name"] in served and served[predictor["name"]].ready
            deployments[f"{deployment}-{predictor['name']}-0-{predictor['graph']['name']}"] = {
                "name": f"{deployment}-{predictor['name']}-0-{predictor['graph']['name']}",
                "replicas": replicas,
                "availableReplicas": replicas if ready else 0,
                "status": "Available" if ready else "Creating",
            }
        if failed:
            state = "Failed"
            description = "; ".join(
                f"predictor {name}: {why.splitlines()[0]}" for name, why in failed.items()
            )
        elif all(d["status"] == "Available" for d in deployments.values()):
            state, description = "Available", ""
        else:
            state, description = "Creating", ""
        return {
            "state": state,
            "description": description,
            "observedGeneration": int(meta.get("generation") or 0),
            "replicas": sum(d["replicas"] for d in deployments.values()),
            "deploymentStatus": deployments,
            "address": {
                "url": f"http://{deployment}-default.{self.namespace}.svc.cluster.local:8000/api/v1.0/predictions"
            },
        }

    def _write_status(self, name: str, status: Mapping[str, Any]) -> None:
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, {"status": dict(status)}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to report
                raise

    def _publish_targets(self) -> None:
        if self.prometheus is None:
            return
        targets = [
            (
                f"127.0.0.1:{s.metrics_port}",
                {
                    "__metrics_path__": METRICS_PATH,
                    "namespace": self.namespace,
                    "seldon_deployment_id": s.deployment,
                    "predictor": s.name,
                    "pod": s.pod,
                },
            )
            for s in self._predictors.values()
            if s.ready
        ]
        self.prometheus.set_targets([*sorted(targets, key=lambda t: t[0]), *self.extra_targets])


# --- the executor's payload logger --------------------------------------------------------------------

REQUEST_EVENT = "io.seldon.serving.inference.request"
RESPONSE_EVENT = "io.seldon.serving.inference.response"
PUID_HEADER = "Seldon-Puid"
SKIP_LOGGING_HEADER = "Seldon-Skip-Logging"
PREDICTION_PATHS = frozenset({"/api/v0.1/predictions", "/api/v1.0/predictions"})
MODEL_PREDICT_PATH = "/predict"
"""Where the executor calls a MODEL node (``executor/api/client/client.go``: ``SeldonPredictPath``)."""
LOGGER_MODES: Mapping[str, tuple[bool, bool]] = {
    "all": (True, True),
    "request": (True, False),
    "response": (False, True),
}
"""``graph.logger.mode`` -> (logs the request, logs the response)."""
DEFAULT_LOGGER_URL = "http://default-broker"
LOG_QUEUE_SIZE = 10_000
MAX_BODY_BYTES = 32 << 20
# Not forwarded to the model: they describe the caller's connection, not the request.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length", "trailer"}
)
_HTML_ESCAPES = {b"<": b"\\u003c", b">": b"\\u003e", b"&": b"\\u0026"}


@dataclass(frozen=True)
class PayloadLog:
    """One payload the executor logs: what its ``LogRequest`` (``executor/logger/types.go``) carries."""

    url: str
    type: str
    body: bytes
    content_type: str
    request_id: str


def cloudevent_headers(
    payload: PayloadLog,
    *,
    event_id: str,
    source: str,
    model_id: str,
    deployment: str,
    namespace: str,
    predictor: str,
    time_utc: datetime.datetime,
) -> dict[str, str]:
    """The headers of ``payload``'s CloudEvent in binary mode, as the executor's worker sends them."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Type": payload.type,
        "Ce-Source": source,
        "Ce-Id": event_id,
        "Ce-Time": _rfc3339_utc(time_utc),
        "Ce-Modelid": model_id,
        "Ce-Requestid": payload.request_id,
        "Ce-Inferenceservicename": deployment,
        "Ce-Namespace": namespace,
        "Ce-Endpoint": predictor,
        "Ce-Protocol": "seldon",
    }
    if payload.content_type:
        headers["Content-Type"] = payload.content_type
    return headers


def _rfc3339_utc(moment: datetime.datetime) -> str:
    """Go's ``time.RFC3339Nano`` of ``moment`` in UTC: no trailing zeros in the fraction, ``Z``."""
    utc = moment.astimezone(datetime.UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def html_escaped(body: bytes) -> bytes:
    """Go's ``json.HTMLEscape``, which the executor applies to the answer it writes back."""
    for raw, escaped in _HTML_ESCAPES.items():
        body = body.replace(raw, escaped)
    return body.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")


class ExecutorStandIn:
    """Seldon's executor for one predictor, as far as the payload logger goes (the module's docstring says
    what it reproduces, and where that was read): an HTTP server on a free local port in front of the
    model server at ``component_url``, which logs the predictions of the graph node ``node`` to
    ``logger["url"]`` as ``logger["mode"]`` says, from ``workers`` threads that take the events from a
    bounded queue."""

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str,
        predictor: str,
        node: str,
        component_url: str,
        logger: Mapping[str, Any],
        log_path: Path,
        workers: int = 2,
        queue_size: int = LOG_QUEUE_SIZE,
        timeout_s: float = 60.0,
    ) -> None:
        mode = logger.get("mode", "all")
        if mode not in LOGGER_MODES:
            raise ValueError(f"graph.logger.mode {mode!r} is not one of {sorted(LOGGER_MODES)}")
        if not 1 <= workers <= 16 or not 1 <= queue_size <= 1_000_000:
            raise ValueError(f"workers ({workers}) must be 1..16 and queue_size ({queue_size}) 1..1000000")
        self.logger_url = str(logger.get("url") or DEFAULT_LOGGER_URL)
        if urllib.parse.urlsplit(self.logger_url).scheme not in ("http", "https"):
            raise ValueError(f"graph.logger.url {self.logger_url!r} is not an http(s) URL")
        self.logs_requests, self.logs_responses = LOGGER_MODES[mode]
        self.deployment, self.namespace, self.predictor, self.node = deployment, namespace, predictor, node
        self.component = urllib.parse.urlsplit(component_url)
        self.log_path = log_path
        self.timeout_s = timeout_s
        self._queue: queue.Queue[PayloadLog | None] = queue.Queue(maxsize=queue_size)
        self._workers = [
            threading.Thread(target=self._send_events, name=f"executor-logger-{predictor}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ExecutorHandler)
        self._server.daemon_threads = True
        self._server.executor = self  # type: ignore[attr-defined]
        self._serving = threading.Thread(
            target=self._server.serve_forever, name=f"executor-{predictor}", daemon=True
        )
        self._lock = threading.Lock()
        self.sent = self.failed = self.dropped = 0
        """Events the logger took (2xx), events it refused or that did not reach it, events not queued."""

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def source(self) -> str:
        """``Ce-Source``: the executor's URL as it makes it, with no ``--hostname`` (``http://:<port>/``)."""
        return f"http://:{self.port}/"

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._serving.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop answering, then let the workers send what is queued for up to ``drain_s`` seconds."""
        self._server.shutdown()
        self._server.server_close()
        self._serving.join(timeout=10)
        deadline = time.monotonic() + drain_s
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    # --- a request ------------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """The executor's answer to one request: (status, headers, body); a prediction is logged."""
        forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        puid = next((v for k, v in forwarded.items() if k.lower() == PUID_HEADER.lower() and v), None)
        if puid is None:
            puid = str(uuid.uuid4())
            forwarded[PUID_HEADER] = puid
        answer_headers = {
            PUID_HEADER: puid,
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
        }
        prediction = method == "POST" and path.split("?", 1)[0] in PREDICTION_PATHS
        skip = _header(forwarded, SKIP_LOGGING_HEADER).strip().lower() in ("1", "t", "true")
        content_type = _header(forwarded, "Content-Type")
        if prediction and self.logs_requests and not skip:
            logged = _decoded(body, _header(forwarded, "Content-Encoding"))
            self._queue_event(PayloadLog(self.logger_url, REQUEST_EVENT, logged, content_type, puid))
        try:
            target = MODEL_PREDICT_PATH if prediction else path
            status, model_headers, answer = self._call_model(
                method, target, forwarded, body if method == "POST" else None
            )
        except OSError as error:
            # CreateErrorPayload: a SeldonMessage status.
            info = f"{type(error).__name__}: {error}"
            failed = {"status": {"code": 500, "info": info, "status": "FAILURE"}}
            return 500, answer_headers, json.dumps(failed).encode()
        answer_type = _header(model_headers, "Content-Type")
        if status == 200:
            if prediction and self.logs_responses and not skip:
                logged = _decoded(answer, _header(model_headers, "Content-Encoding"))
                self._queue_event(PayloadLog(self.logger_url, RESPONSE_EVENT, logged, answer_type, puid))
            if answer_type:
                answer_headers["Content-Type"] = answer_type
            if _header(model_headers, "Content-Encoding"):
                answer_headers["Content-Encoding"] = _header(model_headers, "Content-Encoding")
            else:
                answer = html_escaped(answer)
        return status, answer_headers, answer

    def _call_model(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            self.component.hostname or "127.0.0.1", self.component.port, timeout=self.timeout_s
        )
        try:
            connection.request(method, path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    # --- the logger's queue and workers ---------------------------------------------------------------

    def _queue_event(self, payload: PayloadLog) -> None:
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self._log(f"failed to log request: the log queue is full ({self._queue.maxsize})")

    def _send_events(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while (payload := self._queue.get()) is not None:
            target = urllib.parse.urlsplit(payload.url)
            headers = cloudevent_headers(
                payload,
                event_id=str(uuid.uuid4()),
                source=self.source,
                model_id=self.node,
                deployment=self.deployment,
                namespace=self.namespace,
                predictor=self.predictor,
                time_utc=datetime.datetime.now(datetime.UTC),
            )
            try:
                if connection is None:
                    https = target.scheme == "https"
                    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
                    connection = kind(target.hostname or "", target.port, timeout=self.timeout_s)
                connection.request("POST", target.path or "/", body=payload.body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                if connection is not None:
                    connection.close()
                connection = None
                self._failed(payload, f"while sending event: {type(error).__name__}: {error}")
                continue
            if 200 <= response.status < 300:
                with self._lock:
                    self.sent += 1
            else:
                detail = f"{response.status} {response.reason}: {answer[:300].decode(errors='replace')}"
                self._failed(payload, f"error sending cloudevent: {detail}")
        if connection is not None:
            connection.close()

    def _failed(self, payload: PayloadLog, why: str) -> None:
        with self._lock:
            self.failed += 1
        self._log(f"Failed to send cloudevent log URL={payload.url} puid={payload.request_id}: {why}")

    def _log(self, line: str) -> None:
        log.warning("executor of %s/%s: %s", self.deployment, self.predictor, line)
        with self._lock, self.log_path.open("a") as out:
            out.write(f"{datetime.datetime.now(datetime.UTC).isoformat()} {line}\n")


class _ExecutorHandler(BaseHTTPRequestHandler):
    """Hands each request to the server's :class:`ExecutorStandIn`."""

    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")

    def _relay(self, method: str) -> None:
        executor: ExecutorStandIn = self.server.executor  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_error(413, f"a body of at most {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length) if length else b""
        status, headers, answer = executor.handle(method, self.path, dict(self.headers.items()), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the executor logs no access lines either


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _decoded(body: bytes, encoding: str) -> bytes:
    """A payload as the executor logs it: a gzip-encoded one decoded (``payload.DecompressBytes``)."""
    return gzip.decompress(body) if encoding.strip().lower() == "gzip" else body


def seldon_weights(stand_in: SeldonStandIn, name: str) -> RouteReader:
    """The weights of a SeldonDeployment's ``spec.predictors[].traffic`` (a shadow predictor as a mirror),
    each predictor's server selected by the stand-in's labels."""

    def read() -> Mapping[Backend, int]:
        try:
            sdep = stand_in.api.get_namespaced_custom_object(GROUP, VERSION, stand_in.namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        return {
            Backend.of(
                p["name"],
                {DEPLOYMENT_LABEL: name, PREDICTOR_LABEL: p["name"]},
                mirror=bool(p.get("shadow")),
            ): int(p.get("traffic") or 0)
            for p in sdep["spec"].get("predictors") or ()
        }

    return read
