"""The operator works with exactly the RBAC it ships, and that RBAC grants nothing it does not need; the
chart's operator watching some namespaces has its rights there and only there, and keeps working where it
is refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import (
    QUICKSTART,
    QUICKSTART_OBJECTS,
    ROOT,
    Cluster,
    apply_quickstart_until_ready,
    free_port,
    refusals,
    running_operator,
    token_kubeconfig,
    wait_for,
)
from e2e.test_helm import CHART, Helm, chart_pod, pod_token_kubeconfig, running_as_pod, values_file

RBAC = ROOT / "manifests" / "operator" / "rbac.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:modelloop-system:modelloop"


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount, bound by the shipped RBAC."""
    cluster.kubectl("create", "namespace", "modelloop-system", check=False)
    cluster.kubectl("apply", "-f", str(RBAC))
    token = cluster.kubectl("create", "token", "modelloop", "-n", "modelloop-system").stdout.strip()
    return token_kubeconfig(cluster, token, tmp_path_factory.mktemp("rbac") / "kubeconfig")


def can_i_as(cluster: Cluster, user: str, verb: str, resource: str, *where: str) -> bool:
    """``kubectl auth can-i`` as ``user``: a SubjectAccessReview of the API server."""
    result = cluster.kubectl("auth", "can-i", verb, resource, "--as", user, *where, check=False)
    return result.stdout.strip() == "yes"


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


# --- the chart watching some namespaces: its rights there, and only there -----------------------------


@pytest.fixture
def chart_release(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[Helm, str, str]]:
    """The chart installed in a namespace of its own, its operator watching the test's namespace
    (`operator.watchNamespaces`); the CRDs and the admission policies stay the suite's. Yields helm, the
    release's name and its namespace; uninstalled after."""
    helm = Helm(cluster, tmp_path / "helm")
    release, release_namespace = f"mlr-{uuid.uuid4().hex[:6]}", f"h-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", release_namespace)
    values = {
        "operator": {"watchNamespaces": [namespace], "healthPort": free_port()},
        "metrics": {"port": free_port()},
        "crds": {"install": False},
        "admission": {"registeredBy": {"enabled": False}, "freeFormBounds": {"enabled": False}},
        "rbac": {"aggregateRoles": False},
    }
    helm(
        "install", release, str(CHART), "-n", release_namespace, "--skip-crds", *values_file(tmp_path, values)
    )
    try:
        yield helm, release, release_namespace
    finally:
        helm("uninstall", release, "-n", release_namespace, check=False)
        cluster.kubectl("delete", "namespace", release_namespace, "--wait=false", check=False)


def test_chart_watching_one_namespace_is_granted_its_rules_there_and_only_discovery_beyond(
    cluster: Cluster, namespace: str, chart_release: tuple[Helm, str, str]
) -> None:
    _, release, release_namespace = chart_release
    account = f"system:serviceaccount:{release_namespace}:{release}-modelloop"
    elsewhere = ("-n", "default")
    assert cluster.get("rolebinding", f"{release}-modelloop-operator", namespace)
    assert cluster.kubectl(
        "get", "clusterrolebinding", f"{release}-modelloop-operator", check=False
    ).returncode
    for verb, resource in [
        ("create", "jobs.batch"),
        ("watch", "trainingruns.modelloop.dev"),
        ("create", "modelversions.modelloop.dev"),
        ("patch", "driftpolicies.modelloop.dev"),
        ("create", "events"),
    ]:
        assert can_i_as(cluster, account, verb, resource, "-n", namespace), (verb, resource)
        assert not can_i_as(cluster, account, verb, resource, *elsewhere), (verb, resource)
    assert can_i_as(
        cluster, account, "patch", "inferenceservices.modelloop.dev", "--subresource=status", "-n", namespace
    )
    for verb, resource in [("list", "trainingruns.modelloop.dev"), ("watch", "jobs.batch"), ("list", "pods")]:
        assert not can_i_as(cluster, account, verb, resource, "-A"), (verb, resource)
    assert not can_i_as(cluster, account, "get", "secrets", "-n", namespace)
    # What kopf reads cluster-wide, read-only.
    assert can_i_as(cluster, account, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i_as(cluster, account, "list", "namespaces")
    assert not can_i_as(cluster, account, "update", "customresourcedefinitions.apiextensions.k8s.io")


def test_chart_operator_reconciles_its_namespace_and_is_refused_in_another(
    cluster: Cluster, namespace: str, chart_release: tuple[Helm, str, str], tmp_path: Path
) -> None:
    _, release, release_namespace = chart_release
    other = f"t-unbound-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", other)
    try:
        cluster.kubectl("apply", "-n", other, "-f", str(QUICKSTART))
        pod = chart_pod(cluster, release, release_namespace)
        kubeconfig = pod_token_kubeconfig(cluster, pod, tmp_path / "kubeconfig")
        log = tmp_path / "operator.log"
        with running_as_pod(pod, kubeconfig, log) as operator:
            wait_for(
                lambda: operator.process.poll() is not None or operator.ready(), timeout=60, what="Ready"
            )
            apply_quickstart_until_ready(cluster, namespace)
            # With the operator's own token, the API server refuses every kind it handles in a namespace
            # the release did not bind it in, reads and writes alike.
            for resource in (
                "trainingruns.modelloop.dev",
                "jobs.batch",
                "inferenceservices.serving.kserve.io",
            ):
                read = cluster.kubectl(
                    "--kubeconfig", str(kubeconfig), "get", resource, "-n", other, check=False
                )
                assert read.returncode != 0 and "Forbidden" in read.stderr, (resource, read.stderr)
            write = cluster.kubectl(
                *("--kubeconfig", str(kubeconfig), "annotate", "trainingrun", "iris-rf", "-n", other),
                "modelloop.dev/touched=yes",
                check=False,
            )
            assert write.returncode != 0 and "Forbidden" in write.stderr, write.stderr
            assert operator.process.poll() is None and operator.ready()
        text = log.read_text()
        assert refusals(text) == [], text[-5000:]
        # The unbound namespace's objects are untouched: no status, no kopf bookkeeping.
        for resource, name in QUICKSTART_OBJECTS:
            obj = cluster.get(resource, name, other)
            assert not obj.get("status"), (resource, obj.get("status"))
            assert not obj["metadata"].get("finalizers"), resource
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_an_operator_told_to_watch_a_namespace_it_is_not_bound_in_watches_the_others_and_says_why(
    cluster: Cluster, namespace: str, chart_release: tuple[Helm, str, str], tmp_path: Path
) -> None:
    """A namespace added to the operator's list but not to the release's RoleBindings (created later, or a
    typo): kopf would retry it, then stop the whole operator. The operator leaves it out, says so, and
    serves the namespaces it may watch."""
    _, release, release_namespace = chart_release
    other = f"t-unbound-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", other)
    try:
        pod = chart_pod(cluster, release, release_namespace)
        (container,) = pod["spec"]["containers"]
        [watched] = [v for v in container["env"] if v["name"] == "MODELLOOP_NAMESPACES"]
        watched["value"] = f"{namespace},{other}"
        kubeconfig = pod_token_kubeconfig(cluster, pod, tmp_path / "kubeconfig")
        log = tmp_path / "operator.log"
        with running_as_pod(pod, kubeconfig, log) as operator:
            wait_for(
                lambda: operator.process.poll() is not None or operator.ready(), timeout=60, what="Ready"
            )
            apply_quickstart_until_ready(cluster, namespace)
            assert operator.process.poll() is None and operator.ready()
        text = log.read_text()
        assert f"not watching namespace {other}: this operator may not list" in text, text[-5000:]
        assert f"not watching namespace {namespace}" not in text
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
