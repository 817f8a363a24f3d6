"""This server's artifacts: the trainer's PyTorch MLP rebuilt by its own code, and refused when it cannot be.

The folder's layout and ``model.joblib`` are loaded by ``modelloop_contracts.load_predictor``, tested in
contracts/tests; here is what this server adds to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from modelloop_contracts import ArtifactError
from sklearn import datasets

from conftest import TorchArtifact, write_torch_mlp
from modelloop_server.model import load_artifact


def test_a_joblib_classifier_loads_with_its_feature_names_and_classes(
    iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    predictor = load_artifact(iris_artifact)

    assert predictor.framework == "sklearn"
    assert predictor.feature_names == tuple(iris_frame.columns[:4])
    assert predictor.classes == ("setosa", "versicolor", "virginica")


def test_a_torch_mlp_is_rebuilt_from_its_architecture(
    torch_iris_artifact: TorchArtifact, iris_frame: pd.DataFrame
) -> None:
    predictor = load_artifact(torch_iris_artifact.folder)
    rows = iris_frame.drop(columns=["species"]).to_numpy()

    assert predictor.framework == "pytorch"
    assert predictor.feature_names == tuple(iris_frame.columns[:4])
    assert predictor.n_features == 4
    assert predictor.classes == ("setosa", "versicolor", "virginica")
    assert (predictor.predict(rows) == torch_iris_artifact.predict(rows)).all()
    # The network learned something: the artifact is a real model, not an untrained one.
    assert (predictor.predict(rows) == iris_frame["species"].to_numpy()).mean() > 0.9


def test_a_torch_mlp_regressor_undoes_the_target_standardization(tmp_path: Path) -> None:
    features, target = datasets.load_diabetes(return_X_y=True, as_frame=True)
    artifact = write_torch_mlp(tmp_path, features, target.to_numpy(), task="regression", hidden_sizes=[8])
    rows = features.to_numpy()

    predictor = load_artifact(tmp_path)
    predictions = predictor.predict(rows)

    assert predictor.classes is None
    assert np.allclose(predictions, artifact.predict(rows), rtol=1e-5)
    assert 100 < predictions.mean() < 200  # in the target's units, not standardized ones


def test_weights_without_their_architecture_are_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes((torch_iris_artifact.folder / "model.pt").read_bytes())

    with pytest.raises(ArtifactError, match=r"no model.json"):
        load_artifact(tmp_path)


def test_an_architecture_of_another_format_is_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes((torch_iris_artifact.folder / "model.pt").read_bytes())
    architecture = json.loads((torch_iris_artifact.folder / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**architecture, "format": "other/v9"}))

    with pytest.raises(ArtifactError, match="other/v9"):
        load_artifact(tmp_path)


def test_weights_that_are_not_tensors_only_are_refused(
    torch_iris_artifact: TorchArtifact, tmp_path: Path
) -> None:
    # torch.save of an arbitrary object is a pickle that weights_only=True will not run.
    import torch

    torch.save({"payload": object()}, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text((torch_iris_artifact.folder / "model.json").read_text())

    with pytest.raises(ArtifactError, match="cannot load"):
        load_artifact(tmp_path)
