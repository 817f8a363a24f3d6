"""The operator, started as its own process the way a user starts it, reports on what it watches."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Cluster, condition, wait_for, wait_for_event
from modelloop.kube import KubeClient, PreflightError

QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"

# What the foundation's operator says of each valid kind: (resource, name, phase, Ready status, reason).
# TrainingRun, the registry and InferenceService have their own tests (test_trainingrun.py,
# test_registry.py, test_rollout.py).
EXPECTED = [
    ("modelversion", "iris-v1", "Validated", "True", "ChecksPassed"),
    ("modelpolicy", "iris", "Active", "True", "Active"),
    ("driftpolicy", "iris-drift", "Inconclusive", "Unknown", "Inconclusive"),
]


def status_settled(cluster: Cluster, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object once its status speaks of its current generation, else None."""
    obj: dict[str, Any] = cluster.get(resource, name, namespace)
    status = obj.get("status") or {}
    if status.get("observedGeneration") == obj["metadata"]["generation"] and condition(obj, "Ready"):
        return obj
    return None


@pytest.mark.usefixtures("operator")
@pytest.mark.parametrize(("resource", "name", "phase", "ready", "reason"), EXPECTED)
def test_operator_sets_phase_generation_and_ready_condition(
    cluster: Cluster, namespace: str, resource: str, name: str, phase: str, ready: str, reason: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))

    obj = wait_for(
        lambda: status_settled(cluster, resource, name, namespace), timeout=60, what=f"status of {name}"
    )

    assert obj["status"]["phase"] == phase
    ready_condition = condition(obj, "Ready")
    assert ready_condition is not None
    assert ready_condition["status"] == ready
    assert ready_condition["reason"] == reason
    assert ready_condition["observedGeneration"] == obj["metadata"]["generation"]
    assert ready_condition["lastTransitionTime"].endswith("Z")
    wait_for_event(
        cluster,
        namespace,
        lambda e: e["involvedObject"]["name"] == name and e["reason"] == reason,
        what=f"a {reason} event for {name}",
    )


@pytest.mark.usefixtures("operator")
def test_operator_follows_spec_changes_with_observed_generation(cluster: Cluster, namespace: str) -> None:
    policy = next(d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d["kind"] == "DriftPolicy")
    cluster.apply(policy, namespace)
    wait_for(
        lambda: status_settled(cluster, "driftpolicy", "iris-drift", namespace), timeout=60, what="status"
    )

    policy["spec"]["window"] = "30m"
    cluster.apply(policy, namespace)

    obj = wait_for(
        lambda: status_settled(cluster, "driftpolicy", "iris-drift", namespace), timeout=60, what="status"
    )
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["observedGeneration"] == 2


def test_operator_without_a_reachable_api_server_stops_at_once_with_a_clear_message(
    cluster: Cluster, tmp_path: Any
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "x", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
                "current-context": "x",
            }
        )
    )
    env = {**cluster.env, "KUBECONFIG": str(kubeconfig)}
    modelloop = str(ROOT / ".venv" / "bin" / "modelloop")
    try:
        result = subprocess.run([modelloop, "run", "-A"], env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"operator kept running without an API server: {expired.stdout!r}")
    assert result.returncode != 0
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:1" in result.stderr, result.stderr


def test_preflight_names_the_missing_crds_and_how_to_install_them(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    assert asyncio.run(KubeClient().preflight()).startswith("v1.36")

    with pytest.raises(PreflightError) as raised:
        asyncio.run(KubeClient().preflight(plurals=["trainingruns", "featurestores"]))

    assert "featurestores.modelloop.dev" in str(raised.value)
    assert "trainingruns" not in str(raised.value)
    assert "kubectl apply --server-side -f crds/" in str(raised.value)
