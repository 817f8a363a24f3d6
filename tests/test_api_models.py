"""The API models validate specs the way the CRDs do: camelCase in, the same bounds and rules."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from modelloop.api import (
    ApiModel,
    Backend,
    Comparison,
    Condition,
    DriftPolicySpec,
    EstimateBreach,
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelReference,
    ModelVersionSpec,
    ModelVersionStatus,
    SweepStrategy,
    TrainingRunSpec,
    TrainingRunStatus,
    parse_duration,
)

TRAINING_RUN: dict[str, Any] = {
    "image": "ghcr.io/example/trainer:1.0",
    "command": ["python", "-m", "trainer"],
    "params": {"n_estimators": 100, "learning_rate": 0.1, "criterion": "gini", "bootstrap": True},
    "dataset": {"uri": "s3://data/iris.csv", "format": "csv", "targetColumn": "species"},
    "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-40GB", "cpu": "500m", "memory": "4Gi"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"pool": "gpu"},
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    },
    "backoffLimit": 1,
    "activeDeadlineSeconds": 3600,
    "queueName": "team-a",
    "output": {"modelName": "iris", "artifactUriPrefix": "s3://models/iris"},
    "validation": {"gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.9}]},
    "sweep": {
        "strategy": "Random",
        "parameters": {"learning_rate": [0.1, 0.01], "max_depth": [2, 4, 8]},
        "maxTrials": 4,
        "parallelism": 2,
        "objective": {"metric": "accuracy", "direction": "Maximize"},
    },
    "triggeredBy": {"kind": "DriftPolicy", "name": "iris-drift", "evidence": {"drift_score": "0.71"}},
}

MODEL_VERSION: dict[str, Any] = {
    "modelName": "iris",
    "version": 3,
    "artifact": {"uri": "s3://models/iris/iris-1", "digest": "sha256:0123abcd"},
    "framework": {"name": "sklearn", "version": "1.5.2"},
    "metrics": {"accuracy": 0.953},
    "lineage": {"trainingRun": "iris-1", "params": {"n_estimators": 100}, "trigger": {"kind": "User"}},
    "createdBy": "TrainingRun/iris-1",
}

INFERENCE_SERVICE: dict[str, Any] = {
    "model": {"name": "iris"},
    "backend": "seldon",
    "predictor": {"minReplicas": 1, "maxReplicas": 3, "resources": {"cpu": 1, "memory": "1Gi"}},
    "rollout": {
        "steps": [10, 25, 50, 100],
        "stepInterval": "2m",
        "analysis": {
            "interval": "30s",
            "metrics": [{"name": "error-rate", "query": "sum(rate(x[1m]))", "max": 0.01}],
        },
    },
}

DRIFT_POLICY: dict[str, Any] = {
    "target": {"inferenceService": "iris"},
    "prometheus": {"url": "http://prometheus:9090"},
    "metrics": [
        {"name": "drift", "query": "max(drift_score)", "threshold": 0.5, "comparison": "GreaterThan"}
    ],
    "window": "5m",
    "retrain": {"trainingRunTemplate": {k: TRAINING_RUN[k] for k in ("image", "dataset", "output")}},
}


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value`` (or removed, for ``...``)."""
    result = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = result
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return result


@pytest.mark.parametrize(
    ("model", "example"),
    [
        (TrainingRunSpec, TRAINING_RUN),
        (ModelVersionSpec, MODEL_VERSION),
        (InferenceServiceSpec, INFERENCE_SERVICE),
        (DriftPolicySpec, DRIFT_POLICY),
    ],
    ids=["TrainingRun", "ModelVersion", "InferenceService", "DriftPolicy"],
)
def test_spec_accepts_camel_case_example_and_dumps_it_back_unchanged(
    model: type[ApiModel], example: dict[str, Any]
) -> None:
    parsed = model.model_validate(example)
    assert parsed.model_dump(mode="json", exclude_unset=True) == example


def test_fields_read_as_snake_case_in_python() -> None:
    spec = TrainingRunSpec.model_validate(TRAINING_RUN)
    assert spec.resources.gpu_product == "NVIDIA-A100-SXM4-40GB"
    assert spec.sweep is not None
    assert spec.sweep.strategy is SweepStrategy.RANDOM
    assert spec.sweep.max_trials == 4
    assert spec.params == {"n_estimators": 100, "learning_rate": 0.1, "criterion": "gini", "bootstrap": True}


def test_models_can_be_built_by_field_name_and_dump_camel_case() -> None:
    spec = InferenceServiceSpec(model=ModelReference(name="iris", version=2))
    assert spec.model_dump(mode="json", exclude_none=True) == {
        "model": {"name": "iris", "version": 2},
        "backend": "kserve",
        "paused": False,
    }
    built = TrainingRunSpec.model_validate(
        {"image": "t:1", "dataset": {"uri": "sklearn://iris"}, "output": {"model_name": "iris"}}
    )
    assert built.output.model_name == "iris"


def test_defaults_match_the_crd_defaults() -> None:
    spec = TrainingRunSpec.model_validate(
        {"image": "t:1", "dataset": {"uri": "sklearn://iris"}, "output": {"modelName": "iris"}}
    )
    assert spec.resources.gpus == 0
    assert spec.dataset.format == "csv"
    assert InferenceServiceSpec.model_validate({"model": {"name": "iris"}}).backend is Backend.KSERVE
    policy = DriftPolicySpec.model_validate(DRIFT_POLICY)
    assert (policy.window, policy.cooldown, policy.evaluation_interval) == ("5m", "1h", "1m")


@pytest.mark.parametrize(
    ("model", "spec", "complaint"),
    [
        (TrainingRunSpec, changed(TRAINING_RUN, "resources", {"gpuProduct": "A100"}), "gpuProduct requires"),
        (TrainingRunSpec, changed(TRAINING_RUN, "sweep.maxTrials", ...), "maxTrials is required"),
        (TrainingRunSpec, changed(TRAINING_RUN, "sweep.parallelism", 5), "parallelism must not exceed"),
        (TrainingRunSpec, changed(TRAINING_RUN, "sweep.parameters", {}), "spec.sweep needs parameters"),
        (TrainingRunSpec, changed(TRAINING_RUN, "output.modelName", "Iris_Model"), "output.modelName"),
        (TrainingRunSpec, changed(TRAINING_RUN, "image", ...), "image"),
        (TrainingRunSpec, changed(TRAINING_RUN, "dataset.format", "json"), "dataset.format"),
        (TrainingRunSpec, changed(TRAINING_RUN, "resources.cpu", "lots"), "resources.cpu"),
        (TrainingRunSpec, changed(TRAINING_RUN, "resources.gpus", -1), "resources.gpus"),
        (TrainingRunSpec, changed(TRAINING_RUN, "activeDeadlineSeconds", 0), "activeDeadlineSeconds"),
        (TrainingRunSpec, changed(TRAINING_RUN, "params", {"layers": [64, 32]}), "params.layers"),
        (TrainingRunSpec, changed(TRAINING_RUN, "tolerations", [{"value": "v"}]), "operator must be Exists"),
        (
            TrainingRunSpec,
            changed(TRAINING_RUN, "tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
            "value must be empty",
        ),
        (
            TrainingRunSpec,
            changed(TRAINING_RUN, "tolerations", [{"key": "k", "tolerationSeconds": 30}]),
            "tolerationSeconds requires effect NoExecute",
        ),
        (TrainingRunSpec, changed(TRAINING_RUN, "triggeredBy.kind", "Cron"), "triggeredBy.kind"),
        (ModelVersionSpec, changed(MODEL_VERSION, "version", 0), "version"),
        (ModelVersionSpec, changed(MODEL_VERSION, "framework.name", "keras"), "framework.name"),
        (ModelVersionSpec, changed(MODEL_VERSION, "artifact", {}), "artifact.uri"),
        (
            InferenceServiceSpec,
            changed(INFERENCE_SERVICE, "rollout.steps", [10, 10, 100]),
            "strictly increasing",
        ),
        (
            InferenceServiceSpec,
            changed(INFERENCE_SERVICE, "rollout.steps", [50, 25, 100]),
            "strictly increasing",
        ),
        (InferenceServiceSpec, changed(INFERENCE_SERVICE, "rollout.steps", [10, 50]), "end at 100"),
        (InferenceServiceSpec, changed(INFERENCE_SERVICE, "rollout.steps", []), "rollout.steps"),
        (InferenceServiceSpec, changed(INFERENCE_SERVICE, "rollout.steps", [50, 101]), "rollout.steps.1"),
        (
            InferenceServiceSpec,
            changed(INFERENCE_SERVICE, "rollout.stepInterval", "2 minutes"),
            "stepInterval",
        ),
        (
            InferenceServiceSpec,
            changed(INFERENCE_SERVICE, "rollout.analysis.metrics", [{"name": "e", "query": "q"}]),
            "needs min, max or both",
        ),
        (
            InferenceServiceSpec,
            changed(
                INFERENCE_SERVICE,
                "rollout.analysis.metrics",
                [{"name": "e", "query": "q", "min": 2, "max": 1}],
            ),
            "min must not exceed its max",
        ),
        (
            InferenceServiceSpec,
            changed(INFERENCE_SERVICE, "predictor.minReplicas", 5),
            "minReplicas must not exceed",
        ),
        (InferenceServiceSpec, changed(INFERENCE_SERVICE, "backend", "triton"), "backend"),
        (DriftPolicySpec, changed(DRIFT_POLICY, "metrics", []), "metrics"),
        (DriftPolicySpec, changed(DRIFT_POLICY, "window", "10 minutes"), "window"),
        (
            DriftPolicySpec,
            changed(DRIFT_POLICY, "retrain.trainingRunTemplate.resources", {"gpuProduct": "A100"}),
            "retrain.trainingRunTemplate.resources",
        ),
    ],
)
def test_spec_rejects_invalid_input_naming_the_field(
    model: type[ApiModel], spec: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        model.model_validate(spec)


def drift_metric(name: str) -> dict[str, Any]:
    return {"name": name, "query": "max(drift_score)", "threshold": 0.5, "comparison": "GreaterThan"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        # What a new user tries: a blank or path-like metric name, a blank or spaced image, a blank command.
        (changed(DRIFT_POLICY, "metrics", [drift_metric("")]), "metrics.0.name"),
        (changed(DRIFT_POLICY, "metrics", [drift_metric("../../etc/passwd")]), "metrics.0.name"),
        (changed(DRIFT_POLICY, "metrics", [drift_metric("$(rm -rf /)")]), "metrics.0.name"),
        (changed(DRIFT_POLICY, "retrain.trainingRunTemplate.image", ""), "retrain.trainingRunTemplate.image"),
        (
            changed(DRIFT_POLICY, "retrain.trainingRunTemplate.image", "  "),
            "retrain.trainingRunTemplate.image",
        ),
        (
            changed(DRIFT_POLICY, "retrain.trainingRunTemplate.image", "trainer :1"),
            "retrain.trainingRunTemplate.image",
        ),
        (
            changed(DRIFT_POLICY, "retrain.trainingRunTemplate.command", [""]),
            "retrain.trainingRunTemplate.command.0",
        ),
        (
            changed(DRIFT_POLICY, "retrain.trainingRunTemplate.command", ["  "]),
            "retrain.trainingRunTemplate.command.0",
        ),
    ],
)
def test_a_drift_policy_refuses_what_a_new_user_might_try_naming_the_field(
    spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        DriftPolicySpec.model_validate(spec)
    assert field in {".".join(str(part) for part in error["loc"]) for error in refused.value.errors()}


@pytest.mark.parametrize(
    "image",
    [
        "trainer:1",
        "ghcr.io/modelloop/trainer:0.1.0",
        "localhost:5000/ml/trainer:dev",
        "busybox",
        "ghcr.io/modelloop/trainer@sha256:" + "0" * 64,
        "ghcr.io/modelloop/trainer:0.1.0@sha256:" + "a" * 64,
    ],
)
def test_image_references_as_registries_name_them_are_accepted(image: str) -> None:
    assert TrainingRunSpec.model_validate(changed(TRAINING_RUN, "image", image)).image == image


@pytest.mark.parametrize(
    "image", ["trainer 1", "ghcr.io/Modelloop/trainer", "trainer:", "trainer@sha256:xyz", "\ttrainer"]
)
def test_a_training_run_refuses_an_image_reference_registries_would_not_take(image: str) -> None:
    with pytest.raises(ValidationError, match="image"):
        TrainingRunSpec.model_validate(changed(TRAINING_RUN, "image", image))


def test_unknown_fields_are_rejected_like_a_strict_kubectl_apply() -> None:
    with pytest.raises(ValidationError, match="gpus\n  Extra inputs are not permitted"):
        TrainingRunSpec.model_validate(changed(TRAINING_RUN, "gpus", 1))


def test_rollout_of_a_single_full_step_is_valid() -> None:
    spec = InferenceServiceSpec.model_validate(changed(INFERENCE_SERVICE, "rollout.steps", [100]))
    assert spec.rollout is not None
    assert spec.rollout.steps == [100]


def test_grid_sweep_needs_no_max_trials() -> None:
    spec = changed(changed(TRAINING_RUN, "sweep.maxTrials", ...), "sweep.strategy", "Grid")
    assert TrainingRunSpec.model_validate(spec).sweep is not None


def test_quantities_accept_integers_and_kubernetes_suffixes() -> None:
    resources = TrainingRunSpec.model_validate(
        changed(TRAINING_RUN, "resources", {"cpu": 2, "memory": "1.5Gi"})
    ).resources
    assert (resources.cpu, resources.memory) == (2, "1.5Gi")


def test_status_models_are_all_optional_and_parse_what_the_api_server_returns() -> None:
    assert TrainingRunStatus.model_validate({}).conditions == []
    status = TrainingRunStatus.model_validate(
        {
            "phase": "Succeeded",
            "observedGeneration": 2,
            "startTime": "2025-01-01T10:00:00Z",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": "",
                    "lastTransitionTime": "2025-01-01T10:05:00Z",
                }
            ],
            "trials": [
                {"index": 0, "params": {"lr": 0.1}, "phase": "Succeeded", "metrics": {"accuracy": 0.9}}
            ],
        }
    )
    assert status.start_time == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert status.model_dump(mode="json", exclude_unset=True)["startTime"] == "2025-01-01T10:00:00Z"
    assert ModelVersionStatus.model_validate({"stage": "Champion"}).stage == "Champion"
    assert InferenceServiceStatus.model_validate({"canaryTraffic": 25}).canary_traffic == 25


@pytest.mark.parametrize(
    ("condition", "complaint"),
    [
        ({"status": "Maybe"}, "status"),
        ({"reason": "not camel case"}, "reason"),
        ({"lastTransitionTime": ...}, "lastTransitionTime"),
    ],
)
def test_condition_follows_the_api_conventions(condition: dict[str, Any], complaint: str) -> None:
    valid = {
        "type": "Ready",
        "status": "True",
        "reason": "Ok",
        "message": "",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    Condition.model_validate(valid)
    invalid = {**valid, **condition}
    invalid = {key: value for key, value in invalid.items() if value is not ...}
    with pytest.raises(ValidationError, match=complaint):
        Condition.model_validate(invalid)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_duration_reads_go_style_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5 m", "1d", "-5m"])
def test_parse_duration_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("comparison", "value", "holds"),
    [
        (Comparison.GREATER_THAN_OR_EQUAL, 0.9, True),
        (Comparison.GREATER_THAN, 0.9, False),
        (Comparison.LESS_THAN_OR_EQUAL, 0.9, True),
        (Comparison.LESS_THAN, 0.89, True),
        (Comparison.LESS_THAN, 0.9, False),
    ],
)
def test_comparison_holds_against_threshold(comparison: Comparison, value: float, holds: bool) -> None:
    assert comparison.holds(value, 0.9) is holds


def test_a_training_run_appends_up_to_eight_additional_datasets_of_csv_or_parquet() -> None:
    additional = [
        {"uri": "s3://drift/iris/recent-1.csv", "format": "csv"},
        {"uri": "s3://drift/iris/recent-2.parquet", "format": "parquet", "hash": "sha256:0123abcd"},
    ]
    spec = TrainingRunSpec.model_validate(changed(TRAINING_RUN, "dataset.additional", additional))

    assert [d.format.value for d in spec.dataset.additional] == ["csv", "parquet"]
    assert spec.model_dump(mode="json", exclude_none=True)["dataset"]["additional"] == additional
    defaulted = TrainingRunSpec.model_validate(
        changed(TRAINING_RUN, "dataset.additional", [{"uri": "s3://x"}])
    )
    assert defaulted.dataset.additional[0].format.value == "csv"
    for wrong in (
        [{"uri": "s3://x"}] * 9,
        [{"uri": "sklearn://iris", "format": "sklearn"}],
        [{"uri": "s3://x", "hash": "x"}],
    ):
        with pytest.raises(ValidationError, match=r"dataset\.additional"):
            TrainingRunSpec.model_validate(changed(TRAINING_RUN, "dataset.additional", wrong))


def test_a_model_version_records_its_reference_files_holdout_and_the_champions_metrics_on_its_data() -> None:
    example = changed(MODEL_VERSION, "artifact.referenceUri", "s3://models/iris/iris-1/reference.csv")
    example["artifact"]["referencePredictionsUri"] = "s3://models/iris/iris-1/reference_predictions.csv"
    example["artifact"]["holdoutUri"] = "s3://models/iris/iris-1/holdout.csv"
    example["championEvaluation"] = {"version": "iris-v2", "metrics": {"accuracy": 0.94}}

    spec = ModelVersionSpec.model_validate(example)

    dumped = spec.model_dump(mode="json", exclude_none=True)
    assert (dumped["artifact"], dumped["championEvaluation"]) == (
        example["artifact"],
        example["championEvaluation"],
    )
    assert spec.champion_evaluation is not None and spec.champion_evaluation.version == "iris-v2"
    with pytest.raises(ValidationError, match=r"championEvaluation\.version"):
        ModelVersionSpec.model_validate(changed(example, "championEvaluation.version", "Iris V2"))
    for holdout in ("", "s3://" + "x" * 2044):
        with pytest.raises(ValidationError, match=r"artifact\.holdoutUri"):
            ModelVersionSpec.model_validate(changed(example, "artifact.holdoutUri", holdout))


ESTIMATED_ACCURACY: dict[str, Any] = {
    "name": "estimated-accuracy",
    "query": 'min(modelloop_estimated_performance{service="{{name}}",metric="accuracy"})',
    "threshold": 0.85,
    "comparison": "LessThan",
    "estimate": {
        "lowerQuery": 'min(modelloop_estimated_performance_lower{service="{{name}}",metric="accuracy"})',
        "upperQuery": 'min(modelloop_estimated_performance_upper{service="{{name}}",metric="accuracy"})',
    },
}


def test_a_drift_metric_may_read_an_estimate_with_the_queries_of_its_band() -> None:
    example = changed(DRIFT_POLICY, "metrics", [ESTIMATED_ACCURACY])

    spec = DriftPolicySpec.model_validate(example)

    estimate = spec.metrics[0].estimate
    assert estimate is not None and estimate.breach_when is EstimateBreach.ESTIMATE, "judged by its value"
    assert estimate.lower_query.startswith("min(modelloop_estimated_performance_lower{")
    assert spec.model_dump(mode="json", exclude_none=True)["metrics"] == [
        {**ESTIMATED_ACCURACY, "estimate": {**ESTIMATED_ACCURACY["estimate"], "breachWhen": "Estimate"}}
    ]
    assert DriftPolicySpec.model_validate(DRIFT_POLICY).metrics[0].estimate is None


@pytest.mark.parametrize(
    ("estimate", "field"),
    [
        ({"lowerQuery": "", "upperQuery": "max(u)"}, "metrics.0.estimate.lowerQuery"),
        ({"lowerQuery": "min(l)", "upperQuery": "x" * 4097}, "metrics.0.estimate.upperQuery"),
        ({"lowerQuery": "min(l)"}, "metrics.0.estimate.upperQuery"),
        (
            {"lowerQuery": "min(l)", "upperQuery": "max(u)", "breachWhen": "Always"},
            "metrics.0.estimate.breachWhen",
        ),
        ({"lowerQuery": "min(l)", "upperQuery": "max(u)", "level": 0.95}, "metrics.0.estimate.level"),
    ],
    ids=["blank-lower", "long-upper", "no-upper", "unknown-breach-when", "unknown-field"],
)
def test_an_estimate_is_bounded_like_the_query_and_refused_naming_the_field(
    estimate: dict[str, Any], field: str
) -> None:
    spec = changed(DRIFT_POLICY, "metrics", [{**ESTIMATED_ACCURACY, "estimate": estimate}])

    with pytest.raises(ValidationError) as refused:
        DriftPolicySpec.model_validate(spec)

    assert field in {".".join(str(part) for part in error["loc"]) for error in refused.value.errors()}
