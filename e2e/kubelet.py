"""A stand-in for the kubelet, for pods whose program must really run.

Pods under kwok run nothing. For a training pod labelled ``sim.modelloop.dev/outcome: Hold`` (kwok leaves
it Running), this module does what a kubelet would: it runs the container's command and args with exactly
the pod's environment, on this machine, with the trainer runtime's environment as the image's PATH;
then it writes the container's termination state and message into the pod's status. The one deliberate
difference: the termination-message file, /dev/termination-log in a container, is a temporary file here,
as the kubelet maps a host file there (MODELLOOP_RESULT_PATH points to it).

The container's stdout and stderr go, line by line as the program writes them, to a log file in the CRI
format a kubelet's runtime writes; a kwok ``Logs`` object of the pod's name points kwok's kubelet-like
server at that file, so that the pod's log through the API (`kubectl logs`) shows the program's output
while it runs, as it would on a real node.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from e2e.harness import ROOT, Cluster

TRAINER_BIN = ROOT / ".venvs" / "trainer" / "bin"
HOLD = {"sim.modelloop.dev/outcome": "Hold"}
TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message
LOG_LINE_LIMIT = 16 * 1024  # a longer line goes into the log in parts (tag P), as the kubelet's runtime does


@dataclass(frozen=True)
class Execution:
    """One container run by the stand-in kubelet."""

    pod: str
    exit_code: int
    message: str
    stderr: str


def run_pod(
    cluster: Cluster,
    pod: dict[str, Any],
    workdir: Path,
    timeout: float = 300,
    stop: threading.Event | None = None,
) -> Execution:
    """Run the pod's (single) container here and report its end into the pod's status; its output is the
    pod's log (see :func:`pod_log`) while and after it runs. When ``stop`` is set (the pod was deleted),
    the program is killed, as the kubelet kills a deleted pod's containers, and nothing is reported
    (exit code -9)."""
    spec = pod["spec"]["containers"][0]
    env = {}
    for item in spec.get("env") or ():
        assert "value" in item, f"env {item['name']} uses valueFrom, which this stand-in cannot resolve"
        env[item["name"]] = item["value"]
    name = pod["metadata"]["name"]
    termination_log = workdir / f"{name}.termination-log"
    env["MODELLOOP_RESULT_PATH"] = str(termination_log)
    log_file = (workdir / f"{name}.log").resolve()
    log_file.write_bytes(b"")
    publish_log(cluster, pod, log_file)
    command = [*spec.get("command", []), *spec.get("args", [])]
    started = _now()
    stderr: list[bytes] = []
    with log_file.open("ab") as log:
        lock = threading.Lock()
        process = subprocess.Popen(
            command,
            env={"PATH": f"{TRAINER_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), **env},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(process.stdout, "stdout", log, lock, None), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, "stderr", log, lock, stderr), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                if stop is not None and stop.is_set():
                    process.kill()
                    process.wait()
                    return Execution(name, -9, "", "")
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise subprocess.TimeoutExpired(command, timeout)
                time.sleep(0.1)
        finally:
            for pump in pumps:
                pump.join(timeout=10)
    message = (
        termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if termination_log.exists()
        else ""
    )
    report_termination(cluster, pod, process.returncode, message, started)
    stderr_text = b"".join(stderr).decode(errors="replace").replace("\r\n", "\n")
    return Execution(name, process.returncode, message, stderr_text)


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
    return [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get("sim.modelloop.dev/outcome") == "Hold"
        and p.get("status", {}).get("phase") == "Running"
    ]


def main() -> None:
    """``python -m e2e.kubelet NAMESPACE RUN``: play the kubelet for the held pods of a namespace until the
    TrainingRun RUN has finished (used by `make demo`)."""
    import argparse
    import os
    import tempfile

    from e2e.harness import wait_for

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("namespace")
    parser.add_argument("run")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    bin_dir = Path(os.environ["PATH"].split(os.pathsep)[0])
    cluster = Cluster(kubeconfig=Path(os.environ["KUBECONFIG"]), bin_dir=bin_dir, state_dir=ROOT / ".cluster")
    workdir = Path(tempfile.mkdtemp(prefix="modelloop-kubelet-"))

    def finished() -> bool:
        for pod in running_held_pods(cluster, args.namespace):
            execution = run_pod(cluster, pod, workdir)
            print(f"ran pod {execution.pod}: exit code {execution.exit_code}")
        run = cluster.get("trainingrun", args.run, args.namespace)
        return (run.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    wait_for(finished, timeout=args.timeout, interval=0.5, what=f"TrainingRun {args.run} to finish")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    main()
