"""The HTTP API's request bodies and replies, as pure functions (no HTTP here)."""

from __future__ import annotations

import math
from typing import Any

from modelloop_detector.detectors import Verdict
from modelloop_detector.events import DEFAULT_ENDPOINT
from modelloop_detector.reference import Reference
from modelloop_detector.service import Registration, ServiceState, VersionSpec


class BadRequest(ValueError):
    """A request body that does not say what the API needs (HTTP 400)."""


def parse_registration(body: Any) -> Registration:
    """``PUT /v1/services/{namespace}/{service}``'s body."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with 'model' and 'versions'")
    model, versions = body.get("model"), body.get("versions")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be the model's name")
    if not isinstance(versions, dict):
        raise BadRequest("'versions' must map each served version to its referenceUri and endpoint")
    target = body.get("targetColumn")
    if target is not None and not isinstance(target, str):
        raise BadRequest("'targetColumn' must be a column name")
    categorical = body.get("categorical", [])
    if not isinstance(categorical, list) or not all(isinstance(name, str) for name in categorical):
        raise BadRequest("'categorical' must be a list of column names")
    specs = {}
    for name, spec in versions.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("referenceUri"), str):
            raise BadRequest(f"version {name!r} needs a 'referenceUri'")
        predictions = spec.get("predictionsUri")
        if predictions is not None and not isinstance(predictions, str):
            raise BadRequest(f"version {name!r}: 'predictionsUri' must be a URI")
        endpoint = spec.get("endpoint", DEFAULT_ENDPOINT)
        if endpoint not in ("default", "canary"):
            raise BadRequest(f"version {name!r}: 'endpoint' must be 'default' or 'canary', not {endpoint!r}")
        specs[str(name)] = VersionSpec(spec["referenceUri"], predictions or None, endpoint)
    return Registration(model=model, versions=specs, target_column=target, categorical=tuple(categorical))


def parse_labels(body: Any) -> list[tuple[str, Any]]:
    """``POST /v1/feedback/{namespace}/{service}``'s body: (row id, label) pairs."""
    labels = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(labels, list):
        raise BadRequest('the body must be {"labels": [{"id": ..., "label": ...}, ...]}')
    pairs = []
    for item in labels:
        if not isinstance(item, dict) or "id" not in item or "label" not in item:
            raise BadRequest(f"each label needs an 'id' and a 'label': {item!r}")
        if isinstance(item["label"], dict | list) or item["label"] is None:
            raise BadRequest(f"a label must be a class or a number: {item!r}")
        pairs.append((str(item["id"]), item["label"]))
    return pairs


def reference_summary(reference: Reference) -> dict[str, Any]:
    """What a registration reply says about one version's reference."""
    return {"referenceRows": len(reference.rows), "features": list(reference.features)}


def service_status(state: ServiceState) -> dict[str, Any]:
    """``GET /v1/services/{namespace}/{service}``'s reply. The caller holds ``state.lock``."""
    versions = {}
    for name, version in state.versions.items():
        labelled = sum(1 for row_id in version.window.ids() if state.labels.get(row_id) is not None)
        versions[name] = {
            "endpoint": version.endpoint,
            "referenceUri": version.reference.uri,
            "referenceRows": len(version.reference.rows),
            "features": list(version.reference.features),
            "windowRows": len(version.window),
            "labelledRows": labelled,
            "feedback": {
                "labels": version.feedback.labels_total,
                "accuracy": version.feedback.accuracy(),
                "mae": version.feedback.mae(),
            },
            "mmdDevice": version.detectors.device,
            "verdicts": [
                record for verdict in version.verdicts.values() for record in verdict_records(verdict)
            ],
        }
    return {
        "namespace": state.namespace,
        "service": state.name,
        "model": state.model,
        "pendingLabels": state.labels.pending(),
        "versions": versions,
    }


def verdict_records(verdict: Verdict) -> list[dict[str, Any]]:
    """A verdict as flat records: the combined one (feature "" or "prediction"), then one per feature."""
    combined = "prediction" if verdict.detector == "prediction" else ""
    records = [_record(verdict, combined, verdict.score, verdict.p_value)]
    if verdict.detector in ("ks", "chi2"):
        records.extend(_record(verdict, item.feature, item.score, item.p_value) for item in verdict.features)
    return records


def _record(verdict: Verdict, feature: str, score: float, p_value: float) -> dict[str, Any]:
    return {
        "detector": verdict.detector,
        "feature": feature,
        "score": _finite(score),
        "pValue": _finite(p_value),
        "threshold": _finite(verdict.threshold),
        "drift": verdict.drift,
        "rows": verdict.rows,
        "time": verdict.time,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
