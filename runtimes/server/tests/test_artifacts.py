"""Loading artifact folders as the trainer writes them, and refusing the ones that cannot be served."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from conftest import TorchArtifact, write_torch_mlp
from modelloop_server.artifacts import ArtifactError, load_predictor


def test_a_joblib_classifier_loads_with_its_feature_names_and_classes(
    iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    predictor = load_predictor(iris_artifact)

    assert predictor.framework == "sklearn"
    assert predictor.feature_names == list(iris_frame.columns[:4])
    assert predictor.n_features == 4
    assert predictor.classes == ["setosa", "versicolor", "virginica"]
    rows = iris_frame.drop(columns=["species"]).to_numpy()
    assert (predictor.predict(rows) == joblib.load(iris_artifact / "model.joblib").predict(rows)).all()


def test_a_joblib_regressor_has_no_classes(diabetes_artifact: Path) -> None:
    predictor = load_predictor(diabetes_artifact)

    assert predictor.classes is None
    assert predictor.n_features == 10


def test_a_torch_mlp_is_rebuilt_from_its_architecture(
    torch_iris_artifact: TorchArtifact, iris_frame: pd.DataFrame
) -> None:
    predictor = load_predictor(torch_iris_artifact.folder)
    rows = iris_frame.drop(columns=["species"]).to_numpy()

    assert predictor.framework == "pytorch"
    assert predictor.classes == ["setosa", "versicolor", "virginica"]
    assert (predictor.predict(rows) == torch_iris_artifact.predict(rows)).all()
    # The network learned something: the artifact is a real model, not an untrained one.
    assert (predictor.predict(rows) == iris_frame["species"].to_numpy()).mean() > 0.9


def test_a_torch_mlp_regressor_undoes_the_target_standardization(tmp_path: Path) -> None:
    features, target = datasets.load_diabetes(return_X_y=True, as_frame=True)
    artifact = write_torch_mlp(tmp_path, features, target.to_numpy(), task="regression", hidden_sizes=[8])
    rows = features.to_numpy()

    predictions = load_predictor(tmp_path).predict(rows)

    assert np.allclose(predictions, artifact.predict(rows), rtol=1e-5)
    assert 100 < predictions.mean() < 200  # in the target's units, not standardized ones


def test_a_folder_without_a_model_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")

    with pytest.raises(ArtifactError, match=r"neither model.joblib nor model.pt .*metrics.json"):
        load_predictor(tmp_path)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_predictor(tmp_path / "absent")


def test_weights_without_their_architecture_are_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes((torch_iris_artifact.folder / "model.pt").read_bytes())

    with pytest.raises(ArtifactError, match=r"no model.json"):
        load_predictor(tmp_path)


def test_an_architecture_of_another_format_is_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes((torch_iris_artifact.folder / "model.pt").read_bytes())
    architecture = json.loads((torch_iris_artifact.folder / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**architecture, "format": "other/v9"}))

    with pytest.raises(ArtifactError, match="other/v9"):
        load_predictor(tmp_path)


def test_weights_that_are_not_tensors_only_are_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    # torch.save of an arbitrary object is a pickle that weights_only=True will not run.
    import torch

    torch.save({"payload": object()}, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text((torch_iris_artifact.folder / "model.json").read_text())

    with pytest.raises(ArtifactError, match="cannot load"):
        load_predictor(tmp_path)


def test_a_folder_with_two_models_is_refused(iris_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes((iris_artifact / "model.joblib").read_bytes())
    (tmp_path / "model.pt").write_bytes(b"")

    with pytest.raises(ArtifactError, match="both"):
        load_predictor(tmp_path)
