"""The result JSON and the 4096-byte limit of Kubernetes termination messages."""

from __future__ import annotations

import json
import math

from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.result import (
    MESSAGE_LIMIT_BYTES,
    REDUCED_METRICS,
    failure_result,
    finite_metrics,
    reduced_result,
    termination_message,
)

DIGEST = "sha256:" + "d" * 64


def success(metric_count: int, code_version: str = "modelloop-trainer 0.1.0") -> dict[str, object]:
    return {
        "status": "Succeeded",
        "metrics": {f"f1_class_{index:04d}": 0.5 + index / 10_000 for index in range(metric_count)},
        "artifactUri": "s3://models/iris/iris-rf/model.joblib",
        "artifactDigest": DIGEST,
        "referenceUri": "s3://models/iris/iris-rf/reference.csv",
        "datasetHash": "sha256:" + "e" * 64,
        "codeVersion": code_version,
        "framework": "sklearn",
        "frameworkVersion": "1.9.1",
        "estimator": "RandomForestClassifier",
        "device": "cpu",
    }


def test_a_small_result_goes_into_the_message_whole_and_compact() -> None:
    result = success(3)
    message = termination_message(result, "s3://models/iris/iris-rf/result.json")
    assert json.loads(message) == result
    assert ", " not in message
    assert ": " not in message


def test_a_large_result_is_reduced_under_the_limit_and_points_to_the_full_one() -> None:
    result = success(400)
    assert len(json.dumps(result)) > MESSAGE_LIMIT_BYTES
    message = termination_message(result, "s3://models/iris/iris-rf/result.json")
    assert len(message.encode()) < MESSAGE_LIMIT_BYTES
    reduced = json.loads(message)
    assert reduced["truncated"] is True
    assert reduced["resultUri"] == "s3://models/iris/iris-rf/result.json"
    for key in ("status", "artifactUri", "artifactDigest", "datasetHash", "codeVersion", "framework"):
        assert reduced[key] == result[key]
    assert list(reduced["metrics"]) == [f"f1_class_{index:04d}" for index in range(REDUCED_METRICS)]


def test_a_reduced_result_keeps_the_champions_evaluation_and_the_reference_and_holdout_uris() -> None:
    champion = {"version": "iris-v3", "metrics": {"accuracy": 0.95, "f1_macro": 0.94}}
    result = {
        **success(400),
        "referencePredictionsUri": "s3://models/iris/iris-rf/reference_predictions.csv",
        "holdoutUri": "s3://models/iris/iris-rf/holdout.csv",
        "champion": champion,
    }
    message = termination_message(result, "s3://models/iris/iris-rf/result.json")
    reduced = json.loads(message)
    assert reduced["truncated"] is True
    assert len(message.encode()) < MESSAGE_LIMIT_BYTES
    assert reduced["champion"] == champion
    assert reduced["referenceUri"] == result["referenceUri"]
    assert reduced["referencePredictionsUri"] == result["referencePredictionsUri"]
    assert reduced["holdoutUri"] == result["holdoutUri"]
    # In the order the operator reads them: the reference files, then the held-out rows.
    kept = list(reduced)
    assert kept.index("referencePredictionsUri") + 1 == kept.index("holdoutUri")


def test_a_champion_too_large_for_the_message_is_cut_then_dropped_before_the_metrics() -> None:
    many = {f"f1_class_{index:04d}": 0.5 for index in range(400)}
    result = {**success(400), "champion": {"version": "iris-v3", "metrics": many, "error": "e" * 5000}}
    reduced = reduced_result(result, None)
    assert list(reduced["champion"]["metrics"]) == list(many)[:REDUCED_METRICS]
    assert len(reduced["champion"]["error"]) == 256
    huge = {**success(3, code_version="v" * 3600), "champion": {"version": "iris-v3", "metrics": {"a": 1.0}}}
    squeezed = reduced_result(huge, None)
    assert "champion" not in squeezed
    assert len(squeezed["metrics"]) == 3


def test_even_absurdly_long_fields_are_cut_to_fit() -> None:
    result = success(400, code_version="v" * 10_000)
    reduced = reduced_result(result, "file:///" + "x" * 5000)
    assert len(json.dumps(reduced, separators=(",", ":")).encode()) < MESSAGE_LIMIT_BYTES
    assert reduced["artifactDigest"] == DIGEST
    assert reduced["codeVersion"].endswith("…")


def test_multibyte_text_counts_in_bytes() -> None:
    message = "é" * 3000  # 3000 characters, 6000 bytes
    result = failure_result(TrainerError(FailureReason.TRAINING_FAILED, message))
    encoded = termination_message(result, None)
    assert len(encoded.encode()) < MESSAGE_LIMIT_BYTES
    assert json.loads(encoded)["reason"] == "TrainingFailed"
    assert "resultUri" not in json.loads(encoded)


def test_a_failure_carries_reason_message_and_extra_fields() -> None:
    error = TrainerError(
        FailureReason.DATA_VALIDATION_FAILED, "schema: no target", checks=[{"name": "schema"}]
    )
    assert failure_result(error) == {
        "status": "Failed",
        "reason": "DataValidationFailed",
        "message": "schema: no target",
        "checks": [{"name": "schema"}],
    }


def test_metrics_are_floats_and_non_finite_ones_are_dropped() -> None:
    metrics = finite_metrics({"accuracy": 1, "r2": math.nan, "rmse": math.inf, "n_train": 120})
    assert metrics == {"accuracy": 1.0, "n_train": 120.0}
    assert all(isinstance(value, float) for value in metrics.values())
