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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.harness import ROOT, Cluster, PollingLoop, free_port, wait_for
from e2e.prometheus import Prometheus
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
    ready: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def pod(self) -> str:
        return f"{self.deployment}-{self.name}"


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
                    f"http://127.0.0.1:{s.port}",
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
        served.ready = True
        log.info("seldon predictor %s: serving on port %d", served.pod, served.port)
        return True

    def _stop(self, key: tuple[str, str, str]) -> None:
        served = self._predictors.pop(key)
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
        self.prometheus.set_targets(sorted(targets, key=lambda t: t[0]))


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
