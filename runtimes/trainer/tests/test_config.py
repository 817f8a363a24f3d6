"""The environment contract: what each MODELLOOP_* variable means, and its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelloop_trainer.config import (
    DEFAULT_RESULT_PATH,
    AdditionalDataset,
    ChampionModel,
    TrainerConfig,
    TrainingSettings,
)
from modelloop_trainer.errors import FailureReason, TrainerError

BASE = {"MODELLOOP_DATASET_URI": "sklearn://iris", "MODELLOOP_OUTPUT_URI": "file:///artifacts/iris/run/"}


def config(**env: str) -> TrainerConfig:
    """The configuration for BASE plus ``env``, given without the MODELLOOP_ prefix."""
    return TrainerConfig.from_env({**BASE, **{f"MODELLOOP_{key}": value for key, value in env.items()}})


def test_defaults_for_a_bundled_dataset() -> None:
    parsed = config()
    assert parsed.dataset_format == "sklearn"
    assert parsed.target_column == "target"
    assert parsed.output_uri == "file:///artifacts/iris/run"
    assert parsed.settings == TrainingSettings()
    assert parsed.estimator_params == {}
    assert parsed.result_path == DEFAULT_RESULT_PATH
    assert parsed.device == "auto"
    assert parsed.trial is None
    assert parsed.code_version is None
    assert parsed.champion is None
    assert parsed.additional_datasets == ()


def test_the_champion_is_named_by_its_artifact_and_its_version() -> None:
    parsed = config(CHAMPION_URI="s3://models/iris/iris-3/model.joblib", CHAMPION_VERSION="iris-v3")
    assert parsed.champion == ChampionModel("s3://models/iris/iris-3/model.joblib", "iris-v3")


def test_additional_datasets_are_read_in_order_with_csv_as_the_default_format() -> None:
    entries = [
        {"uri": "s3://drift/iris/recent-1.csv"},
        {"uri": "s3://drift/iris/recent-2.parquet", "format": "parquet", "hash": "sha256:" + "cd" * 32},
    ]
    parsed = config(ADDITIONAL_DATASETS=json.dumps(entries))
    assert parsed.additional_datasets == (
        AdditionalDataset("s3://drift/iris/recent-1.csv", "csv", None),
        AdditionalDataset("s3://drift/iris/recent-2.parquet", "parquet", "sha256:" + "cd" * 32),
    )


def test_every_variable_of_the_contract_is_read() -> None:
    params: dict[str, Any] = {"estimator": "Ridge", "seed": 7, "test_size": 0.3, "alpha": 0.5}
    parsed = TrainerConfig.from_env(
        {
            "MODELLOOP_RUN_NAME": "iris-rf",
            "MODELLOOP_TRIAL": "2",
            "MODELLOOP_MODEL_NAME": "iris",
            "MODELLOOP_PARAMS": json.dumps(params),
            "MODELLOOP_DATASET_URI": "s3://bucket/data.csv",
            "MODELLOOP_DATASET_FORMAT": "csv",
            "MODELLOOP_TARGET_COLUMN": "label",
            "MODELLOOP_DATASET_HASH": "sha256:" + "ab" * 32,
            "MODELLOOP_OUTPUT_URI": "s3://bucket/artifacts/iris/iris-rf/trial-2",
            "MODELLOOP_RESULT_PATH": "/tmp/result",
            "MODELLOOP_CODE_VERSION": "registry.example/trainer:1.2",
            "MODELLOOP_DEVICE": "cpu",
        }
    )
    assert (parsed.run_name, parsed.trial, parsed.model_name) == ("iris-rf", 2, "iris")
    assert parsed.settings.estimator == "Ridge"
    assert (parsed.settings.seed, parsed.settings.test_size) == (7, 0.3)
    assert parsed.estimator_params == {"alpha": 0.5}
    assert (parsed.dataset_format, parsed.target_column) == ("csv", "label")
    assert parsed.expected_dataset_hash == "sha256:" + "ab" * 32
    assert parsed.result_path == "/tmp/result"
    assert parsed.code_version == "registry.example/trainer:1.2"
    assert parsed.device == "cpu"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("file:///d/x.parquet", "parquet"), ("s3://b/x.pq", "parquet"), ("file:///d/x.csv", "csv")],
)
def test_the_format_follows_the_file_name_when_not_given(uri: str, expected: str) -> None:
    assert config(DATASET_URI=uri, TARGET_COLUMN="y").dataset_format == expected


def test_reserved_params_are_kept_from_the_estimator() -> None:
    settings, rest = TrainingSettings.split_params(
        {"estimator": "SVC", "feature_ranges": {"a": [0, None]}, "reference_rows": 10, "C": 2.0}
    )
    assert settings.estimator == "SVC"
    assert settings.feature_ranges == {"a": (0.0, None)}
    assert settings.reference_rows == 10
    assert settings.holdout_rows == TrainingSettings.holdout_rows
    assert rest == {"C": 2.0}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MODELLOOP_PARAMS": "{not json"}, "MODELLOOP_PARAMS is not valid JSON"),
        ({"MODELLOOP_PARAMS": "[1, 2]"}, "must be a JSON object"),
        ({"MODELLOOP_PARAMS": '{"test_size": 1.5}'}, "params.test_size must lie in (0, 1)"),
        ({"MODELLOOP_PARAMS": '{"seed": "1"}'}, "params.seed must be an integer"),
        (
            {"MODELLOOP_PARAMS": '{"max_missing_fraction": -0.1}'},
            "params.max_missing_fraction must lie in [0, 1]",
        ),
        ({"MODELLOOP_PARAMS": '{"feature_ranges": {"a": [5, 1]}}'}, "min 5 is greater than max 1"),
        ({"MODELLOOP_PARAMS": '{"feature_ranges": {"a": 3}}'}, "must be [min, max]"),
        ({"MODELLOOP_DATASET_URI": "file:///d.csv"}, "MODELLOOP_TARGET_COLUMN is not set"),
        ({"MODELLOOP_DATASET_FORMAT": "csv"}, "format sklearn goes with sklearn://"),
        ({"MODELLOOP_DATASET_FORMAT": "json"}, "must be one of csv, parquet, sklearn"),
        ({"MODELLOOP_DATASET_HASH": "md5:abc"}, "sha256:<64 hex digits>"),
        ({"MODELLOOP_TRIAL": "two"}, "MODELLOOP_TRIAL must be a non-negative integer"),
        ({"MODELLOOP_DEVICE": "tpu"}, "MODELLOOP_DEVICE must be one of cpu, cuda, auto"),
        ({"MODELLOOP_OUTPUT_URI": ""}, "MODELLOOP_OUTPUT_URI is not set"),
        (
            {"MODELLOOP_CHAMPION_URI": "s3://m/model.joblib"},
            "MODELLOOP_CHAMPION_URI is set but MODELLOOP_CHAMPION_VERSION is not",
        ),
        ({"MODELLOOP_ADDITIONAL_DATASETS": "[{"}, "MODELLOOP_ADDITIONAL_DATASETS is not valid JSON"),
        ({"MODELLOOP_ADDITIONAL_DATASETS": '{"uri": "a"}'}, "must be a JSON list"),
        ({"MODELLOOP_ADDITIONAL_DATASETS": '[{"uri": ""}]'}, "MODELLOOP_ADDITIONAL_DATASETS[0].uri must be"),
        (
            {"MODELLOOP_ADDITIONAL_DATASETS": '[{"uri": "a", "format": "sklearn"}]'},
            "[0].format must be one of csv, parquet",
        ),
        ({"MODELLOOP_ADDITIONAL_DATASETS": '[{"uri": "a", "hash": "md5:1"}]'}, "[0].hash must look like"),
        ({"MODELLOOP_ADDITIONAL_DATASETS": json.dumps([{"uri": "a"}] * 9)}, "lists 9 datasets; at most 8"),
    ],
)
def test_a_malformed_variable_is_an_invalid_parameters_error(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(TrainerError) as caught:
        TrainerConfig.from_env({**BASE, **env})
    assert caught.value.reason == FailureReason.INVALID_PARAMETERS
    assert fragment in caught.value.message
