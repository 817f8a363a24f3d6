"""Additional datasets (e.g. recent data the drift detector exported), appended before the split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash

from conftest import RunTrainer

WriteCsv = Callable[[pd.DataFrame, str], str]


def additional(*entries: dict[str, str]) -> str:
    return json.dumps(list(entries))


def halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every other row, twice: both halves hold every class."""
    return frame.iloc[::2].reset_index(drop=True), frame.iloc[1::2].reset_index(drop=True)


def test_additional_rows_are_appended_before_the_split_and_hashed_with_the_dataset(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv, tmp_path: Path
) -> None:
    main, recent = halves(iris_frame)
    recent.loc[:4, "species"] = np.nan  # rows whose label never came back
    parquet = tmp_path / "recent.parquet"
    recent[list(reversed(recent.columns))].to_parquet(parquet)  # the same columns, in another order

    run = run_trainer(
        dataset_uri=write_csv(main, "main.csv"),
        target_column="species",
        additional_datasets=additional(
            {"uri": parquet.as_uri(), "format": "parquet", "hash": dataset_hash(pd.read_parquet(parquet))}
        ),
    )

    assert run.status == 0, run.result
    assert run.result["additionalRows"] == 70
    metrics = run.result["metrics"]
    assert metrics["n_train"] + metrics["n_test"] == 75 + 70
    trained_on = pd.concat([main, recent.iloc[5:]], ignore_index=True)
    assert run.result["datasetHash"] == dataset_hash(trained_on)
    assert run.result["datasetHash"] != dataset_hash(main)


def test_several_additional_datasets_are_appended_in_order(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    main, recent = halves(iris_frame)
    first, second = halves(recent)
    run = run_trainer(
        dataset_uri=write_csv(main, "main.csv"),
        target_column="species",
        additional_datasets=additional(
            {"uri": write_csv(first, "first.csv")}, {"uri": write_csv(second, "second.csv"), "format": "csv"}
        ),
    )
    assert run.status == 0, run.result
    assert run.result["additionalRows"] == 75
    assert run.result["datasetHash"] == dataset_hash(pd.concat([main, first, second], ignore_index=True))


def test_a_run_without_additional_datasets_reports_no_additional_rows(run_trainer: RunTrainer) -> None:
    assert "additionalRows" not in run_trainer().result


def failure(run: object) -> str:
    assert run.status == 1  # type: ignore[attr-defined]
    assert run.result["reason"] == "DataValidationFailed", run.result  # type: ignore[attr-defined]
    return str(run.result["message"])  # type: ignore[attr-defined]


def test_an_additional_dataset_whose_hash_differs_fails_naming_it_and_both_hashes(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    main, recent = halves(iris_frame)
    uri = write_csv(recent, "recent.csv")
    wrong = "sha256:" + "0" * 64
    run = run_trainer(
        dataset_uri=write_csv(main, "main.csv"),
        target_column="species",
        additional_datasets=additional({"uri": uri, "hash": wrong}),
    )
    message = failure(run)
    assert uri in message
    assert dataset_hash(recent) in message
    assert wrong in message
    assert not (run.output / "model.joblib").exists()


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda f: f.drop(columns=["petal width (cm)"]), ["lacks columns ['petal width (cm)']"]),
        (lambda f: f.assign(region="eu"), ["has columns the dataset does not: ['region']"]),
    ],
)
def test_an_additional_dataset_with_other_columns_fails_naming_them(
    run_trainer: RunTrainer,
    iris_frame: pd.DataFrame,
    write_csv: WriteCsv,
    change: Callable[[pd.DataFrame], pd.DataFrame],
    fragments: list[str],
) -> None:
    main, recent = halves(iris_frame)
    uri = write_csv(change(recent), "recent.csv")
    run = run_trainer(
        dataset_uri=write_csv(main, "main.csv"),
        target_column="species",
        additional_datasets=additional({"uri": uri}),
    )
    message = failure(run)
    assert uri in message
    for fragment in fragments:
        assert fragment in message


def test_an_unreadable_additional_dataset_is_dataset_unavailable(
    run_trainer: RunTrainer, iris_frame: pd.DataFrame, write_csv: WriteCsv
) -> None:
    run = run_trainer(
        dataset_uri=write_csv(iris_frame, "iris.csv"),
        target_column="species",
        additional_datasets=additional({"uri": "file:///nowhere/recent.csv"}),
    )
    assert run.status == 1
    assert run.result["reason"] == "DatasetUnavailable"
    assert "file:///nowhere/recent.csv" in run.result["message"]
