"""A stand-in for the kubelet, for pods whose program must really run.

Pods under kwok run nothing. For a training pod labelled ``sim.modelloop.dev/outcome: Hold`` (kwok leaves
it Running), this module does what a kubelet would: it runs the container's command and args with exactly
the pod's environment, on this machine, with the trainer runtime's environment as the image's PATH;
then it writes the container's termination state and message into the pod's status. The one deliberate
difference: the termination-message file, /dev/termination-log in a container, is a temporary file here,
as the kubelet maps a host file there (MODELLOOP_RESULT_PATH points to it).
"""

from __future__ import annotations

import datetime
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.harness import ROOT, Cluster

TRAINER_BIN = ROOT / ".venvs" / "trainer" / "bin"
HOLD = {"sim.modelloop.dev/outcome": "Hold"}
TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message


@dataclass(frozen=True)
class Execution:
    """One container run by the stand-in kubelet."""

    pod: str
    exit_code: int
    message: str
    stderr: str


def run_pod(cluster: Cluster, pod: dict[str, Any], workdir: Path, timeout: float = 300) -> Execution:
    """Run the pod's (single) container here and report its end into the pod's status."""
    spec = pod["spec"]["containers"][0]
    env = {}
    for item in spec.get("env") or ():
        assert "value" in item, f"env {item['name']} uses valueFrom, which this stand-in cannot resolve"
        env[item["name"]] = item["value"]
    name = pod["metadata"]["name"]
    termination_log = workdir / f"{name}.termination-log"
    env["MODELLOOP_RESULT_PATH"] = str(termination_log)
    command = [*spec.get("command", []), *spec.get("args", [])]
    started = _now()
    process = subprocess.run(
        command,
        env={"PATH": f"{TRAINER_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), **env},
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    message = (
        termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if termination_log.exists()
        else ""
    )
    report_termination(cluster, pod, process.returncode, message, started)
    return Execution(name, process.returncode, message, process.stderr)


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
