"""Installing with kustomize: the base and its overlays render what they promise, the real API server
accepts each of them, an applied overlay runs (on kwok's nodes: the operator's pods run nothing here), and
the base grants the same RBAC as the Helm chart.

The CRDs and the admission policy that the kustomizations hold are the suite's own (conftest installs them,
other tests need them): cleaning up after a real apply leaves them in place."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import check_statuses
from e2e.harness import (
    ROOT,
    Cluster,
    apply_quickstart_until_ready,
    refusals,
    running_operator,
    token_kubeconfig,
    wait_for,
)

MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS
SINGLE_NAMESPACE = MANIFESTS / "overlays" / "single-namespace"
HA = MANIFESTS / "overlays" / "ha"
KUSTOMIZATIONS = {"base": BASE, "single-namespace": SINGLE_NAMESPACE, "ha": HA}
DETECTOR = MANIFESTS / "detector"
PEERING_CRDS = HA / "peering-crds.yaml"
CHART = ROOT / "charts" / "modelloop"

SYSTEM_NAMESPACE = "modelloop-system"
WATCHED_NAMESPACE = "ml"  # the single-namespace overlay's `namespace:`
OPERATOR_LABELS = {"app.kubernetes.io/name": "modelloop", "app.kubernetes.io/component": "operator"}
# Installed by conftest for the whole suite: a real apply here must not take them away.
SHARED_KINDS = {
    "CustomResourceDefinition",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
# conftest applied the admission policy client-side: a server-side apply of it (the same policy) takes over
# its fields, which server-side apply calls a conflict until forced. A fresh cluster needs no force.
APPLY = ("apply", "--server-side", "--force-conflicts")

Object = dict[str, Any]


def render(cluster: Cluster, folder: Path) -> list[Object]:
    """``kubectl kustomize`` of a folder, as objects."""
    output = cluster.kubectl("kustomize", str(folder)).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(objects: Iterable[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def manifests(*paths: Path) -> list[Object]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def squeezed(value: Any) -> Any:
    """``value`` with every run of whitespace in its strings made one space."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, Mapping):
        return {k: squeezed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [squeezed(v) for v in value]
    return value


def key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(operator)


def env_of(deployment: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment).get("env", [])}


def install_peering_kinds(cluster: Cluster) -> None:
    """kopf's peering kinds, which the HA overlay's ClusterKopfPeering needs served (as its comment says)."""
    cluster.kubectl(*APPLY, "-f", str(PEERING_CRDS))
    wait_for(
        lambda: cluster.kubectl("get", "clusterkopfpeerings", check=False).returncode == 0,
        timeout=30,
        what="the ClusterKopfPeering kind to be served",
    )


def ensure_namespace(cluster: Cluster, name: str) -> None:
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)


def remove(cluster: Cluster, objects: Sequence[Object], namespaces: Sequence[str] = ()) -> None:
    """Delete what a real apply made, except what the suite shares, and wait until it is gone."""
    own = [o for o in objects if o["kind"] not in SHARED_KINDS]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": own})
    cluster.kubectl("delete", "--ignore-not-found", "--wait", "-f", "-", input=listing, timeout=120)
    for namespace in namespaces:
        cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait", timeout=120)


def can_i(cluster: Cluster, user: str, verb: str, resource: str, *where: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, "--as", user, *where, check=False)
    return result.stdout.strip() == "yes"


# --- what each kustomization renders ----------------------------------------------------------------


def test_the_base_renders_exactly_the_crds_the_operator_and_the_admission_policy(cluster: Cluster) -> None:
    rendered = render(cluster, BASE)

    sources = manifests(
        *sorted((ROOT / "crds").glob("*.yaml")),
        MANIFESTS / "operator" / "rbac.yaml",
        MANIFESTS / "operator" / "deployment.yaml",
        MANIFESTS / "operator" / "user-roles.yaml",
        *sorted((MANIFESTS / "admission").glob("*.yaml")),
    )
    assert sorted(map(key, rendered)) == sorted(map(key, sources))
    # Nothing added, nothing changed: the base is the manifests as they are (kustomize re-emits a folded
    # YAML string with a blank line more, which changes no CEL expression: whitespace is compared aside).
    assert sorted(map(squeezed, rendered), key=key) == sorted(map(squeezed, sources), key=key)


def test_the_single_namespace_overlay_runs_the_operator_in_the_namespace_it_watches(cluster: Cluster) -> None:
    rendered = render(cluster, SINGLE_NAMESPACE)

    namespaced = [o for o in rendered if o["kind"] not in {"CustomResourceDefinition", "ClusterRole"}]
    for obj in namespaced:
        if obj["kind"] in {"ClusterRoleBinding", *SHARED_KINDS}:
            assert "namespace" not in obj["metadata"], key(obj)
        else:
            assert obj["metadata"]["namespace"] == WATCHED_NAMESPACE, key(obj)
    assert not by_kind(rendered, "Namespace"), "the namespace is the user's: the overlay must not own it"
    deployment = by_kind(rendered, "Deployment")["modelloop-operator"]
    assert container(deployment)["args"] == ["run"]
    assert env_of(deployment)["MODELLOOP_NAMESPACES"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The operator's rules in its namespace only; cluster-wide, only kopf's discovery reads.
    [binding] = by_kind(rendered, "RoleBinding").values()
    assert binding["roleRef"]["name"] == "modelloop-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelloop", "namespace": "ml"}]
    cluster_bindings = by_kind(rendered, "ClusterRoleBinding")
    assert list(cluster_bindings) == ["modelloop-operator-discovery.ml"]
    discovery = by_kind(rendered, "ClusterRole")["modelloop-operator-discovery"]
    assert {verb for rule in discovery["rules"] for verb in rule["verbs"]} == {"list", "watch"}


def test_the_ha_overlay_runs_two_replicas_with_peering_spread_and_a_disruption_budget(
    cluster: Cluster,
) -> None:
    rendered = render(cluster, HA)

    deployment = by_kind(rendered, "Deployment")["modelloop-operator"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = env_of(deployment)
    assert env["MODELLOOP_PEERING"] == "modelloop"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # how kopf names each replica
    assert "--all-namespaces" in container(deployment)["args"]  # a cluster-wide operator: ClusterKopfPeering
    pod = spec["template"]["spec"]
    [anti] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == OPERATOR_LABELS
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert list(by_kind(rendered, "ClusterKopfPeering")) == ["modelloop"]
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= set(
        by_kind(rendered, "CustomResourceDefinition")
    )
    budget = by_kind(rendered, "PodDisruptionBudget")["modelloop-operator"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()


def pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


# --- the real API server ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_api_server_accepts_every_kustomization(cluster: Cluster, name: str) -> None:
    folder = KUSTOMIZATIONS[name]
    # What each install's instructions ask for first: the user's namespace; the peering kinds for HA. A
    # server-side dry run makes no namespace, so the base's own must exist for its objects' dry run.
    ensure_namespace(cluster, WATCHED_NAMESPACE if name == "single-namespace" else SYSTEM_NAMESPACE)
    if name == "ha":
        install_peering_kinds(cluster)

    result = cluster.kubectl(*APPLY, "--dry-run=server", "-k", str(folder), check=False)

    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(render(cluster, folder)), result.stdout


@pytest.fixture
def applied_ha(cluster: Cluster) -> Iterator[list[Object]]:
    """The HA overlay really applied; everything it made but the suite's shared kinds removed after."""
    objects = render(cluster, HA)
    install_peering_kinds(cluster)
    try:
        cluster.kubectl(*APPLY, "-k", str(HA), timeout=120)
        yield objects
    finally:
        remove(cluster, objects)


def test_the_applied_ha_overlay_runs_two_ready_replicas_under_a_disruption_budget(
    cluster: Cluster, applied_ha: list[Object]
) -> None:
    deployment = wait_for(
        lambda: (
            d
            if (d := cluster.get("deployment", "modelloop-operator", SYSTEM_NAMESPACE))["status"].get(
                "availableReplicas"
            )
            == 2
            else None
        ),
        timeout=60,
        what="two available operator replicas",
    )
    assert env_of(deployment)["MODELLOOP_PEERING"] == "modelloop"
    budget = wait_for(
        lambda: (
            b
            if (b := cluster.get("pdb", "modelloop-operator", SYSTEM_NAMESPACE))
            .get("status", {})
            .get("currentHealthy")
            == 2
            else None
        ),
        timeout=60,
        what="the disruption budget to count both replicas",
    )
    assert budget["status"]["disruptionsAllowed"] == 1  # one replica may go, never both
    assert cluster.get("clusterkopfpeering", "modelloop")["metadata"]["name"] == "modelloop"
    assert cluster.get("serviceaccount", "modelloop", SYSTEM_NAMESPACE)
    binding = cluster.get("clusterrolebinding", "modelloop-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelloop", "namespace": SYSTEM_NAMESPACE}
    ]
    assert can_i(
        cluster,
        f"system:serviceaccount:{SYSTEM_NAMESPACE}:modelloop",
        "patch",
        "clusterkopfpeerings.kopf.dev",
    )


@pytest.fixture
def applied_single_namespace(cluster: Cluster) -> Iterator[list[Object]]:
    """The single-namespace overlay really applied into its (pre-existing) namespace; removed after,
    with the namespace."""
    objects = render(cluster, SINGLE_NAMESPACE)
    ensure_namespace(cluster, WATCHED_NAMESPACE)
    try:
        cluster.kubectl(*APPLY, "-k", str(SINGLE_NAMESPACE), timeout=120)
        yield objects
    finally:
        try:
            check_statuses(cluster, WATCHED_NAMESPACE)
        finally:
            remove(cluster, objects, namespaces=[WATCHED_NAMESPACE])


@pytest.mark.usefixtures("applied_single_namespace")
def test_the_single_namespace_overlays_rbac_is_enough_in_its_namespace_and_nothing_outside(
    cluster: Cluster, tmp_path: Path
) -> None:
    account = f"system:serviceaccount:{WATCHED_NAMESPACE}:modelloop"
    token = cluster.kubectl("create", "token", "modelloop", "-n", WATCHED_NAMESPACE).stdout.strip()
    kubeconfig = token_kubeconfig(cluster, token, tmp_path / "kubeconfig")
    log = tmp_path / "operator.log"

    # The operator watching its own namespace, as the Deployment has it, with exactly its ServiceAccount's
    # rights.
    with running_operator(cluster, WATCHED_NAMESPACE, log, kubeconfig=kubeconfig):
        apply_quickstart_until_ready(cluster, WATCHED_NAMESPACE)

    text = log.read_text()
    assert refusals(text) == [], text[-5000:]
    assert can_i(cluster, account, "create", "jobs.batch", "-n", WATCHED_NAMESPACE)
    assert not can_i(cluster, account, "create", "jobs.batch", "-n", "default")
    assert not can_i(cluster, account, "list", "trainingruns.modelloop.dev", "-A")
    assert not can_i(cluster, account, "get", "secrets", "-n", WATCHED_NAMESPACE)


# --- a team's drift detector (manifests/detector) -----------------------------------------------------


def team_detector(folder: Path, namespace: str) -> Path:
    """A team's kustomization of the detector, as manifests/detector/kustomization.yaml's comment has it."""
    folder.mkdir(parents=True)
    spec = {
        "namespace": namespace,
        "resources": [os.path.relpath(DETECTOR, folder)],
        "replacements": [
            {
                "source": {
                    "kind": "ServiceAccount",
                    "name": "modelloop-detector",
                    "fieldPath": "metadata.namespace",
                },
                "targets": [
                    {
                        "select": {
                            "kind": "ClusterRoleBinding",
                            "name": "modelloop-detector-auth-delegator.NAMESPACE",
                        },
                        "fieldPaths": ["metadata.name"],
                        "options": {"delimiter": ".", "index": 1},
                    }
                ],
            }
        ],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_two_teams_detectors_each_authenticate_callers_as_their_own_account(
    cluster: Cluster, tmp_path: Path
) -> None:
    teams = [f"t-det-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    rendered = {team: render(cluster, team_detector(tmp_path / team, team)) for team in teams}
    for team in teams:
        ensure_namespace(cluster, team)
    try:
        for team in teams:
            cluster.kubectl(*APPLY, "-k", str(tmp_path / team), timeout=120)
        for team in teams:
            deployment = by_kind(rendered[team], "Deployment")["modelloop-detector"]
            assert env_of(deployment)["MODELLOOP_DETECTOR_AUTH"] == "kubernetes"
            pod = deployment["spec"]["template"]["spec"]
            assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (
                "modelloop-detector",
                True,
            )
            # Each team's binding is its own: the second apply did not take the first one's over.
            binding = cluster.get("clusterrolebinding", f"modelloop-detector-auth-delegator.{team}")
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": "modelloop-detector", "namespace": team}
            ]
            account = f"system:serviceaccount:{team}:modelloop-detector"
            assert can_i(cluster, account, "create", "tokenreviews.authentication.k8s.io")
            assert can_i(cluster, account, "create", "subjectaccessreviews.authorization.k8s.io")
            assert not can_i(cluster, account, "get", "secrets", "-n", team)
            assert not can_i(cluster, account, "list", "inferenceservices.modelloop.dev", "-n", team)
    finally:
        for team in teams:
            remove(cluster, rendered[team], namespaces=[team])


def test_a_detector_applied_without_kustomizes_namespace_gets_no_binding(cluster: Cluster) -> None:
    # kubectl's -n does not reach a ClusterRoleBinding's subject: the API server refuses the binding rather
    # than bind an account of another namespace.
    ensure_namespace(cluster, "default")
    result = cluster.kubectl(*APPLY, "--dry-run=server", "-k", str(DETECTOR), "-n", "default", check=False)
    assert result.returncode != 0
    assert "subjects[0].namespace" in result.stderr, result.stderr


# --- the base and the Helm chart ----------------------------------------------------------------------


def helm() -> Path:
    """The helm binary that hack/build-helm.sh builds, or a skip that says what is missing."""
    if not (CHART / "Chart.yaml").exists():
        pytest.skip("charts/modelloop does not exist yet")
    script = ROOT / "hack" / "build-helm.sh"
    if not script.exists():
        pytest.skip("hack/build-helm.sh does not exist yet")
    folder = subprocess.run(["bash", str(script), "--print-dir"], capture_output=True, text=True, check=False)
    binary = Path(folder.stdout.strip()) / "helm"
    if folder.returncode != 0 or not binary.is_file():
        pytest.skip(f"helm is not built: run `bash hack/build-helm.sh` ({binary} is missing)")
    return binary


def permissions(objects: Iterable[Object]) -> set[tuple[str, str, str, str]]:
    """Every (API group, resource, verb, resource name) the ClusterRoles grant, rule by rule expanded: two
    roles grant the same when these sets are equal, however their rules are grouped or ordered."""
    granted = set()
    for role in objects:
        if role["kind"] != "ClusterRole":
            continue
        for rule in role.get("rules") or ():
            assert not rule.get("nonResourceURLs"), rule
            for group in rule.get("apiGroups") or ():
                for resource in rule.get("resources") or ():
                    for verb in rule.get("verbs") or ():
                        for name in rule.get("resourceNames") or ("*",):
                            granted.add((group, resource, verb, name))
    return granted


def test_the_base_and_the_helm_chart_grant_the_operator_the_same_rbac(cluster: Cluster) -> None:
    binary = helm()
    chart = subprocess.run(
        [str(binary), "template", "modelloop", str(CHART), "--namespace", SYSTEM_NAMESPACE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert chart.returncode == 0, chart.stderr
    from_chart = [doc for doc in yaml.safe_load_all(chart.stdout) if doc]

    from_base = render(cluster, BASE)

    assert permissions(from_base), "the base renders no ClusterRole"
    assert permissions(from_chart) == permissions(from_base), (
        f"only in the chart: {sorted(permissions(from_chart) - permissions(from_base))}; "
        f"only in the base: {sorted(permissions(from_base) - permissions(from_chart))}"
    )
