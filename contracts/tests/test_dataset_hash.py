"""The dataset hash: pinned values, and what it does and does not depend on.

These run in every runtime's environment (make contracts-test): pandas 2 and 3, numpy 1 and 2 between
them. The pinned values were taken from the trainer's and the detector's hashes before they became this
one, so a table pinned by an earlier run (``spec.dataset.hash``) still matches.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from modelloop_contracts import dataset_hash


def every_kind() -> pd.DataFrame:
    """A column of each kind the hash tells apart, with missing values, negative zero and a uint64
    beyond int64."""
    return pd.DataFrame(
        {
            "count": np.array([3, -1, 0, 7], dtype="int64"),
            "flag": [True, False, True, True],
            "width": [0.5, -0.0, np.nan, 1e300],
            "name": ["a", None, "ü", ""],
            "big": np.array([2**64 - 1, 0, 1, 2], dtype="uint64"),
            "label": pd.array([1, None, 3, 4], dtype="Int64"),
        }
    )


def through_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` written as the detector writes its exports and read back as the trainer reads them."""
    return pd.read_csv(io.BytesIO(frame.to_csv(index=False, lineterminator="\n").encode()))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (every_kind, "sha256:f512614c94cca4ec4f875ed903160b3ed57c9740d2eb52368d2a0c78bb59aee2"),
        (
            lambda: through_csv(every_kind()),
            "sha256:e124530825d91a151a4dd147e11dd19b5280e1f1e2c0cdad6cc33c160948e2b7",
        ),
        (
            lambda: datasets.load_iris(as_frame=True).frame,
            "sha256:9279da1655532f249c84eb254d01a57fa865a8c188ae3b555c4dd0d70ac1d698",
        ),
        (pd.DataFrame, "sha256:c924e7474e3a70c2ee8bcb000b65d68e0a295a55ea69f5150425fe05166c5edc"),
    ],
    ids=["every-kind", "every-kind-through-csv", "iris", "empty"],
)
def test_the_hash_of_a_table_is_the_value_pinned_for_it(
    table: Callable[[], pd.DataFrame], expected: str
) -> None:
    assert dataset_hash(table()) == expected


def test_the_same_table_has_the_same_hash_from_csv_and_parquet(tmp_path: Path) -> None:
    iris = datasets.load_iris(as_frame=True).frame
    assert dataset_hash(through_csv(iris)) == dataset_hash(iris)
    # The detector's environment has a pyarrow that refuses its numpy 1: an ImportError, not a missing module.
    pytest.importorskip("pyarrow", reason="Parquet needs a working pyarrow", exc_type=ImportError)
    iris.to_parquet(tmp_path / "iris.parquet")
    assert dataset_hash(pd.read_parquet(tmp_path / "iris.parquet")) == dataset_hash(iris)


def test_the_hash_changes_with_one_value_a_column_name_or_the_row_order() -> None:
    iris = datasets.load_iris(as_frame=True).frame
    changed = iris.copy()
    changed.iloc[7, 0] += 0.1
    renamed = iris.rename(columns={"target": "label"})
    reordered = iris.iloc[::-1].reset_index(drop=True)
    hashes = {dataset_hash(iris), dataset_hash(changed), dataset_hash(renamed), dataset_hash(reordered)}
    assert len(hashes) == 4


def test_the_hash_does_not_depend_on_the_bit_pattern_of_missing_values_or_negative_zero() -> None:
    a = pd.DataFrame({"x": [0.0, np.nan, 1.5], "s": ["u", None, "v"]})
    b = pd.DataFrame({"x": [-0.0, float("nan") * -1, 1.5], "s": ["u", np.nan, "v"]})
    assert dataset_hash(a) == dataset_hash(b)


def test_integers_hash_alike_in_any_integer_type_and_unlike_the_same_numbers_as_text() -> None:
    assert dataset_hash(pd.DataFrame({"n": np.array([1, 2], dtype="int8")})) == dataset_hash(
        pd.DataFrame({"n": np.array([1, 2], dtype="uint32")})
    )
    assert dataset_hash(pd.DataFrame({"n": [1, 2]})) != dataset_hash(pd.DataFrame({"n": ["1", "2"]}))


def test_an_unsigned_value_beyond_int64_does_not_wrap_around_to_a_negative_one() -> None:
    unsigned = pd.DataFrame({"n": np.array([2**64 - 1], dtype="uint64")})
    assert dataset_hash(unsigned) != dataset_hash(pd.DataFrame({"n": np.array([-1], dtype="int64")}))
