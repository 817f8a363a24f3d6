"""The Helm chart (charts/modelloop) on the real API server: it lints, renders what the API server accepts,
refuses a wrong value by its name, installs an operator that runs the quickstart with exactly the chart's
identity, command and environment, upgrades from the previous chart version without losing an object,
and uninstalls leaving the CRDs and users' objects.

Pods under kwok run nothing, so where the chart's operator must really run, the test runs `modelloop` here
as the kubelet would run the pod that the chart's Deployment made: the image's entrypoint with the pod's
args and environment, and a token of the pod's ServiceAccount bound to that pod."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import (
    QUICKSTART,
    QUICKSTART_OBJECTS,
    ROOT,
    SHARED_CRDS,
    Cluster,
    apply_quickstart_until_ready,
    free_port,
    stop_operator,
    token_kubeconfig,
    wait_for,
)
from modelloop.api import GROUP, KINDS

CHART = ROOT / "charts" / "modelloop"
HELM = (
    Path(
        subprocess.run(
            [str(ROOT / "hack" / "build-helm.sh"), "--print-dir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    / "helm"
)
# What the operator's image runs when a pod names no command (operator/Dockerfile).
ENTRYPOINT: list[str] = next(
    json.loads(line.removeprefix("ENTRYPOINT"))
    for line in (ROOT / "operator" / "Dockerfile").read_text().splitlines()
    if line.startswith("ENTRYPOINT")
)
COMPONENT = "app.kubernetes.io/component"
MODELLOOP_CRDS = sorted(f"{info.plural}.{GROUP}" for info in KINDS)
# Every optional part of the chart at once.
ALL_FEATURES = {
    "replicaCount": 2,
    "image": {"digest": "sha256:" + "0123456789abcdef" * 4},
    "operator": {"prometheusUrl": "http://prometheus.monitoring:9090", "verbose": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "servingRuntime": {"enabled": True, "image": {"tag": "0.2.0"}},
    "argocd": {"healthChecks": {"enabled": True}},
    "podLabels": {"team": "ml"},
    "detector": {"enabled": True, "gpus": 1, "extraEnvFrom": [{"secretRef": {"name": "s3-credentials"}}]},
}

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="helm is not built: run hack/build-helm.sh")


@dataclass(frozen=True)
class Helm:
    """The helm binary against one cluster, with its own config, cache and data folders."""

    cluster: Cluster
    home: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **self.cluster.env,
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result


@pytest.fixture(scope="module")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """helm for this module. At the end every release it made is uninstalled and the CRDs of crds/ are
    applied again, as the rest of the suite expects them."""
    running = Helm(cluster, tmp_path_factory.mktemp("helm"))
    try:
        yield running
    finally:
        for release in json.loads(running("list", "--all-namespaces", "-o", "json").stdout):
            running("uninstall", release["name"], "-n", release["namespace"], check=False)
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for crd in MODELLOOP_CRDS:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace for one test's release, enforcing the `restricted` Pod Security Standard."""
    name = f"h-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def values_file(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def test_chart_lints_strictly(tmp_path: Path) -> None:
    for values in ([], values_file(tmp_path, ALL_FEATURES)):
        result = subprocess.run(
            [str(HELM), "lint", "--strict", str(CHART), *values], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_chart_renders_exactly_the_repositorys_crds_rbac_admission_and_runtime(tmp_path: Path) -> None:
    rendered = documents(
        subprocess.run(
            [
                *(str(HELM), "template", "modelloop", str(CHART), "-n", "modelloop-system"),
                *("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"),
                *("--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"),
                *values_file(tmp_path, {"servingRuntime": {"enabled": True}}),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (chart_crd,) = [d for d in rendered if d["metadata"]["name"] == crd["metadata"]["name"]]
        assert chart_crd["spec"] == crd["spec"], path.name
        assert chart_crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    manifests = documents((ROOT / "manifests" / "operator" / "rbac.yaml").read_text())
    roles = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ClusterRole"}
    assert roles["modelloop-operator"]["rules"] == one(manifests, "ClusterRole")["rules"]
    for role in documents((ROOT / "manifests" / "operator" / "user-roles.yaml").read_text()):
        assert roles[role["metadata"]["name"]]["rules"] == role["rules"]
    # Released as `modelloop`, the chart names things as the plain manifests do.
    for source, policy in (("registered-by", "Mutating"), ("free-form-bounds", "Validating")):
        admission = documents((ROOT / "manifests" / "admission" / f"{source}.yaml").read_text())
        for kind in (f"{policy}AdmissionPolicy", f"{policy}AdmissionPolicyBinding"):
            assert one(rendered, kind)["spec"] == one(admission, kind)["spec"]
            assert one(rendered, kind)["metadata"]["name"] == one(admission, kind)["metadata"]["name"]
    runtime = yaml.safe_load((ROOT / "runtimes" / "server" / "clusterservingruntime.yaml").read_text())
    assert one(rendered, "ClusterServingRuntime")["spec"] == runtime["spec"]
    deployment = one(rendered, "Deployment")
    assert deployment["metadata"]["name"] == "modelloop-operator"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "modelloop"


@pytest.fixture(scope="module")
def chart_crd_kinds(cluster: Cluster) -> None:
    """What a full install needs before its objects: prometheus-operator's CRDs (the user's) and the
    chart's crds/ (kopf's peering kinds, which `helm install` applies first)."""
    for folder in (SHARED_CRDS / "prometheus-operator", CHART / "crds"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder), timeout=120)
    for crd in ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    for crd in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


@pytest.mark.usefixtures("chart_crd_kinds")
@pytest.mark.parametrize("features", ["defaults", "everything"])
def test_rendered_chart_is_accepted_by_the_api_server(
    helm: Helm, cluster: Cluster, release_namespace: str, features: str, tmp_path: Path
) -> None:
    # Argo CD's argocd-cm in the release's namespace: `kubectl apply -n` takes one namespace.
    argocd = {"healthChecks": {"enabled": True, "namespace": release_namespace}}
    values = values_file(tmp_path, {**ALL_FEATURES, "argocd": argocd}) if features == "everything" else []
    started = time.monotonic()
    # --dry-run=server: with the API server's own capabilities (it serves both admission policies); the
    # CRDs that the suite installed belong to no release, as a user's kubectl-applied ones would not.
    text = helm(
        *("template", "mlh", str(CHART), "-n", release_namespace, "--include-crds"),
        *("--dry-run=server", "--take-ownership", *values),
    ).stdout
    print(f"helm template ({features}): {time.monotonic() - started:.2f}s")
    rendered = documents(text)
    kinds = {doc["kind"] for doc in rendered}
    expected = {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    if features == "everything":
        expected |= {
            "PodDisruptionBudget",
            "ClusterKopfPeering",
            "ClusterServingRuntime",
            "ServiceMonitor",
            "PrometheusRule",
            "ConfigMap",
        }
    assert kinds == expected
    result = cluster.kubectl(
        *("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-n", release_namespace),
        *("-f", "-"),
        input=text,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if features == "everything":
        # The detector's Deployment, Service and ServiceMonitor are tests/test_chart.py's; the API server took
        # its own ServiceAccount and its binding to system:auth-delegator (it authenticates its callers).
        detector = [d for d in rendered if d["metadata"].get("labels", {}).get(COMPONENT) == "detector"]
        account, binding = one(detector, "ServiceAccount"), one(detector, "ClusterRoleBinding")
        assert binding["roleRef"]["name"] == "system:auth-delegator"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": release_namespace}
        ]
        assert (
            one(detector, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
            == (account["metadata"]["name"])
        )
        operator = [d for d in rendered if d["metadata"].get("labels", {}).get(COMPONENT) != "detector"]
        deployment = one(operator, "Deployment")
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["MODELLOOP_PEERING"] == one(rendered, "ClusterKopfPeering")["metadata"]["name"]
        monitor, service = one(operator, "ServiceMonitor"), one(operator, "Service")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        # The job label that modelloop's alerts and dashboard select (manifests/monitoring).
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "modelloop"
        alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
        assert one(rendered, "PrometheusRule")["spec"]["groups"] == alerts["spec"]["groups"]
        maps = {m["metadata"]["name"]: m for m in rendered if m["kind"] == "ConfigMap"}
        dashboard = next(m for name, m in maps.items() if name.endswith("-dashboard"))
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        json.loads(dashboard["data"]["modelloop.json"])
        # Argo CD's argocd-cm with exactly modelloop's health checks, kept on uninstall.
        argocd_cm = maps["argocd-cm"]
        patch = yaml.safe_load((ROOT / "manifests" / "argocd" / "argocd-cm-health.yaml").read_text())
        assert argocd_cm["data"] == patch["data"] and argocd_cm["metadata"]["namespace"] == release_namespace
        assert argocd_cm["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--set", "replicaCount=two"], "replicaCount"),
        (["--set", "replicas=2"], "replicas"),
        (["--set", "operator.logFormat=xml"], "logFormat"),
        (["--set-string", "image.digest=latest"], "digest"),
        (["--set", "securityContext.readOnlyRootFileSystem=true"], "readOnlyRootFileSystem"),
    ],
)
def test_a_wrong_value_fails_install_naming_the_field(
    helm: Helm, release_namespace: str, args: list[str], field: str
) -> None:
    result = helm("install", "mlh-bad", str(CHART), "-n", release_namespace, *args, check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert helm("status", "mlh-bad", "-n", release_namespace, check=False).returncode != 0


@dataclass(frozen=True)
class PodProcess:
    """`modelloop` run here as the kubelet would run a pod of the chart's Deployment."""

    process: subprocess.Popen[bytes]
    readiness_url: str
    log: Path

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.readiness_url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


@contextlib.contextmanager
def running_as_pod(pod: dict[str, Any], kubeconfig: Path, log: Path) -> Iterator[PodProcess]:
    """Run the pod's one container here: the image's entrypoint (or the container's command) with its
    args, and exactly its environment (fieldRefs resolved as the kubelet does) plus a kubeconfig, which
    stands for the pod's mounted ServiceAccount token. Stopped with SIGTERM at the end."""
    (container,) = pod["spec"]["containers"]
    command = container.get("command") or ENTRYPOINT
    executable = Path(sys.executable).with_name(command[0])
    fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"]}
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "KUBECONFIG": str(kubeconfig)}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    probe = container["readinessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    port = ports.get(probe["port"], probe["port"])
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(executable), *command[1:], *container.get("args", [])],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield PodProcess(process, f"http://127.0.0.1:{port}{probe['path']}", log)
    finally:
        stop_operator(process, log)


def chart_pod(cluster: Cluster, release: str, namespace: str) -> dict[str, Any]:
    """The operator pod that the release's Deployment made (admitted under Pod Security `restricted`)."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    pods = wait_for(
        lambda: cluster.get("pods", namespace=namespace, selector=selector)["items"],
        timeout=60,
        what=f"the pod of {release}'s Deployment",
    )
    pod: dict[str, Any] = pods[0]
    return pod


def pod_token_kubeconfig(cluster: Cluster, pod: dict[str, Any], path: Path) -> Path:
    """A kubeconfig with a token of the pod's ServiceAccount, bound to the pod as a projected one is."""
    token = cluster.kubectl(
        *("create", "token", pod["spec"]["serviceAccountName"], "-n", pod["metadata"]["namespace"]),
        *("--bound-object-kind", "Pod", "--bound-object-name", pod["metadata"]["name"]),
        *("--bound-object-uid", pod["metadata"]["uid"]),
    ).stdout.strip()
    return token_kubeconfig(cluster, token, path)


def test_installed_chart_runs_the_quickstart_as_its_deployment_would(
    helm: Helm, cluster: Cluster, namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    helm(
        *("install", "mlh-run", str(CHART), "-n", release_namespace, "--take-ownership"),
        # Free ports here (the pod's own would be 8080 and 8081), and only the test's namespace.
        *values_file(
            tmp_path,
            {
                "operator": {"healthPort": free_port(), "watchNamespaces": [namespace]},
                "metrics": {"port": free_port()},
            },
        ),
    )
    pod = chart_pod(cluster, "mlh-run", release_namespace)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "mlh-run-modelloop"
    assert spec["automountServiceAccountToken"] is True
    account = cluster.get("serviceaccount", spec["serviceAccountName"], release_namespace)
    assert account["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"]

    kubeconfig = pod_token_kubeconfig(cluster, pod, tmp_path / "kubeconfig")
    with running_as_pod(pod, kubeconfig, tmp_path / "operator.log") as operator:
        wait_for(lambda: operator.process.poll() is not None or operator.ready(), timeout=60, what="Ready")
        assert operator.process.poll() is None, operator.log.read_text()
        ready = time.monotonic()
        # Ready means the preflight has passed: the operator logged it before serving the probe.
        assert "serves every modelloop kind" in operator.log.read_text()
        apply_quickstart_until_ready(cluster, namespace)
        reconciled = time.monotonic()
    print(
        f"helm install -> operator Ready: {ready - started:.1f}s; "
        f"-> quickstart reconciled: {reconciled - started:.1f}s"
    )
    log = operator.log.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-5000:]
    # The API server recorded the quickstart's ModelVersion as the admin's (who applied it).
    version = cluster.get("modelversion", "iris-v1", namespace)
    assert version["metadata"]["annotations"]["modelloop.dev/registered-by"]
    helm("uninstall", "mlh-run", "-n", release_namespace)


@contextlib.contextmanager
def unanswering_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: an API server that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_chart_operator_is_not_ready_until_its_preflight_passes(cluster: Cluster, tmp_path: Path) -> None:
    deployment = one(
        documents(
            subprocess.run(
                [str(HELM), "template", "mlh-pre", str(CHART), "--set", f"operator.healthPort={free_port()}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        ),
        "Deployment",
    )
    pod = {
        "metadata": {"name": "mlh-pre-0", "namespace": "default"},
        "spec": deployment["spec"]["template"]["spec"],
    }
    with unanswering_server() as port:
        kubeconfig = token_kubeconfig(cluster, "no-server-answers", tmp_path / "kubeconfig")
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        kubeconfig.write_text(yaml.safe_dump(config))
        with running_as_pod(pod, kubeconfig, tmp_path / "operator.log") as operator:
            answered = False
            while operator.process.poll() is None:
                answered = answered or operator.ready()
                time.sleep(0.25)
            assert not answered
            assert operator.process.returncode != 0
            log = operator.log.read_text()
            assert "cannot reach the Kubernetes API server" in log
            # ... and why: a timeout, whose text is empty, is named by its type.
            line = next(line for line in log.splitlines() if "cannot reach the Kubernetes API server" in line)
            assert line.rstrip().split(f":{port}: ", 1)[1].strip(), line


def previous_chart(tmp_path: Path) -> Path:
    """The chart as version 0.1.0 had it: ModelPolicy's CRD without `spec.retention`."""
    chart = tmp_path / "modelloop-0.1.0"
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(meta.read_text().replace("version: 0.2.0", "version: 0.1.0"))
    template = chart / "templates" / "crds" / "modelloop.dev_modelpolicies.yaml"
    lines, kept, skipping = template.read_text().splitlines(), [], False
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if line == "              retention:":
            skipping = True
            continue
        if skipping and indent <= 14:
            skipping = False
        if not skipping:
            kept.append(line)
    assert len(kept) < len(lines)
    template.write_text("\n".join(kept) + "\n")
    return chart


def spec_properties(cluster: Cluster, crd: str) -> dict[str, Any]:
    schema = cluster.get("crd", crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties: dict[str, Any] = schema["properties"]["spec"]["properties"]
    return properties


def quickstart(without_retention: bool = False) -> list[dict[str, Any]]:
    objects = documents(QUICKSTART.read_text())
    if without_retention:
        del one(objects, "ModelPolicy")["spec"]["retention"]
    return objects


def uids(cluster: Cluster, namespace: str) -> dict[str, str]:
    return {name: cluster.get(r, name, namespace)["metadata"]["uid"] for r, name in QUICKSTART_OBJECTS}


def test_upgrade_from_the_previous_chart_keeps_every_object_and_applies_the_changed_crd(
    helm: Helm, cluster: Cluster, namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    # A cluster that has only ever had chart 0.1.0: its ModelPolicy CRD is the one that chart made.
    cluster.kubectl("delete", "crd", "modelpolicies.modelloop.dev", "--wait=true", timeout=120)
    helm("install", "mlh-up", str(previous_chart(tmp_path)), "-n", release_namespace, "--take-ownership")
    assert "retention" not in spec_properties(cluster, "modelpolicies.modelloop.dev")
    refused = cluster.apply_result(quickstart(), namespace)
    assert refused.returncode != 0 and 'unknown field "retention"' in refused.stderr
    cluster.apply(quickstart(without_retention=True), namespace)
    before = uids(cluster, namespace)

    helm("upgrade", "mlh-up", str(CHART), "-n", release_namespace)

    assert "retention" in spec_properties(cluster, "modelpolicies.modelloop.dev")
    assert uids(cluster, namespace) == before
    cluster.apply(quickstart(), namespace)
    assert cluster.get("modelpolicy", "iris", namespace)["spec"]["retention"] == {"keepArchived": 5}
    history = json.loads(helm("history", "mlh-up", "-n", release_namespace, "-o", "json").stdout)
    assert [(h["chart"], h["status"]) for h in history] == [
        ("modelloop-0.1.0", "superseded"),
        ("modelloop-0.2.0", "deployed"),
    ]

    # Turning the CRDs off in an upgrade leaves them (and so every object) where they are.
    helm("upgrade", "mlh-up", str(CHART), "-n", release_namespace, "--set", "crds.install=false")
    assert all(cluster.kubectl("get", "crd", crd, check=False).returncode == 0 for crd in MODELLOOP_CRDS)
    assert uids(cluster, namespace) == before
    helm("uninstall", "mlh-up", "-n", release_namespace)


def test_uninstall_leaves_the_crds_and_users_objects(
    helm: Helm, cluster: Cluster, namespace: str, release_namespace: str
) -> None:
    helm("install", "mlh-un", str(CHART), "-n", release_namespace, "--take-ownership")
    cluster.apply(quickstart(), namespace)
    before = uids(cluster, namespace)

    helm("uninstall", "mlh-un", "-n", release_namespace, "--wait")

    for crd in MODELLOOP_CRDS:
        assert cluster.get("crd", crd)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert uids(cluster, namespace) == before
    for kind, name, ns in [
        ("deployment", "mlh-un-modelloop-operator", release_namespace),
        ("serviceaccount", "mlh-un-modelloop", release_namespace),
        ("clusterrole", "mlh-un-modelloop-operator", None),
        ("clusterrolebinding", "mlh-un-modelloop-operator", None),
        ("mutatingadmissionpolicy", "mlh-un-modelloop-registered-by", None),
        ("validatingadmissionpolicy", "mlh-un-modelloop-free-form-bounds", None),
    ]:
        gone = cluster.kubectl("get", kind, name, *(["-n", ns] if ns else []), check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, (kind, name)
