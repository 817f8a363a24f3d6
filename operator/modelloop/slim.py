"""Slim copies of Kubernetes objects, for the operator's in-memory indexes.

kopf hands handlers whole bodies (managedFields, kubectl's last-applied copy and all); the indexes keep only
what the controllers read, so that thousands of objects cost little memory.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

_METADATA_KEYS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "labels",
    "deletionTimestamp",
)


def slim_object(body: Mapping[str, Any], annotations: Collection[str] = ()) -> dict[str, Any]:
    """``body`` with its identity, labels, spec and status, and of its annotations only ``annotations``."""
    meta = body["metadata"]
    slim_meta = {key: meta[key] for key in _METADATA_KEYS if key in meta}
    kept = {key: value for key, value in (meta.get("annotations") or {}).items() if key in annotations}
    if kept:
        slim_meta["annotations"] = kept
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": slim_meta,
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }
