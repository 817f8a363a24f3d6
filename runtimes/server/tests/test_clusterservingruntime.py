"""The ClusterServingRuntime that runs the server under KServe, checked against KServe's real CRD."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

RUNTIME = Path(__file__).parents[1] / "clusterservingruntime.yaml"
# ../shared beside the repository, as the e2e harness finds it (MODELLOOP_SHARED_DIR overrides).
SHARED = Path(os.environ.get("MODELLOOP_SHARED_DIR", Path(__file__).resolve().parents[4] / "shared"))
CRD = SHARED / "crds" / "serving.kserve.io_clusterservingruntimes.yaml"


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RUNTIME.read_text())
    return document


def test_the_runtime_is_valid_under_kserves_crd_schema(runtime: dict[str, Any]) -> None:
    if not CRD.is_file():
        pytest.skip(f"KServe's CRD is not at {CRD}")
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]

    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.validate(runtime, schema)
    # The API server prunes unknown fields silently; a misspelt field would simply vanish.
    assert unknown_fields(runtime, schema) == []
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        crd["spec"]["names"]["kind"],
    )


def test_the_runtime_serves_modelloops_formats_over_v1_and_v2(runtime: dict[str, Any]) -> None:
    spec = runtime["spec"]

    assert runtime["metadata"]["name"] == "modelloop-server"
    assert [(f["name"], f["version"], f["autoSelect"]) for f in spec["supportedModelFormats"]] == [
        ("modelloop-sklearn", "1", True),
        ("modelloop-pytorch", "1", True),
    ]
    assert spec["protocolVersions"] == ["v1", "v2"]
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }


def test_the_container_runs_modelloop_serve_on_the_models_kserve_downloads(runtime: dict[str, Any]) -> None:
    [container] = runtime["spec"]["containers"]

    assert container["name"] == "kserve-container"
    assert container["image"] == "ghcr.io/modelloop/server:0.1.0"
    assert container["command"] == ["modelloop-serve"]
    assert container["args"] == ["--model_name={{.Name}}", "--model_dir=/mnt/models", "--http_port=8080"]
    assert [port["containerPort"] for port in container["ports"]] == [8080]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]


def test_the_container_is_locked_down(runtime: dict[str, Any]) -> None:
    [container] = runtime["spec"]["containers"]
    security = container["securityContext"]

    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def unknown_fields(document: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The paths of fields in ``document`` that ``schema`` does not declare (which pruning would drop)."""
    if isinstance(document, dict) and "properties" in schema:
        found = []
        for key, value in document.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif (
                not schema.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in schema
            ):
                found.append(f"{path}.{key}")
        return found
    if isinstance(document, list) and "items" in schema:
        return [
            field
            for index, item in enumerate(document)
            for field in unknown_fields(item, schema["items"], f"{path}[{index}]")
        ]
    return []
