"""modelloop's Argo CD integration: a tested health check for every kind, the argocd-cm patch that ships
them, and the example Application. (Running the checks through Argo CD's own Lua code is the Go test's:
hack/test-argocd-health.sh.)"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import typing
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic
import pytest
import yaml

from modelloop.api import API_VERSION, GROUP, KINDS, CrdInfo
from modelloop.naming import ANNOTATION_REGISTERED_BY, LABEL_MODEL, LABEL_STAGE

ROOT = Path(__file__).resolve().parents[1]
HEALTH_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Unknown")
CHECKS = ROOT / "argocd" / "resource_customizations" / GROUP
APPLICATION = ROOT / "manifests" / "argocd" / "application.yaml"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("argocd_health", ROOT / "hack" / "argocd_health.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["argocd_health"] = module
    spec.loader.exec_module(module)
    return module


argocd_health = _load_generator()


def test_committed_argocd_cm_patch_is_what_the_health_checks_make() -> None:
    wanted = argocd_health.render(argocd_health.health_checks())
    assert argocd_health.OUTPUT.read_text() == wanted, "run python hack/argocd_health.py"


def test_argocd_cm_patch_holds_each_health_check_byte_for_byte() -> None:
    patch = yaml.safe_load(argocd_health.OUTPUT.read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    # Argo CD's settings manager only sees ConfigMaps with this label.
    assert patch["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd"
    assert patch["data"] == {
        f"resource.customizations.health.{GROUP}_{info.kind}": (CHECKS / info.kind / "health.lua").read_text()
        for info in KINDS
    }


def test_check_mode_fails_on_a_stale_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "argocd-cm-health.yaml"
    stale.write_text(argocd_health.OUTPUT.read_text().replace("Healthy", "Degraded", 1))
    monkeypatch.setattr(argocd_health, "OUTPUT", stale)
    monkeypatch.setattr(argocd_health, "ROOT", tmp_path)
    assert argocd_health.main(["--check"]) == 1
    assert argocd_health.main([]) == 0
    assert argocd_health.main(["--check"]) == 0


def test_a_health_check_with_trailing_spaces_is_refused() -> None:
    # A YAML block scalar cannot keep them: the argocd-cm entry would differ from the tested script.
    with pytest.raises(ValueError, match="trailing spaces"):
        argocd_health.block_scalar("return {} \n")


@pytest.mark.parametrize("info", KINDS, ids=lambda info: info.kind)
def test_every_kind_has_a_tested_health_check(info: CrdInfo) -> None:
    folder = CHECKS / info.kind
    assert (folder / "health.lua").is_file(), f"argocd/resource_customizations/{GROUP}/{info.kind}/health.lua"
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    assert tests, f"{folder}/health_test.yaml has no tests"
    for test in tests:
        assert test["healthStatus"]["status"] in HEALTH_STATUSES
        assert (folder / test["inputPath"]).is_file()


def test_every_health_check_is_for_a_kind_of_the_api() -> None:
    assert sorted(p.name for p in CHECKS.iterdir()) == sorted(info.kind for info in KINDS)


def _cases() -> list[tuple[CrdInfo, Path]]:
    return [
        (info, path) for info in KINDS for path in sorted((CHECKS / info.kind / "testdata").glob("*.yaml"))
    ]


def _phases(info: CrdInfo) -> set[str]:
    """The phases of the kind's API: the enum of its status model's ``phase``."""
    annotation = info.status_model.model_fields["phase"].annotation
    [enum] = [arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, Enum)]
    return {phase.value for phase in enum}


def _reports_invalid_spec(status: dict[str, Any]) -> bool:
    ready = [c for c in status.get("conditions") or () if c["type"] == "Ready"]
    return status.get("reason") == "InvalidSpec" or any(c["reason"] == "InvalidSpec" for c in ready)


@pytest.mark.parametrize(
    ("info", "path"), _cases(), ids=lambda case: case.stem if isinstance(case, Path) else case.kind
)
def test_health_test_objects_are_objects_the_operator_could_have_written(info: CrdInfo, path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert (obj["apiVersion"], obj["kind"]) == (API_VERSION, info.kind)
    status = obj.get("status") or {}
    # A spec is invalid exactly where the status says so (the operator's models are stricter than the CRD).
    try:
        info.spec_model.model_validate(obj["spec"], context={"name": obj["metadata"]["name"]})
        valid = True
    except pydantic.ValidationError:
        valid = False
    assert valid != _reports_invalid_spec(status)
    # A status in a phase of the API must fit the API; the cases of phases it does not have yet (or no
    # more) are what a newer or older operator might write.
    if status.get("phase") in _phases(info):
        info.status_model.model_validate(status)


def test_the_application_ignores_what_the_operator_and_the_api_server_write_on_model_versions() -> None:
    application = yaml.safe_load(APPLICATION.read_text())
    [ignored] = application["spec"]["ignoreDifferences"]
    assert (ignored["group"], ignored["kind"]) == (GROUP, "ModelVersion")

    def pointer(field: str, key: str) -> str:
        return f"/metadata/{field}/{key.replace('~', '~0').replace('/', '~1')}"

    assert sorted(ignored["jsonPointers"]) == sorted(
        [
            pointer("annotations", ANNOTATION_REGISTERED_BY),
            pointer("labels", LABEL_STAGE),
            pointer("labels", LABEL_MODEL),
        ]
    )
    assert "RespectIgnoreDifferences=true" in application["spec"]["syncPolicy"]["syncOptions"]


def _kubectl() -> str | None:
    cache = Path(os.environ.get("MODELLOOP_CACHE", Path.home() / ".cache" / "modelloop"))
    built = sorted(cache.glob("bin/k8s-*/kubectl"))
    return shutil.which("kubectl") or (str(built[-1]) if built else None)


def test_the_application_syncs_the_crds_then_the_operator_then_the_users_objects(tmp_path: Path) -> None:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("needs kubectl (its kustomize): make cluster-bins builds one")
    application = yaml.safe_load(APPLICATION.read_text())
    [modelloop, models] = application["spec"]["sources"]
    assert modelloop["path"] == "manifests" and "kustomize" not in models
    # What Argo CD does with source.kustomize.patches: add them to the source's kustomization (kustomize
    # takes a folder by a relative path only).
    source = os.path.relpath(ROOT / modelloop["path"], tmp_path)
    kustomization = {"resources": [source], "patches": modelloop["kustomize"]["patches"]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True)

    waves = {}
    for obj in yaml.safe_load_all(built.stdout):
        annotations = obj["metadata"].get("annotations") or {}
        waves[obj["kind"], obj["metadata"]["name"]] = annotations.get("argocd.argoproj.io/sync-wave")
        if obj["kind"] == "CustomResourceDefinition":
            assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"
    assert {name: wave for (kind, name), wave in waves.items() if kind == "CustomResourceDefinition"} == {
        info.crd_name: "-2" for info in KINDS
    }
    others = {key: wave for key, wave in waves.items() if key[0] != "CustomResourceDefinition"}
    assert ("Deployment", "modelloop-operator") in others
    assert set(others.values()) == {"-1"}, "every object of the operator's install goes in wave -1"
