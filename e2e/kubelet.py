"""A stand-in for the kubelet, for pods whose program must really run.

Pods under kwok run nothing. For a training pod labelled ``sim.modelloop.dev/outcome: Hold`` (kwok leaves
it Running), this module does what a kubelet would: it runs the container's command and args with exactly
the pod's environment (literal values, the downward API's ``fieldRef`` values and ``$(VAR)`` references
resolved as the kubelet resolves them), on this machine, with the trainer runtime's environment as the
image's PATH; then it writes the container's termination state and message into the pod's status. The one
deliberate difference: the termination-message file, /dev/termination-log in a container, is a temporary
file here, as the kubelet maps a host file there (MODELLOOP_RESULT_PATH points to it).

Each program runs in a sandbox of its own, as in a container (bubblewrap's ``bwrap``; `make image-tools`
installs it): the host's filesystem as it is, but the pod's own host name (``spec.hostname``, else its
name), its own process tree (when the program ends or is killed, every process it started goes with it),
and a private /etc/hosts in which every pod of the namespace answers to the names cluster DNS gives it
(``HOST``, ``HOST.SUBDOMAIN``, ``HOST.SUBDOMAIN.NS.svc``, ``HOST.SUBDOMAIN.NS.svc.cluster.local``) at an
address of its own on the loopback network, 127.x.y.z, which is also its podIP. So the pods of a gang (an
Indexed Job behind a headless Service, or a JobSet) reach each other by name, as `torchrun`'s rendezvous
and gloo do, all over loopback. :class:`GangKubelet` runs every held pod of a namespace at once, as the
pods of a gang must run.

The container's stdout and stderr go, line by line as the program writes them, to a log file in the CRI
format a kubelet's runtime writes; a kwok ``Logs`` object of the pod's name points kwok's kubelet-like
server at that file, so that the pod's log through the API (`kubectl logs`) shows the program's output
while it runs, as it would on a real node.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from e2e.harness import ROOT, Cluster, PollingLoop, wait_for

TRAINER_BIN = ROOT / ".venvs" / "trainer" / "bin"
HOLD = {"sim.modelloop.dev/outcome": "Hold"}
TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message
LOG_LINE_LIMIT = 16 * 1024  # a longer line goes into the log in parts (tag P), as the kubelet's runtime does
CLUSTER_DOMAIN = "cluster.local"
STOPPED = -9
"""The exit code :func:`run_pod` returns for a program it killed because its pod was deleted (nothing is
reported into the pod's status then: the pod is gone)."""

log = logging.getLogger(__name__)


class PodSpecError(AssertionError):
    """The pod asks for something the stand-in kubelet cannot do; the message names the field."""


@dataclass(frozen=True)
class Execution:
    """One container run by the stand-in kubelet."""

    pod: str
    exit_code: int
    message: str
    stderr: str


# -- The container's environment, as the kubelet resolves it ------------------------------------------------

_SUBSCRIPTED_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")
FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels['KEY']",
    "metadata.annotations['KEY']",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
)
"""The ``fieldRef`` paths the stand-in resolves: those the kubelet resolves for environment variables."""


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` references in ``text`` as Kubernetes does in env values, command and args: a
    defined NAME becomes its value, an undefined one stays as written, ``$$`` is one literal ``$`` (so
    ``$$(NAME)`` is the text ``$(NAME)``), and any other ``$`` (one not followed by ``(`` or ``$``, or an
    unclosed ``$(``) is left as it is."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(" and (close := text.find(")", i + 2)) != -1:
            name = text[i + 2 : close]
            out.append(variables.get(name, f"$({name})"))
            i = close + 1
        else:
            # "$x" or an unclosed "$(": both characters as they are.
            out.append(text[i : i + 2])
            i += 2
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str) -> str:
    """The value of a downward-API ``fieldRef`` (one of :data:`FIELD_PATHS`) for the pod, whose IP is
    ``pod_ip``; a missing label or annotation is the empty string, as for the kubelet. Another path raises
    :class:`PodSpecError`."""
    metadata, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if subscripted := _SUBSCRIPTED_FIELD.fullmatch(path):
        return str((metadata.get(subscripted[1]) or {}).get(subscripted[2], ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or ()) or status.get("hostIP"),
    }
    if path not in simple:
        raise PodSpecError(
            f"fieldPath {path!r} is not one the stand-in kubelet resolves ({', '.join(FIELD_PATHS)})"
        )
    return str(simple[path] or "")


def container_environment(pod: Mapping[str, Any], pod_ip: str) -> dict[str, str]:
    """The environment variables of the pod's (first) container, in order, as the kubelet resolves them:
    a ``value`` with its ``$(NAME)`` references to the variables before it expanded, a ``fieldRef`` read
    from the pod (``pod_ip`` is its IP). A source the stand-in has no data for (``secretKeyRef``,
    ``configMapKeyRef``, ``resourceFieldRef``, ``envFrom``) raises :class:`PodSpecError` naming the
    variable."""
    container = pod["spec"]["containers"][0]
    if container.get("envFrom"):
        raise PodSpecError(
            f"container {container['name']}: envFrom cannot be resolved by the stand-in kubelet; "
            "give the variables one by one, with value or fieldRef"
        )
    env: dict[str, str] = {}
    for item in container.get("env") or ():
        name = item["name"]
        source = item.get("valueFrom")
        if source is None:
            env[name] = expand(str(item.get("value", "")), env)
        elif set(source) == {"fieldRef"}:
            try:
                env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
            except PodSpecError as error:
                raise PodSpecError(f"env {name}: valueFrom.fieldRef: {error}") from None
        else:
            kinds = ", ".join(sorted(source))
            raise PodSpecError(
                f"env {name} uses valueFrom.{kinds}, which the stand-in kubelet cannot resolve "
                "(it resolves value and valueFrom.fieldRef)"
            )
    return env


def container_command(pod: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The pod's (first) container's command and args, their ``$(NAME)`` references to the container's
    environment expanded as Kubernetes does. The stand-in knows no image, hence no image entrypoint: a
    container without a command is refused."""
    container = pod["spec"]["containers"][0]
    command = [*(container.get("command") or ()), *(container.get("args") or ())]
    if not container.get("command"):
        raise PodSpecError(
            f"container {container['name']}: the stand-in kubelet needs a command "
            "(it knows no image, hence no entrypoint)"
        )
    return [expand(str(part), env) for part in command]


# -- The pods' network: addresses and names --------------------------------------------------------------


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """The pod's host name: ``spec.hostname``, else its name, as the kubelet sets it."""
    return str((pod.get("spec") or {}).get("hostname") or pod["metadata"]["name"])


def pod_dns_names(pod: Mapping[str, Any]) -> list[str]:
    """The names the pod answers to, the fully qualified one first (as in the hosts file the kubelet
    writes): with a ``spec.subdomain``, those cluster DNS gives it through the headless Service of that
    name; its host name in any case."""
    hostname = pod_hostname(pod)
    subdomain = (pod.get("spec") or {}).get("subdomain")
    if not subdomain:
        return [hostname]
    namespace = pod["metadata"]["namespace"]
    service = f"{hostname}.{subdomain}.{namespace}.svc"
    return [f"{service}.{CLUSTER_DOMAIN}", service, f"{hostname}.{subdomain}", hostname]


def _pod_key(pod: Mapping[str, Any]) -> str:
    metadata = pod["metadata"]
    return str(metadata.get("uid") or f"{metadata['namespace']}/{metadata['name']}")


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class PodNetwork:
    """The network of one namespace's pods on this machine: for each pod an address on the loopback
    network (127.x.y.z; the whole of 127.0.0.0/8 reaches this machine), stable for the pod and distinct
    among the pods it knows; and the hosts file that every pod's sandbox mounts as its /etc/hosts, which
    maps each pod's names (:func:`pod_dns_names`) to its address. The file is rewritten in place as pods
    come and go (same inode: it is bind-mounted, and the C library reads /etc/hosts again at each lookup);
    a new pod's line is added at the end and the lines before it are left as they were, so that a lookup
    while pods come finds every pod known before. Where two pods claim a name (a gang restarted under the
    same names), the one still running holds it, then the newer."""

    def __init__(self, namespace: str, hosts_file: Path) -> None:
        self.namespace = namespace
        self.hosts_file = hosts_file
        self._lock = threading.Lock()
        self._addresses: dict[str, str] = {}  # pod key -> address, in the order first seen
        self._pods: dict[str, Mapping[str, Any]] = {}  # pod key -> pod, those the hosts file names
        self._written: bytes | None = None
        hosts_file.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._write()

    def address(self, pod: Mapping[str, Any]) -> str:
        """The pod's address (given now if the pod is new)."""
        with self._lock:
            return self._assign(pod)

    def add(self, pod: Mapping[str, Any]) -> str:
        """Name the pod in the hosts file (if it is not named there yet) and return its address."""
        with self._lock:
            address = self._assign(pod)
            self._pods.setdefault(_pod_key(pod), pod)
            self._write()
            return address

    def update(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Take the namespace's pods as the API lists them now: the hosts file names exactly those not being
        deleted."""
        with self._lock:
            self._pods = {}
            for pod in pods:
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                self._assign(pod)
                self._pods[_pod_key(pod)] = pod
            self._write()

    def hosts(self) -> str:
        """What the hosts file says now."""
        with self._lock:
            return self._render().decode()

    def _assign(self, pod: Mapping[str, Any]) -> str:
        key = _pod_key(pod)
        if key not in self._addresses:
            taken = set(self._addresses.values())
            # Derived from the pod's uid, so that two stand-ins (say, two namespaces' networks) rarely agree.
            for attempt in range(1000):
                digest = hashlib.sha256(f"{key}/{attempt}".encode()).digest()
                address = f"127.{16 + digest[0] % 224}.{digest[1]}.{1 + digest[2] % 254}"
                if address not in taken:
                    break
            self._addresses[key] = address
        return self._addresses[key]

    def _render(self) -> bytes:
        # Per name, the pod that holds it: a running one before a finished one, then the newest.
        claimants = sorted(
            self._pods.items(),
            key=lambda item: (
                not _finished(item[1]),
                item[1]["metadata"].get("creationTimestamp") or "",
                item[1]["metadata"]["name"],
            ),
            reverse=True,
        )
        holder: dict[str, str] = {}
        for key, pod in claimants:
            for name in pod_dns_names(pod):
                holder.setdefault(name, key)
        lines = [
            f"# The pods of namespace {self.namespace}, as the stand-in kubelet (e2e/kubelet.py) knows them.",
            "127.0.0.1\tlocalhost",
        ]
        for key, address in self._addresses.items():
            known = self._pods.get(key)
            names = [n for n in pod_dns_names(known) if holder[n] == key] if known is not None else []
            if names:
                lines.append(f"{address}\t{' '.join(names)}")
        return ("\n".join(lines) + "\n").encode()

    def _write(self) -> None:
        data = self._render()
        if data == self._written:
            return
        fd = os.open(self.hosts_file, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        self._written = data


# -- Running a pod ---------------------------------------------------------------------------------------


@dataclass
class Container:
    """A pod's container while the stand-in kubelet runs it."""

    pod: str
    address: str
    """The pod's IP."""
    process: subprocess.Popen[bytes]
    """``bwrap``, whose exit status is the program's (128 + N when signal N killed it); without a sandbox,
    the program itself."""
    sandbox_pid: int | None
    """The pid (on this machine) of the first process of the sandbox's process tree, whose end ends them
    all; None where no sandbox could start."""

    def main_pid(self, timeout: float = 10) -> int:
        """The pid (on this machine) of the container's program, the command of the pod."""
        if self.sandbox_pid is None:
            return self.process.pid
        children = Path(f"/proc/{self.sandbox_pid}/task/{self.sandbox_pid}/children")

        def program() -> int | None:
            try:
                listed = children.read_text().split()
            except FileNotFoundError:
                listed = []
            if not listed and self.process.poll() is not None:
                raise ProcessLookupError(f"the container of pod {self.pod} has ended")
            return int(listed[0]) if listed else None

        return wait_for(
            program,
            timeout=timeout,
            interval=0.02,
            what=f"the program of pod {self.pod} to start in its sandbox",
        )

    def kill(self) -> None:
        """SIGKILL the program, as when it crashes or the OOM killer takes it: the container ends with exit
        code 137, and every other process it started goes with it."""
        os.kill(self.main_pid(), signal.SIGKILL)


def sandbox_program() -> str | None:
    """Where ``bwrap`` is, or None."""
    return shutil.which("bwrap") or next(
        (path for path in ("/usr/bin/bwrap", "/bin/bwrap") if os.access(path, os.X_OK)), None
    )


def run_pod(
    cluster: Cluster,
    pod: dict[str, Any],
    workdir: Path,
    timeout: float = 300,
    stop: threading.Event | None = None,
    *,
    network: PodNetwork | None = None,
    started: Callable[[Container], None] | None = None,
) -> Execution:
    """Run the pod's (single) container here and report its end into the pod's status; its output is the
    pod's log (see :func:`pod_log`) while and after it runs. When ``stop`` is set (the pod was deleted),
    the program is killed, as the kubelet kills a deleted pod's containers, and nothing is reported
    (exit code :data:`STOPPED`).

    The program runs in the pod's sandbox (see the module's description), its /etc/hosts being the hosts
    file of ``network`` (by default one of its own, naming the namespace's pods as they are listed now);
    the pod's address there is written into its status (``status.podIP``) before the program starts.
    ``started`` is called with the :class:`Container` once the program runs. Without ``bwrap`` on this
    machine, a pod without a ``spec.subdomain`` runs unsandboxed (no other pod needs its name); one with a
    subdomain is refused."""
    metadata = pod["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    bwrap = sandbox_program()
    if bwrap is None and pod["spec"].get("subdomain"):
        raise PodSpecError(
            f"pod {name}: spec.subdomain needs the pod's own host name and hosts file, hence bwrap "
            "(bubblewrap), which is not installed: `make image-tools` installs it"
        )
    if network is None:
        network = PodNetwork(namespace, workdir / f"{name}.hosts")
        network.update(cluster.get("pods", namespace=namespace)["items"])
    address = network.add(pod)
    env = container_environment(pod, address)
    termination_log = workdir / f"{name}.termination-log"
    env["MODELLOOP_RESULT_PATH"] = str(termination_log)
    command = container_command(pod, env)
    report_address(cluster, pod, address)
    log_file = container_log_file(workdir, name).resolve()
    log_file.write_bytes(b"")
    publish_log(cluster, pod, log_file)
    hostname = pod_hostname(pod)
    environment = {
        "PATH": f"{TRAINER_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "HOSTNAME": hostname,
        **env,
    }
    started_at = _now()
    stderr: list[bytes] = []
    with log_file.open("ab") as log_stream:
        lock = threading.Lock()
        process, sandbox_pid = _start_program(
            command, environment, workdir, bwrap, hostname, network.hosts_file
        )
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            threading.Thread(
                target=_pump, args=(process.stdout, "stdout", log_stream, lock, None), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(process.stderr, "stderr", log_stream, lock, stderr), daemon=True
            ),
        ]
        for pump in pumps:
            pump.start()
        if started is not None:
            started(Container(name, address, process, sandbox_pid))
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                if stop is not None and stop.is_set():
                    _kill(process, sandbox_pid)
                    return Execution(name, STOPPED, "", "")
                if time.monotonic() > deadline:
                    _kill(process, sandbox_pid)
                    raise subprocess.TimeoutExpired(command, timeout)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
        finally:
            for pump in pumps:
                pump.join(timeout=10)
    # A program that a signal ended reads 128 + the signal's number, as a container runtime reports it.
    exit_code = process.returncode if process.returncode >= 0 else 128 - process.returncode
    message = (
        termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if termination_log.exists()
        else ""
    )
    report_termination(cluster, pod, exit_code, message, started_at)
    stderr_text = b"".join(stderr).decode(errors="replace").replace("\r\n", "\n")
    return Execution(name, exit_code, message, stderr_text)


def _start_program(
    command: list[str],
    environment: dict[str, str],
    workdir: Path,
    bwrap: str | None,
    hostname: str,
    hosts_file: Path,
) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start the program, in its sandbox where there is ``bwrap``: the host's filesystem, its own host name,
    process tree and /etc/hosts (``hosts_file``, read-only). Return the process and the sandbox's pid."""
    if bwrap is None:
        process = subprocess.Popen(
            command, env=environment, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        return process, None
    info_read, info_write = os.pipe()
    with os.fdopen(info_read, "rb") as info:
        try:
            process = subprocess.Popen(
                [
                    bwrap,
                    *("--dev-bind", "/", "/", "--proc", "/proc"),
                    *("--unshare-uts", "--hostname", hostname, "--unshare-pid"),
                    *("--ro-bind", str(hosts_file.resolve()), "/etc/hosts"),
                    *("--die-with-parent", "--info-fd", str(info_write), "--chdir", str(workdir.resolve())),
                    "--",
                    *command,
                ],
                env=environment, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(info_write,),
            )  # fmt: skip
        finally:
            os.close(info_write)
        # bwrap writes its sandbox's pid there, then closes it, before the program starts; nothing if it
        # failed (its stderr says why).
        written = info.read()
    return process, json.loads(written)["child-pid"] if written else None


def _kill(process: subprocess.Popen[bytes], sandbox_pid: int | None) -> None:
    """Kill the program and every process it started, and wait until they are gone: SIGKILL to the first
    process of the sandbox's process tree ends the whole tree before bwrap, its parent, sees it end (and
    then bwrap ends)."""
    if sandbox_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sandbox_pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    process.kill()
    process.wait()


def report_address(cluster: Cluster, pod: Mapping[str, Any], address: str) -> None:
    """Write the pod's IP into its status (``podIP``, ``podIPs``), as the kubelet does when the pod's
    sandbox has its network (kwok gave it one of its own making, which no program here can reach)."""
    cluster.kubectl(
        "patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"podIP": address, "podIPs": [{"ip": address}]}}),
    )  # fmt: skip


def container_log_file(workdir: Path, pod: str) -> Path:
    """Where the stand-in kubelet keeps the output of the pod's container (its log, as kwok serves it)."""
    return workdir / f"{pod}.log"


def publish_log(cluster: Cluster, pod: dict[str, Any], log_file: Path) -> None:
    """Create (or update) the kwok ``Logs`` object of the pod (same name and namespace), so that kwok
    serves the pod's container log from ``log_file``, following it as it grows. It belongs to the pod:
    the garbage collector removes it with the pod."""
    metadata = pod["metadata"]
    logs: dict[str, Any] = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
        "spec": {
            "logs": [
                {
                    "containers": [c["name"] for c in pod["spec"]["containers"]],
                    "logsFile": str(log_file),
                    "follow": True,
                }
            ]
        },
    }
    if metadata.get("uid"):
        logs["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]}
        ]
    cluster.apply(logs, metadata["namespace"])


def pod_log(
    cluster: Cluster,
    namespace: str,
    pod: str,
    tail_lines: int | None = None,
    limit_bytes: int | None = None,
) -> str:
    """The pod's log through the API (``GET .../pods/POD/log``, with ``tailLines`` and ``limitBytes``), as
    `kubectl logs` shows it; a failure raises :class:`~e2e.harness.KubectlError`."""
    args = ["logs", pod, "-n", namespace]
    if tail_lines is not None:
        args.append(f"--tail={tail_lines}")
    if limit_bytes is not None:
        args.append(f"--limit-bytes={limit_bytes}")
    return cluster.kubectl(*args).stdout


def _pump(
    source: IO[bytes], stream: str, log: IO[bytes], lock: threading.Lock, keep: list[bytes] | None
) -> None:
    """Copy a container's output stream into the log file in the CRI format, ``TIMESTAMP STREAM TAG
    CONTENT`` a line (tag F: a full line; P: part of a longer one), each line flushed at once; with
    ``keep``, keep what was read there too."""
    while chunk := source.readline(LOG_LINE_LIMIT):
        if keep is not None:
            keep.append(chunk)
        full = chunk.endswith(b"\n")
        content = chunk[:-1] if full else chunk
        # A line cut at the limit is a part; the last line of the stream, without its newline, is full.
        tag = b"P" if not full and len(chunk) == LOG_LINE_LIMIT else b"F"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        with lock:
            log.write(b" ".join((stamp, stream.encode(), tag, content)) + b"\n")
            log.flush()


def report_termination(
    cluster: Cluster, pod: dict[str, Any], exit_code: int, message: str, started: str | None = None
) -> None:
    """Write into the pod's status that its container ended with ``exit_code`` and termination ``message``,
    as the kubelet does."""
    spec = pod["spec"]["containers"][0]
    succeeded = exit_code == 0
    finished = _now()
    status = {
        "phase": "Succeeded" if succeeded else "Failed",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "PodCompleted" if succeeded else "PodFailed",
                "lastTransitionTime": finished,
            },
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "PodCompleted" if succeeded else "PodFailed",
                "lastTransitionTime": finished,
            },
        ],
        "containerStatuses": [
            {
                "name": spec["name"],
                "image": spec["image"],
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if succeeded else "Error",
                        "message": message,
                        "startedAt": started or finished,
                        "finishedAt": finished,
                    }
                },
            }
        ],
    }
    cluster.kubectl(
        "patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip


def running_held_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """Held training pods that kwok started and that have not been run yet."""
    pods = cluster.get("pods", namespace=namespace)["items"]
    return [p for p in pods if held(p) and p.get("status", {}).get("phase") == "Running"]


def held(pod: Mapping[str, Any]) -> bool:
    """Whether the pod is one whose program the stand-in kubelet runs (labelled Hold)."""
    return (pod["metadata"].get("labels") or {}).get("sim.modelloop.dev/outcome") == "Hold"


@dataclass
class PodRun:
    """What :class:`GangKubelet` knows of one pod it runs."""

    pod: str
    uid: str
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when the pod is deleted: its program is killed."""
    finished: threading.Event = field(default_factory=threading.Event)
    container: Container | None = None
    execution: Execution | None = None
    error: str | None = None
    """Why the run could not finish (the pod's spec refused, the API unreachable, ...)."""


class GangKubelet(PollingLoop):
    """The stand-in kubelet for the held pods of a namespace, gangs among them: every held pod that kwok
    has Running is started at once, each in a thread of its own (see :func:`run_pod`), all in one
    :class:`PodNetwork`, so that the pods of a gang find each other by name whatever the order they start
    in; a pod that is deleted (the Job controller deletes the rest of a failed gang) has its program killed,
    as a kubelet kills a deleted pod's containers. What it remembers of a pod is keyed by the pod's uid,
    so it goes on across gangs one after another (a restarted gang has new pods, perhaps the same names).
    """

    def __init__(
        self, cluster: Cluster, namespace: str, workdir: Path, timeout: float = 300, interval: float = 0.25
    ) -> None:
        super().__init__(f"gang-kubelet-{namespace}", interval)
        self.cluster, self.namespace, self.workdir, self.timeout = cluster, namespace, workdir, timeout
        self.network = PodNetwork(namespace, workdir / f"{namespace}.hosts")
        self.executions: list[Execution] = []
        """Every container that ended, in the order they ended (a deleted pod's with exit code STOPPED)."""
        self._runs: dict[str, PodRun] = {}  # by pod uid, in the order started
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def sync(self) -> None:
        pods = self.cluster.get("pods", namespace=self.namespace)["items"]
        self.network.update(pods)
        present = {_pod_key(p) for p in pods if not p["metadata"].get("deletionTimestamp")}
        with self._lock:
            for uid, run in self._runs.items():
                if uid not in present:
                    run.stop.set()
            new = [
                p
                for p in pods
                if held(p)
                and (p.get("status") or {}).get("phase") == "Running"
                and _pod_key(p) in present
                and _pod_key(p) not in self._runs
            ]
            for pod in new:
                run = PodRun(pod["metadata"]["name"], _pod_key(pod))
                self._runs[run.uid] = run
                thread = threading.Thread(
                    target=self._run, args=(pod, run), name=f"pod-{run.pod}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _run(self, pod: dict[str, Any], run: PodRun) -> None:
        def started(container: Container) -> None:
            run.container = container

        try:
            execution = run_pod(
                self.cluster, pod, self.workdir, self.timeout, run.stop, network=self.network, started=started
            )
        except Exception as error:
            run.error = f"{type(error).__name__}: {error}"
            log.warning("pod %s could not be run: %s", run.pod, run.error)
        else:
            run.execution = execution
            with self._lock:
                self.executions.append(execution)
        finally:
            run.finished.set()

    def run_of(self, pod: str, timeout: float = 60) -> PodRun:
        """The latest run of the pod of that name, once it has been started (fail after ``timeout``)."""

        def latest() -> PodRun | None:
            with self._lock:
                return next((r for r in reversed(self._runs.values()) if r.pod == pod), None)

        return wait_for(
            latest, timeout=timeout, interval=0.05, what=f"the stand-in kubelet to start pod {pod}"
        )

    def running(self, pod: str, timeout: float = 60) -> Container:
        """The pod's container once its program runs (fail after ``timeout``, or if it ended first)."""
        run = self.run_of(pod, timeout)
        container = wait_for(
            lambda: run.container or run.finished.is_set(),
            timeout=timeout,
            interval=0.05,
            what=f"the program of pod {pod} to start",
        )
        if not isinstance(container, Container):
            raise AssertionError(f"pod {pod} ended before its program ran: {run.error or run.execution}")
        return container

    def kill(self, pod: str) -> None:
        """SIGKILL the program of a running pod, as a crashed worker: the pod fails with exit code 137."""
        self.running(pod, timeout=0).kill()

    def finished(self, pod: str, timeout: float = 300) -> Execution:
        """How the pod's container ended, once it has (fail after ``timeout``, or if the run failed)."""
        run = self.run_of(pod, timeout)
        wait_for(run.finished.is_set, timeout=timeout, interval=0.05, what=f"the program of pod {pod} to end")
        if run.execution is None:
            raise AssertionError(f"pod {pod} could not be run: {run.error}")
        return run.execution

    def logs(self, tail_lines: int = 30) -> str:
        """The last lines of every pod's log it ran, with how each ended, for a failing test's message: a
        gang's failure is explained by its workers' output, which is gone with the test's folder."""
        with self._lock:
            runs = list(self._runs.values())
        parts = []
        for run in runs:
            ended = run.error or (f"exit code {run.execution.exit_code}" if run.execution else "running")
            log_file = container_log_file(self.workdir, run.pod)
            lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
            parts.append(f"--- pod {run.pod} ({ended}), last {tail_lines} lines of its log ---")
            parts.extend(lines[-tail_lines:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop polling, kill every program still running, and wait for their threads."""
        super().stop()
        with self._lock:
            for run in self._runs.values():
                run.stop.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=self.join_timeout)


def main() -> None:
    """``python -m e2e.kubelet NAMESPACE RUN``: play the kubelet for the held pods of a namespace until the
    TrainingRun RUN has finished (used by `make demo`); the pods of a distributed run run together."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("namespace")
    parser.add_argument("run")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    bin_dir = Path(os.environ["PATH"].split(os.pathsep)[0])
    cluster = Cluster(kubeconfig=Path(os.environ["KUBECONFIG"]), bin_dir=bin_dir, state_dir=ROOT / ".cluster")
    workdir = Path(tempfile.mkdtemp(prefix="modelloop-kubelet-"))
    with GangKubelet(cluster, args.namespace, workdir, timeout=args.timeout) as kubelet:
        reported = 0

        def finished() -> bool:
            nonlocal reported
            for execution in kubelet.executions[reported:]:
                print(f"ran pod {execution.pod}: exit code {execution.exit_code}", flush=True)
                reported += 1
            run = cluster.get("trainingrun", args.run, args.namespace)
            return (run.get("status") or {}).get("phase") in ("Succeeded", "Failed")

        wait_for(finished, timeout=args.timeout, interval=0.5, what=f"TrainingRun {args.run} to finish")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    main()
