"""The data checks: each one fails on bad data with a message that names the column and the numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash

from modelloop_trainer.checks import CheckInput, CheckResult, failure_message, run_checks
from modelloop_trainer.config import TrainingSettings
from modelloop_trainer.estimators import Task


def checks(
    frame: pd.DataFrame,
    *,
    target: str = "species",
    task: Task = "classification",
    expected_hash: str | None = None,
    **settings: object,
) -> dict[str, CheckResult]:
    results = run_checks(
        CheckInput(
            frame=frame,
            target_column=target,
            task=task,
            estimator="RandomForestClassifier" if task == "classification" else "Ridge",
            settings=TrainingSettings(**settings),  # type: ignore[arg-type]
            content_hash=dataset_hash(frame),
            expected_hash=expected_hash,
        )
    )
    return {result.name: result for result in results}


def only_failure(results: dict[str, CheckResult]) -> CheckResult:
    failed = [result for result in results.values() if result.failed]
    assert len(failed) == 1, failed
    return failed[0]


def test_clean_data_passes_every_check(iris_frame: pd.DataFrame) -> None:
    results = checks(iris_frame)
    assert [result.status for result in results.values()] == [
        "Skipped",
        "Passed",
        "Passed",
        "Passed",
        "Passed",
    ]
    assert failure_message(list(results.values())) == ""


def test_a_missing_target_column_fails_the_schema_and_skips_the_checks_that_need_it(
    iris_frame: pd.DataFrame,
) -> None:
    results = checks(iris_frame, target="label")
    failure = only_failure(results)
    assert failure.name == "schema"
    assert "target column 'label' not found" in failure.message
    assert "'species'" in failure.message
    assert {results[name].status for name in ("missing_values", "value_ranges", "class_balance")} == {
        "Skipped"
    }


def test_a_text_feature_is_rejected_by_name(iris_frame: pd.DataFrame) -> None:
    iris_frame["colour"] = "blue"
    failure = only_failure(checks(iris_frame))
    assert failure.name == "schema"
    assert "'colour'" in failure.message
    assert "'blue'" in failure.message


def test_too_few_rows_fail_the_schema(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame.head(6)))
    assert failure.message == "the dataset has 6 rows; at least 10 are needed"


def test_a_regressor_needs_a_numeric_target(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame, task="regression"))
    assert "target column 'species'" in failure.message
    assert "regressor" in failure.message


def test_a_classifier_rejects_a_continuous_target(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame.drop(columns=["species"]), target="petal width (cm)"))
    assert "continuous values" in failure.message
    assert "choose a regressor" in failure.message


def test_missing_values_over_the_allowed_fraction_name_the_column_and_the_count(
    iris_frame: pd.DataFrame,
) -> None:
    iris_frame.loc[:2, "sepal width (cm)"] = np.nan
    failure = only_failure(checks(iris_frame))
    assert failure.name == "missing_values"
    assert "'sepal width (cm)' has 3 (2.00% of 150 rows)" in failure.message
    assert "max_missing_fraction is 0" in failure.message


def test_missing_values_within_the_allowed_fraction_pass(iris_frame: pd.DataFrame) -> None:
    iris_frame.loc[:2, "sepal width (cm)"] = np.nan
    assert checks(iris_frame, max_missing_fraction=0.05)["missing_values"].status == "Passed"


def test_a_missing_target_value_always_fails(iris_frame: pd.DataFrame) -> None:
    iris_frame.loc[4, "species"] = None
    failure = only_failure(checks(iris_frame, max_missing_fraction=0.5))
    assert "target column 'species' has 1 missing values" in failure.message


def test_infinite_feature_values_fail_the_value_ranges(iris_frame: pd.DataFrame) -> None:
    iris_frame.loc[10, "petal length (cm)"] = np.inf
    failure = only_failure(checks(iris_frame))
    assert failure.name == "value_ranges"
    assert failure.message == "'petal length (cm)' has 1 infinite values"


def test_declared_feature_ranges_are_enforced(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame, feature_ranges={"sepal length (cm)": (4.5, 7.5)}))
    assert failure.message == "'sepal length (cm)' has 10 values outside [4.5, 7.5] (min 4.3, max 7.9)"
    assert (
        checks(iris_frame, feature_ranges={"sepal length (cm)": (0, None)})["value_ranges"].status == "Passed"
    )


def test_a_feature_range_for_an_unknown_column_fails(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame, feature_ranges={"age": (0, 120)}))
    assert "feature_ranges names column 'age'" in failure.message


def test_a_rare_class_fails_the_class_balance_with_its_share(iris_frame: pd.DataFrame) -> None:
    imbalanced = pd.concat(
        [iris_frame[iris_frame.species != "setosa"], iris_frame[iris_frame.species == "setosa"].head(4)]
    )
    failure = only_failure(checks(imbalanced))
    assert failure.name == "class_balance"
    assert failure.message == (
        "class 'setosa' of target 'species' has 4 of 104 rows (3.85%), below min_class_fraction 0.05"
    )
    assert checks(imbalanced, min_class_fraction=0.03)["class_balance"].status == "Passed"


def test_a_single_class_fails_the_class_balance(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame[iris_frame.species == "virginica"]))
    assert "single class 'virginica'" in failure.message


def test_class_balance_is_skipped_for_regression(iris_frame: pd.DataFrame) -> None:
    results = checks(iris_frame.drop(columns=["species"]), target="petal width (cm)", task="regression")
    assert results["class_balance"].status == "Skipped"
    assert not any(result.failed for result in results.values())


def test_a_hash_mismatch_fails_and_a_match_passes(iris_frame: pd.DataFrame) -> None:
    failure = only_failure(checks(iris_frame, expected_hash="sha256:" + "0" * 64))
    assert failure.name == "dataset_hash"
    assert dataset_hash(iris_frame) in failure.message
    assert checks(iris_frame, expected_hash=dataset_hash(iris_frame))["dataset_hash"].status == "Passed"


@pytest.mark.parametrize("count", [3, 12])
def test_a_long_list_of_offending_columns_is_shortened(count: int) -> None:
    frame = pd.DataFrame({f"c{index}": [np.nan] * 20 for index in range(count)})
    frame["y"] = [0, 1] * 10
    message = only_failure(checks(frame, target="y")).message
    assert ("and 7 more" in message) == (count == 12)
