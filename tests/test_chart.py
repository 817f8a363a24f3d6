"""The Helm chart (charts/modelloop) holds exactly what its sources make, every value is documented and
covered by values.schema.json, and the drift detector's templates render what its values ask for. No
cluster: the detector's tests run `helm template` when Helm is built (hack/build-helm.sh) and are skipped
otherwise; e2e/test_helm.py installs the chart on a real API server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from modelloop.api import crd_filename, render_crds
from pod_security import assert_restricted

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "modelloop"
ADMISSION = REPO_ROOT / "manifests" / "admission" / "registered-by.yaml"
DETECTOR_MANIFESTS = REPO_ROOT / "manifests" / "detector"
HELM = (
    Path(
        subprocess.run(
            [str(REPO_ROOT / "hack" / "build-helm.sh"), "--print-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    / "helm"
)
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm is not built: run hack/build-helm.sh")
DIGEST = "sha256:" + "0123456789abcdef" * 4


def _load_sync_chart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart", REPO_ROOT / "hack" / "sync_chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_chart"] = module
    spec.loader.exec_module(module)
    return module


sync_chart = _load_sync_chart()
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def untemplated(text: str) -> list[Any]:
    """The documents a generated template renders to with its conditionals true: lines that are only
    template actions dropped, every other action printing NAME, escaped braces restored."""
    lines = [line for line in text.splitlines() if not re.fullmatch(r"\s*\{\{-.*\}\}\s*", line)]
    body = "\n".join(lines).replace('{{ "{{" }}', "\0")
    return list(yaml.safe_load_all(re.sub(r"\{\{.*?\}\}", "NAME", body).replace("\0", "{{")))


def test_generated_chart_files_match_their_sources() -> None:
    assert list(sync_chart.stale_files()) == [], "the chart is stale: run `make crds`"


@pytest.mark.parametrize("crd", render_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_chart_crd_templates_render_the_crds_of_the_api_models(crd: dict[str, Any]) -> None:
    text = (CHART / "templates" / "crds" / crd_filename(crd)).read_text()
    assert text.splitlines()[1] == "{{- if .Values.crds.install }}"
    (rendered,) = untemplated(text)
    assert rendered["spec"] == crd["spec"]
    assert rendered["metadata"]["name"] == crd["metadata"]["name"]
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "{{- if .Values.crds.keep }}\n  annotations:" in text


def test_chart_cluster_role_has_exactly_the_rules_of_the_manifests() -> None:
    manifests = yaml.safe_load_all((REPO_ROOT / "manifests" / "operator" / "rbac.yaml").read_text())
    (role,) = [doc for doc in manifests if doc["kind"] == "ClusterRole"]
    (rendered,) = untemplated((CHART / "templates" / "clusterrole.yaml").read_text())
    assert rendered["kind"] == "ClusterRole"
    assert rendered["rules"] == role["rules"]


@pytest.mark.parametrize("suffix", ["registered-by", "free-form-bounds"])
def test_chart_admission_policy_is_the_manifests_policy(suffix: str) -> None:
    manifests = list(yaml.safe_load_all((ADMISSION.parent / f"{suffix}.yaml").read_text()))
    rendered = untemplated((CHART / "templates" / f"admission-{suffix}.yaml").read_text())
    assert [doc["kind"] for doc in rendered] == [doc["kind"] for doc in manifests]
    assert rendered[0]["spec"] == manifests[0]["spec"]
    assert rendered[1]["spec"] == {**manifests[1]["spec"], "policyName": f"NAME-{suffix}"}
    assert rendered[0]["metadata"]["name"] == rendered[1]["metadata"]["name"] == f"NAME-{suffix}"


def test_sync_check_names_a_stale_file_and_sync_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "modelloop"
    shutil.copytree(CHART, chart)
    monkeypatch.setattr(sync_chart, "CHART", chart)
    template = chart / "templates" / "crds" / "modelloop.dev_modelversions.yaml"
    template.write_text(template.read_text().replace("maxLength: 253", "maxLength: 63", 1))
    (chart / "templates" / "crds" / "modelloop.dev_leftovers.yaml").write_text("{}\n")
    readme = chart / "README.md"
    readme.write_text(readme.read_text().replace("| `replicaCount` |", "| `replicas` |"))

    assert sync_chart.main(["--check"]) == 1
    stale = capsys.readouterr().err
    assert "templates/crds/modelloop.dev_modelversions.yaml" in stale
    assert "templates/crds/modelloop.dev_leftovers.yaml" in stale
    assert "README.md" in stale

    assert sync_chart.main([]) == 0
    assert sync_chart.main(["--check"]) == 0
    assert not (chart / "templates" / "crds" / "modelloop.dev_leftovers.yaml").exists()
    assert template.read_text() == (CHART / template.relative_to(chart)).read_text()


def test_documented_values_follow_helm_docs_comments() -> None:
    text = (
        "# a header, not a value\n\n"
        "# -- how many\n# of them\ncount: 1\n"
        "image:\n  # -- where from\n  repository: r\n  tag: ''\n"
        "# -- loose comment\n\nundocumented: 2\n"
    )
    assert sync_chart.documented_values(text) == [
        sync_chart.ValueDoc(("count",), "how many of them"),
        sync_chart.ValueDoc(("image", "repository"), "where from"),
    ]


def leaf_paths(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of values that are not maps with keys of their own (scalars, lists, empty maps)."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_paths(value, (*path, key))
    else:
        yield path


def test_every_value_is_documented() -> None:
    documented = {doc.path for doc in sync_chart.documented_values(VALUES_TEXT)}
    undocumented = [
        ".".join(path)
        for path in leaf_paths(VALUES)
        if not any(path[:n] in documented for n in range(1, len(path) + 1))
    ]
    assert undocumented == []


def all_paths(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict):
        for key, value in values.items():
            yield (*path, key)
            yield from all_paths(value, (*path, key))


def schema_at(path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = SCHEMA
    for name in path:
        if node is None:
            return None
        extra = node.get("additionalProperties")
        node = node.get("properties", {}).get(name, extra if isinstance(extra, dict) else None)
    return node


def test_schema_has_every_value_of_values_yaml() -> None:
    assert [".".join(p) for p in all_paths(VALUES) if schema_at(p) is None] == []


def test_schema_refuses_unknown_keys_in_every_map_of_the_charts_own() -> None:
    def open_maps(node: dict[str, Any], path: str) -> Iterator[str]:
        if "properties" in node and node.get("additionalProperties") is not False:
            yield path or "(top level)"
        for name, child in node.get("properties", {}).items():
            yield from open_maps(child, f"{path}.{name}".lstrip("."))

    assert list(open_maps(SCHEMA, "")) == []


def violations(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """What of ``value`` the schema refuses: the subset of JSON Schema that values.schema.json uses."""
    types = schema.get("type")
    python = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    if types is not None:
        wanted = [types] if isinstance(types, str) else types
        ok = any(
            isinstance(value, python[t]) and not (t in ("integer", "number") and isinstance(value, bool))
            for t in wanted
        )
        if not ok:
            yield f"{path}: {value!r} is not {types}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} not in {schema['enum']}"
    if "minimum" in schema and value < schema["minimum"]:
        yield f"{path}: {value!r} < {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        yield f"{path}: {value!r} > {schema['maximum']}"
    if "pattern" in schema and not re.search(schema["pattern"], value):
        yield f"{path}: {value!r} does not match {schema['pattern']}"
    if "oneOf" in schema and sum(not list(violations(value, s, path)) for s in schema["oneOf"]) != 1:
        yield f"{path}: {value!r} matches not exactly one of oneOf"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                yield f"{path}.{name}: required"
        for name, child in value.items():
            sub = schema.get("properties", {}).get(name, schema.get("additionalProperties", {}))
            if sub is False:
                yield f"{path}.{name}: not allowed"
            elif isinstance(sub, dict):
                yield from violations(child, sub, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from violations(item, schema["items"], f"{path}[{index}]")


def test_default_values_satisfy_the_schema() -> None:
    assert list(violations(VALUES, SCHEMA)) == []


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"replicaCount": "two"}, ".replicaCount"),
        ({"replicas": 2}, ".replicas"),
        ({"replicaCount": 0}, ".replicaCount"),
        ({"operator": {"logFormat": "xml"}}, ".operator.logFormat"),
        ({"operator": {"kserveMode": "Serverless"}}, ".operator.kserveMode"),
        ({"image": {"digest": "latest"}}, ".image.digest"),
        ({"metrics": {"port": 80}}, ".metrics.port"),
        ({"crds": {"install": "yes"}}, ".crds.install"),
        ({"detector": {"enabled": "yes"}}, ".detector.enabled"),
        ({"detector": {"windowRows": "many"}}, ".detector.windowRows"),
        ({"detector": {"replicaCount": 2}}, ".detector.replicaCount"),
        ({"detector": {"device": "tpu"}}, ".detector.device"),
        ({"detector": {"gpus": -1}}, ".detector.gpus"),
        ({"detector": {"window": 1000}}, ".detector.window"),
    ],
)
def test_schema_refuses_a_wrong_value_naming_it(override: dict[str, Any], field: str) -> None:
    values = json.loads(json.dumps(VALUES))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key].update(value)
        else:
            values[key] = value
    found = list(violations(values, SCHEMA))
    assert found and all(v.startswith(field) for v in found), found


# --- the drift detector, rendered by helm ---------------------------------------------------------------


def helm(
    tmp_path: Path, *args: str, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """helm with its own folders and no cluster, on the chart, with ``values`` as a values file."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values or {}))
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }
    return subprocess.run(
        [str(HELM), *args, str(CHART), "-n", "modelloop-system", "-f", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def rendered(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects that `helm template modelloop` renders with ``values``."""
    result = helm(tmp_path, "template", "modelloop", values=values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def detector_objects(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The detector's objects by kind."""
    found = [
        o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "detector"
    ]
    by_kind = {o["kind"]: o for o in found}
    assert len(by_kind) == len(found), [o["kind"] for o in found]
    return by_kind


def detector_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


@needs_helm
def test_detector_is_off_by_default_and_renders_nothing(tmp_path: Path) -> None:
    assert VALUES["detector"]["enabled"] is False
    objects = rendered(tmp_path, {"serviceMonitor": {"enabled": True}})
    assert detector_objects(objects) == {}
    assert not [o for o in objects if o["metadata"]["name"].endswith("-detector")]


@needs_helm
def test_enabled_detector_is_a_deployment_and_a_service_that_selects_its_pods(tmp_path: Path) -> None:
    objects = detector_objects(rendered(tmp_path, {"detector": {"enabled": True}}))

    assert sorted(objects) == ["ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    deployment, service = objects["Deployment"], objects["Service"]
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "modelloop-detector"
    assert deployment["spec"]["replicas"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    http = {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    assert service["spec"]["ports"] == [http]
    assert detector_container(deployment)["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    ]


@needs_helm
def test_the_operators_objects_never_select_the_detectors_pods(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"detector": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    detector_pods = detector_objects(objects)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    operator = [
        o for o in objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    selectors = [
        o["spec"]["selector"] for o in operator if o["kind"] in ("Deployment", "Service", "ServiceMonitor")
    ]
    for selector in selectors:
        assert not selector.get("matchLabels", selector).items() <= detector_pods.items()


@needs_helm
def test_detector_pod_is_non_root_read_only_without_capabilities_with_its_own_token(tmp_path: Path) -> None:
    deployment = detector_objects(rendered(tmp_path, {"detector": {"enabled": True}}))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = detector_container(deployment)

    assert_restricted(pod, container, token=True)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/modelloop"]]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"] == VALUES["detector"]["resources"]


@needs_helm
def test_detector_runs_with_the_settings_of_its_values(tmp_path: Path) -> None:
    settings = {
        "windowRows": 5000,
        "windowSeconds": 1800,
        "evaluateEveryRows": 250,
        "evaluateEverySeconds": 2.5,
        "minVerdictInterval": 0.5,
        "pValue": 0.01,
        "correction": "fdr",
        "device": "cuda",
        "mmdPermutations": 200,
        "minRows": 80,
        "feedbackWindow": 2000,
        "logLevel": "DEBUG",
    }
    objects = detector_objects(rendered(tmp_path, {"detector": {"enabled": True, **settings}}))

    assert detector_container(objects["Deployment"])["args"] == [
        "--host=0.0.0.0",
        "--port=8080",
        "--window-rows=5000",
        "--window-seconds=1800",
        "--evaluate-every-rows=250",
        "--evaluate-every-seconds=2.5",
        "--min-verdict-interval=0.5",
        "--p-value=0.01",
        "--correction=fdr",
        "--device=cuda",
        "--mmd-permutations=200",
        "--min-rows=80",
        "--feedback-window=2000",
        "--log-level=DEBUG",
    ]


@needs_helm
def test_detector_image_is_taken_by_digest_when_one_is_given_else_by_the_apps_version(tmp_path: Path) -> None:
    def image(values: dict[str, Any]) -> str:
        objects = detector_objects(rendered(tmp_path, {"detector": {"enabled": True, "image": values}}))
        return str(detector_container(objects["Deployment"])["image"])

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert image({}) == f"ghcr.io/modelloop/detector:{app_version}"
    assert image({"tag": "0.3.0"}) == "ghcr.io/modelloop/detector:0.3.0"
    assert image({"tag": "0.3.0", "digest": DIGEST}) == f"ghcr.io/modelloop/detector@{DIGEST}"
    assert (
        image({"repository": "registry.local/detector", "digest": DIGEST})
        == f"registry.local/detector@{DIGEST}"
    )


@needs_helm
def test_detector_takes_gpus_credentials_a_claim_and_its_nodes_from_values(tmp_path: Path) -> None:
    values = {
        "enabled": True,
        "gpus": 1,
        "extraEnvFrom": [{"secretRef": {"name": "s3-credentials"}}],
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        "volume": {"existingClaim": "datasets", "mountPath": "/data"},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    deployment = detector_objects(rendered(tmp_path, {"detector": values}))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = detector_container(deployment)

    assert container["resources"]["limits"] == {"memory": "2Gi", "nvidia.com/gpu": 1}
    assert container["resources"]["requests"] == VALUES["detector"]["resources"]["requests"]
    assert container["envFrom"] == values["extraEnvFrom"]
    roots = {"name": "MODELLOOP_DETECTOR_ARTIFACT_ROOTS", "value": "file:///data"}
    assert container["env"] == [AUTHENTICATED, AUDIENCE, roots, *values["extraEnv"]]
    (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == data["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "datasets"}
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]


@needs_helm
def test_detector_without_a_volume_mounts_only_tmp(tmp_path: Path) -> None:
    values = {"detector": {"enabled": True, "volume": {"enabled": False}}}
    deployment = detector_objects(rendered(tmp_path, values))["Deployment"]
    assert [m["mountPath"] for m in detector_container(deployment)["volumeMounts"]] == ["/tmp"]
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


@needs_helm
def test_detector_is_scraped_with_the_service_monitor_switch_under_its_own_job(tmp_path: Path) -> None:
    values = {
        "detector": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    }
    objects = detector_objects(rendered(tmp_path, values))

    monitor, service = objects["ServiceMonitor"], objects["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # Its series carry the InferenceService's namespace and service: they must win over the target's.
    assert endpoint["honorLabels"] is True
    # Not job="modelloop": the operator's alerts would take the detector's `up` for the operator's.
    assert "jobLabel" not in monitor["spec"]


@needs_helm
def test_detector_notes_name_the_url_for_the_logger_and_the_drift_policy(tmp_path: Path) -> None:
    result = helm(
        tmp_path, "install", "modelloop", "--dry-run=client", values={"detector": {"enabled": True}}
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    url = "http://modelloop-detector.modelloop-system.svc:8080"
    assert f"spec.logger.url:  {url}/" in notes
    assert f"spec.detector.url:                     {url}" in notes

    result = helm(tmp_path, "install", "modelloop", "--dry-run=client", values={})
    assert "detector" not in result.stdout.split("NOTES:", 1)[1]


@needs_helm
@pytest.mark.parametrize(
    ("detector", "field"),
    [
        ({"windowRows": "many"}, "/detector/windowRows"),
        ({"pValue": 1.5}, "/detector/pValue"),
        ({"gpus": "one"}, "/detector/gpus"),
        ({"volume": {"existingClaim": 7}}, "/detector/volume/existingClaim"),
        ({"extraEnvFrom": [{"secret": {"name": "s3"}}]}, "/detector/extraEnvFrom/0"),
        ({"mode": "perTeam"}, "/detector/mode"),
        ({"namespaces": ["Team_A"]}, "/detector/namespaces/0"),
        ({"networkPolicy": {"namespaces": ["x" * 64]}}, "/detector/networkPolicy/namespaces/0"),
        (
            {"networkPolicy": {"prometheus": {"podSelector": {"app": "x"}}}},
            "/detector/networkPolicy/prometheus",
        ),
    ],
)
def test_helm_refuses_a_wrong_detector_value_naming_it(
    tmp_path: Path, detector: dict[str, Any], field: str
) -> None:
    result = helm(tmp_path, "template", "modelloop", values={"detector": {"enabled": True, **detector}})
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def kustomize_detector() -> dict[str, dict[str, Any]]:
    """manifests/detector's objects, by kind."""
    return {
        doc["kind"]: doc
        for name in ("deployment.yaml", "service.yaml", "networkpolicy.yaml", "rbac.yaml")
        for doc in yaml.safe_load_all((DETECTOR_MANIFESTS / name).read_text())
    }


AUTHENTICATED = {"name": "MODELLOOP_DETECTOR_AUTH", "value": "kubernetes"}
AUDIENCE = {"name": "MODELLOOP_DETECTOR_AUDIENCE", "value": "modelloop-detector"}


SERVES_ITS_OWN_NAMESPACE = {
    "name": "MODELLOOP_DETECTOR_NAMESPACE",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
}


@needs_helm
def test_the_charts_default_detector_runs_as_the_kustomize_one(tmp_path: Path) -> None:
    chart = detector_objects(rendered(tmp_path, {"detector": {"enabled": True}}))
    manifests = kustomize_detector()
    chart_pod, plain_pod = (d["Deployment"]["spec"]["template"]["spec"] for d in (chart, manifests))
    # The chart's pull policy is a value; the plain manifests leave Kubernetes' default.
    chart_pod["containers"][0].pop("imagePullPolicy")
    # The kustomize detector serves the namespace it is applied to; the chart's shared one every namespace.
    plain_pod["containers"][0]["env"].remove(SERVES_ITS_OWN_NAMESPACE)
    assert chart_pod == plain_pod
    assert chart["Deployment"]["spec"]["strategy"] == manifests["Deployment"]["spec"]["strategy"]
    assert chart["Service"]["spec"]["ports"] == manifests["Service"]["spec"]["ports"]


# --- who may call the detector (detector.authentication) ---------------------------------------------------


@needs_helm
def test_detector_authenticates_its_callers_as_its_own_account_bound_to_auth_delegator(
    tmp_path: Path,
) -> None:
    assert VALUES["detector"]["authentication"] == "kubernetes"
    objects = detector_objects(rendered(tmp_path, {"detector": {"enabled": True}}))
    account, binding = objects["ServiceAccount"], objects["ClusterRoleBinding"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]

    assert env_of(objects["Deployment"])["MODELLOOP_DETECTOR_AUTH"] == "kubernetes"
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "modelloop-detector"
    assert account["metadata"]["namespace"] == "modelloop-system"
    assert pod["automountServiceAccountToken"] is True
    assert account["automountServiceAccountToken"] is False
    assert binding["metadata"]["name"] == "modelloop-detector-auth-delegator.modelloop-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelloop-detector", "namespace": "modelloop-system"}
    ]


@needs_helm
def test_detector_without_authentication_mounts_no_token_and_is_bound_to_nothing(tmp_path: Path) -> None:
    values = {"detector": {"enabled": True, "authentication": "none"}}
    objects = detector_objects(rendered(tmp_path, values))
    assert sorted(objects) == ["Deployment", "Service", "ServiceAccount"]
    assert env_of(objects["Deployment"])["MODELLOOP_DETECTOR_AUTH"] == "none"
    assert_restricted(
        objects["Deployment"]["spec"]["template"]["spec"], detector_container(objects["Deployment"])
    )


@needs_helm
def test_detector_binding_is_left_to_the_user_without_rbac_create(tmp_path: Path) -> None:
    values = {"detector": {"enabled": True}, "rbac": {"create": False}}
    objects = detector_objects(rendered(tmp_path, values))
    assert "ClusterRoleBinding" not in objects
    assert env_of(objects["Deployment"])["MODELLOOP_DETECTOR_AUTH"] == "kubernetes"


@needs_helm
def test_detector_authentication_cannot_be_replaced_by_extra_env(tmp_path: Path) -> None:
    extra = [{"name": "MODELLOOP_DETECTOR_AUTH", "value": "none"}]
    result = helm(
        tmp_path, "template", "modelloop", values={"detector": {"enabled": True, "extraEnv": extra}}
    )
    assert result.returncode != 0
    assert "detector.extraEnv: MODELLOOP_DETECTOR_AUTH is set by detector.authentication" in result.stderr


@needs_helm
def test_helm_refuses_an_unknown_authentication_naming_it(tmp_path: Path) -> None:
    values = {"detector": {"enabled": True, "authentication": "oidc"}}
    result = helm(tmp_path, "template", "modelloop", values=values)
    assert result.returncode != 0
    assert "/detector/authentication" in result.stderr, result.stderr


# --- the drift detector per namespace (detector.mode perNamespace) ---------------------------------------

PER_NAMESPACE = {"enabled": True, "mode": "perNamespace"}
OPERATOR_POD_LABELS = {
    "app.kubernetes.io/name": "modelloop",
    "app.kubernetes.io/instance": "modelloop",
    "app.kubernetes.io/component": "operator",
}


def detectors_by_namespace(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The detectors' objects by namespace, then kind (one of each kind in a namespace); a detector's
    ClusterRoleBinding counts as its subject's namespace's."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objects:
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "detector":
            namespace = o["metadata"].get("namespace") or o["subjects"][0]["namespace"]
            by_kind = found.setdefault(namespace, {})
            assert o["kind"] not in by_kind, f"two {o['kind']}s in {o['metadata']['namespace']}"
            by_kind[o["kind"]] = o
    return found


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        entry["name"]: entry.get("value", entry.get("valueFrom"))
        for entry in detector_container(deployment)["env"]
    }


@needs_helm
def test_per_namespace_detectors_run_in_each_of_their_namespaces_and_serve_it_only(tmp_path: Path) -> None:
    values = {
        "detector": {**PER_NAMESPACE, "namespaces": ["team-a", "team-b"]},
        "operator": {"watchNamespaces": ["team-c"]},  # the detector's own list wins
        "serviceMonitor": {"enabled": True},
    }
    detectors = detectors_by_namespace(rendered(tmp_path, values))

    assert sorted(detectors) == ["team-a", "team-b"]
    for namespace, objects in detectors.items():
        assert sorted(objects) == [
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
        binding = objects.pop("ClusterRoleBinding")
        assert binding["metadata"]["name"] == f"modelloop-detector-auth-delegator.{namespace}"
        assert {o["metadata"]["name"] for o in objects.values()} == {"modelloop-detector"}
        deployment, service, monitor = objects["Deployment"], objects["Service"], objects["ServiceMonitor"]
        assert env_of(deployment) == {
            "MODELLOOP_DETECTOR_AUTH": "kubernetes",
            "MODELLOOP_DETECTOR_AUDIENCE": "modelloop-detector",
            "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": "file:///var/lib/modelloop",
            "MODELLOOP_DETECTOR_NAMESPACE": namespace,
        }
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert_restricted(deployment["spec"]["template"]["spec"], detector_container(deployment), token=True)


@needs_helm
def test_per_namespace_detectors_default_to_the_namespaces_the_operator_watches(tmp_path: Path) -> None:
    values = {"detector": PER_NAMESPACE, "operator": {"watchNamespaces": ["team-a", "team-b"]}}
    detectors = detectors_by_namespace(rendered(tmp_path, values))
    assert sorted(detectors) == ["team-a", "team-b"]
    for namespace, objects in detectors.items():
        assert env_of(objects["Deployment"])["MODELLOOP_DETECTOR_NAMESPACE"] == namespace


@needs_helm
@pytest.mark.parametrize("watched", [[], ["team-a", "team-*"], ["!kube-system"]])
def test_per_namespace_mode_without_a_list_of_namespaces_fails_asking_for_one(
    tmp_path: Path, watched: list[str]
) -> None:
    result = helm(
        tmp_path,
        "template",
        "modelloop",
        values={"detector": PER_NAMESPACE, "operator": {"watchNamespaces": watched}},
    )
    assert result.returncode != 0
    assert (
        "detector.mode perNamespace runs a detector in each namespace of detector.namespaces" in result.stderr
    )


@needs_helm
def test_per_namespace_detector_namespace_cannot_be_replaced_by_extra_env(tmp_path: Path) -> None:
    extra = [{"name": "MODELLOOP_DETECTOR_NAMESPACE", "value": ""}]
    values = {"detector": {**PER_NAMESPACE, "namespaces": ["team-a"], "extraEnv": extra}}
    result = helm(tmp_path, "template", "modelloop", values=values)
    assert result.returncode != 0
    assert (
        "detector.extraEnv: MODELLOOP_DETECTOR_NAMESPACE is set by detector.mode perNamespace"
        in result.stderr
    )
    # A shared detector may be narrowed to one namespace that way.
    shared = detector_objects(rendered(tmp_path, {"detector": {"enabled": True, "extraEnv": extra}}))
    assert env_of(shared["Deployment"])["MODELLOOP_DETECTOR_NAMESPACE"] == ""


def ingress_peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    return list(rule["from"])


def operator_peer(release_namespace: str = "modelloop-system") -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": release_namespace}},
        "podSelector": {"matchLabels": OPERATOR_POD_LABELS},
    }


PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


@needs_helm
def test_per_namespace_network_policy_admits_its_namespace_the_operator_and_prometheus_only(
    tmp_path: Path,
) -> None:
    objects = rendered(tmp_path, {"detector": {**PER_NAMESPACE, "namespaces": ["team-a", "team-b"]}})
    detectors = detectors_by_namespace(objects)
    (operator,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    assert OPERATOR_POD_LABELS.items() <= operator["spec"]["template"]["metadata"]["labels"].items()
    assert operator["metadata"]["namespace"] == "modelloop-system"

    for objects_here in detectors.values():
        policy, deployment = objects_here["NetworkPolicy"], objects_here["Deployment"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        # A podSelector alone: pods of the policy's own namespace, and of no other.
        assert ingress_peers(policy) == [{"podSelector": {}}, operator_peer(), PROMETHEUS_PEER]
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in detector_container(deployment)[
            "ports"
        ]


@needs_helm
def test_network_policy_admits_the_prometheus_its_values_name_and_none_when_they_name_none(
    tmp_path: Path,
) -> None:
    prometheus = {
        "namespaceSelector": {"matchLabels": {"team": "observability"}},
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["prometheus"]}]},
    }

    def peers(prometheus: list[dict[str, Any]]) -> list[dict[str, Any]]:
        values = {
            "detector": {
                **PER_NAMESPACE,
                "namespaces": ["team-a"],
                "networkPolicy": {"prometheus": prometheus},
            }
        }
        return ingress_peers(detectors_by_namespace(rendered(tmp_path, values))["team-a"]["NetworkPolicy"])

    # The list replaces the default whole: no label of the default's is merged into it.
    assert peers([prometheus]) == [{"podSelector": {}}, operator_peer(), prometheus]
    every_pod = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "metrics"}}}
    assert peers([every_pod]) == [{"podSelector": {}}, operator_peer(), every_pod]
    assert peers([]) == [{"podSelector": {}}, operator_peer()]


@needs_helm
def test_shared_detector_has_a_network_policy_only_when_asked_admitting_the_listed_namespaces(
    tmp_path: Path,
) -> None:
    values: dict[str, Any] = {"detector": {"enabled": True, "networkPolicy": {"namespaces": ["ml", "ops"]}}}
    assert "NetworkPolicy" not in detector_objects(rendered(tmp_path, values))

    values["detector"]["networkPolicy"]["enabled"] = True
    objects = detector_objects(rendered(tmp_path, values))
    policy = objects["NetworkPolicy"]
    assert (
        policy["metadata"]["namespace"]
        == objects["Deployment"]["metadata"]["namespace"]
        == "modelloop-system"
    )
    namespaces = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}
        for name in ("ml", "ops")
    ]
    assert ingress_peers(policy) == [*namespaces, operator_peer(), PROMETHEUS_PEER]


@needs_helm
def test_shared_mode_is_the_default_and_its_detector_serves_every_namespace(tmp_path: Path) -> None:
    assert VALUES["detector"]["mode"] == "shared"
    assert VALUES["detector"]["networkPolicy"]["enabled"] is False
    values = {"detector": {"enabled": True}, "operator": {"watchNamespaces": ["team-a", "team-b"]}}
    detectors = detectors_by_namespace(rendered(tmp_path, {**values, "serviceMonitor": {"enabled": True}}))
    assert sorted(detectors) == ["modelloop-system"]
    objects = detectors["modelloop-system"]
    assert sorted(objects) == [
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    assert "MODELLOOP_DETECTOR_NAMESPACE" not in env_of(objects["Deployment"])
    assert objects["ServiceMonitor"]["spec"]["namespaceSelector"] == {"matchNames": ["modelloop-system"]}
    # Spelling the defaults out renders the very same bytes.
    explicit = {
        **values,
        "detector": {
            "enabled": True,
            "mode": "shared",
            "namespaces": [],
            "networkPolicy": {"enabled": False, "namespaces": []},
        },
    }
    implicit = helm(tmp_path, "template", "modelloop", values=values)
    spelt = helm(tmp_path, "template", "modelloop", values=explicit)
    assert implicit.returncode == spelt.returncode == 0
    assert implicit.stdout == spelt.stdout


@needs_helm
def test_per_namespace_notes_name_the_url_pattern_and_the_namespaces(tmp_path: Path) -> None:
    values = {"detector": {**PER_NAMESPACE, "namespaces": ["team-a", "team-b"]}}
    result = helm(tmp_path, "install", "modelloop", "--dry-run=client", values=values)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    url = "http://modelloop-detector.<namespace>.svc:8080"
    assert "team-a, team-b" in notes
    assert f"spec.logger.url:  {url}/" in notes
    assert f"spec.detector.url:                     {url}" in notes
    assert "http://modelloop-detector.{namespace}.svc:8080/ to operator.allowedUrlPrefixes" in notes
    assert "modelloop-system.svc" not in notes


@needs_helm
def test_the_charts_per_namespace_detector_runs_as_the_kustomize_one(tmp_path: Path) -> None:
    values = {"detector": {**PER_NAMESPACE, "namespaces": ["team-a"]}}
    chart = detectors_by_namespace(rendered(tmp_path, values))["team-a"]
    manifests = kustomize_detector()
    chart_pod, plain_pod = (d["Deployment"]["spec"]["template"]["spec"] for d in (chart, manifests))
    chart_pod["containers"][0].pop("imagePullPolicy")
    # Kustomize cannot write a namespace into a value: the plain one reads its own from the pod, the chart
    # writes the one it renders it into.
    env = plain_pod["containers"][0]["env"]
    env[env.index(SERVES_ITS_OWN_NAMESPACE)] = {"name": "MODELLOOP_DETECTOR_NAMESPACE", "value": "team-a"}
    assert chart_pod == plain_pod
    chart_policy, plain_policy = chart["NetworkPolicy"]["spec"], manifests["NetworkPolicy"]["spec"]
    assert ingress_peers(chart["NetworkPolicy"])[0] == ingress_peers(manifests["NetworkPolicy"])[0]
    assert chart_policy["policyTypes"] == plain_policy["policyTypes"]
    assert plain_policy["podSelector"]["matchLabels"].items() <= chart_pod_labels(chart).items()


def chart_pod_labels(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(objects["Deployment"]["spec"]["template"]["metadata"]["labels"])


# --- RBAC: the operator's bindings and the users' roles, rendered by helm ---------------------------------

USER_ROLES = REPO_ROOT / "manifests" / "operator" / "user-roles.yaml"
SINGLE_NAMESPACE_RBAC = REPO_ROOT / "manifests" / "overlays" / "single-namespace" / "rbac-namespaced.yaml"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one kind, by `namespace/name` (`name` when cluster-scoped)."""
    found = {}
    for o in objects:
        if o["kind"] == kind:
            namespace = o["metadata"].get("namespace")
            found[f"{namespace}/{o['metadata']['name']}" if namespace else o["metadata"]["name"]] = o
    return found


def test_chart_user_roles_have_exactly_the_rules_and_aggregation_of_the_manifests() -> None:
    manifests = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(USER_ROLES.read_text())}
    charted = untemplated((CHART / "templates" / "user-roles.yaml").read_text())
    assert [doc["kind"] for doc in charted] == ["ClusterRole", "ClusterRole"]
    for doc in charted:
        (name,) = [n for n in manifests if n.endswith(doc["metadata"]["name"].removeprefix("NAME"))]
        assert doc["rules"] == manifests[name]["rules"], name
        aggregation = {k: v for k, v in doc["metadata"]["labels"].items() if k.startswith(AGGREGATE)}
        assert aggregation == {
            k: v for k, v in manifests[name]["metadata"]["labels"].items() if k.startswith(AGGREGATE)
        }


@needs_helm
def test_chart_aggregates_its_kinds_into_view_edit_and_admin_unless_turned_off(tmp_path: Path) -> None:
    assert VALUES["rbac"]["aggregateRoles"] is True
    roles = of_kind(rendered(tmp_path, {}), "ClusterRole")
    aggregated = {
        label.removeprefix(AGGREGATE): name
        for name, role in roles.items()
        for label, value in role["metadata"]["labels"].items()
        if label.startswith(AGGREGATE) and value == "true"
    }
    assert aggregated == {"view": "modelloop-view", "edit": "modelloop-edit", "admin": "modelloop-edit"}

    off = of_kind(rendered(tmp_path, {"rbac": {"aggregateRoles": False}}), "ClusterRole")
    assert sorted(off) == ["modelloop-operator"]


@needs_helm
def test_chart_binds_the_operator_cluster_wide_when_it_watches_every_namespace(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {})
    (binding,) = of_kind(objects, "ClusterRoleBinding").values()
    assert binding["roleRef"]["name"] == "modelloop-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelloop", "namespace": "modelloop-system"}
    ]
    assert of_kind(objects, "RoleBinding") == {}


@needs_helm
def test_chart_binds_the_operators_rules_only_in_the_namespaces_it_watches(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    account = {"kind": "ServiceAccount", "name": "modelloop", "namespace": "modelloop-system"}

    bindings = of_kind(objects, "RoleBinding")
    assert sorted(bindings) == ["team-a/modelloop-operator", "team-b/modelloop-operator"]
    for binding in bindings.values():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "modelloop-operator",
        }
        assert binding["subjects"] == [account]
    # Cluster-wide, only what kopf reads there: which CRDs and namespaces exist, as the kustomize overlay
    # grants it, and nothing of the operator's own rules.
    (cluster_binding,) = of_kind(objects, "ClusterRoleBinding").values()
    assert cluster_binding["subjects"] == [account]
    discovery = of_kind(objects, "ClusterRole")[cluster_binding["roleRef"]["name"]]
    overlay = [
        doc for doc in yaml.safe_load_all(SINGLE_NAMESPACE_RBAC.read_text()) if doc["kind"] == "ClusterRole"
    ]
    assert discovery["rules"] == overlay[0]["rules"]
    for rule in discovery["rules"]:
        assert set(rule["verbs"]) <= {"list", "watch"}
        assert "modelloop.dev" not in rule["apiGroups"]


@needs_helm
@pytest.mark.parametrize("pattern", ["team-*", "!kube-system", "Team-A"])
def test_chart_binds_the_operator_cluster_wide_when_a_watched_namespace_is_a_pattern(
    tmp_path: Path, pattern: str
) -> None:
    # A pattern matches namespaces made after the install: no RoleBinding made now covers them.
    objects = rendered(tmp_path, {"operator": {"watchNamespaces": ["team-b", pattern]}})
    (binding,) = of_kind(objects, "ClusterRoleBinding").values()
    assert binding["roleRef"]["name"] == "modelloop-operator"
    assert of_kind(objects, "RoleBinding") == {}


@needs_helm
def test_chart_grants_the_drift_detectors_subresources_as_the_manifests_do(tmp_path: Path) -> None:
    roles = of_kind(rendered(tmp_path, {}), "ClusterRole")

    def granted(role: str, resource: str) -> set[str]:
        return {
            verb
            for rule in roles[role]["rules"]
            if resource in rule["resources"] and "modelloop.dev" in rule["apiGroups"]
            for verb in rule["verbs"]
        }

    assert granted("modelloop-operator", "inferenceservices/drift") == {"get", "update"}
    assert granted("modelloop-view", "inferenceservices/drift") == {"get"}
    assert granted("modelloop-edit", "inferenceservices/drift") == {"get"}
    assert granted("modelloop-edit", "inferenceservices/feedback") == {"create"}
    assert granted("modelloop-view", "inferenceservices/feedback") == set()


@needs_helm
def test_chart_creates_no_operator_binding_without_rbac_create(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"rbac": {"create": False}, "operator": {"watchNamespaces": ["team-a"]}})
    assert of_kind(objects, "RoleBinding") == of_kind(objects, "ClusterRoleBinding") == {}
    assert sorted(of_kind(objects, "ClusterRole")) == ["modelloop-edit", "modelloop-view"]


@needs_helm
def test_the_operator_shows_detectors_a_token_for_their_audience_only_never_its_api_token(
    tmp_path: Path,
) -> None:
    # The detector's URL is a tenant's: the operator's token for it is a projected one for the detectors'
    # audience, mounted where MODELLOOP_DETECTOR_TOKEN_FILE's default looks, and the detectors ask for it.
    from modelloop.settings import DETECTOR_TOKEN

    for objects in (
        rendered(tmp_path, {"detector": {"enabled": True}}),
        [d for name in ("operator/deployment.yaml", "detector/deployment.yaml")
         for d in yaml.safe_load_all((REPO_ROOT / "manifests" / name).read_text()) if d],
    ):  # fmt: skip
        deployments = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Deployment"}
        operator = next(d for n, d in deployments.items() if not n.endswith("detector"))
        detector = next(d for n, d in deployments.items() if n.endswith("detector"))
        pod = operator["spec"]["template"]["spec"]
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "detector-token"]
        assert f"{mount['mountPath']}/token" == DETECTOR_TOKEN
        [volume] = [v for v in pod["volumes"] if v["name"] == "detector-token"]
        [source] = volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "modelloop-detector"
        assert env_of(detector)["MODELLOOP_DETECTOR_AUDIENCE"] == "modelloop-detector"
