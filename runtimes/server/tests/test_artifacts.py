"""This server's artifacts: the trainer's TorchMLP served from its ONNX export as PyTorch predicts it, and
refused when it has no export.

The folder's layout, ``model.joblib`` and ``model.onnx`` are loaded by
``modelloop_contracts.load_predictor``, tested in contracts/tests; here are models the real trainer wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import ArtifactError

from conftest import TrainedMLP
from modelloop_server.model import load_artifact


def test_a_joblib_classifier_loads_with_its_feature_names_and_classes(
    iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    predictor = load_artifact(iris_artifact)

    assert predictor.framework == "sklearn"
    assert predictor.feature_names == tuple(iris_frame.columns[:4])
    assert predictor.classes == ("setosa", "versicolor", "virginica")


def test_a_trained_mlp_classifier_predicts_what_pytorch_predicts(
    trained_iris_mlp: TrainedMLP, iris_frame: pd.DataFrame
) -> None:
    predictor = load_artifact(trained_iris_mlp.folder)
    predictions = predictor.predict(trained_iris_mlp.rows)

    assert predictor.framework == "pytorch"
    assert predictor.feature_names == tuple(iris_frame.columns[:4])
    assert predictor.n_features == 4
    assert predictor.classes == ("setosa", "versicolor", "virginica")
    # Every row, those with missing values (filled with the training medians) too.
    assert predictions.tolist() == trained_iris_mlp.expected.tolist()
    # The network learned something: the artifact is a real model, not an untrained one.
    assert (predictions[: len(iris_frame)] == iris_frame["species"].to_numpy()).mean() > 0.9


def test_a_trained_mlp_regressor_predicts_what_pytorch_predicts_in_the_targets_units(
    trained_diabetes_mlp: TrainedMLP,
) -> None:
    predictor = load_artifact(trained_diabetes_mlp.folder)
    predictions = predictor.predict(trained_diabetes_mlp.rows)

    assert predictor.classes is None
    assert predictions.dtype == np.float64
    # onnxruntime's float32 sums and PyTorch's differ in their last bits; nothing more.
    np.testing.assert_allclose(predictions, trained_diabetes_mlp.expected, rtol=1e-6)
    assert 100 < predictions.mean() < 200  # in the target's units, not standardized ones


def test_the_trainers_recorded_reference_predictions_are_reproduced(trained_iris_mlp: TrainedMLP) -> None:
    reference = pd.read_csv(trained_iris_mlp.folder / "reference.csv")
    recorded = pd.read_csv(trained_iris_mlp.folder / "reference_predictions.csv")["prediction"]

    predictions = load_artifact(trained_iris_mlp.folder).predict(reference.to_numpy())

    assert predictions.tolist() == recorded.tolist()


def test_the_onnx_file_alone_is_a_servable_model(trained_iris_mlp: TrainedMLP, tmp_path: Path) -> None:
    """What a storage initializer fetches for an artifactUri that names model.onnx: that file only."""
    shutil.copyfile(trained_iris_mlp.folder / "model.onnx", tmp_path / "model.onnx")

    predictions = load_artifact(tmp_path).predict(trained_iris_mlp.rows)

    assert predictions.tolist() == trained_iris_mlp.expected.tolist()


def test_an_mlp_without_its_onnx_export_is_refused_saying_how_to_export_it(
    trained_iris_mlp: TrainedMLP, tmp_path: Path
) -> None:
    for name in ("model.pt", "model.json"):
        shutil.copyfile(trained_iris_mlp.folder / name, tmp_path / name)

    with pytest.raises(ArtifactError, match=r"no model.onnx.*modelloop-train --export-onnx"):
        load_artifact(tmp_path)
