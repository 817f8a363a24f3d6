"""The trainer's configuration: the ``MODELLOOP_*`` environment the operator renders into the Job.

This module is the one place that reads the environment. ``MODELLOOP_PARAMS`` is split into
the reserved keys the trainer consumes itself (:class:`TrainingSettings`) and the rest, which
go to the estimator's constructor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelloop_trainer.distributed import DistributedLaunch, launch_from_env
from modelloop_trainer.errors import FailureReason, TrainerError

DatasetFormat = Literal["csv", "parquet", "sklearn"]
FileFormat = Literal["csv", "parquet"]
Device = Literal["cpu", "cuda", "auto"]
Bound = float | None

DEFAULT_RESULT_PATH = "/dev/termination-log"
# The current champion, which the trainer evaluates on this run's held-out rows.
ENV_CHAMPION_URI = "MODELLOOP_CHAMPION_URI"
ENV_CHAMPION_VERSION = "MODELLOOP_CHAMPION_VERSION"
# Further tables appended to the dataset before the split: a JSON list of {uri, format, hash?}.
ENV_ADDITIONAL_DATASETS = "MODELLOOP_ADDITIONAL_DATASETS"
MAX_ADDITIONAL_DATASETS = 8
SKLEARN_TARGET_COLUMN = "target"
DATASET_FORMATS: tuple[DatasetFormat, ...] = ("csv", "parquet", "sklearn")
FILE_FORMATS: tuple[FileFormat, ...] = ("csv", "parquet")
DEVICES: tuple[Device, ...] = ("cpu", "cuda", "auto")
_HASH_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def _invalid(message: str) -> TrainerError:
    return TrainerError(FailureReason.INVALID_PARAMETERS, message)


@dataclass(frozen=True)
class TrainingSettings:
    """The reserved keys of ``MODELLOOP_PARAMS``, which the trainer consumes itself."""

    estimator: str = "RandomForestClassifier"
    seed: int = 0
    test_size: float = 0.2
    min_class_fraction: float = 0.05
    max_missing_fraction: float = 0.0
    feature_ranges: Mapping[str, tuple[Bound, Bound]] = field(default_factory=dict)
    reference_rows: int = 500
    holdout_rows: int = 10_000
    """At most so many held-out rows go into ``holdout.csv`` (a sample, by ``seed``, beyond): what the drift
    detector calibrates its estimate on; the metrics are still measured on every held-out row."""

    RESERVED_KEYS = frozenset(
        {
            "estimator",
            "seed",
            "test_size",
            "min_class_fraction",
            "max_missing_fraction",
            "feature_ranges",
            "reference_rows",
            "holdout_rows",
        }
    )

    @classmethod
    def split_params(cls, params: Mapping[str, Any]) -> tuple[TrainingSettings, dict[str, Any]]:
        """Split ``MODELLOOP_PARAMS`` into the trainer's settings and the estimator's parameters."""
        reserved = {key: value for key, value in params.items() if key in cls.RESERVED_KEYS}
        estimator_params = {key: value for key, value in params.items() if key not in cls.RESERVED_KEYS}
        settings = cls(
            estimator=_string(reserved, "estimator", cls.estimator),
            seed=_integer(reserved, "seed", cls.seed, minimum=0),
            test_size=_fraction(reserved, "test_size", cls.test_size, low_open=True, high_open=True),
            min_class_fraction=_fraction(reserved, "min_class_fraction", cls.min_class_fraction),
            max_missing_fraction=_fraction(reserved, "max_missing_fraction", cls.max_missing_fraction),
            feature_ranges=_feature_ranges(reserved.get("feature_ranges", {})),
            reference_rows=_integer(reserved, "reference_rows", cls.reference_rows, minimum=1),
            holdout_rows=_integer(reserved, "holdout_rows", cls.holdout_rows, minimum=1),
        )
        return settings, estimator_params


def _string(params: Mapping[str, Any], key: str, default: str) -> str:
    value = params.get(key, default)
    if not isinstance(value, str) or not value:
        raise _invalid(f"params.{key} must be a non-empty string, got {value!r}")
    return value


def _integer(params: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"params.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _fraction(
    params: Mapping[str, Any], key: str, default: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"params.{key} must be a number, got {value!r}")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise _invalid(f"params.{key} must lie in {interval}, got {value!r}")
    return float(value)


def _feature_ranges(value: Any) -> dict[str, tuple[Bound, Bound]]:
    if not isinstance(value, dict):
        raise _invalid(f"params.feature_ranges must be an object of column -> [min, max], got {value!r}")
    ranges: dict[str, tuple[Bound, Bound]] = {}
    for column, bounds in value.items():
        where = f"params.feature_ranges[{column!r}]"
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise _invalid(f"{where} must be [min, max] (null for an open end), got {bounds!r}")
        low, high = (_bound(where, bound) for bound in bounds)
        if low is not None and high is not None and low > high:
            raise _invalid(f"{where}: min {low:g} is greater than max {high:g}")
        ranges[column] = (low, high)
    return ranges


def _bound(where: str, bound: Any) -> Bound:
    if bound is None:
        return None
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
        raise _invalid(f"{where} bounds must be finite numbers or null, got {bound!r}")
    return float(bound)


@dataclass(frozen=True)
class ChampionModel:
    """The model's current champion: its artifact and its ModelVersion's name."""

    uri: str
    version: str


@dataclass(frozen=True)
class AdditionalDataset:
    """A table appended to the dataset before the split, e.g. recent data the drift detector exported."""

    uri: str
    format: FileFormat = "csv"
    expected_hash: str | None = None


@dataclass(frozen=True)
class TrainerConfig:
    """Everything one training run needs, read from the environment by :meth:`from_env`."""

    dataset_uri: str
    dataset_format: DatasetFormat
    target_column: str
    output_uri: str
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    estimator_params: Mapping[str, Any] = field(default_factory=dict)
    run_name: str = ""
    trial: int | None = None
    model_name: str = ""
    expected_dataset_hash: str | None = None
    result_path: str = DEFAULT_RESULT_PATH
    code_version: str | None = None
    device: Device = "auto"
    champion: ChampionModel | None = None
    additional_datasets: tuple[AdditionalDataset, ...] = ()
    distributed: DistributedLaunch | None = None
    """This process's place in a torchrun launch of several processes (torchrun's variables, see
    :mod:`modelloop_trainer.distributed`); None when it trains alone."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainerConfig:
        """Read the operator's contract; a missing or malformed variable is an InvalidParameters error."""
        dataset_uri = _required(env, "MODELLOOP_DATASET_URI")
        dataset_format = _dataset_format(dataset_uri, env.get("MODELLOOP_DATASET_FORMAT", "").strip())
        target_column = env.get("MODELLOOP_TARGET_COLUMN", "").strip()
        if not target_column:
            if dataset_format != "sklearn":
                raise _invalid("MODELLOOP_TARGET_COLUMN is not set: name the column the model should predict")
            target_column = SKLEARN_TARGET_COLUMN
        settings, estimator_params = TrainingSettings.split_params(_params(env.get("MODELLOOP_PARAMS", "")))
        return cls(
            dataset_uri=dataset_uri,
            dataset_format=dataset_format,
            target_column=target_column,
            output_uri=_required(env, "MODELLOOP_OUTPUT_URI").rstrip("/"),
            settings=settings,
            estimator_params=estimator_params,
            run_name=env.get("MODELLOOP_RUN_NAME", ""),
            trial=_trial(env.get("MODELLOOP_TRIAL", "").strip()),
            model_name=env.get("MODELLOOP_MODEL_NAME", ""),
            expected_dataset_hash=_expected_hash(env.get("MODELLOOP_DATASET_HASH", "").strip()),
            result_path=result_path_from_env(env),
            code_version=env.get("MODELLOOP_CODE_VERSION") or None,
            device=_device(env.get("MODELLOOP_DEVICE", "").strip() or "auto"),
            champion=_champion(env),
            additional_datasets=_additional_datasets(env.get(ENV_ADDITIONAL_DATASETS, "")),
            distributed=launch_from_env(env),
        )


def result_path_from_env(env: Mapping[str, str]) -> str:
    """Where the result goes; read on its own so that even a bad configuration is reported there."""
    return env.get("MODELLOOP_RESULT_PATH") or DEFAULT_RESULT_PATH


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise _invalid(f"{name} is not set")
    return value


def _params(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid(f"MODELLOOP_PARAMS is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise _invalid(f"MODELLOOP_PARAMS must be a JSON object, got {type(params).__name__}")
    return params


def _dataset_format(uri: str, declared: str) -> DatasetFormat:
    is_bundled = uri.startswith("sklearn://")
    if not declared:
        if is_bundled:
            return "sklearn"
        return "parquet" if uri.lower().endswith((".parquet", ".pq")) else "csv"
    for known in DATASET_FORMATS:
        if declared == known:
            if (known == "sklearn") != is_bundled:
                raise _invalid(
                    f"MODELLOOP_DATASET_FORMAT is {declared!r} but MODELLOOP_DATASET_URI is {uri!r}: "
                    "format sklearn goes with sklearn://<name> and only with it"
                )
            return known
    raise _invalid(f"MODELLOOP_DATASET_FORMAT must be one of {', '.join(DATASET_FORMATS)}, got {declared!r}")


def _trial(raw: str) -> int | None:
    if not raw:
        return None
    if not raw.isdigit():
        raise _invalid(f"MODELLOOP_TRIAL must be a non-negative integer, got {raw!r}")
    return int(raw)


def _expected_hash(raw: str, where: str = "MODELLOOP_DATASET_HASH") -> str | None:
    if not raw:
        return None
    if not _HASH_PATTERN.fullmatch(raw):
        raise _invalid(f"{where} must look like sha256:<64 hex digits>, got {raw!r}")
    return raw


def _champion(env: Mapping[str, str]) -> ChampionModel | None:
    uri = env.get(ENV_CHAMPION_URI, "").strip()
    version = env.get(ENV_CHAMPION_VERSION, "").strip()
    if not uri and not version:
        return None
    if not uri or not version:
        given, missing = (
            (ENV_CHAMPION_URI, ENV_CHAMPION_VERSION) if uri else (ENV_CHAMPION_VERSION, ENV_CHAMPION_URI)
        )
        raise _invalid(f"{given} is set but {missing} is not: name the champion with both or neither")
    return ChampionModel(uri=uri, version=version)


def _additional_datasets(raw: str) -> tuple[AdditionalDataset, ...]:
    if not raw.strip():
        return ()
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid(f"{ENV_ADDITIONAL_DATASETS} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise _invalid(f"{ENV_ADDITIONAL_DATASETS} must be a JSON list, got {type(entries).__name__}")
    if len(entries) > MAX_ADDITIONAL_DATASETS:
        raise _invalid(
            f"{ENV_ADDITIONAL_DATASETS} lists {len(entries)} datasets; at most {MAX_ADDITIONAL_DATASETS}"
        )
    return tuple(_additional_dataset(index, entry) for index, entry in enumerate(entries))


def _additional_dataset(index: int, entry: Any) -> AdditionalDataset:
    where = f"{ENV_ADDITIONAL_DATASETS}[{index}]"
    if not isinstance(entry, dict):
        raise _invalid(f"{where} must be an object with uri, format and hash, got {entry!r}")
    unknown = sorted(set(entry) - {"uri", "format", "hash"})
    if unknown:
        raise _invalid(f"{where} has unknown keys {unknown}: expected uri, format and hash")
    uri = entry.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise _invalid(f"{where}.uri must be a non-empty string, got {uri!r}")
    declared = entry.get("format") or "csv"
    file_format = next((known for known in FILE_FORMATS if known == declared), None)
    if file_format is None:
        raise _invalid(f"{where}.format must be one of {', '.join(FILE_FORMATS)}, got {declared!r}")
    expected = entry.get("hash")
    if expected is not None and not isinstance(expected, str):
        raise _invalid(f"{where}.hash must be a string, got {expected!r}")
    return AdditionalDataset(
        uri=uri.strip(), format=file_format, expected_hash=_expected_hash(expected or "", f"{where}.hash")
    )


def _device(raw: str) -> Device:
    for known in DEVICES:
        if raw == known:
            return known
    raise _invalid(f"MODELLOOP_DEVICE must be one of {', '.join(DEVICES)}, got {raw!r}")
