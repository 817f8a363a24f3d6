"""The kustomizations of crds/ and manifests/ name every manifest they should, the HA overlay's copies of
the peering manifests are the originals, and the drift detector's manifests run its released image
securely. (Rendering them and applying them to a real API server is e2e/test_kustomize.py's.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop.api import KINDS
from pod_security import assert_restricted

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The peering manifests are not the operator's base: only the HA overlay has them (as copies).
PEERING = ("peering-crds.yaml", "peering.yaml")
DETECTOR = MANIFESTS / "detector"
DETECTOR_VERSION_FILE = ROOT / "runtimes" / "detector" / "src" / "modelloop_detector" / "version.py"


def kustomization(folder: Path) -> dict[str, Any]:
    [path] = [folder / name for name in KUSTOMIZATION_NAMES if (folder / name).exists()]
    return dict(yaml.safe_load(path.read_text()))


def kustomization_folders() -> list[Path]:
    folders = {p.parent for name in KUSTOMIZATION_NAMES for p in MANIFESTS.rglob(name)}
    return sorted(folders | {ROOT / "crds"})


def test_crds_kustomization_lists_every_generated_crd() -> None:
    listed = kustomization(ROOT / "crds")["resources"]
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(listed) == generated, (
        "crds/Kustomization must list exactly the CRD files in crds/ (after `make crds`, add new ones)"
    )


def test_crds_kustomization_is_invisible_to_kubectl_apply_of_the_folder() -> None:
    # `kubectl apply -f crds/` reads *.yaml, *.yml and *.json: a kustomization there would be applied too.
    assert not [p for p in (ROOT / "crds").iterdir() if p.suffix in (".yml", ".json")]
    assert not (ROOT / "crds" / "kustomization.yaml").exists()


def test_operator_kustomization_lists_the_operators_manifests() -> None:
    folder = MANIFESTS / "operator"
    expected = sorted(p.name for p in folder.glob("*.yaml") if p.name not in PEERING)
    assert sorted(kustomization(folder)["resources"]) == expected


def test_admission_kustomization_lists_every_admission_manifest() -> None:
    folder = MANIFESTS / "admission"
    assert sorted(kustomization(folder)["resources"]) == sorted(p.name for p in folder.glob("*.yaml"))


def test_the_base_is_the_crds_the_operator_and_admission() -> None:
    assert kustomization(MANIFESTS)["resources"] == ["base"]
    assert kustomization(MANIFESTS / "base")["resources"] == ["../../crds", "../operator", "../admission"]


@pytest.mark.parametrize("name", PEERING)
def test_the_ha_overlays_peering_manifests_are_copies_of_the_operators(name: str) -> None:
    copy = MANIFESTS / "overlays" / "ha" / name
    assert copy.read_bytes() == (MANIFESTS / "operator" / name).read_bytes(), (
        f"copy manifests/operator/{name} to manifests/overlays/ha/"
    )


@pytest.mark.parametrize("folder", kustomization_folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_kustomization_names_exists(folder: Path) -> None:
    spec = kustomization(folder)
    named = [*spec.get("resources", []), *spec.get("components", [])]
    named += [p["path"] for p in spec.get("patches", []) if "path" in p]
    named += [f for generator in spec.get("configMapGenerator", []) for f in generator.get("files", [])]
    for entry in named:
        assert (folder / entry).exists(), f"{folder.relative_to(ROOT)} names {entry}, which does not exist"


def detector_objects() -> dict[str, dict[str, Any]]:
    """manifests/detector's objects, by kind."""
    return {
        doc["kind"]: doc
        for name in kustomization(DETECTOR)["resources"]
        for doc in yaml.safe_load_all((DETECTOR / name).read_text())
        if doc
    }


def test_detector_kustomization_lists_the_detectors_manifests() -> None:
    expected = sorted(p.name for p in DETECTOR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization(DETECTOR)["resources"]) == expected
    assert sorted(detector_objects()) == [
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "Service",
        "ServiceAccount",
    ]


def test_detector_runs_the_detectors_released_image() -> None:
    match = re.search(r'^DETECTOR_VERSION = "([^"]+)"$', DETECTOR_VERSION_FILE.read_text(), re.MULTILINE)
    assert match is not None
    (container,) = detector_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/modelloop/detector:{match.group(1)}"


def test_detector_pod_is_non_root_read_only_without_capabilities_with_its_own_token() -> None:
    pod = detector_objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert_restricted(pod, container, token=True)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert "limits" in container["resources"] and "requests" in container["resources"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_detector_service_reaches_the_detectors_pods_and_never_the_operators() -> None:
    objects = detector_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    operator = [
        doc
        for doc in yaml.safe_load_all((MANIFESTS / "operator" / "deployment.yaml").read_text())
        if doc["kind"] == "Deployment"
    ]
    for other in operator:
        assert (
            not service["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()
        )


def test_detector_authenticates_its_callers_as_its_own_service_account() -> None:
    objects = detector_objects()
    account, binding, deployment = (
        objects["ServiceAccount"],
        objects["ClusterRoleBinding"],
        objects["Deployment"],
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "MODELLOOP_DETECTOR_AUTH", "value": "kubernetes"} in container["env"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert account["automountServiceAccountToken"] is False  # no other pod of the account gets the token
    # TokenReview and SubjectAccessReview, and nothing else: Kubernetes' own role for it.
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    # The subject has no namespace for kustomize's `namespace:` to write the detector's; the name ends in a
    # placeholder that the team's replacement (kustomization.yaml's comment) makes the namespace.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert binding["metadata"]["name"] == "modelloop-detector-auth-delegator.NAMESPACE"
    comment = (DETECTOR / "kustomization.yaml").read_text()
    assert "select: {kind: ClusterRoleBinding, name: modelloop-detector-auth-delegator.NAMESPACE}" in comment


# --- what people may do with modelloop's kinds (manifests/operator/user-roles.yaml) ------------------------

USER_ROLES = MANIFESTS / "operator" / "user-roles.yaml"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete", "deletecollection"}


def user_roles() -> dict[str, dict[str, Any]]:
    """user-roles.yaml's ClusterRoles by the Kubernetes role each one aggregates to (view, edit, admin)."""
    roles = {}
    for doc in yaml.safe_load_all(USER_ROLES.read_text()):
        assert doc["kind"] == "ClusterRole"
        for label, value in doc["metadata"]["labels"].items():
            if label.startswith(AGGREGATE) and value == "true":
                roles[label.removeprefix(AGGREGATE)] = doc
    return roles


def granted(role: dict[str, Any], resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if "modelloop.dev" in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_user_roles_aggregate_to_view_edit_and_admin() -> None:
    assert sorted(user_roles()) == ["admin", "edit", "view"]


@pytest.mark.parametrize("plural", [info.plural for info in KINDS])
def test_viewers_read_every_kind_and_editors_also_write_it(plural: str) -> None:
    roles = user_roles()
    assert granted(roles["view"], plural) == READ
    for role in ("edit", "admin"):
        assert granted(roles[role], plural) == READ | WRITE


@pytest.mark.parametrize("plural", [info.plural for info in KINDS])
def test_people_read_status_and_only_the_operator_writes_it(plural: str) -> None:
    # Status is the rollout's state machine, a version's stage and validation: a person's write forges it.
    for role in user_roles().values():
        assert granted(role, f"{plural}/status") == {"get"}


def test_viewers_read_drift_registrations_and_editors_also_post_labels_but_never_register() -> None:
    # The drift detector's subresources (it asks the API server with a SubjectAccessReview): registering a
    # service's versions and exporting its rows (`update` on drift) are the operator's alone.
    roles = user_roles()
    assert granted(roles["view"], "inferenceservices/drift") == {"get"}
    assert granted(roles["view"], "inferenceservices/feedback") == set()
    for role in ("edit", "admin"):
        assert granted(roles[role], "inferenceservices/drift") == {"get"}
        assert granted(roles[role], "inferenceservices/feedback") == {"create"}


def test_the_operator_registers_with_detectors_and_exports_from_them() -> None:
    rbac = [doc for doc in yaml.safe_load_all((MANIFESTS / "operator" / "rbac.yaml").read_text()) if doc]
    (role,) = [doc for doc in rbac if doc["kind"] == "ClusterRole"]
    assert granted(role, "inferenceservices/drift") == {"get", "update"}
    assert granted(role, "inferenceservices/feedback") == set()


def test_user_roles_grant_nothing_outside_modelloops_kinds() -> None:
    for role in user_roles().values():
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["modelloop.dev"], rule
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule


def test_detector_serves_only_the_namespace_it_is_applied_to() -> None:
    # No namespace of its own: kustomize's `namespace:` puts it with the team's models, and the detector
    # reads which namespace that is from its pod.
    assert [kind for kind, doc in detector_objects().items() if "namespace" in doc["metadata"]] == []
    (container,) = detector_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {
        "name": "MODELLOOP_DETECTOR_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]


def test_detector_network_policy_admits_its_namespace_the_operator_and_prometheus_only() -> None:
    objects = detector_objects()
    policy, deployment = objects["NetworkPolicy"], objects["Deployment"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "http" in [port["name"] for port in container["ports"]]
    own_namespace, operator, prometheus = rule["from"]
    assert own_namespace == {"podSelector": {}}  # no namespaceSelector: the policy's own namespace only
    (operator_deployment,) = [
        doc
        for doc in yaml.safe_load_all((MANIFESTS / "operator" / "deployment.yaml").read_text())
        if doc["kind"] == "Deployment"
    ]
    assert operator["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": operator_deployment["metadata"]["namespace"]}
    }
    assert operator["podSelector"]["matchLabels"].items() <= (
        operator_deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert prometheus == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
