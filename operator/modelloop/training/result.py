"""The trainer's result, as it reaches the operator: the JSON its container writes as termination message.

The training pod has no Kubernetes API permissions; the kubelet copies the message into the pod's status,
where the operator reads it. A result too large for a message (4 KiB) is stored beside the artifact and
the message points to it with ``resultUri``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# Environment variables of the trainer contract (runtimes/trainer/README.md).
ENV_RUN_NAME = "MODELLOOP_RUN_NAME"
ENV_TRIAL = "MODELLOOP_TRIAL"
ENV_MODEL_NAME = "MODELLOOP_MODEL_NAME"
ENV_PARAMS = "MODELLOOP_PARAMS"
ENV_DATASET_URI = "MODELLOOP_DATASET_URI"
ENV_DATASET_FORMAT = "MODELLOOP_DATASET_FORMAT"
ENV_TARGET_COLUMN = "MODELLOOP_TARGET_COLUMN"
ENV_DATASET_HASH = "MODELLOOP_DATASET_HASH"
ENV_OUTPUT_URI = "MODELLOOP_OUTPUT_URI"
ENV_RESULT_PATH = "MODELLOOP_RESULT_PATH"
ENV_CODE_VERSION = "MODELLOOP_CODE_VERSION"
ENV_CHAMPION_URI = "MODELLOOP_CHAMPION_URI"
ENV_CHAMPION_VERSION = "MODELLOOP_CHAMPION_VERSION"
ENV_ADDITIONAL_DATASETS = "MODELLOOP_ADDITIONAL_DATASETS"
RESULT_PATH = "/dev/termination-log"


@dataclass(frozen=True)
class ChampionReport:
    """The champion as the trainer evaluated it on the run's held-out data: its metrics, or why not."""

    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class TrainerResult:
    """What a finished trainer reported. ``succeeded`` is False for a failure it explained itself."""

    succeeded: bool
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_uri: str | None = None
    artifact_digest: str | None = None
    reference_uri: str | None = None
    reference_predictions_uri: str | None = None
    holdout_uri: str | None = None
    """The held-out rows with their labels and the model's predictions and probabilities (``holdout.csv``):
    what the drift detector estimates the model's performance from before labels arrive."""
    champion: ChampionReport | None = None
    dataset_hash: str | None = None
    code_version: str | None = None
    framework: str | None = None
    framework_version: str | None = None
    result_uri: str | None = None
    reason: str | None = None
    message: str | None = None


def parse_result(message: str | None) -> TrainerResult | None:
    """Parse a termination message; None when there is none or it is not the trainer's JSON (a crash, an
    image that is not ours): the operator then relies on the Job's own conditions."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("status") not in ("Succeeded", "Failed"):
        return None
    return TrainerResult(
        succeeded=raw["status"] == "Succeeded",
        metrics=_metrics(raw.get("metrics")),
        artifact_uri=_text(raw.get("artifactUri")),
        artifact_digest=_text(raw.get("artifactDigest")),
        reference_uri=_text(raw.get("referenceUri")),
        reference_predictions_uri=_text(raw.get("referencePredictionsUri")),
        holdout_uri=_text(raw.get("holdoutUri")),
        champion=_champion(raw.get("champion")),
        dataset_hash=_text(raw.get("datasetHash")),
        code_version=_text(raw.get("codeVersion")),
        framework=_text(raw.get("framework")),
        framework_version=_text(raw.get("frameworkVersion")),
        result_uri=_text(raw.get("resultUri")),
        reason=_text(raw.get("reason")),
        message=_text(raw.get("message")),
    )


def _champion(raw: Any) -> ChampionReport | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), str) or not raw["version"]:
        return None
    error = raw.get("error")
    if error is None and not isinstance(raw.get("metrics"), dict):
        error = "the trainer reported no metrics for the champion"
    return ChampionReport(
        version=raw["version"][:253],
        metrics=_metrics(raw.get("metrics")),
        error=None if error is None else _text(error),
    )


def _metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    metrics = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            metrics[str(name)[:63]] = float(value)
    return metrics


def _text(value: Any, limit: int = 1024) -> str | None:
    return str(value)[:limit] if value is not None else None
