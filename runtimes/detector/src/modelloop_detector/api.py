"""The HTTP API's request bodies and replies, as pure functions (no HTTP here).

The bodies the detector's clients write (a registration, an export) are read by ``modelloop_contracts``
(:class:`~modelloop_contracts.Registration`, :class:`~modelloop_contracts.ExportRequest`); a body that
does not say what the API needs is an :class:`~modelloop_contracts.InvalidMessage` (HTTP 400).
"""

from __future__ import annotations

import math
from typing import Any

from modelloop_contracts import InvalidMessage

from modelloop_detector.detectors import Verdict
from modelloop_detector.estimation import Estimate
from modelloop_detector.reference import Reference
from modelloop_detector.service import Estimation, ServiceState, VersionState


def parse_labels(body: Any) -> list[tuple[str, Any]]:
    """``POST /v1/feedback/{namespace}/{service}``'s body: (row id, label) pairs."""
    labels = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(labels, list):
        raise InvalidMessage('the body must be {"labels": [{"id": ..., "label": ...}, ...]}')
    pairs = []
    for item in labels:
        if not isinstance(item, dict) or "id" not in item or "label" not in item:
            raise InvalidMessage(f"each label needs an 'id' and a 'label': {_short(item)}")
        if isinstance(item["label"], dict | list) or item["label"] is None:
            raise InvalidMessage(f"a label must be a class or a number: {_short(item)}")
        pairs.append((str(item["id"]), item["label"]))
    return pairs


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def reference_summary(reference: Reference, estimation: Estimation | None = None) -> dict[str, Any]:
    """What a registration reply says about one version's reference, and about its holdout where it
    named one (``estimation``: ``error`` says why a holdout that cannot be used is not)."""
    summary: dict[str, Any] = {"referenceRows": len(reference.rows), "features": list(reference.features)}
    if estimation is not None:
        summary["estimation"] = estimation_summary(estimation)
    return summary


def estimation_summary(estimation: Estimation) -> dict[str, Any]:
    """How a version's performance is estimated: its holdout, the metrics, or the holdout's problem."""
    estimator = estimation.estimator
    return {
        "holdoutUri": estimation.holdout_uri,
        "holdoutRows": estimation.holdout_rows,
        "task": None if estimator is None else estimator.task,
        "metrics": [] if estimator is None else list(estimator.metrics),
        "classes": None if estimator is None or estimator.classes is None else list(estimator.classes),
        "error": estimation.error,
    }


def estimation_status(version: VersionState) -> dict[str, Any] | None:
    """``GET``'s ``estimation`` of one version: the holdout, the last estimates with their band, and the
    performance measured on the window's labelled rows; None without a holdout. The caller holds the
    service's lock."""
    if version.estimation is None:
        return None
    realised = version.realised
    return {
        **estimation_summary(version.estimation),
        "probabilityRows": version.window.probability_rows(),
        "estimates": [_estimate_record(estimate, version.estimated_at) for estimate in version.estimates],
        "realised": None
        if realised is None
        else {
            "rows": realised.rows,
            "time": realised.time,
            "metrics": {metric: _finite(value) for metric, value in realised.values.items()},
        },
    }


def _estimate_record(estimate: Estimate, time: float | None) -> dict[str, Any]:
    return {
        "metric": estimate.metric,
        "value": _finite(estimate.value),
        "lower": _finite(estimate.lower),
        "upper": _finite(estimate.upper),
        "rows": estimate.rows,
        "time": time,
    }


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
            # Inconclusive until the window has been full once since the version was registered (in this
            # process: a restarted detector starts over), so that "no drift" is never read off a few rows.
            "verdictState": "Judged" if version.complete else "Inconclusive",
            "collectingSince": version.collecting_since,
            "labelledRows": labelled,
            "feedback": {
                "labels": version.feedback.labels_total,
                "accuracy": version.feedback.accuracy(),
                "mae": version.feedback.mae(),
            },
            "mmdDevice": version.detectors.device,
            "estimation": estimation_status(version),
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
