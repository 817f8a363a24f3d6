"""The kustomizations of crds/ and manifests/ name every manifest they should, and the HA overlay's copies of
the peering manifests are the originals. (Rendering them and applying them to a real API server is
e2e/test_kustomize.py's.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The peering manifests are not the operator's base: only the HA overlay has them (as copies).
PEERING = ("peering-crds.yaml", "peering.yaml")


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
