"""Loading the training table from a dataset URI, with its content hash (``modelloop_contracts``'s
``dataset_hash``, which the drift detector computes for the tables it exports too).

``sklearn://<name>`` reads a dataset bundled inside scikit-learn (nothing is downloaded);
any other URI is read through fsspec (``file://``, ``s3://`` with s3fs, ...) as CSV or Parquet.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
from modelloop_contracts import dataset_hash
from sklearn import datasets

from modelloop_trainer.config import AdditionalDataset, DatasetFormat
from modelloop_trainer.errors import FailureReason, TrainerError

BUNDLED_DATASETS: dict[str, Callable[..., Any]] = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
    "diabetes": datasets.load_diabetes,
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A loaded training table and where it came from."""

    uri: str
    frame: pd.DataFrame
    content_hash: str


def load_dataset(uri: str, dataset_format: DatasetFormat) -> Dataset:
    """Read the table behind ``uri``; any failure to read it is a DatasetUnavailable error."""
    if dataset_format == "sklearn":
        frame = _load_bundled(uri)
    else:
        try:
            with fsspec.open(uri, "rb") as stream:
                frame = pd.read_parquet(stream) if dataset_format == "parquet" else pd.read_csv(stream)
        except Exception as exc:
            raise TrainerError(
                FailureReason.DATASET_UNAVAILABLE,
                f"cannot read {dataset_format} dataset {uri}: {type(exc).__name__}: {exc}",
            ) from exc
    return Dataset(uri=uri, frame=frame, content_hash=dataset_hash(frame))


@dataclass(frozen=True)
class CombinedDataset:
    """The dataset with its additional tables appended: the table the run trains on."""

    frame: pd.DataFrame
    content_hash: str
    additional_rows: int


def append_additional(
    main: Dataset, additional: Sequence[AdditionalDataset], target_column: str
) -> CombinedDataset:
    """``main`` with each of ``additional`` appended after it, in order.

    Each additional table must have the main table's columns (in any order) and, when it declares one,
    its content hash; its rows without a target are dropped. Without additional tables, this is ``main``.
    """
    if not additional:
        return CombinedDataset(main.frame, main.content_hash, 0)
    parts = [main.frame]
    for entry in additional:
        part = load_dataset(entry.uri, entry.format)
        if entry.expected_hash is not None and entry.expected_hash != part.content_hash:
            raise TrainerError(
                FailureReason.DATA_VALIDATION_FAILED,
                f"additional dataset {entry.uri} has content hash {part.content_hash} but its hash says "
                f"{entry.expected_hash}: the data changed since the hash was taken",
                datasetHash=main.content_hash,
            )
        frame = _aligned(part, main.frame, target_column)
        log.info(
            "additional dataset %s: %d rows (%s), %d without target dropped",
            entry.uri,
            len(part.frame),
            part.content_hash,
            len(part.frame) - len(frame),
        )
        parts.append(frame)
    combined = pd.concat(parts, ignore_index=True)
    additional_rows = len(combined) - len(main.frame)
    content_hash = dataset_hash(combined)
    log.info("training table: %d rows (%d additional), %s", len(combined), additional_rows, content_hash)
    return CombinedDataset(combined, content_hash, additional_rows)


def _aligned(part: Dataset, main: pd.DataFrame, target_column: str) -> pd.DataFrame:
    """``part``'s rows in ``main``'s column order, without the rows that have no target."""
    expected = [str(column) for column in main.columns]
    present = [str(column) for column in part.frame.columns]
    missing = [column for column in expected if column not in present]
    extra = [column for column in present if column not in expected]
    if missing or extra:
        problems = [
            *([f"lacks columns {missing}"] if missing else []),
            *([f"has columns the dataset does not: {extra}"] if extra else []),
        ]
        raise TrainerError(
            FailureReason.DATA_VALIDATION_FAILED,
            f"additional dataset {part.uri} "
            + " and ".join(problems)
            + f"; it must have the dataset's columns {expected}",
        )
    frame = part.frame.set_axis(present, axis=1)[expected].set_axis(list(main.columns), axis=1)
    if target_column in frame.columns:
        frame = frame[frame[target_column].notna()]
        # Labels read with gaps come back as floats: give them the dataset's type again where they can.
        with contextlib.suppress(TypeError, ValueError):
            frame = frame.astype({target_column: main[target_column].dtype})
    return frame


def _load_bundled(uri: str) -> pd.DataFrame:
    name = uri.removeprefix("sklearn://").strip("/")
    loader = BUNDLED_DATASETS.get(name)
    if loader is None:
        raise TrainerError(
            FailureReason.DATASET_UNAVAILABLE,
            f"{uri} is not a dataset bundled with scikit-learn; use one of: "
            + ", ".join(f"sklearn://{known}" for known in BUNDLED_DATASETS),
        )
    frame = loader(as_frame=True).frame
    assert isinstance(frame, pd.DataFrame)
    return frame
