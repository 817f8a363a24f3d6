"""Loading datasets from their URIs, each with its content hash (the hash itself: contracts/tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash

from modelloop_trainer.dataset import BUNDLED_DATASETS, load_dataset
from modelloop_trainer.errors import FailureReason, TrainerError


@pytest.mark.parametrize("name", sorted(BUNDLED_DATASETS))
def test_bundled_datasets_load_with_a_target_column(name: str) -> None:
    dataset = load_dataset(f"sklearn://{name}", "sklearn")
    assert "target" in dataset.frame.columns
    assert len(dataset.frame) >= 150
    assert dataset.content_hash.startswith("sha256:")


def test_an_unknown_bundled_dataset_is_unavailable_and_the_message_lists_the_known_ones() -> None:
    with pytest.raises(TrainerError) as caught:
        load_dataset("sklearn://mnist", "sklearn")
    assert caught.value.reason == FailureReason.DATASET_UNAVAILABLE
    assert "sklearn://iris" in caught.value.message


def test_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    uri = (tmp_path / "absent.csv").as_uri()
    with pytest.raises(TrainerError) as caught:
        load_dataset(uri, "csv")
    assert caught.value.reason == FailureReason.DATASET_UNAVAILABLE
    assert uri in caught.value.message
    assert "FileNotFoundError" in caught.value.message


def test_a_parquet_file_that_is_not_parquet_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TrainerError) as caught:
        load_dataset(path.as_uri(), "parquet")
    assert caught.value.reason == FailureReason.DATASET_UNAVAILABLE


def test_the_same_table_has_the_same_hash_in_csv_and_parquet(
    iris_frame: pd.DataFrame, write_csv: Callable[[pd.DataFrame, str], str], tmp_path: Path
) -> None:
    csv = load_dataset(write_csv(iris_frame, "iris.csv"), "csv")
    parquet_path = tmp_path / "iris.parquet"
    iris_frame.to_parquet(parquet_path)
    parquet = load_dataset(parquet_path.as_uri(), "parquet")
    assert csv.content_hash == parquet.content_hash == dataset_hash(iris_frame)
    assert load_dataset(write_csv(iris_frame, "again.csv"), "csv").content_hash == csv.content_hash


def test_a_dataset_is_read_through_fsspec_from_a_non_file_filesystem(iris_frame: pd.DataFrame) -> None:
    # fsspec's in-memory filesystem stands in for a remote store; s3:// itself is covered in test_s3.py.
    with fsspec.open("memory://datasets/iris.csv", "w") as stream:
        iris_frame.to_csv(stream, index=False)
    dataset = load_dataset("memory://datasets/iris.csv", "csv")
    assert dataset.content_hash == dataset_hash(iris_frame)
