"""The API at the API server: CRDs install, `kubectl` reads them well, and bad objects are refused."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Cluster
from modelloop.api import API_VERSION, GROUP, KINDS, render_crds

OUR_CRDS = [
    "trainingruns.modelloop.dev",
    "modelversions.modelloop.dev",
    "modelpolicies.modelloop.dev",
    "inferenceservices.modelloop.dev",
    "driftpolicies.modelloop.dev",
]
THIRD_PARTY_CRDS = [
    "inferenceservices.serving.kserve.io",
    "servingruntimes.serving.kserve.io",
    "clusterservingruntimes.serving.kserve.io",
    "seldondeployments.machinelearning.seldon.io",
]
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"


def quickstart() -> dict[str, dict[str, Any]]:
    """The quickstart's objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(QUICKSTART.read_text())}


def rejected(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> str:
    """Apply ``obj`` expecting the API server to refuse it; return the error kubectl printed."""
    result = cluster.apply_result(obj, namespace)
    assert result.returncode != 0, f"{obj['kind']} was admitted but should have been rejected"
    return result.stderr


@pytest.mark.parametrize("generated", render_crds(), ids=[info.kind for info in KINDS])
def test_the_cluster_serves_exactly_the_crds_the_models_generate(
    cluster: Cluster, generated: dict[str, Any]
) -> None:
    served = cluster.get("crd", generated["metadata"]["name"])["spec"]
    expected = generated["spec"]

    assert served["scope"] == expected["scope"] == "Namespaced"
    assert served["names"] == expected["names"]  # short names and categories among them
    [served_version] = served["versions"]
    [expected_version] = expected["versions"]
    # The schema carries the descriptions, bounds and every CEL rule.
    assert served_version["schema"] == expected_version["schema"]
    assert served_version["additionalPrinterColumns"] == expected_version["additionalPrinterColumns"]
    for key in ("name", "served", "storage", "subresources"):
        assert served_version[key] == expected_version[key], key


def test_api_resources_lists_every_kind_namespaced_with_its_short_name(cluster: Cluster) -> None:
    out = cluster.kubectl("api-resources", f"--api-group={GROUP}").stdout

    listed = {row["KIND"]: row for row in parse_table(out)}

    assert listed == {
        info.kind: {
            "NAME": info.plural,
            "SHORTNAMES": ",".join(info.short_names),
            "APIVERSION": API_VERSION,
            "NAMESPACED": "true",
            "KIND": info.kind,
        }
        for info in KINDS
    }, out


def test_kserve_and_seldon_crds_are_installed_beside_ours(cluster: Cluster) -> None:
    installed = {crd["metadata"]["name"] for crd in cluster.get("crd")["items"]}
    assert set(OUR_CRDS + THIRD_PARTY_CRDS) <= installed


def test_kubectl_explain_documents_every_field_of_training_run_resources(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "trainingrun.spec.resources").stdout
    assert "DESCRIPTION" in out
    for field in ("gpus", "gpuProduct", "cpu", "memory"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"{field}\t")), None)
        assert line is not None, f"{field} missing from kubectl explain:\n{out}"
    assert "<no description>" not in out


def test_kubectl_get_modelloop_lists_every_kind_with_its_columns(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))

    out = cluster.kubectl("get", "modelloop", "-n", namespace).stdout

    tables = {rows[0]["NAME"]: rows for rows in map(parse_table, out.strip().split("\n\n"))}
    assert set(tables) == {
        "trainingrun.modelloop.dev/iris-rf",
        "modelversion.modelloop.dev/iris-v1",
        "modelpolicy.modelloop.dev/iris",
        "inferenceservice.modelloop.dev/iris",
        "driftpolicy.modelloop.dev/iris-drift",
    }, out
    assert list(tables["trainingrun.modelloop.dev/iris-rf"][0]) == [
        "NAME",
        "PHASE",
        "MODEL",
        "GPUS",
        "METRIC",
        "AGE",
    ]
    assert list(tables["modelversion.modelloop.dev/iris-v1"][0]) == [
        *("NAME", "MODEL", "VERSION", "METRIC", "VALIDATED", "STAGE", "AGE")
    ]
    assert list(tables["modelpolicy.modelloop.dev/iris"][0]) == [
        *("NAME", "CHAMPION", "LATEST", "VERSIONS", "KEEP", "AGE")
    ]
    assert list(tables["inferenceservice.modelloop.dev/iris"][0]) == [
        *("NAME", "MODEL", "STABLE", "CANARY", "TRAFFIC", "STEP", "PHASE", "AGE")
    ]
    assert list(tables["driftpolicy.modelloop.dev/iris-drift"][0]) == [
        "NAME",
        "TARGET",
        "PHASE",
        "VALUE",
        "LAST RUN",
        "AGE",
    ]
    # The columns carry the specs' values.
    training = tables["trainingrun.modelloop.dev/iris-rf"][0]
    assert (training["MODEL"], training["GPUS"]) == ("iris", "2")
    version = tables["modelversion.modelloop.dev/iris-v1"][0]
    assert (version["MODEL"], version["VERSION"]) == ("iris", "1")
    assert tables["modelpolicy.modelloop.dev/iris"][0]["KEEP"] == "5"
    service = tables["inferenceservice.modelloop.dev/iris"][0]
    assert service["MODEL"] == "iris"
    assert tables["driftpolicy.modelloop.dev/iris-drift"][0]["TARGET"] == "iris"


def parse_table(block: str) -> list[dict[str, str]]:
    """Rows of a `kubectl get` table as {column: value}, cutting at the header's column positions so that
    empty cells stay empty (headers may hold a space, as in LAST RUN)."""
    header, *lines = block.strip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {name: line[a:b].strip() for name, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for line in lines
    ]


def test_short_names_reach_each_kind(cluster: Cluster, namespace: str) -> None:
    for short in ("tr", "mv", "mpol", "mlisvc", "dp"):
        result = cluster.kubectl("get", short, "-n", namespace)
        assert result.returncode == 0


def test_training_run_with_gpu_product_but_no_gpus_is_rejected_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    run = copy.deepcopy(quickstart()["TrainingRun"])
    run["spec"]["resources"] = {"gpus": 0, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}

    error = rejected(cluster, namespace, run)

    assert "spec.resources" in error and "gpuProduct" in error, error


def test_training_run_with_negative_gpus_is_rejected_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    run = copy.deepcopy(quickstart()["TrainingRun"])
    run["spec"]["resources"] = {"gpus": -1}

    error = rejected(cluster, namespace, run)

    assert "spec.resources.gpus" in error, error


def test_model_version_spec_cannot_change_after_creation(cluster: Cluster, namespace: str) -> None:
    version = quickstart()["ModelVersion"]
    cluster.apply(version, namespace)
    changed = copy.deepcopy(version)
    changed["spec"]["metrics"] = {"accuracy": 0.99}

    error = rejected(cluster, namespace, changed)

    assert "spec" in error and "immutable" in error, error
    stored = cluster.get("modelversion", "iris-v1", namespace)
    assert stored["spec"]["metrics"] == {"accuracy": 0.953}


@pytest.mark.parametrize(
    ("name", "spec", "field"),
    [
        ("iris.v2", {}, "metadata.name must be the model's name"),
        ("iris", {"retention": {"keepArchived": -1}}, "spec.retention.keepArchived"),
        (
            "iris",
            {"validation": {"champion": {"metric": "accuracy", "margin": -0.1}}},
            "spec.validation.champion.margin",
        ),
        (
            "iris",
            {"validation": {"champion": {"metric": "accuracy", "direction": "Up"}}},
            "spec.validation.champion.direction",
        ),
    ],
    ids=["dotted-name", "negative-retention", "negative-margin", "unknown-direction"],
)
def test_a_malformed_model_policy_is_rejected_naming_the_field(
    cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], field: str
) -> None:
    policy = copy.deepcopy(quickstart()["ModelPolicy"])
    policy["metadata"]["name"] = name
    policy["spec"] = spec

    error = rejected(cluster, namespace, policy)

    assert field in error, error


@pytest.mark.parametrize(
    ("steps", "why"),
    [([10, 50, 25, 100], "increasing"), ([10, 25, 50], "100"), ([10, 10, 100], "increasing"), ([], "")],
)
def test_inference_service_rollout_steps_must_increase_and_end_at_100(
    cluster: Cluster, namespace: str, steps: list[int], why: str
) -> None:
    service = copy.deepcopy(quickstart()["InferenceService"])
    service["spec"]["rollout"]["steps"] = steps

    error = rejected(cluster, namespace, service)

    assert "spec.rollout.steps" in error, error
    assert why in error, error


def test_drift_policy_without_metrics_is_rejected_naming_the_field(cluster: Cluster, namespace: str) -> None:
    policy = copy.deepcopy(quickstart()["DriftPolicy"])
    policy["spec"]["metrics"] = []

    error = rejected(cluster, namespace, policy)

    assert "spec.metrics" in error, error


def test_drift_policy_with_a_malformed_window_is_rejected_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    policy = copy.deepcopy(quickstart()["DriftPolicy"])
    policy["spec"]["window"] = "fifteen minutes"

    error = rejected(cluster, namespace, policy)

    assert "spec.window" in error, error


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("metrics", 0, "name"), "", "spec.metrics[0].name"),
        (("metrics", 0, "name"), "../../etc/passwd", "spec.metrics[0].name"),
        (("retrain", "trainingRunTemplate", "image"), "", "spec.retrain.trainingRunTemplate.image"),
        (("retrain", "trainingRunTemplate", "image"), "trainer :1", "spec.retrain.trainingRunTemplate.image"),
        (("retrain", "trainingRunTemplate", "command"), [" "], "spec.retrain.trainingRunTemplate.command[0]"),
    ],
    ids=["blank-metric", "path-metric", "blank-image", "spaced-image", "blank-command"],
)
def test_a_drift_policy_with_what_a_new_user_might_try_is_refused_naming_the_field(
    cluster: Cluster, namespace: str, path: tuple[Any, ...], value: Any, field: str
) -> None:
    policy = copy.deepcopy(quickstart()["DriftPolicy"])
    node = policy["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

    error = rejected(cluster, namespace, policy)

    assert field in error, error


def test_a_training_run_with_a_spaced_image_is_refused_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    run = copy.deepcopy(quickstart()["TrainingRun"])
    run["spec"]["image"] = "ghcr.io/modelloop/trainer :0.1.0"

    error = rejected(cluster, namespace, run)

    assert "spec.image" in error, error


def test_unknown_fields_are_refused_by_strict_field_validation(cluster: Cluster, namespace: str) -> None:
    run = copy.deepcopy(quickstart()["TrainingRun"])
    run["spec"]["gpuz"] = 2

    error = rejected(cluster, namespace, run)

    assert "gpuz" in error, error


def test_the_quickstart_is_accepted_as_is(cluster: Cluster, namespace: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(QUICKSTART), check=False)
    assert result.returncode == 0, result.stderr
