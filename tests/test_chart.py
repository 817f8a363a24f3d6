"""The Helm chart (charts/modelloop) holds exactly what its sources make, and every value is documented
and covered by values.schema.json. No cluster and no helm binary: e2e/test_helm.py renders and installs it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from modelloop.api import crd_filename, render_crds

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "modelloop"
ADMISSION = REPO_ROOT / "manifests" / "admission" / "registered-by.yaml"


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


def test_chart_admission_policy_is_the_manifests_policy() -> None:
    manifests = list(yaml.safe_load_all(ADMISSION.read_text()))
    rendered = untemplated((CHART / "templates" / "admission-registered-by.yaml").read_text())
    assert [doc["kind"] for doc in rendered] == [doc["kind"] for doc in manifests]
    assert rendered[0]["spec"] == manifests[0]["spec"]
    assert rendered[1]["spec"] == {**manifests[1]["spec"], "policyName": "NAME-registered-by"}
    assert rendered[0]["metadata"]["name"] == rendered[1]["metadata"]["name"] == "NAME-registered-by"


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
