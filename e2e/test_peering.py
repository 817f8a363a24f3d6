"""Several replicas with kopf peering: the one of highest priority handles objects, the others stand by
and take over when it goes away."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import ROOT, Cluster, condition, running_operator, wait_for

PEERING_CRDS = ROOT / "manifests" / "operator" / "peering-crds.yaml"
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"


def drift_policy(name: str) -> dict[str, Any]:
    policy = next(d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d["kind"] == "DriftPolicy")
    policy = copy.deepcopy(policy)
    policy["metadata"]["name"] = name
    return policy


def handled_by(log: Path, name: str) -> bool:
    """Whether the operator writing ``log`` reviewed the DriftPolicy ``name`` (and wrote its status)."""
    return any(f"/{name} is Inconclusive" in line for line in log.read_text().splitlines())


def reported(cluster: Cluster, name: str, namespace: str) -> bool:
    return condition(cluster.get("driftpolicy", name, namespace), "Ready") is not None


PEERING = ("--peering", "modelloop")


def install_peering(cluster: Cluster, namespace: str) -> None:
    """kopf's peering kinds and the namespace's KopfPeering object the replicas share."""
    cluster.kubectl("apply", "-f", str(PEERING_CRDS))
    wait_for(
        lambda: cluster.kubectl("get", "kopfpeerings", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        what="the KopfPeering kind to be served",
    )
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "modelloop"}}, namespace
    )


def test_only_the_highest_priority_replica_acts_and_a_standby_takes_over(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    install_peering(cluster, namespace)
    leader_log, standby_log = tmp_path / "leader.log", tmp_path / "standby.log"

    with running_operator(cluster, namespace, standby_log, extra_args=[*PEERING, "--priority", "100"]):
        with running_operator(cluster, namespace, leader_log, extra_args=[*PEERING, "--priority", "200"]):
            wait_for(lambda: "Pausing" in standby_log.read_text(), timeout=60, what="the standby to pause")
            cluster.apply(drift_policy("first"), namespace)
            wait_for(lambda: reported(cluster, "first", namespace), timeout=60, what="status of first")
            assert wait_for(lambda: handled_by(leader_log, "first"), timeout=10, what="leader's log")
            assert not handled_by(standby_log, "first")

        # The leader left (SIGTERM): the standby resumes and handles what comes next.
        cluster.apply(drift_policy("second"), namespace)
        wait_for(lambda: reported(cluster, "second", namespace), timeout=90, what="status of second")
        assert handled_by(standby_log, "second")


def test_the_standby_takes_over_a_training_run_mid_flight_with_no_second_job(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    from e2e.test_trainingrun import jobs_of, phase_is, training_run

    install_peering(cluster, namespace)
    leader_log, standby_log = tmp_path / "leader.log", tmp_path / "standby.log"

    with running_operator(cluster, namespace, standby_log, extra_args=[*PEERING, "--priority", "100"]):
        with running_operator(
            cluster, namespace, leader_log, extra_args=[*PEERING, "--priority", "200"]
        ) as leader:
            wait_for(lambda: "Pausing" in standby_log.read_text(), timeout=60, what="the standby to pause")
            # Held: kwok keeps the pod Running, so the run is mid-flight when the leader dies.
            cluster.apply(training_run("handover", tmp_path), namespace)
            wait_for(lambda: phase_is(cluster, "handover", namespace, "Running"), timeout=60, what="Running")
            assert "TrainingRun" in leader_log.read_text() and "handover" in leader_log.read_text()
            assert "handover" not in standby_log.read_text()
            leader.send_signal(signal.SIGKILL)
            leader.wait()

        # The standby takes over once the dead leader's peering entry expires; the pod now fails, and the
        # standby, not the dead leader, reports it.
        from e2e.kubelet import report_termination

        [pod] = cluster.get("pods", namespace=namespace)["items"]
        report_termination(cluster, pod, 1, "")
        failed = wait_for(
            lambda: phase_is(cluster, "handover", namespace, "Failed"),
            timeout=120,
            what="the standby's report",
        )
        assert failed["jobName"] == jobs_of(cluster, "handover", namespace)[0]["metadata"]["name"]
        assert "TrainingRun" in standby_log.read_text() and "handover is Failed" in standby_log.read_text()

    assert len(jobs_of(cluster, "handover", namespace)) == 1


def test_a_standby_killed_while_it_takes_over_leaves_the_run_to_the_next_replica_with_no_second_job(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The leader dies mid-run; the standby, as it takes over, dies too (SIGKILL); a replica started again
    takes over from what the API server holds, and the run still has one Job and one report."""
    from e2e.kubelet import report_termination
    from e2e.test_trainingrun import jobs_of, phase_is, training_run

    install_peering(cluster, namespace)
    logs = {name: tmp_path / f"{name}.log" for name in ("leader", "standby", "replacement")}
    # Short peering lifetimes: a dead replica's entry holds the others back for 6 s, not kopf's 60 s.
    fast = {"MODELLOOP_PEERING_LIFETIME": "6"}

    def took_over(log: Path) -> bool:
        return "active: no peer of higher priority" in log.read_text()

    with running_operator(
        cluster, namespace, logs["standby"], extra_args=[*PEERING, "--priority", "100"], env=fast
    ) as standby:
        with running_operator(
            cluster, namespace, logs["leader"], extra_args=[*PEERING, "--priority", "200"], env=fast
        ) as leader:
            wait_for(
                lambda: "Pausing" in logs["standby"].read_text(), timeout=60, what="the standby to pause"
            )
            cluster.apply(training_run("handover", tmp_path), namespace)
            wait_for(lambda: phase_is(cluster, "handover", namespace, "Running"), timeout=60, what="Running")
            assert "handover" not in logs["standby"].read_text()
            leader.send_signal(signal.SIGKILL)
            leader.wait()
        # The standby takes over once the leader's entry expires, and dies at that moment.
        wait_for(lambda: took_over(logs["standby"]), timeout=60, what="the standby to take over")
        standby.send_signal(signal.SIGKILL)
        standby.wait()
    with running_operator(
        cluster, namespace, logs["replacement"], extra_args=[*PEERING, "--priority", "100"], env=fast
    ):
        # Its own dead predecessor, of the same priority, holds it back until that entry expires.
        wait_for(lambda: took_over(logs["replacement"]), timeout=60, what="the replacement to take over")
        [pod] = cluster.get("pods", namespace=namespace)["items"]
        report_termination(cluster, pod, 1, "")
        wait_for(
            lambda: phase_is(cluster, "handover", namespace, "Failed"),
            timeout=60,
            what="the replacement's report",
        )
        assert "handover is Failed" in logs["replacement"].read_text()
    assert len(jobs_of(cluster, "handover", namespace)) == 1
