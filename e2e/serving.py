"""A stand-in kubelet for model-server pods: it runs KServe predictor pods' servers on this machine.

Pods under kwok run nothing: kwok only marks them Running. For every Running pod of a namespace that has
a container named ``kserve-container`` (KServe's predictor pods, labelled
``serving.kserve.io/inferenceservice`` and ``component``), :class:`ServingKubelet` does here what the
kubelet and KServe's storage initializer would do there:

- it plays the storage initializer: the init container ``storage-initializer`` has the args
  ``[SOURCE_URI, /mnt/models]``; a ``file://`` URI (or a plain path) is copied into a folder of the pod's
  own under ``workdir``, which stands for ``/mnt/models``; any other scheme fails with the URI;
- it runs the ``kserve-container``'s command and args with exactly the container's environment (literal
  ``value`` entries; ``valueFrom`` entries cannot be resolved here and are left out, with a note), with
  ``/mnt/models`` replaced by the pod's folder, the HTTP port (``--http_port=8080``) replaced by a free
  local port, and the model server's environment (``.venvs/server/bin``) first on PATH, as the image has it;
- once the server answers ``/v2/health/ready`` (or ``/``), it registers it as a Prometheus scrape target
  labelled ``namespace``, ``pod`` and every pod label (sanitised to label names, e.g.
  ``serving_kserve_io_inferenceservice``, ``component``), as Prometheus's Kubernetes discovery would;
- when the pod is deleted or gone, it stops the server (SIGTERM, then SIGKILL) and removes the target.

Requests go straight to the model server: KServe's agent container (``agent``, the payload logger and
batcher in front of the server) is left out unless an ``agent_binary`` is given; then it runs too, best
effort, with its own args and environment, on another free port, in front of the server (``--port``,
``--component-port``), and :meth:`ServingKubelet.endpoints` points at it. The cluster-internal log URL of
the agent can be replaced with ``agent_log_url``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from e2e.harness import ROOT, Cluster, PollingLoop, free_port, wait_for
from e2e.prometheus import Prometheus, Target, label_name

SERVER_BIN = ROOT / ".venvs" / "server" / "bin"
MODEL_CONTAINER = "kserve-container"
STORAGE_INITIALIZER = "storage-initializer"
AGENT_CONTAINER = "agent"
MODEL_MOUNT = "/mnt/models"
IMAGE_ENTRYPOINT = ("modelloop-serve",)  # what the server image runs when a container names no command

log = logging.getLogger(__name__)


class UnsupportedStorageUri(ValueError):
    """The storage initializer's source URI has a scheme this stand-in cannot fetch."""


class Endpoint(NamedTuple):
    """Where one served pod answers here, and what it is."""

    url: str
    """The local base URL, e.g. ``http://127.0.0.1:40123`` (the agent's, when the agent runs)."""
    labels: Mapping[str, str]
    """The pod's labels, as they are in Kubernetes."""
    model: str
    """The served model's name (``--model_name``), the ``<model>`` of ``/v1/models/<model>:predict``."""
    protocol: str = "v1"
    """``v1`` (KServe's V1: ``/v1/models/<model>:predict``) or ``seldon`` (``/api/v1.0/predictions``)."""


@dataclass
class _ServedPod:
    name: str
    uid: str
    labels: dict[str, str]
    model: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float
    agent: subprocess.Popen[bytes] | None = None
    agent_port: int | None = None
    ready: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}" if self.agent_port else self.server_url


class ServingKubelet(PollingLoop):
    """Runs the model servers of the KServe predictor pods of one namespace, and keeps Prometheus's targets
    in step with them. Call :meth:`sync` in a polling loop, or :meth:`start` a thread that does."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        workdir: Path,
        prometheus: Prometheus | None,
        *,
        server_bin: Path = SERVER_BIN,
        agent_binary: Path | None = None,
        agent_log_url: str | None = None,
        ready_timeout: float = 120,
        interval: float = 0.5,
    ) -> None:
        super().__init__(f"serving-kubelet-{namespace}", interval)
        self.cluster = cluster
        self.namespace = namespace
        self.workdir = workdir
        self.prometheus = prometheus
        self.server_bin = server_bin
        self.agent_binary = agent_binary
        self.agent_log_url = agent_log_url
        self.ready_timeout = ready_timeout
        self._pods: dict[str, _ServedPod] = {}  # by uid
        self._failures: dict[str, str] = {}  # pod name -> why it does not serve
        self._failed_uids: set[str] = set()
        self._lock = threading.Lock()
        self.join_timeout = 60.0
        self.extra_targets: list[Target] = []
        """Other scrape targets Prometheus keeps beside the model servers (e.g. a drift detector)."""

    # --- the loop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the thread, every server (and agent) and remove their targets."""
        super().stop()
        with self._lock:
            for uid in list(self._pods):
                self._stop_pod(uid)
            self._publish_targets()

    def sync(self) -> None:
        """One pass: start servers for new Running predictor pods, register those that became ready, stop
        those whose pod is gone or deleted, fail those that exited or never became ready."""
        pods = self.cluster.get("pods", namespace=self.namespace)["items"]
        live = {p["metadata"]["uid"]: p for p in pods if _is_running_predictor(p)}
        with self._lock:
            changed = False
            for uid in [uid for uid in self._pods if uid not in live]:
                self._stop_pod(uid)
                changed = True
            for uid, pod in live.items():
                if uid in self._pods or uid in self._failed_uids:
                    continue
                self._failures.pop(pod["metadata"]["name"], None)  # a new pod of the same name
                try:
                    self._pods[uid] = self._start_pod(pod)
                except Exception as error:
                    self._fail(uid, pod["metadata"]["name"], f"{type(error).__name__}: {error}")
            for uid, served in list(self._pods.items()):
                if not served.ready:
                    changed |= self._check_ready(uid, served)
            if changed:
                self._publish_targets()

    # --- what a test reads ----------------------------------------------------------------------------

    def endpoints(self) -> dict[str, Endpoint]:
        """Every pod whose server is ready: pod name -> (local URL, pod labels, model name)."""
        with self._lock:
            return {s.name: Endpoint(s.url, dict(s.labels), s.model) for s in self._pods.values() if s.ready}

    def failures(self) -> dict[str, str]:
        """Pods that do not serve, by name, with the reason (storage, exit and log tail, timeout)."""
        with self._lock:
            return dict(self._failures)

    def notes(self) -> dict[str, list[str]]:
        """What this stand-in left out or changed for each pod (``valueFrom`` env, agent fallback)."""
        with self._lock:
            return {s.name: list(s.notes) for s in self._pods.values() if s.notes}

    def wait_serving(self, pods: int | Sequence[str], timeout: float = 180) -> dict[str, Endpoint]:
        """Wait until ``pods`` (a number of pods, or these pod names) serve; fail at once, with the reason,
        when one of the awaited pods failed."""

        def serving() -> dict[str, Endpoint] | None:
            failures = self.failures()
            wanted = failures if isinstance(pods, int) else {n: failures[n] for n in pods if n in failures}
            if wanted:
                raise AssertionError(f"model-server pods failed: {wanted}")
            endpoints = self.endpoints()
            if isinstance(pods, int):
                return endpoints if len(endpoints) >= pods else None
            return endpoints if all(name in endpoints for name in pods) else None

        return wait_for(serving, timeout=timeout, interval=0.25, what=f"model-server pods {pods} to serve")

    def log_of(self, pod: str) -> str:
        """The output of a pod's server (and agent), as ``kubectl logs`` would show it."""
        path = self.workdir / pod / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- one pod --------------------------------------------------------------------------------------

    def _start_pod(self, pod: Mapping[str, Any]) -> _ServedPod:
        meta, spec = pod["metadata"], pod["spec"]
        name = meta["name"]
        pod_dir = self.workdir / name
        if pod_dir.exists():
            shutil.rmtree(pod_dir)
        model_dir = pod_dir / "models"
        model_dir.mkdir(parents=True)
        for init in spec.get("initContainers") or ():
            if init["name"] == STORAGE_INITIALIZER:
                args = init.get("args") or []
                if len(args) < 2:
                    raise ValueError(
                        f"the storage initializer of pod {name} has args {args}, not [URI, dest]"
                    )
                initialize_storage(args[0], model_dir)
        container = _container(spec, MODEL_CONTAINER)
        assert container is not None
        notes: list[str] = []
        env = literal_env(container, notes)
        port = free_port()
        command = [
            _local(arg, model_dir)
            for arg in [*(container.get("command") or IMAGE_ENTRYPOINT), *(container.get("args") or [])]
        ]
        command = _with_port(command, "--http_port", port)
        if any(a.startswith("--grpc_port") for a in command):
            command = _with_port(command, "--grpc_port", free_port())
        env = {k: _local(v, model_dir) for k, v in env.items()}
        log_path = pod_dir / "server.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                env={
                    "HOME": str(pod_dir),
                    **env,
                    "PATH": f"{self.server_bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
                },
                cwd=pod_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops what it spawned
            )
        served = _ServedPod(
            name=name,
            uid=meta["uid"],
            labels=dict(meta.get("labels") or {}),
            model=_arg_value(command, "--model_name")
            or meta.get("labels", {}).get("serving.kserve.io/inferenceservice", name),
            port=port,
            process=process,
            log_path=log_path,
            started=time.monotonic(),
            notes=notes,
        )
        log.info("pod %s: started %s on port %d", name, command, port)
        return served

    def _check_ready(self, uid: str, served: _ServedPod) -> bool:
        """Probe one starting server; True when the set of ready servers changed."""
        if served.process.poll() is not None:
            self._fail(
                uid,
                served.name,
                f"the server exited ({served.process.returncode}):\n{file_tail(served.log_path)}",
            )
            self._stop_pod(uid)
            return False
        if not (answers_ok(f"{served.server_url}/v2/health/ready") or answers_ok(f"{served.server_url}/")):
            if time.monotonic() - served.started > self.ready_timeout:
                self._fail(
                    uid,
                    served.name,
                    f"not ready after {self.ready_timeout:.0f}s:\n{file_tail(served.log_path)}",
                )
                self._stop_pod(uid)
            return False
        if self.agent_binary is not None:
            self._start_agent(served)
        served.ready = True
        log.info("pod %s: serving at %s", served.name, served.url)
        return True

    def _start_agent(self, served: _ServedPod) -> None:
        """Best effort: run KServe's agent in front of the server; on failure requests go to the server.
        Waiting for it (up to 30 s) holds up this sync pass."""
        pod = self.cluster.get("pod", served.name, self.namespace)
        container = _container(pod["spec"], AGENT_CONTAINER)
        if container is None or self.agent_binary is None:
            return
        env = literal_env(container, served.notes)
        env["SERVING_READINESS_PROBE"] = _probe_on_port(env.get("SERVING_READINESS_PROBE"), served.port)
        args = _with_port(list(container.get("args") or []), "--component-port", served.port)
        agent_port = free_port()
        args = _with_port(args, "--port", agent_port)
        if self.agent_log_url is not None and _arg_value(args, "--log-url") is not None:
            args = _with_port(args, "--log-url", self.agent_log_url)
        with served.log_path.open("ab") as out:
            agent = subprocess.Popen(
                [str(self.agent_binary), *args],
                env={"HOME": str(served.log_path.parent), **env, "PATH": "/usr/local/bin:/usr/bin:/bin"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The agent's readiness socket is a file in its working directory (hack/build-kserve.sh):
                # one per pod, as a pod's own network namespace would give it.
                cwd=served.log_path.parent,
            )
        served.agent = agent
        with contextlib.suppress(AssertionError):  # judged just below
            wait_for(
                lambda: (
                    agent.poll() is not None or answers_ok(f"http://127.0.0.1:{agent_port}/v2/health/ready")
                ),
                timeout=30,
                what=f"KServe's agent of pod {served.name}",
            )
        if agent.poll() is None and answers_ok(f"http://127.0.0.1:{agent_port}/v2/health/ready"):
            served.agent_port = agent_port
        else:
            served.notes.append("KServe's agent did not come up; requests go straight to the server")
            terminate_process(agent, timeout=3)
            served.agent = None

    def _stop_pod(self, uid: str) -> None:
        served = self._pods.pop(uid)
        if served.agent is not None:
            # On SIGTERM the agent sleeps 30 s for load balancers to notice; nothing here needs that.
            terminate_process(served.agent, timeout=3)
        terminate_process(served.process)
        log.info("pod %s: stopped", served.name)

    def _fail(self, uid: str, name: str, reason: str) -> None:
        self._failed_uids.add(uid)
        self._failures[name] = reason
        log.warning("pod %s does not serve: %s", name, reason)

    def _publish_targets(self) -> None:
        if self.prometheus is None:
            return
        targets = []
        for served in self._pods.values():
            if served.ready:
                labels = {label_name(key): value for key, value in served.labels.items()}
                labels.update(namespace=self.namespace, pod=served.name)
                targets.append((f"127.0.0.1:{served.port}", labels))
        self.prometheus.set_targets([*sorted(targets, key=lambda t: t[0]), *self.extra_targets])


def initialize_storage(source: str, destination: Path) -> None:
    """What KServe's storage initializer does for local sources: a folder's content is copied into
    ``destination``, a file into it under its own name. Only ``file://`` URIs and plain paths are local."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise UnsupportedStorageUri(
            f"the storage initializer cannot fetch {source!r} here: only file:// URIs and paths are supported"
        )
    path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else source)
    if path.is_dir():
        shutil.copytree(path, destination, dirs_exist_ok=True)
    elif path.is_file():
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination / path.name)
    else:
        raise FileNotFoundError(f"the storage initializer's source {source!r} does not exist")


def _is_running_predictor(pod: Mapping[str, Any]) -> bool:
    return (
        pod.get("status", {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and _container(pod["spec"], MODEL_CONTAINER) is not None
    )


def _container(spec: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for container in spec.get("containers") or ():
        if container["name"] == name:
            return dict(container)
    return None


def literal_env(container: Mapping[str, Any], notes: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env") or ():
        if "valueFrom" in item:
            notes.append(f"env {item['name']} of {container['name']} uses valueFrom, which is left out here")
        else:
            env[item["name"]] = str(item.get("value", ""))
    return env


def _local(text: str, model_dir: Path) -> str:
    return text.replace(MODEL_MOUNT, str(model_dir))


def _with_port(args: Sequence[str], flag: str, value: int | str) -> list[str]:
    """``args`` with ``flag``'s value (``--flag=v`` or ``--flag v``) replaced by ``value``, or appended."""
    result, replaced, skip = [], False, False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith(f"{flag}="):
            result.append(f"{flag}={value}")
            replaced = True
        elif arg == flag and i + 1 < len(args):
            result += [flag, str(value)]
            replaced, skip = True, True
        else:
            result.append(arg)
    return result if replaced else [*result, f"{flag}={value}"]


def _arg_value(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def _probe_on_port(probe_json: str | None, port: int) -> str:
    """KServe's agent's readiness probe (``SERVING_READINESS_PROBE``) aimed at the server's local port."""
    if not probe_json:
        return json.dumps({"tcpSocket": {"port": port, "host": "127.0.0.1"}, "successThreshold": 1})

    def retarget(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (port if k == "port" else retarget(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [retarget(v) for v in node]
        return node

    return json.dumps(retarget(json.loads(probe_json)))


def answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def terminate_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited in ``timeout`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def file_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
