"""Print KServe's and Seldon Core's real CRDs (from ../shared/crds) as one JSON List for `kubectl apply`.

The files are used as published, with one repair the real API server needs: Seldon Core's
controller-gen output leaves the recursive `graph.children` items schemaless (`items: {}`), which a
structural schema forbids. Seldon's own build patches those items before release (its kustomization notes
that recursive OpenAPI validation is not supported in CRDs); here they become objects whose fields are
preserved, the same effect. Nothing else is changed.

    python hack/third_party_crds.py [CRD_DIR] | kubectl apply --server-side -f -
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(os.environ.get("MODELLOOP_SHARED_DIR", ROOT.parent / "shared")) / "crds"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def make_structural(schema: Any) -> Any:
    """Give every schemaless array item a type, keeping unknown fields; return the schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "array" and schema.get("items") == {}:
            schema["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        for value in schema.values():
            make_structural(value)
    elif isinstance(schema, list):
        for value in schema:
            make_structural(value)
    return schema


def load_crds(directory: Path) -> list[dict[str, Any]]:
    """Every CRD in the folder's YAML files, made structural."""
    crds = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=Loader):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(make_structural(doc))
    if not crds:
        raise SystemExit(f"no CRDs found in {directory}")
    return crds


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    json.dump({"apiVersion": "v1", "kind": "List", "items": load_crds(directory)}, sys.stdout)
