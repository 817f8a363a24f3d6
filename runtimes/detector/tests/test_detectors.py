"""alibi-detect's detectors on known data: drift found where the distribution moved, not where it did not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FEATURES, numeric_rows, write_predictions, write_reference
from modelloop_detector.detectors import DetectorSettings, VersionDetectors
from modelloop_detector.payloads import CategoryCodes
from modelloop_detector.reference import ReferenceError, load_reference
from modelloop_detector.window import WindowSnapshot

SETTINGS = DetectorSettings(p_value=0.05, device="cpu", mmd_permutations=50, mmd=True)


def window(features: np.ndarray, predictions: np.ndarray | None = None) -> WindowSnapshot:
    values = np.full(len(features), np.nan) if predictions is None else predictions.astype(np.float64)
    return WindowSnapshot(features.astype(np.float64), values, len(features))


@pytest.fixture(scope="module")
def numeric(tmp_path_factory: pytest.TempPathFactory) -> VersionDetectors:
    reference = load_reference(write_reference(tmp_path_factory.mktemp("numeric"), numeric_rows(500, seed=1)))
    return VersionDetectors(reference, SETTINGS, None)


def test_ks_finds_drift_in_a_shifted_feature(numeric: VersionDetectors) -> None:
    rows = numeric_rows(200, seed=2)
    rows[:, 2] += 1.5
    [ks] = numeric.judge_fast(window(rows), now=0.0)
    assert ks.drift
    by_feature = {item.feature: item for item in ks.features}
    assert set(by_feature) == set(FEATURES)
    assert by_feature["petal_length"].p_value < ks.threshold
    assert ks.score == by_feature["petal_length"].score
    assert ks.threshold == pytest.approx(0.05 / 4)  # Bonferroni over 4 features


def test_ks_finds_no_drift_in_the_same_distribution(numeric: VersionDetectors) -> None:
    [ks] = numeric.judge_fast(window(numeric_rows(200, seed=3)), now=0.0)
    assert not ks.drift


def test_mmd_on_cpu_finds_joint_drift_and_not_same_distribution(numeric: VersionDetectors) -> None:
    assert numeric.device == "cpu"
    shifted = numeric.judge_mmd(window(numeric_rows(200, seed=4, shift=0.5)), now=0.0)
    same = numeric.judge_mmd(window(numeric_rows(200, seed=5)), now=0.0)
    assert shifted is not None and same is not None
    assert shifted.drift and shifted.p_value <= 0.05
    assert not same.drift and same.p_value > 0.05
    assert shifted.score > same.score


def test_chi2_judges_a_categorical_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    colours = ["red", "green", "blue"]
    frame = pd.DataFrame({"x": rng.normal(size=400), "colour": rng.choice(colours, 400, p=[0.5, 0.3, 0.2])})
    frame.to_csv(tmp_path / "reference.csv", index=False)
    reference = load_reference((tmp_path / "reference.csv").as_uri(), categorical=["colour"])
    detectors = VersionDetectors(reference, SETTINGS, None)
    codes = reference.categorical[1]

    def judged(probabilities: list[float]) -> bool:
        values = rng.choice(colours, 300, p=probabilities).astype(object)
        rows = np.column_stack([rng.normal(size=300), codes.encode(values)])
        verdicts = {verdict.detector: verdict for verdict in detectors.judge_fast(window(rows), now=0.0)}
        assert set(verdicts) == {"ks", "chi2"}
        assert [item.feature for item in verdicts["chi2"].features] == ["colour"]
        assert [item.feature for item in verdicts["ks"].features] == ["x"]
        return verdicts["chi2"].drift

    assert judged([0.1, 0.3, 0.6])
    assert not judged([0.5, 0.3, 0.2])


def test_text_columns_are_categorical_without_being_named(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1.0, 2.0], "city": ["Oslo", "Rome"]}).to_csv(tmp_path / "r.csv", index=False)
    reference = load_reference((tmp_path / "r.csv").as_uri())
    assert list(reference.categorical) == [1]
    assert reference.numeric == (0,)


def test_prediction_check_on_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    predictions = rng.choice(["setosa", "versicolor", "virginica"], 300).tolist()
    reference = load_reference(
        write_reference(tmp_path, numeric_rows(300, seed=1)),
        predictions_uri=write_predictions(tmp_path, predictions),
    )
    assert reference.task == "classification"
    codes = CategoryCodes(list(dict.fromkeys(predictions)))
    detectors = VersionDetectors(reference, SETTINGS, codes)
    rows = numeric_rows(200, seed=2)
    skewed = codes.encode(np.array(["setosa"] * 150 + ["virginica"] * 50, dtype=object))
    balanced = codes.encode(rng.choice(["setosa", "versicolor", "virginica"], 200).astype(object))
    by_name = {verdict.detector: verdict for verdict in detectors.judge_fast(window(rows, skewed), now=0.0)}
    assert by_name["prediction"].drift
    assert by_name["prediction"].features[0].feature == "prediction"
    by_name = {verdict.detector: verdict for verdict in detectors.judge_fast(window(rows, balanced), now=0.0)}
    assert not by_name["prediction"].drift


def test_prediction_check_on_values_of_a_regressor(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    reference = load_reference(
        write_reference(tmp_path, numeric_rows(300, seed=1)),
        predictions_uri=write_predictions(tmp_path, rng.normal(150, 30, 300).tolist()),
    )
    assert reference.task == "regression"
    detectors = VersionDetectors(reference, SETTINGS, None)
    rows = numeric_rows(200, seed=2)
    judged = {v.detector: v for v in detectors.judge_fast(window(rows, rng.normal(200, 30, 200)), now=0.0)}
    assert judged["prediction"].drift
    judged = {v.detector: v for v in detectors.judge_fast(window(rows, rng.normal(150, 30, 200)), now=0.0)}
    assert not judged["prediction"].drift


def test_without_a_predictions_file_there_is_no_prediction_check(numeric: VersionDetectors) -> None:
    verdicts = numeric.judge_fast(window(numeric_rows(100, seed=2), np.zeros(100)), now=0.0)
    assert [verdict.detector for verdict in verdicts] == ["ks"]


def test_an_unreadable_reference_says_why(tmp_path: Path) -> None:
    with pytest.raises(ReferenceError, match=r"cannot read file://.*missing\.csv"):
        load_reference((tmp_path / "missing.csv").as_uri())
    write_reference(tmp_path, numeric_rows(5, seed=1))
    with pytest.raises(ReferenceError, match=r"categorical columns \['colour'\] are not columns"):
        load_reference((tmp_path / "reference.csv").as_uri(), categorical=["colour"])
