"""The stand-in kubelet runs gangs: the pods of an Indexed Job behind a headless Service run at once, each
in its own sandbox with its own host name and loopback address, reach each other by the names cluster DNS
would give them, and rendezvous with `torchrun` and gloo as a distributed training run does; a crashed
worker fails its pod and its Job, and the pods the Job controller then deletes have their programs killed.

The first tests need no cluster: how the kubelet resolves a container's environment and command, and how the
pods' hosts file changes under a running program."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, condition, free_port, wait_for
from e2e.kubelet import (
    HOLD,
    STOPPED,
    GangKubelet,
    PodNetwork,
    PodSpecError,
    container_command,
    container_environment,
    expand,
    pod_log,
    sandbox_program,
)

# Each process adds its rank + 1 into one sum over the gang; each node's first process reports, in its
# pod's termination message, the sum, who it was as the kubelet's sandbox made it, and the TCP connections
# (gloo's among them) of every process of the gang after the sum, as [node, local, remote] addresses (from
# /proc/net/tcp).
ALL_REDUCE = """
import json, os, socket
import torch
import torch.distributed as dist

def address(hexadecimal):
    return socket.inet_ntoa(bytes.fromhex(hexadecimal.split(":")[0])[::-1])

def connections():
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.read().splitlines()[1:]]
    return sorted({
        (address(row[1]), address(row[2])) for row in rows
        if row[3] == "01" and f"socket:[{row[9]}]" in sockets
    })

dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
node = int(os.environ["GROUP_RANK"])
everyone = [None] * dist.get_world_size()
dist.all_gather_object(everyone, [[node, *ends] for ends in connections()])
if os.environ["LOCAL_RANK"] == "0":
    host = socket.gethostname()
    with open(os.environ["MODELLOOP_RESULT_PATH"], "w") as result:
        json.dump({
            "sum": total.item(), "world": dist.get_world_size(), "node": node,
            "host": host, "address": socket.gethostbyname(host), "pod_ip": os.environ["POD_IP"],
            "connections": sorted(c for mine in everyone for c in mine),
        }, result)
dist.destroy_process_group()
"""

# Joins the gang, says so, then waits (two minutes at most) for whatever comes: a worker in mid-training.
JOIN_AND_WAIT = """
import time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
dist.all_reduce(torch.ones(1))
print("joined", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.1)
"""


def gang_job(name: str, service: str, port: int, program: str, procs_per_node: int) -> dict[str, Any]:
    """An Indexed Job of two held pods that run ``program`` under `torchrun`, configured as Kubeflow
    Trainer configures it (``PET_*``): the node rank from the completion index, the master at index 0's
    name under the headless Service ``service``."""
    env = [
        {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
        {"name": "PET_NNODES", "value": "2"},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs_per_node)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "PET_MASTER_ADDR", "value": f"$(JOB)-0.{service}"},
        {"name": "PET_MASTER_PORT", "value": str(port)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": dict(HOLD)},
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": service,
                    "containers": [
                        {
                            "name": "node",
                            "image": "example.invalid/trainer:1",
                            # The trainer runtime's torchrun and python (first on the stand-in's PATH).
                            "command": ["torchrun", "--no-python", "python", "-c", program],
                            "env": env,
                        }
                    ],
                },
            },
        },
    }


def headless_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",
            "selector": dict(HOLD),
            "ports": [{"name": "rendezvous", "port": 29400}],
        },
    }


def job_outcome(cluster: Cluster, job: str, namespace: str) -> str | None:
    """Complete or Failed once the Job has ended, else None."""
    for type_ in ("Complete", "Failed"):
        found = condition(cluster.get("job", job, namespace), type_)
        if found and found["status"] == "True":
            return type_
    return None


def job_pods(cluster: Cluster, job: str, namespace: str) -> dict[int, dict[str, Any]]:
    """The Job's pods not being deleted, by completion index."""
    pods = cluster.get("pods", namespace=namespace, selector=f"job-name={job}")["items"]
    return {
        int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }


def joined(cluster: Cluster, namespace: str, pod: str) -> bool:
    """Whether the pod's program has said, in its log, that it joined its gang."""
    return "joined" in pod_log(cluster, namespace, pod)


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def explain(kubelet: GangKubelet) -> str:
    return "\n".join(f"{e.pod}: exit {e.exit_code}\n{e.stderr[-3000:]}" for e in kubelet.executions)


# -- Without a cluster ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)-x", "1-x"),
        ("$(A)$(B)", "12"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$$", "$"),
        ("$(MISSING)", "$(MISSING)"),
        ("a$b", "a$b"),
        ("$(A", "$(A"),
        ("tail$", "tail$"),
        ("$()", "$()"),
    ],
)
def test_variable_references_expand_as_kubernetes_expands_them(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expanded


def pod_with_env(env: list[dict[str, Any]], **container: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "w-0-abcde",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"job-name": "w"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
        },
        "spec": {
            "nodeName": "cpu-1",
            "serviceAccountName": "trainer",
            "containers": [{"name": "node", "image": "x", "env": env, **container}],
        },
        "status": {"hostIP": "10.0.0.7", "podIP": "10.0.0.9"},
    }


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def test_environment_resolves_values_in_order_and_the_downward_api() -> None:
    pod = pod_with_env(
        [
            {"name": "LATER", "value": "$(A)"},  # A is defined after it: left as written
            {"name": "A", "value": "1"},
            {"name": "C", "value": "$(A)/$(LATER)/$$(A)"},
            {"name": "EMPTY"},
            field("NAME", "metadata.name"),
            field("NS", "metadata.namespace"),
            field("UID", "metadata.uid"),
            field("JOB", "metadata.labels['job-name']"),
            field("RANK", "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            field("NO_LABEL", "metadata.labels['absent']"),
            field("NODE", "spec.nodeName"),
            field("SA", "spec.serviceAccountName"),
            field("IP", "status.podIP"),
            field("HOST_IP", "status.hostIP"),
            {"name": "MASTER", "value": "$(JOB)-0.svc:$(RANK)"},
        ]
    )

    env = container_environment(pod, "127.20.0.1")

    assert env == {
        "LATER": "$(A)",
        "A": "1",
        "C": "1/$(A)/$(A)",
        "EMPTY": "",
        "NAME": "w-0-abcde",
        "NS": "ns",
        "UID": "u-1",
        "JOB": "w",
        "RANK": "3",
        "NO_LABEL": "",
        "NODE": "cpu-1",
        "SA": "trainer",
        "IP": "127.20.0.1",  # the address the stand-in gives the pod, not kwok's
        "HOST_IP": "10.0.0.7",
        "MASTER": "w-0.svc:3",
    }


def test_command_and_args_expand_references_to_the_whole_environment() -> None:
    pod = pod_with_env([], command=["run", "$(A)"], args=["--b=$(B)", "$$(A)", "$(C)"])

    assert container_command(pod, {"A": "1", "B": "2"}) == ["run", "1", "--b=2", "$(A)", "$(C)"]


@pytest.mark.parametrize(
    ("item", "words"),
    [
        (
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ["TOKEN", "secretKeyRef"],
        ),
        (
            {"name": "CONF", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            ["CONF", "configMapKeyRef"],
        ),
        (
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            ["CPUS", "resourceFieldRef"],
        ),
        (field("GEN", "metadata.generation"), ["GEN", "metadata.generation"]),
    ],
)
def test_an_env_source_the_stand_in_cannot_resolve_is_refused_naming_the_variable(
    item: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(PodSpecError) as refused:
        container_environment(pod_with_env([{"name": "OK", "value": "1"}, item]), "127.20.0.1")
    assert all(word in str(refused.value) for word in words), refused.value


def test_env_from_and_a_missing_command_are_refused_naming_the_container() -> None:
    with pytest.raises(PodSpecError, match="container node: envFrom"):
        container_environment(pod_with_env([], envFrom=[{"configMapRef": {"name": "c"}}]), "127.20.0.1")
    with pytest.raises(PodSpecError, match=r"container node: .* needs a command"):
        container_command(pod_with_env([]), {})


def gang_pod(name: str, hostname: str, uid: str, created: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "creationTimestamp": created},
        "spec": {"hostname": hostname, "subdomain": "gang"},
        "status": {"phase": phase},
    }


def hosts_entries(network: PodNetwork) -> dict[str, str]:
    """Name -> address, as the hosts file says."""
    entries: dict[str, str] = {}
    for line in network.hosts_file.read_text().splitlines():
        if line and not line.startswith("#"):
            address, *names = line.split()
            entries.update(dict.fromkeys(names, address))
    return entries


def test_the_hosts_file_names_every_pod_and_changes_in_place(tmp_path: Path) -> None:
    network = PodNetwork("ns", tmp_path / "hosts")
    inode = network.hosts_file.stat().st_ino
    first = gang_pod("w-0-aaaaa", "w-0", "u-0", "2026-01-01T00:00:00Z")
    second = gang_pod("w-1-bbbbb", "w-1", "u-1", "2026-01-01T00:00:00Z")

    network.update([first])
    network.update([first, second])

    entries = hosts_entries(network)
    assert entries["localhost"] == "127.0.0.1"
    address = entries["w-0"]
    assert address.startswith("127.") and address != "127.0.0.1"
    for name in ("w-0", "w-0.gang", "w-0.gang.ns.svc", "w-0.gang.ns.svc.cluster.local"):
        assert entries[name] == address
    assert entries["w-1.gang"] not in (address, "127.0.0.1")
    assert network.address(first) == address  # stable for the pod
    assert network.hosts_file.stat().st_ino == inode

    # The gang restarts: the old pods go, new ones (new uids) take the same host names, at new addresses.
    restarted = gang_pod("w-0-ccccc", "w-0", "u-2", "2026-01-01T00:01:00Z")
    network.update([second, restarted])
    assert hosts_entries(network)["w-0.gang"] == network.address(restarted) != address
    # A pod still known while its successor runs: the running newer one holds the name.
    network.update([{**first, "status": {"phase": "Failed"}}, second, restarted])
    assert hosts_entries(network)["w-0.gang"] == network.address(restarted)
    assert network.hosts_file.stat().st_ino == inode


def test_a_sandboxed_program_resolves_a_pod_named_after_it_started(tmp_path: Path) -> None:
    bwrap = sandbox_program()
    assert bwrap is not None, "bwrap (bubblewrap) is not installed: `make image-tools` installs it"
    network = PodNetwork("ns", tmp_path / "hosts")
    first = gang_pod("w-0-aaaaa", "w-0", "u-0", "2026-01-01T00:00:00Z")
    network.update([first])
    # Looks the peer up until it resolves (ten seconds at most), as a rendezvous retries.
    lookup = (
        "import socket, sys, time\n"
        "deadline = time.monotonic() + 10\n"
        "while True:\n"
        "    try:\n"
        "        print(socket.gethostname(), socket.gethostbyname(socket.gethostname()),"
        " socket.gethostbyname('w-1.gang.ns.svc.cluster.local'), flush=True)\n"
        "        break\n"
        "    except socket.gaierror:\n"
        "        if time.monotonic() > deadline: sys.exit('w-1 never resolved')\n"
        "        time.sleep(0.05)\n"
    )
    program = subprocess.Popen(
        [
            *(bwrap, "--dev-bind", "/", "/", "--unshare-uts", "--hostname", "w-0"),
            *("--ro-bind", str(network.hosts_file), "/etc/hosts", "--", sys.executable, "-c", lookup),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    second = gang_pod("w-1-bbbbb", "w-1", "u-1", "2026-01-01T00:00:00Z")
    network.update([first, second])
    out, _ = program.communicate(timeout=30)

    assert program.returncode == 0
    assert out.split() == ["w-0", network.address(first), network.address(second)]
    assert socket.gethostname() != "w-0"  # this process's own identity is untouched


# -- On the local control plane -------------------------------------------------------------------------


def test_an_indexed_job_gang_rendezvouses_by_host_name_and_all_reduces(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    cluster.apply([headless_service("gang"), gang_job("train", "gang", port, ALL_REDUCE, 2)], namespace)

    with GangKubelet(cluster, namespace, tmp_path) as kubelet:
        outcome = wait_for(
            lambda: job_outcome(cluster, "train", namespace), timeout=240, what="the Job to end"
        )
        assert outcome == "Complete", explain(kubelet)
        executions = {e.pod: e for e in kubelet.executions}

    pods = job_pods(cluster, "train", namespace)
    assert sorted(pods) == [0, 1]
    addresses = set()
    results: dict[int, dict[str, Any]] = {}
    for index, pod in pods.items():
        name = pod["metadata"]["name"]
        assert executions[name].exit_code == 0, executions[name].stderr
        assert pod["status"]["phase"] == "Succeeded"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        result = json.loads(terminated["message"])
        # Two nodes of two processes each: ranks 0..3 summed their rank + 1.
        assert result["sum"] == 1 + 2 + 3 + 4 and result["world"] == 4, result
        assert result["node"] == index
        assert result["host"] == pod["spec"]["hostname"] == f"train-{index}"
        # The pod's own name resolves to its loopback address, which its status and the downward API show.
        assert result["address"] == result["pod_ip"] == pod["status"]["podIP"], result
        assert pod["status"]["podIPs"] == [{"ip": result["address"]}]
        assert result["address"].startswith("127.") and result["address"] != "127.0.0.1"
        addresses.add(result["address"])
        results[index] = result
    assert len(addresses) == 2
    # gloo's connections run to the pods' own addresses (each process listens at the address its host name
    # resolves to; the dialling end is 127.0.0.1, the kernel's source address on loopback), and a process of
    # one pod dialled the other pod's address.
    connections = results[0]["connections"]
    assert {end for _, *ends in connections for end in ends} <= addresses | {"127.0.0.1"}, connections
    assert any(remote == results[1 - node]["address"] for node, _, remote in connections), connections


def test_a_killed_worker_fails_the_gang_and_the_deleted_pods_program_is_killed(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    cluster.apply([headless_service("gang"), gang_job("crash", "gang", port, JOIN_AND_WAIT, 1)], namespace)

    with GangKubelet(cluster, namespace, tmp_path) as kubelet:

        def both() -> dict[int, dict[str, Any]] | None:
            found = job_pods(cluster, "crash", namespace)
            return found if len(found) == 2 else None

        pods = wait_for(both, timeout=60, what="both pods of the gang")
        names = {index: pod["metadata"]["name"] for index, pod in pods.items()}
        for name in names.values():
            wait_for(
                functools.partial(joined, cluster, namespace, name), timeout=120, what=f"pod {name} to join"
            )
        survivor = kubelet.running(names[0])
        # The sandbox, torchrun (the pod's program), and the worker torchrun started.
        agent = survivor.main_pid()
        survivor_pids = [survivor.sandbox_pid, agent, *children(agent)]
        assert len(survivor_pids) == 3, survivor_pids

        kubelet.kill(names[1])

        crashed = kubelet.finished(names[1], timeout=60)
        assert crashed.exit_code == 137, crashed.stderr
        status = cluster.get("pod", names[1], namespace)["status"]
        assert status["phase"] == "Failed"
        assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
        assert (
            wait_for(lambda: job_outcome(cluster, "crash", namespace), timeout=60, what="the Job") == "Failed"
        )
        # The Job controller deletes the rest of the gang; the kubelet kills what the deleted pod ran.
        stopped = kubelet.finished(names[0], timeout=60)
        assert stopped.exit_code == STOPPED
        assert all(pid is not None and not os.path.exists(f"/proc/{pid}") for pid in survivor_pids)
        wait_for(
            lambda: not job_pods(cluster, "crash", namespace).get(0), timeout=30, what="index 0's pod gone"
        )

        # The gang again, as a new Job (new pods, as a restart makes them): the same kubelet runs it through.
        cluster.apply(gang_job("crash-again", "gang", port, ALL_REDUCE, 1), namespace)
        outcome = wait_for(
            lambda: job_outcome(cluster, "crash-again", namespace), timeout=240, what="the new Job to end"
        )
        assert outcome == "Complete", explain(kubelet)
    for pod in job_pods(cluster, "crash-again", namespace).values():
        result = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
        assert result["sum"] == 1 + 2 and result["world"] == 2, result
