"""People's rights on modelloop's kinds through Kubernetes' own `view`, `edit` and `admin` roles, on the
real API server: modelloop's aggregated ClusterRoles (manifests/operator/user-roles.yaml, and the chart's
copy of them) are folded into those roles by kube-controller-manager's clusterrole-aggregation controller,
and real users (the admin impersonating them, as `kubectl --as` does) bound to them by a RoleBinding in one
namespace may do there what the role says, and nothing in another namespace."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import QUICKSTART, QUICKSTART_OBJECTS, ROOT, Cluster, wait_for
from modelloop.api import GROUP, KINDS

USER_ROLES = ROOT / "manifests" / "operator" / "user-roles.yaml"
CHART = ROOT / "charts" / "modelloop"
HELM_DIR = subprocess.run(
    [str(ROOT / "hack" / "build-helm.sh"), "--print-dir"], capture_output=True, text=True, check=True
).stdout.strip()
HELM = Path(HELM_DIR) / "helm"
RESOURCES = [f"{info.plural}.{GROUP}" for info in KINDS]
VIEWER, EDITOR, ADMIN = "ml-viewer", "ml-editor", "ml-admin"
CLUSTER_VIEWER = "ml-cluster-viewer"


def user_roles(source: str) -> list[dict[str, Any]]:
    """The aggregated ClusterRoles as kustomize installs them (the manifest), or as the chart does."""
    if source == "kustomize":
        text = USER_ROLES.read_text()
    else:
        if not HELM.exists():
            pytest.skip("helm is not built: run hack/build-helm.sh")
        text = subprocess.run(
            [str(HELM), "template", "mlu", str(CHART), "--show-only", "templates/user-roles.yaml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def aggregated(cluster: Cluster, role: str) -> bool:
    """Whether Kubernetes' ClusterRole ``role`` has gained modelloop's rules."""
    rules = cluster.get("clusterrole", role).get("rules") or []
    return any(GROUP in (rule.get("apiGroups") or []) for rule in rules)


def roles_listing(roles: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": roles})


@pytest.fixture(params=["kustomize", "helm"])
def installed_user_roles(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """modelloop's aggregated ClusterRoles applied (from the manifests, or rendered by the chart), and
    folded into view, edit and admin; deleted after, and their rules gone from those roles again."""
    roles = user_roles(request.param)
    cluster.kubectl("apply", "-f", "-", input=roles_listing(roles))
    try:
        for role in ("view", "edit", "admin"):
            wait_for(
                lambda r=role: aggregated(cluster, r),
                timeout=30,
                what=f"modelloop's rules in the {role} ClusterRole (kube-controller-manager's "
                "clusterrole-aggregation controller)",
            )
        yield request.param
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=roles_listing(roles))
        for role in ("view", "edit", "admin"):
            wait_for(lambda r=role: not aggregated(cluster, r), timeout=30, what=f"{role} without modelloop")


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def people(cluster: Cluster, namespace: str) -> None:
    """A viewer, an editor and an admin of the test's namespace, bound there by RoleBindings to
    Kubernetes' own roles (the bindings go with the namespace)."""
    for user, role in ((VIEWER, "view"), (EDITOR, "edit"), (ADMIN, "admin")):
        cluster.kubectl(
            "create", "rolebinding", user, f"--clusterrole={role}", f"--user={user}", "-n", namespace
        )


def as_user(
    cluster: Cluster, user: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl as ``user``: the admin's credentials with the Impersonate-User header."""
    return cluster.kubectl(*args, "--as", user, input=input, check=False)


def can_i(cluster: Cluster, user: str, verb: str, resource: str, *where: str) -> bool:
    return as_user(cluster, user, "auth", "can-i", verb, resource, *where).stdout.strip() == "yes"


def forbidden(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "Forbidden" in result.stderr


def test_without_modelloops_roles_a_viewer_may_not_list_its_kinds(
    cluster: Cluster, namespace: str, people: None
) -> None:
    # What the finding saw: Kubernetes' view role alone knows nothing of modelloop's kinds.
    assert not aggregated(cluster, "view")
    for resource in RESOURCES:
        assert forbidden(as_user(cluster, VIEWER, "get", resource, "-n", namespace)), resource


@pytest.mark.usefixtures("installed_user_roles", "people")
def test_a_viewer_reads_every_kind_in_its_namespace_and_nothing_elsewhere(
    cluster: Cluster, namespace: str, other_namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))

    for resource in RESOURCES:
        listed = as_user(cluster, VIEWER, "get", resource, "-n", namespace, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["items"], resource
        assert can_i(cluster, VIEWER, "watch", resource, "-n", namespace)
        assert can_i(cluster, VIEWER, "get", resource, "--subresource=status", "-n", namespace)
        assert forbidden(as_user(cluster, VIEWER, "get", resource, "-n", other_namespace)), resource
        assert forbidden(as_user(cluster, VIEWER, "get", resource, "-A")), resource
    for resource, name in QUICKSTART_OBJECTS:
        shown = as_user(cluster, VIEWER, "get", resource, name, "-n", namespace)
        assert shown.returncode == 0, shown.stderr
    # `kubectl get modelloop`: the category lists all five kinds.
    category = as_user(cluster, VIEWER, "get", "modelloop", "-n", namespace, "-o", "name")
    assert category.returncode == 0, category.stderr
    assert len(category.stdout.split()) == len(QUICKSTART_OBJECTS)


@pytest.mark.usefixtures("installed_user_roles", "people")
def test_a_viewer_may_not_create_change_steer_or_write_status(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))

    created = as_user(cluster, VIEWER, "create", "-n", namespace, "-f", "-", input=renamed_quickstart("v"))
    assert forbidden(created), created.stderr
    # A rollout action (what `modelloop rollout promote` does) is a patch of the InferenceService.
    promote = as_user(
        cluster,
        VIEWER,
        *("annotate", "inferenceservice.modelloop.dev", "iris", "-n", namespace),
        "modelloop.dev/rollout-action=promote@20260101T000000.000000Z",
    )
    assert forbidden(promote), promote.stderr
    for resource in RESOURCES:
        for verb in ("create", "update", "patch", "delete", "deletecollection"):
            assert not can_i(cluster, VIEWER, verb, resource, "-n", namespace), (verb, resource)
        assert not can_i(cluster, VIEWER, "patch", resource, "--subresource=status", "-n", namespace)
    status = as_user(
        cluster,
        VIEWER,
        *("patch", "trainingrun", "iris-rf", "-n", namespace, "--subresource=status", "--type=merge"),
        *("-p", '{"status": {"phase": "Succeeded"}}'),
    )
    assert forbidden(status), status.stderr


@pytest.mark.usefixtures("installed_user_roles", "people")
def test_an_editor_creates_changes_steers_and_deletes_in_its_namespace_only(
    cluster: Cluster, namespace: str, other_namespace: str
) -> None:
    created = as_user(cluster, EDITOR, "create", "-n", namespace, "-f", str(QUICKSTART))
    assert created.returncode == 0, created.stderr
    # The API server recorded the editor (impersonated) as who registered the ModelVersion.
    version = cluster.get("modelversion", "iris-v1", namespace)
    assert version["metadata"]["annotations"]["modelloop.dev/registered-by"] == EDITOR

    elsewhere = as_user(cluster, EDITOR, "create", "-n", other_namespace, "-f", str(QUICKSTART))
    assert forbidden(elsewhere), elsewhere.stderr
    assert cluster.get("trainingruns", namespace=other_namespace)["items"] == []

    promote = as_user(
        cluster,
        EDITOR,
        *("annotate", "inferenceservice.modelloop.dev", "iris", "-n", namespace),
        "modelloop.dev/rollout-action=promote@20260101T000000.000000Z",
    )
    assert promote.returncode == 0, promote.stderr
    # Status is the operator's: not even an editor writes it.
    status = as_user(
        cluster,
        EDITOR,
        *("patch", "trainingrun", "iris-rf", "-n", namespace, "--subresource=status", "--type=merge"),
        *("-p", '{"status": {"phase": "Succeeded"}}'),
    )
    assert forbidden(status), status.stderr

    for user in (EDITOR, ADMIN):
        for resource in RESOURCES:
            for verb in ("create", "update", "patch", "delete", "deletecollection"):
                assert can_i(cluster, user, verb, resource, "-n", namespace), (user, verb, resource)
                assert not can_i(cluster, user, verb, resource, "-n", other_namespace), (user, verb, resource)
    deleted = as_user(cluster, ADMIN, "delete", "driftpolicy", "iris-drift", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr


OPERATOR_RBAC = ROOT / "manifests" / "operator" / "rbac.yaml"
DRIFT = ("inferenceservices.modelloop.dev", "--subresource=drift")
FEEDBACK = ("inferenceservices.modelloop.dev", "--subresource=feedback")


@pytest.fixture
def operator_account(cluster: Cluster, namespace: str) -> Iterator[str]:
    """An account with exactly the operator's ClusterRole (manifests/operator/rbac.yaml), bound cluster-wide
    as the base binds it; the role and binding (named for the test) deleted after."""
    (role,) = [d for d in yaml.safe_load_all(OPERATOR_RBAC.read_text()) if d and d["kind"] == "ClusterRole"]
    name = f"modelloop-operator-{uuid.uuid4().hex[:6]}"
    role["metadata"] = {"name": name}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "modelloop", "namespace": namespace}],
    }
    listing = roles_listing([role, binding])
    cluster.kubectl("apply", "-f", "-", input=listing)
    try:
        yield f"system:serviceaccount:{namespace}:modelloop"
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=listing)


@pytest.mark.usefixtures("installed_user_roles", "people")
def test_on_the_detector_editors_post_labels_in_their_namespace_and_only_the_operator_registers(
    cluster: Cluster, namespace: str, other_namespace: str, operator_account: str
) -> None:
    # What the drift detector asks the API server (a SubjectAccessReview, as `kubectl auth can-i` does)
    # before it takes a label (feedback, create) or a registration or export (drift, update).
    for user in (EDITOR, ADMIN):
        assert can_i(cluster, user, "create", *FEEDBACK, "-n", namespace), user
        assert not can_i(cluster, user, "create", *FEEDBACK, "-n", other_namespace), user
        assert can_i(cluster, user, "get", *DRIFT, "-n", namespace), user
        assert not can_i(cluster, user, "get", *DRIFT, "-n", other_namespace), user
        assert not can_i(cluster, user, "update", *DRIFT, "-n", namespace), user
    assert can_i(cluster, VIEWER, "get", *DRIFT, "-n", namespace)
    assert not can_i(cluster, VIEWER, "create", *FEEDBACK, "-n", namespace)
    assert not can_i(cluster, VIEWER, "update", *DRIFT, "-n", namespace)
    # The operator registers and exports in every namespace; it never posts labels.
    for where in (namespace, other_namespace):
        assert can_i(cluster, operator_account, "update", *DRIFT, "-n", where), where
        assert can_i(cluster, operator_account, "get", *DRIFT, "-n", where), where
        assert not can_i(cluster, operator_account, "create", *FEEDBACK, "-n", where), where


@pytest.mark.usefixtures("installed_user_roles")
def test_a_cluster_wide_viewer_lists_every_kind_in_all_namespaces(cluster: Cluster, namespace: str) -> None:
    binding = f"{CLUSTER_VIEWER}-{namespace}"
    cluster.kubectl("create", "clusterrolebinding", binding, "--clusterrole=view", f"--user={CLUSTER_VIEWER}")
    try:
        for resource in RESOURCES:
            listed = as_user(cluster, CLUSTER_VIEWER, "get", resource, "-A")
            assert listed.returncode == 0, listed.stderr
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")


def renamed_quickstart(suffix: str) -> str:
    """The quickstart's objects under new names, to create beside the applied ones."""
    objects = [doc for doc in yaml.safe_load_all(QUICKSTART.read_text()) if doc]
    for obj in objects:
        obj["metadata"]["name"] += f"-{suffix}"
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
