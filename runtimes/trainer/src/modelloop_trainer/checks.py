"""The data checks that run before anything is trained.

Each check reports Passed, Failed or Skipped with a message that names the column and the
numbers, so that a user can fix the data (or the TrainingRun's params) from the message alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from modelloop_trainer.config import TrainingSettings
from modelloop_trainer.estimators import Task

CheckStatus = Literal["Passed", "Failed", "Skipped"]

MIN_ROWS = 10
_LISTED = 5  # how many offending columns a message names before "and N more"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one data check."""

    name: str
    status: CheckStatus
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "Failed"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass(frozen=True)
class CheckInput:
    """What the checks look at: the table, its target and task, and the user's thresholds."""

    frame: pd.DataFrame
    target_column: str
    task: Task
    estimator: str
    settings: TrainingSettings
    content_hash: str
    expected_hash: str | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [str(column) for column in self.frame.columns if column != self.target_column]


def run_checks(data: CheckInput) -> list[CheckResult]:
    """Run every check in order; when the schema is wrong the checks that rely on it are skipped."""
    results = [check_dataset_hash(data), check_schema(data)]
    dependent = (check_missing_values, check_value_ranges, check_class_balance)
    if results[-1].failed:
        reason = "skipped: the schema check failed"
        results += [
            CheckResult(check.__name__.removeprefix("check_"), "Skipped", reason) for check in dependent
        ]
    else:
        results += [check(data) for check in dependent]
    return results


def failure_message(results: Sequence[CheckResult]) -> str:
    """One readable message from the failed checks."""
    return "; ".join(f"{result.name}: {result.message}" for result in results if result.failed)


def check_dataset_hash(data: CheckInput) -> CheckResult:
    if data.expected_hash is None:
        return CheckResult(
            "dataset_hash", "Skipped", f"no expected hash given; content is {data.content_hash}"
        )
    if data.expected_hash != data.content_hash:
        return CheckResult(
            "dataset_hash",
            "Failed",
            f"the dataset's content hash is {data.content_hash} but MODELLOOP_DATASET_HASH expects "
            f"{data.expected_hash}: the data changed since the hash was taken",
        )
    return CheckResult("dataset_hash", "Passed", f"content hash matches {data.expected_hash}")


def check_schema(data: CheckInput) -> CheckResult:
    frame, target = data.frame, data.target_column
    if target not in frame.columns:
        columns = _listed([repr(str(column)) for column in frame.columns])
        return _failed("schema", f"target column {target!r} not found; the dataset has columns {columns}")
    if len(frame) < MIN_ROWS:
        return _failed("schema", f"the dataset has {len(frame)} rows; at least {MIN_ROWS} are needed")
    features = data.feature_columns
    if not features:
        return _failed("schema", f"the dataset has no feature columns besides the target {target!r}")
    non_numeric = [column for column in features if not _is_numeric(frame[column])]
    if non_numeric:
        described = [
            f"{column!r} ({frame[column].dtype}, e.g. {_example(frame[column])!r})" for column in non_numeric
        ]
        noun = "column is" if len(non_numeric) == 1 else "columns are"
        return _failed(
            "schema", f"feature {noun} not numeric: {_listed(described)}; encode or drop them before training"
        )
    target_values = frame[target].dropna()
    if data.task == "regression" and not _is_numeric(target_values):
        return _failed(
            "schema",
            f"target column {target!r} is {frame[target].dtype} (e.g. {_example(target_values)!r}) but "
            f"{data.estimator} is a regressor: the target must be numeric",
        )
    if data.task == "classification" and _is_continuous(target_values):
        return _failed(
            "schema",
            f"target column {target!r} holds continuous values ({target_values.nunique()} distinct, "
            f"e.g. {_example(target_values[target_values % 1 != 0])!r}) but {data.estimator} is a "
            "classifier: choose a regressor",
        )
    return CheckResult(
        "schema", "Passed", f"{len(frame)} rows, {len(features)} numeric features, target {target!r}"
    )


def check_missing_values(data: CheckInput) -> CheckResult:
    frame, rows, allowed = data.frame, len(data.frame), data.settings.max_missing_fraction
    missing_target = int(frame[data.target_column].isna().sum())
    if missing_target:
        return _failed(
            "missing_values",
            f"target column {data.target_column!r} has {missing_target} missing values "
            f"({missing_target / rows:.2%} of {rows} rows); every row needs a target",
        )
    counts = frame[data.feature_columns].isna().sum()
    over = counts[counts / rows > allowed].sort_values(ascending=False)
    if len(over):
        described = [
            f"{column!r} has {count} ({count / rows:.2%} of {rows} rows)" for column, count in over.items()
        ]
        return _failed(
            "missing_values",
            f"too many missing values: {_listed(described)}; max_missing_fraction is {allowed:g}",
        )
    total = int(counts.sum())
    detail = f"{total} missing feature values, imputed with column medians" if total else "no missing values"
    return CheckResult("missing_values", "Passed", f"{detail} (max_missing_fraction {allowed:g})")


def check_value_ranges(data: CheckInput) -> CheckResult:
    frame, problems = data.frame, []
    for column in data.feature_columns:
        infinite = int(np.isinf(frame[column].to_numpy(dtype="float64", na_value=np.nan)).sum())
        if infinite:
            problems.append(f"{column!r} has {infinite} infinite values")
    for column, (low, high) in data.settings.feature_ranges.items():
        if column not in frame.columns:
            problems.append(f"feature_ranges names column {column!r}, which the dataset does not have")
            continue
        if not _is_numeric(frame[column]):
            problems.append(f"feature_ranges names column {column!r}, which is not numeric")
            continue
        values = frame[column].dropna().astype("float64")
        outside = pd.Series(False, index=values.index)
        if low is not None:
            outside |= values < low
        if high is not None:
            outside |= values > high
        if outside.any():
            interval = f"[{_bound(low, '-inf')}, {_bound(high, 'inf')}]"
            problems.append(
                f"{column!r} has {int(outside.sum())} values outside {interval} "
                f"(min {values.min():g}, max {values.max():g})"
            )
    if problems:
        return _failed("value_ranges", _listed(problems))
    checked = (
        f", {len(data.settings.feature_ranges)} declared ranges hold" if data.settings.feature_ranges else ""
    )
    return CheckResult("value_ranges", "Passed", f"all feature values finite{checked}")


def check_class_balance(data: CheckInput) -> CheckResult:
    if data.task != "classification":
        return CheckResult("class_balance", "Skipped", f"{data.estimator} is a regressor")
    target = data.frame[data.target_column]
    counts = target.value_counts()
    rows, minimum = len(target), data.settings.min_class_fraction
    if len(counts) < 2:
        return _failed(
            "class_balance", f"target column {data.target_column!r} has a single class {counts.index[0]!r}"
        )
    smallest, count = counts.index[-1], int(counts.iloc[-1])
    if count / rows < minimum:
        hint = ""
        if pd.api.types.is_float_dtype(target):
            hint = f" ({len(counts)} distinct target values: if the target is continuous, choose a regressor)"
        return _failed(
            "class_balance",
            f"class {_scalar(smallest)!r} of target {data.target_column!r} has {count} of {rows} rows "
            f"({count / rows:.2%}), below min_class_fraction {minimum:g}{hint}",
        )
    return CheckResult(
        "class_balance",
        "Passed",
        f"{len(counts)} classes, the smallest ({_scalar(smallest)!r}) has {count / rows:.2%} of rows "
        f"(min_class_fraction {minimum:g})",
    )


def _failed(name: str, message: str) -> CheckResult:
    return CheckResult(name, "Failed", message)


def _is_numeric(values: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(values)) and not pd.api.types.is_complex_dtype(values)


def _is_continuous(values: pd.Series) -> bool:
    return bool(pd.api.types.is_float_dtype(values)) and bool((values % 1 != 0).any())


def _example(values: pd.Series) -> object:
    present = values.dropna()
    return _scalar(present.iloc[0]) if len(present) else None


def _scalar(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _bound(value: float | None, open_end: str) -> str:
    return open_end if value is None else f"{value:g}"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return f"{shown} and {len(items) - _LISTED} more" if len(items) > _LISTED else shown
