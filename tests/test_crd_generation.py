"""The CRDs generated from the API models: structural, documented, bounded, and committed as generated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from modelloop.api import (
    CATEGORY,
    GROUP,
    KINDS,
    VERSION,
    ApiModel,
    CrdInfo,
    SchemaConversionError,
    crd_filename,
    dump_crd,
    openapi_schema,
    render_crd,
    render_crds,
    write_crds,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO_ROOT / "crds"

ALLOWED_KEYWORDS = {
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def schema_of(info: CrdInfo) -> dict[str, Any]:
    schema: dict[str, Any] = render_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, e.g. ``.spec.tolerations[].key`` or ``.spec.params{}``."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def rules_at(info: CrdInfo) -> dict[str, list[str]]:
    return {
        path: [entry["rule"] for entry in node["x-kubernetes-validations"]]
        for path, node in walk(schema_of(info))
        if "x-kubernetes-validations" in node
    }


kinds = pytest.mark.parametrize("info", KINDS, ids=[info.kind for info in KINDS])


def test_committed_crds_are_exactly_what_the_models_generate() -> None:
    expected = {crd_filename(crd): dump_crd(crd) for crd in render_crds()}
    committed = {path.name: path.read_text() for path in CRDS_DIR.glob(f"{GROUP}_*.yaml")}
    assert committed == expected, "crds/ is out of date: run `make crds`"


def test_crds_cover_the_five_kinds_in_loop_order() -> None:
    names = [crd["metadata"]["name"] for crd in render_crds()]
    assert names == [
        "trainingruns.modelloop.dev",
        "modelversions.modelloop.dev",
        "modelpolicies.modelloop.dev",
        "inferenceservices.modelloop.dev",
        "driftpolicies.modelloop.dev",
    ]


@kinds
def test_crd_serves_and_stores_one_namespaced_version_with_status_subresource(info: CrdInfo) -> None:
    spec = render_crd(info)["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}


@kinds
def test_crd_names_carry_short_names_and_the_modelloop_category(info: CrdInfo) -> None:
    names = render_crd(info)["spec"]["names"]
    assert names["kind"] == info.kind
    assert names["listKind"] == f"{info.kind}List"
    assert names["plural"] == info.plural
    assert names["shortNames"] == list(info.short_names)
    assert names["categories"] == [CATEGORY]


def test_short_names_do_not_clash_with_kserve() -> None:
    short_names = [name for info in KINDS for name in info.short_names]
    assert short_names == ["tr", "mv", "mpol", "mlisvc", "dp"]
    assert "isvc" not in short_names


@kinds
def test_schema_is_structural(info: CrdInfo) -> None:
    for path, node in walk(schema_of(info)):
        assert set(node) <= ALLOWED_KEYWORDS, f"{path}: {set(node) - ALLOWED_KEYWORDS}"
        free_form = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or free_form, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path


@kinds
def test_root_requires_spec_and_leaves_status_optional(info: CrdInfo) -> None:
    root = schema_of(info)
    assert root["required"] == ["spec"]
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"]["type"] == "object"
    assert "required" not in root["properties"]["status"]


@kinds
def test_every_property_has_a_description(info: CrdInfo) -> None:
    undocumented = [
        path
        for path, node in walk(schema_of(info))
        if path.count(".") >= 1
        and not path.startswith(".metadata")
        and not path.endswith(("[]", "{}"))
        and not node.get("description")
    ]
    assert undocumented == []


@kinds
def test_every_string_list_and_map_is_bounded_for_cel_cost(info: CrdInfo) -> None:
    unbounded = []
    for path, node in walk(schema_of(info)):
        if path in (".apiVersion", ".kind"):
            continue
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and node.get("format") != "date-time":
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


@kinds
def test_status_has_phase_observed_generation_and_conditions_keyed_by_type(info: CrdInfo) -> None:
    status = schema_of(info)["properties"]["status"]["properties"]
    assert status["phase"]["type"] == "string"
    assert status["phase"]["enum"]
    assert status["observedGeneration"]["type"] == "integer"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]


@pytest.mark.parametrize(
    ("info", "columns"),
    [
        (KINDS[0], ["Phase", "Model", "GPUs", "Metric", "Nodes", "Engine", "Job", "Age"]),
        (KINDS[1], ["Model", "Version", "Metric", "Validated", "Stage", "Age"]),
        (KINDS[2], ["Champion", "Latest", "Versions", "Keep", "Age"]),
        (KINDS[3], ["Model", "Stable", "Canary", "Traffic", "Step", "Phase", "Backend", "URL", "Age"]),
        (KINDS[4], ["Target", "Phase", "Value", "Last Run", "Age"]),
    ],
    ids=[info.kind for info in KINDS],
)
def test_printer_columns_point_at_fields_of_their_type(info: CrdInfo, columns: list[str]) -> None:
    crd = render_crd(info)
    printed = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in printed] == columns
    nodes = dict(walk(schema_of(info)))
    for column in printed:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = nodes[column["jsonPath"]]
        assert node["type"] == column["type"], column["name"]


def test_cel_rules_sit_where_the_rules_apply() -> None:
    training, model_version, policy, inference, drift = (rules_at(info) for info in KINDS)
    assert set(training) == {
        ".spec",
        ".spec.resources",
        ".spec.tolerations[]",
        ".spec.sweep",
        ".spec.sweep.space{}",
    }
    assert training[".spec"][-1] == "self == oldSelf"
    assert all("distributed" in rule for rule in training[".spec"][:-1])
    assert "gpuProduct" in training[".spec.resources"][0]
    # The rules on typed fields; those on values (the grid's size) are the admission policy's.
    assert len(training[".spec.sweep"]) == 5
    assert len(training[".spec.sweep.space{}"]) == 6
    assert model_version[".spec"] == ["self == oldSelf"]
    assert "self.metadata.name" in model_version[""][0]
    assert set(policy) == {""}
    assert "self.metadata.name" in policy[""][0]
    assert set(inference) == {
        ".spec",
        ".spec.predictor",
        ".spec.rollout.steps",
        ".spec.rollout.stepInterval",
        ".spec.rollout.scaleDownDelay",
        ".spec.rollout.analysis.interval",
        ".spec.rollout.analysis.metrics[]",
    }
    assert "self.backend == oldSelf.backend" in inference[".spec"]
    assert any("self.rollout.shadow" in rule for rule in inference[".spec"])
    assert any("isSorted()" in rule for rule in inference[".spec.rollout.steps"])
    assert any("== 100" in rule for rule in inference[".spec.rollout.steps"])
    # The embedded TrainingRunSpec keeps its rules.
    assert ".spec.retrain.trainingRunTemplate.resources" in drift
    # But not the TrainingRun's immutability: a DriftPolicy's template stays editable.
    assert "self == oldSelf" not in drift.get(".spec.retrain.trainingRunTemplate", [])
    # Each duration has its bounds (tests/test_duration_bounds.py).
    for duration in (".spec.evaluationInterval", ".spec.window", ".spec.cooldown", ".spec.budget.period"):
        assert drift[duration][0].startswith("duration(self) >= duration(")


def test_every_cel_rule_has_a_message() -> None:
    for info in KINDS:
        for path, node in walk(schema_of(info)):
            for entry in node.get("x-kubernetes-validations", []):
                assert entry.get("message") or entry.get("messageExpression"), f"{info.kind} {path}"


def test_free_form_values_preserve_unknown_fields_only_where_declared() -> None:
    nodes = dict(walk(schema_of(KINDS[0])))
    assert nodes[".spec.params{}"] == {"x-kubernetes-preserve-unknown-fields": True}
    # The affinity is typed (core/v1 Affinity, every list bounded): nothing in it is free-form.
    assert nodes[".spec.affinity"]["type"] == "object"
    assert "x-kubernetes-preserve-unknown-fields" not in nodes[".spec.affinity"]
    preserved = [path for path, node in nodes.items() if node.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == [
        ".spec.params{}",
        ".spec.sweep.parameters{}[]",
        ".spec.sweep.space{}.values[]",
        ".status.trials[].params{}",
    ]


def test_quantities_are_int_or_string_with_a_pattern() -> None:
    cpu = dict(walk(schema_of(KINDS[0])))[".spec.resources.cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True
    assert "type" not in cpu
    assert cpu["pattern"].startswith("^")


def test_defaults_and_bounds_from_the_models_reach_the_schema() -> None:
    training = dict(walk(schema_of(KINDS[0])))
    assert training[".spec.resources"]["default"] == {}
    assert training[".spec.resources.gpus"] == {
        "default": 0,
        "description": "Number of GPUs (nvidia.com/gpu) the Job requests.",
        "maximum": 64,
        "minimum": 0,
        "type": "integer",
    }
    inference = dict(walk(schema_of(KINDS[3])))
    assert inference[".spec.backend"]["default"] == "kserve"
    assert inference[".spec.backend"]["enum"] == ["kserve", "seldon"]
    assert inference[".spec.rollout.steps"]["maxItems"] == 20
    assert inference[".spec.rollout.steps[]"] == {"maximum": 100, "minimum": 1, "type": "integer"}
    assert "default" not in inference[".spec.model.version"]


def test_a_drift_metrics_estimate_is_bounded_like_its_query_and_optional() -> None:
    drift = dict(walk(schema_of(KINDS[4])))
    query = drift[".spec.metrics[].query"]
    for band in ("lowerQuery", "upperQuery"):
        bounds = {k: drift[f".spec.metrics[].estimate.{band}"][k] for k in ("type", "minLength", "maxLength")}
        assert (
            bounds
            == {k: query[k] for k in ("type", "minLength", "maxLength")}
            == {
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
            }
        )
    estimate = drift[".spec.metrics[].estimate"]
    assert estimate["required"] == ["lowerQuery", "upperQuery"]
    assert drift[".spec.metrics[].estimate.breachWhen"]["enum"] == ["Estimate", "WholeBand"]
    assert drift[".spec.metrics[].estimate.breachWhen"]["default"] == "Estimate"
    assert "estimate" not in drift[".spec.metrics[]"]["required"]
    version = dict(walk(schema_of(KINDS[1])))
    assert version[".spec.artifact.holdoutUri"]["maxLength"] == 2048
    assert "holdoutUri" not in version[".spec.artifact"]["required"]


def test_optional_fields_are_left_out_of_required() -> None:
    spec = schema_of(KINDS[0])["properties"]["spec"]
    assert spec["required"] == ["image", "dataset", "output"]


class _Union(ApiModel):
    value: int | str = Field(description="Either.")


class _Weird(ApiModel):
    when: Path = Field(description="A path.")


@pytest.mark.parametrize(("model", "complaint"), [(_Union, "_Union.value"), (_Weird, "format 'path'")])
def test_conversion_refuses_what_a_structural_schema_cannot_say(
    model: type[ApiModel], complaint: str
) -> None:
    with pytest.raises(SchemaConversionError, match=complaint):
        openapi_schema(model)


def test_dump_crd_writes_the_header_and_round_trips() -> None:
    crd = render_crds()[0]
    text = dump_crd(crd)
    assert text.startswith("# Generated from operator/modelloop/api by `make crds`; do not edit.\n")
    assert yaml.safe_load(text) == crd
    assert text == dump_crd(render_crds()[0])


def test_write_crds_writes_one_file_per_kind_and_removes_stale_ones(tmp_path: Path) -> None:
    stale = tmp_path / f"{GROUP}_oldkinds.yaml"
    stale.write_text("old")
    unrelated = tmp_path / "kustomization.yaml"
    unrelated.write_text("keep")
    written = write_crds(tmp_path)
    assert [path.name for path in written] == [
        "modelloop.dev_trainingruns.yaml",
        "modelloop.dev_modelversions.yaml",
        "modelloop.dev_modelpolicies.yaml",
        "modelloop.dev_inferenceservices.yaml",
        "modelloop.dev_driftpolicies.yaml",
    ]
    assert not stale.exists()
    assert unrelated.read_text() == "keep"
