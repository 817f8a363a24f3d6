"""The API at the API server: CRDs install, `kubectl` reads them well, and bad objects are refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Cluster

OUR_CRDS = [
    "trainingruns.modelloop.dev",
    "modelversions.modelloop.dev",
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


@pytest.mark.parametrize("crd", OUR_CRDS + THIRD_PARTY_CRDS)
def test_crd_is_established(cluster: Cluster, crd: str) -> None:
    obj = cluster.get("crd", crd)
    established = [c for c in obj["status"]["conditions"] if c["type"] == "Established"]
    assert established and established[0]["status"] == "True"


def test_kubectl_explain_documents_every_field_of_training_run_resources(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "trainingrun.spec.resources").stdout
    assert "DESCRIPTION" in out
    for field in ("gpus", "gpuProduct", "cpu", "memory"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"{field}\t")), None)
        assert line is not None, f"{field} missing from kubectl explain:\n{out}"
    assert "<no description>" not in out


def test_kubectl_get_modelloop_lists_all_four_kinds_with_their_columns(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))

    out = cluster.kubectl("get", "modelloop", "-n", namespace).stdout

    tables = {}
    for block in out.strip().split("\n\n"):
        header, *rows = block.strip().splitlines()
        tables[rows[0].split()[0]] = (header.split(), [row.split() for row in rows])
    expected = {
        "trainingrun.modelloop.dev/iris-rf": ["NAME", "PHASE", "MODEL", "GPUS", "METRIC", "AGE"],
        "modelversion.modelloop.dev/iris-v1": [
            "NAME",
            "MODEL",
            "VERSION",
            "METRIC",
            "VALIDATED",
            "STAGE",
            "AGE",
        ],
        "inferenceservice.modelloop.dev/iris": [
            "NAME",
            "MODEL",
            "BACKEND",
            "STABLE",
            "CANARY",
            "TRAFFIC",
            "PHASE",
            "AGE",
        ],
        "driftpolicy.modelloop.dev/iris-drift": ["NAME", "TARGET", "PHASE", "LAST", "RUN", "AGE"],
    }
    assert set(tables) == set(expected), out
    for name, header in expected.items():
        assert tables[name][0] == header, out
    # The columns carry the specs' values.
    training_row = tables["trainingrun.modelloop.dev/iris-rf"][1][0]
    assert training_row[2:4] == ["iris", "2"], out
    version_row = tables["modelversion.modelloop.dev/iris-v1"][1][0]
    assert version_row[1:3] == ["iris", "1"], out
    service_row = tables["inferenceservice.modelloop.dev/iris"][1][0]
    assert service_row[1:3] == ["iris", "kserve"], out


def test_short_names_reach_each_kind(cluster: Cluster, namespace: str) -> None:
    for short in ("tr", "mv", "mlisvc", "dp"):
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


def test_unknown_fields_are_refused_by_strict_field_validation(cluster: Cluster, namespace: str) -> None:
    run = copy.deepcopy(quickstart()["TrainingRun"])
    run["spec"]["gpuz"] = 2

    error = rejected(cluster, namespace, run)

    assert "gpuz" in error, error


def test_the_quickstart_is_accepted_as_is(cluster: Cluster, namespace: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(QUICKSTART), check=False)
    assert result.returncode == 0, result.stderr
