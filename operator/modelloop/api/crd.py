"""Generation of the CustomResourceDefinitions from the API models.

pydantic's JSON schema is close to, but not, a Kubernetes structural schema: it uses ``$ref``,
``anyOf`` with ``null`` for optional fields, titles and ``additionalProperties: false``. This
module rewrites it into the OpenAPI v3 subset that apiextensions.k8s.io/v1 accepts, and fails
loudly on any construct it does not know how to express.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .driftpolicy import DRIFT_POLICY
from .inferenceservice import INFERENCE_SERVICE
from .meta import CATEGORY, GROUP, VERSION, CrdInfo
from .modelpolicy import MODEL_POLICY
from .modelversion import MODEL_VERSION
from .trainingrun import TRAINING_RUN

KINDS: tuple[CrdInfo, ...] = (TRAINING_RUN, MODEL_VERSION, MODEL_POLICY, INFERENCE_SERVICE, DRIFT_POLICY)
"""Every kind of modelloop's API, in the order of the loop."""

HEADER = "# Generated from operator/modelloop/api by `make crds`; do not edit.\n"

# Formats that mean the same to pydantic and to the API server.
_FORMATS = frozenset({"date-time", "date", "byte"})

# Keywords copied as they are: validations Kubernetes accepts and its x-kubernetes-* extensions.
_SCALAR_KEYWORDS = frozenset(
    {
        "description",
        "type",
        "enum",
        "minimum",
        "maximum",
        "pattern",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
    }
)

# Keywords pydantic emits that carry no meaning for Kubernetes.
_DROPPED_KEYWORDS = frozenset({"title", "$defs", "examples"})


class SchemaConversionError(ValueError):
    """A model uses a construct that a structural schema cannot express."""


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as embedded in a CRD."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}), model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Inline ``$ref`` and single-branch ``allOf``, and drop the ``null`` branch of optionals.

    Keys next to the reference (the field's description, default, CEL rules) win over the
    referenced definition's, except CEL rules, which both contribute.
    """
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        return _resolve(_merge(defs[name], node), defs, path)
    if "allOf" in node:
        branches = node.pop("allOf")
        if len(branches) != 1:
            raise SchemaConversionError(f"{path}: allOf with {len(branches)} branches")
        return _resolve(_merge(branches[0], node), defs, path)
    if "anyOf" in node:
        branches = [branch for branch in node.pop("anyOf") if branch != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaConversionError(f"{path}: a union of {len(branches)} types is not structural")
        return _resolve(_merge(branches[0], node), defs, path)
    return node


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key == "x-kubernetes-validations":
            merged[key] = [*merged.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            # pydantic writes `false` for extra="forbid"; the API server prunes unknown fields anyway.
            if value is not False:
                out[key] = _convert(value, defs, f"{path}{{}}")
        elif key == "default":
            # An optional field's `None` default means "absent", which a schema says by omission.
            if value is not None:
                out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "format":
            if value not in _FORMATS:
                raise SchemaConversionError(
                    f"{path}: format {value!r} differs between pydantic and Kubernetes"
                )
            out[key] = value
        elif key in _SCALAR_KEYWORDS or key.startswith("x-kubernetes-"):
            out[key] = value
        else:
            raise SchemaConversionError(f"{path}: JSON schema keyword {key!r} has no structural equivalent")
    if "enum" in out:
        out.setdefault("type", "string")
        if out["type"] == "string":
            # An enum bounds the length anyway; saying so helps the CEL cost estimate.
            out.setdefault("maxLength", max(len(str(choice)) for choice in out["enum"]))
    return dict(sorted(out.items()))


def _spec_schema(info: CrdInfo) -> dict[str, Any]:
    """The spec's schema: the spec model's, with the kind's own rules on the spec as a whole."""
    schema = openapi_schema(info.spec_model)
    if info.spec_rules:
        schema["x-kubernetes-validations"] = [
            *schema.get("x-kubernetes-validations", []),
            *(rule.to_schema() for rule in info.spec_rules),
        ]
    return dict(sorted(schema.items()))


def render_crd(info: CrdInfo) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of one kind."""
    root: dict[str, Any] = {
        "description": info.description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this representation of an object.",
                "type": "string",
            },
            "kind": {
                "description": "REST resource this object represents, in CamelCase.",
                "type": "string",
            },
            # Bounding the name keeps the CEL cost estimate of rules that read it low.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 253},
                    "generateName": {"type": "string", "maxLength": 253},
                },
            },
            "spec": _spec_schema(info),
            "status": openapi_schema(info.status_model),
        },
    }
    if info.rules:
        root["x-kubernetes-validations"] = [rule.to_schema() for rule in info.rules]
    columns = [
        {
            "name": column.name,
            "type": column.type,
            "jsonPath": column.json_path,
            "description": column.description,
            **({"priority": column.priority} if column.priority else {}),
        }
        for column in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "modelloop"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def render_crds() -> list[dict[str, Any]]:
    """The CRDs of every kind, in the stable order of ``KINDS``."""
    return [render_crd(info) for info in KINDS]


def crd_filename(crd: dict[str, Any]) -> str:
    """The file a CRD is written to, ``<group>_<plural>.yaml`` as kubebuilder names them."""
    spec = crd["spec"]
    return f"{spec['group']}_{spec['names']['plural']}.yaml"


class _CrdDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks so long descriptions stay readable, and every value in
    full (no &anchors and *aliases for values the models share, such as an enum's members)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CrdDumper.add_representer(str, _represent_str)


def dump_crd(crd: dict[str, Any]) -> str:
    """A CRD as YAML, with the generated-file header; the output is stable for equal input."""
    body = yaml.dump(crd, Dumper=_CrdDumper, sort_keys=False, default_flow_style=False, width=120)
    return HEADER + body


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into ``directory`` and remove stale generated CRD files; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in render_crds():
        path = directory / crd_filename(crd)
        path.write_text(dump_crd(crd))
        written.append(path)
    for stale in set(directory.glob(f"{GROUP}_*.yaml")) - set(written):
        stale.unlink()
    (directory / "Kustomization").write_text(_kustomization(sorted(p.name for p in written)))
    return written


def _kustomization(files: list[str]) -> str:
    """The CRDs as a kustomization (manifests/base reads them so). No .yaml extension: `kubectl apply -f`
    of the folder, and every *.yaml glob over it, skip it."""
    header = (
        "# modelloop's CRDs as a kustomization, for manifests/base (kustomize loads files only from\n"
        "# below a kustomization's folder, and a folder with its own kustomization from anywhere).\n"
        "# Generated by `make crds` with the CRDs; the name has no .yaml extension so that\n"
        "# `kubectl apply -f crds/` skips it.\n"
    )
    body = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    return header + body + "".join(f"- {name}\n" for name in files)
