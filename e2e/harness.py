"""The e2e harness: the local control plane, kubectl, and waiting on conditions with timeouts.

Nothing here sleeps and hopes: every wait polls a condition and fails with what it last saw.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from e2e.apireader import ApiStatusError, Unsupported, reader_for

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"
QUICKSTART_OBJECTS = [
    ("trainingrun", "iris-rf"),
    ("modelversion", "iris-v1"),
    ("modelpolicy", "iris"),
    ("inferenceservice.modelloop.dev", "iris"),
    ("driftpolicy", "iris-drift"),
]
"""The quickstart's objects, as (resource, name)."""
SHARED_CRDS = Path(os.environ.get("MODELLOOP_SHARED_DIR", ROOT.parent / "shared")) / "crds"

T = TypeVar("T")
B = TypeVar("B", bound="BackgroundLoop")
log = logging.getLogger(__name__)
Manifest = str | Mapping[str, Any] | Sequence[Mapping[str, Any]]


class KubectlError(AssertionError):
    """kubectl exited with an error."""


class Timeout(AssertionError):
    """A condition did not come true in time."""


def refusals(log: str) -> list[str]:
    """The lines of an operator's log that tell of the API server refusing it: a 403 reads "Forbidden"
    (the API server's reason, in kopf's and modelloop's messages alike), a watch kopf may not make "Not
    enough permissions". A bare "403" is not looked for: a log line's milliseconds can read 403."""
    return [line for line in log.splitlines() if "Forbidden" in line or "Not enough permissions" in line]


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except KubectlError as error:
            result, last = None, str(error)
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def wait_for_event(
    cluster: Cluster,
    namespace: str,
    matches: Callable[[Mapping[str, Any]], bool],
    *,
    what: str,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """The namespace's events once one of them ``matches``. An event is posted after the status it tells of
    (the operator writes both, the event last), so a test that has seen the status waits for the event."""

    def probe() -> list[dict[str, Any]] | None:
        events: list[dict[str, Any]] = cluster.get("events", namespace=namespace)["items"]
        return events if any(matches(e) for e in events) else None

    return wait_for(probe, timeout=timeout, what=what)


class BackgroundLoop:
    """A thread that runs ``_loop`` (which returns once ``_stopping`` is set), as a context manager:
    the stand-ins and recorders that work beside a test. ``start`` twice is harmless."""

    join_timeout = 30.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)
            self._thread = None

    def __enter__(self: B) -> B:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PollingLoop(BackgroundLoop):
    """A background loop that calls ``sync`` every ``interval`` seconds and goes on when a pass fails (the
    API server may be busy for a moment), keeping the failure in ``last_error`` until a pass succeeds."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name)
        self.interval = interval
        self.last_error: str | None = None
        """The last error of a background :meth:`sync` (the thread goes on polling)."""

    def sync(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync()
                self.last_error = None
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
                logging.getLogger(type(self).__module__).warning(
                    "%s sync failed: %s", self._name, self.last_error
                )
            self._stopping.wait(self.interval)


@dataclass(frozen=True)
class Cluster:
    """A running local control plane and the kubectl that talks to it."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment a user would have: kubectl on PATH, KUBECONFIG set."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the finished process; with ``check``, a failure
        raises an error that carries kubectl's own message."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def get(
        self,
        resource: str,
        name: str | None = None,
        namespace: str | None = None,
        selector: str | None = None,
    ) -> Any:
        """``kubectl get -o json``, parsed: read over a kept-alive connection (e2e/apireader.py) where
        that reads exactly what kubectl would, else by kubectl."""
        args = ["get", resource, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        reader = reader_for(self.kubeconfig)
        if reader is not None:
            try:
                return reader.get(resource, name, namespace, selector)
            except Unsupported:
                pass
            except ApiStatusError as error:
                # kubectl's own words for a refusal.
                said = f"Error from server ({error.reason}): {error.message}"
                raise KubectlError(f"kubectl {' '.join(args)} failed (1): {said}") from None
            except (OSError, http.client.HTTPException) as error:
                raise KubectlError(f"kubectl {' '.join(args)} failed: the API server: {error}") from None
        return json.loads(self.kubectl(*args).stdout)

    def get_or_none(self, resource: str, name: str, namespace: str | None = None) -> Any:
        """:meth:`get` of one object, or None where there is none (kubectl's NotFound)."""
        try:
            return self.get(resource, name, namespace)
        except KubectlError as error:
            if "(NotFound)" in str(error):
                return None
            raise

    def install_crds(self, *paths: Path, what: str = "the CRDs", input: str | None = None) -> list[str]:
        """Server-side apply the CRDs in ``paths`` (files or folders; or ``input``, YAML text) and wait
        until each is Established, so that the next request may use its kinds; return their names.
        Server-side: some third-party CRDs exceed client-side apply's annotation limit. Polled rather
        than ``kubectl wait``, which fails on a CRD so new that it has no conditions yet."""
        files = [a for path in paths for a in ("-f", str(path))] or ["-f", "-"]
        applied = self.kubectl(
            "apply", "--server-side", "--force-conflicts", *files, "-o", "name", input=input, timeout=120
        )
        kind = "customresourcedefinition"
        names = [n.rpartition("/")[2] for n in applied.stdout.split() if n.startswith(kind)]

        def established() -> bool:
            crds = self.get("crd")["items"]  # one request a poll, however many CRDs
            ready = {
                c["metadata"]["name"]
                for c in crds
                if (e := condition(c, "Established")) and e["status"] == "True"
            }
            return ready >= set(names)

        wait_for(established, timeout=60, what=f"{what} Established")
        return names

    def apply(self, manifest: Manifest, namespace: str) -> None:
        """``kubectl apply`` a manifest given as YAML/JSON text or as objects; fail if it is refused."""
        result = self.apply_result(manifest, namespace)
        assert result.returncode == 0, f"kubectl apply failed: {result.stderr}"

    def apply_result(self, manifest: Manifest, namespace: str) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` a manifest and return the finished process, refused or not."""
        text = manifest if isinstance(manifest, str) else json.dumps(_as_list(manifest))
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)


def _as_list(manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(manifest, Mapping):
        return manifest
    return {"apiVersion": "v1", "kind": "List", "items": list(manifest)}


def cluster_script(*args: str, env: Mapping[str, str]) -> str:
    """Run hack/cluster.sh and return its stdout; its progress goes to the terminal."""
    return subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout


def apply_quickstart_until_ready(cluster: Cluster, namespace: str, timeout: float = 60) -> None:
    """Apply the quickstart in ``namespace`` and wait until each of its objects has a Ready condition."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))
    for resource, name in QUICKSTART_OBJECTS:
        wait_for(
            lambda r=resource, n=name: condition(cluster.get(r, n, namespace), "Ready"),
            timeout=timeout,
            what=f"Ready condition of {name}",
        )


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The status condition of ``type_`` of an object, or None."""
    for cond in obj.get("status", {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


@contextlib.contextmanager
def running_operator(
    cluster: Cluster,
    namespace: str,
    log_path: Path,
    kubeconfig: Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `modelloop run` as a user would (its own process, a liveness endpoint, ``env`` added to its
    environment), wait until it is live, and stop it with SIGTERM at the end; its log is printed then,
    for failing tests. The log is appended to, so that an operator started again keeps one log."""
    process = start_operator(cluster, namespace, log_path, kubeconfig, extra_args, env)
    try:
        yield process
    finally:
        stop_operator(process, log_path)


def start_operator(
    cluster: Cluster,
    namespace: str,
    log_path: Path,
    kubeconfig: Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.Popen[bytes]:
    """`modelloop run` as its own process (see :func:`running_operator`), once it is live; the caller
    stops it."""
    port = free_port()
    env = {**cluster.env, **(env or {})}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    command = [
        str(Path(sys.executable).with_name("modelloop")),
        *("run", "--namespace", namespace, "--liveness", f"http://127.0.0.1:{port}/healthz"),
        *extra_args,
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is not None or _live(port), timeout=timeout, what="operator liveness")
    except BaseException:
        process.kill()
        process.wait()
        raise
    assert process.poll() is None, f"operator exited early:\n{log_path.read_text()}"
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process that may still run, and SIGKILL it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_operator(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM the operator (SIGKILL after 30 s) and print the end of its log for the test report."""
    stop_process(process)
    sys.stdout.write(f"\n--- operator log ({log_path}) ---\n{log_path.read_text()[-20000:]}\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def api_server_access(cluster: Cluster, ca_file: Path) -> str:
    """The URL of ``cluster``'s API server, its CA written to ``ca_file``: what a process that reaches it
    with a token of its own (a drift detector's TokenReviews) needs."""
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    if "certificate-authority-data" in server:
        ca_file.write_bytes(base64.b64decode(server["certificate-authority-data"]))
    else:
        ca_file.write_bytes(Path(server["certificate-authority"]).read_bytes())
    return str(server["server"])


def create_token(cluster: Cluster, account: str, namespace: str, audience: str | None = None) -> str:
    """A token of the ServiceAccount from the TokenRequest API (an hour long): for ``audience``, or the API
    server's own."""
    bound = ("--audience", audience) if audience else ()
    args = ("create", "token", account, "-n", namespace, "--duration=1h", *bound)
    return cluster.kubectl(*args).stdout.strip()


def token_kubeconfig(cluster: Cluster, token: str, path: Path) -> Path:
    """Write a kubeconfig for ``cluster``'s API server that authenticates with ``token`` alone (a
    ServiceAccount's, from ``kubectl create token``), so that a process run with it has exactly that
    identity; return its path."""
    return user_kubeconfig(cluster, {"token": token}, path)


def user_kubeconfig(cluster: Cluster, user: Mapping[str, Any], path: Path) -> Path:
    """Write a kubeconfig for ``cluster``'s API server whose user is ``user`` (a token, an exec
    credential plugin, ...) and nothing else; return its path."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    ca = (
        server.get("certificate-authority-data")
        or base64.b64encode(Path(server["certificate-authority"]).read_bytes()).decode()
    )
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": server["server"], "certificate-authority-data": ca}}
                ],
                "users": [{"name": "sa", "user": dict(user)}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
                "current-context": "c",
            }
        )
    )
    return path
