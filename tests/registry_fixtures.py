"""ModelVersion and ModelPolicy objects as the API server returns them, for the registry's unit tests."""

from __future__ import annotations

from typing import Any

from modelloop.naming import ANNOTATION_REQUESTED_STAGE, ANNOTATION_STAGE_REASON, LABEL_MANAGED_BY, MANAGED_BY

NOW = "2026-11-23T10:00:00Z"


def version(
    number: int,
    model: str = "iris",
    *,
    metrics: dict[str, float] | None = None,
    validation: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    requested: str | None = None,
    reason: str | None = None,
    by_operator: bool = True,
) -> dict[str, Any]:
    annotations = {}
    if requested is not None:
        annotations[ANNOTATION_REQUESTED_STAGE] = requested
    if reason is not None:
        annotations[ANNOTATION_STAGE_REASON] = reason
    spec: dict[str, Any] = {
        "modelName": model,
        "version": number,
        "artifact": {"uri": f"s3://models/{model}/{number}"},
        "framework": {"name": "sklearn"},
        "metrics": {"accuracy": 0.9} if metrics is None else metrics,
    }
    if validation is not None:
        spec["validation"] = validation
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": f"{model}-v{number}",
            "namespace": "ml",
            "uid": f"uid-{model}-{number}",
            "resourceVersion": str(100 + number),
            "generation": 1,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY} if by_operator else {},
            "annotations": annotations,
        },
        "spec": spec,
        "status": status or {},
    }


def decided(stage: str, phase: str = "Validated", since: str = "2026-11-01T00:00:00Z") -> dict[str, Any]:
    """The status of a version validated earlier and now in ``stage``."""
    return {
        "phase": phase,
        "stage": stage,
        "history": [{"stage": stage, "time": since, "reason": "Registered", "message": "Registered."}],
    }


def policy(spec: dict[str, Any], name: str = "iris") -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "ModelPolicy",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-policy", "generation": 1},
        "spec": spec,
        "status": {},
    }


def gate(metric: str, comparison: str, threshold: float) -> dict[str, Any]:
    return {"metric": metric, "comparison": comparison, "threshold": threshold}
