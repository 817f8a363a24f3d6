"""Pod logs on the local control plane: what a program run by the stand-in kubelet writes is the pod's log
through the API (``GET /api/v1/namespaces/NS/pods/POD/log``, i.e. `kubectl logs`) while it runs and after,
with ``tailLines`` and ``limitBytes``, on every simulated node."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, wait_for
from e2e.kubelet import HOLD, Execution, pod_log, run_pod

NODES = ["cpu-0", "cpu-1", "gpu-0", "gpu-1"]

# Prints three lines and one to stderr, then waits (a minute at most) until the test lets it finish: its
# log must be readable while it runs.
PROGRAM = """
import pathlib, sys, time
for i in range(1, 4):
    print(f"line {i}", flush=True)
    time.sleep(0.1)
print("to stderr", file=sys.stderr, flush=True)
deadline = time.monotonic() + 60
while not pathlib.Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("done", flush=True)
"""


def held_pod(name: str, program: str, node: str | None = None) -> dict[str, Any]:
    """A pod that kwok starts and leaves Running (no Job owns it, and it is held), whose program the stand-in
    kubelet runs; with ``node``, bound to that node directly."""
    spec: dict[str, Any] = {
        # This interpreter, not the first python3 on the stand-in's PATH (the trainer runtime's, which
        # may be being reinstalled): the program is all the test needs.
        "containers": [
            {"name": "main", "image": "python:3.12-slim", "command": [sys.executable, "-c", program]}
        ]
    }
    if node is not None:
        spec["nodeName"] = node
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(HOLD)},
        "spec": spec,
    }


def running(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = cluster.get("pod", name, namespace)
    return pod if pod.get("status", {}).get("phase") == "Running" else None


def log_with(cluster: Cluster, namespace: str, pod: str, done: Callable[[str], bool]) -> str | None:
    """The pod's log once ``done`` says it is complete enough, else None."""
    text = pod_log(cluster, namespace, pod)
    return text if done(text) else None


def test_a_running_programs_output_is_its_pods_log(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cluster.apply(held_pod("talker", PROGRAM), namespace)
    pod = wait_for(lambda: running(cluster, "talker", namespace), timeout=60, what="the pod Running")

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        execution = pool.submit(run_pod, cluster, pod, tmp_path, 120)
        try:
            # While the program runs (it waits for the release file), the API shows what it wrote so far.
            log = wait_for(
                lambda: log_with(cluster, namespace, "talker", lambda text: text.count("\n") >= 4),
                timeout=60,
                what="the running program's four lines in the pod's log",
            )
            assert not execution.done(), "the program ended before its log was read"
        finally:
            (tmp_path / "release").touch()
        result: Execution = execution.result(timeout=120)

    lines = log.splitlines()
    assert sorted(lines) == ["line 1", "line 2", "line 3", "to stderr"], log
    assert [line for line in lines if line.startswith("line")] == ["line 1", "line 2", "line 3"]
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "to stderr\n"

    # After it ended: the whole log, its last line alone (tailLines=1), its first bytes (limitBytes).
    full = wait_for(
        lambda: log_with(cluster, namespace, "talker", lambda text: text.endswith("done\n")),
        timeout=30,
        what="the program's last line in the pod's log",
    )
    assert sorted(full.splitlines()) == ["done", "line 1", "line 2", "line 3", "to stderr"], full
    assert pod_log(cluster, namespace, "talker", tail_lines=1) == "done\n"
    assert pod_log(cluster, namespace, "talker", limit_bytes=4) == "line"
    assert cluster.get("pod", "talker", namespace)["status"]["phase"] == "Succeeded"


@pytest.mark.parametrize("node", NODES)
def test_a_pods_log_is_served_on_every_node(
    cluster: Cluster, namespace: str, tmp_path: Path, node: str
) -> None:
    name = f"log-{node}"
    cluster.apply(held_pod(name, f"print('hello from {node}')", node=node), namespace)
    pod = wait_for(lambda: running(cluster, name, namespace), timeout=60, what=f"the pod on {node} Running")

    execution = run_pod(cluster, pod, tmp_path, 60)
    assert execution.exit_code == 0, execution.stderr

    log = wait_for(
        lambda: pod_log(cluster, namespace, name, tail_lines=1),
        timeout=30,
        what=f"the log of the pod on {node}",
    )
    assert log == f"hello from {node}\n"
