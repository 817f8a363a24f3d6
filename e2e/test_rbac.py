"""The operator works with exactly the RBAC it ships, and that RBAC grants nothing it does not need."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.harness import (
    ROOT,
    Cluster,
    apply_quickstart_until_ready,
    refusals,
    running_operator,
    token_kubeconfig,
)

RBAC = ROOT / "manifests" / "operator" / "rbac.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:modelloop-system:modelloop"


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount, bound by the shipped RBAC."""
    cluster.kubectl("create", "namespace", "modelloop-system", check=False)
    cluster.kubectl("apply", "-f", str(RBAC))
    token = cluster.kubectl("create", "token", "modelloop", "-n", "modelloop-system").stdout.strip()
    return token_kubeconfig(cluster, token, tmp_path_factory.mktemp("rbac") / "kubeconfig")


def can_i(cluster: Cluster, verb: str, resource: str, subresource: str = "") -> bool:
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, "--as", SERVICE_ACCOUNT, "-A", check=False
    )
    return result.stdout.strip() == "yes"


def test_operator_sets_status_with_only_the_shipped_rbac(
    cluster: Cluster, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    with running_operator(cluster, namespace, tmp_path / "operator.log", kubeconfig=operator_kubeconfig):
        apply_quickstart_until_ready(cluster, namespace)
    log = (tmp_path / "operator.log").read_text()
    assert refusals(log) == [], log[-5000:]


@pytest.mark.usefixtures("operator_kubeconfig")
@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "trainingruns.modelloop.dev"),
        ("delete", "modelpolicies.modelloop.dev"),
        ("update", "modelversions.modelloop.dev"),
        ("update", "customresourcedefinitions"),
        ("create", "pods"),
        ("delete", "namespaces"),
        ("delete", "seldondeployments.machinelearning.seldon.io"),
        ("delete", "inferenceservices.serving.kserve.io"),
    ],
)
def test_operator_rbac_grants_nothing_it_does_not_need(cluster: Cluster, verb: str, resource: str) -> None:
    assert not can_i(cluster, verb, resource)


@pytest.mark.usefixtures("operator_kubeconfig")
def test_operator_rbac_grants_status_writes_on_its_kinds(cluster: Cluster) -> None:
    assert can_i(cluster, "patch", "trainingruns.modelloop.dev", "status")
    assert can_i(cluster, "watch", "driftpolicies.modelloop.dev")
