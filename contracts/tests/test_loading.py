"""Loading artifact folders as the trainer writes them, and refusing the ones that cannot be served.

The PyTorch MLP itself is rebuilt by each model server (their tests load real ones); here a stand-in
``load_torch`` shows what the loader checks before it and hands to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from modelloop_contracts import (
    TORCH_ARCHITECTURE_FORMAT,
    ArtifactError,
    Predictor,
    load_predictor,
    python_scalar,
)

MANIFEST = {"format": TORCH_ARCHITECTURE_FORMAT, "task": "regression", "feature_names": ["a", "b"]}


class StandIn:
    """A ``load_torch`` that records what it was given and answers with a fixed predictor."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.calls: list[tuple[bytes, dict[str, Any]]] = []
        self.failure = failure

    def __call__(self, weights: bytes, architecture: dict[str, Any]) -> Predictor:
        self.calls.append((weights, architecture))
        if self.failure is not None:
            raise self.failure
        return Predictor("pytorch", lambda rows: rows[:, 0], ("a", "b"), 2, None)


def torch_folder(folder: Path, manifest: Any = MANIFEST) -> Path:
    (folder / "model.pt").write_bytes(b"tensors")
    if manifest is not None:
        (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_a_joblib_classifier_loads_with_its_feature_names_and_classes(
    iris_artifact: Path, iris: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    rows, _, names = iris

    predictor = load_predictor(iris_artifact)

    assert predictor.framework == "sklearn"
    assert predictor.feature_names == tuple(names)
    assert predictor.n_features == 4
    assert predictor.classes == ("setosa", "versicolor", "virginica")
    expected = joblib.load(iris_artifact / "model.joblib").predict(rows)
    assert (predictor.predict(rows) == expected).all()


def test_a_joblib_regressor_has_no_classes_and_no_feature_names_when_fitted_on_plain_rows(
    diabetes_artifact: Path,
) -> None:
    predictor = load_predictor(diabetes_artifact)

    assert predictor.classes is None
    assert predictor.feature_names is None
    assert predictor.n_features == 10


def test_a_classifiers_numeric_labels_are_plain_python_scalars(tmp_path: Path) -> None:
    from sklearn.tree import DecisionTreeClassifier

    joblib.dump(DecisionTreeClassifier().fit([[0.0], [1.0]], np.array([3, 5])), tmp_path / "model.joblib")

    classes = load_predictor(tmp_path).classes

    assert classes == (3, 5)
    assert classes is not None and all(type(label) is int for label in classes)


def test_a_folder_without_a_model_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")

    holds = r"neither model.joblib nor model.pt \(it holds: \['metrics.json'\]\)"
    with pytest.raises(ArtifactError, match=holds):
        load_predictor(tmp_path)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_predictor(tmp_path / "absent")


def test_a_folder_with_two_models_is_refused(iris_artifact: Path) -> None:
    (iris_artifact / "model.pt").write_bytes(b"")

    with pytest.raises(ArtifactError, match=r"holds both model.joblib and model.pt"):
        load_predictor(iris_artifact, load_torch=StandIn())


def test_a_joblib_file_that_does_not_load_or_cannot_predict_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match=r"cannot load .*model.joblib"):
        load_predictor(tmp_path)

    joblib.dump({"weights": [1, 2]}, tmp_path / "model.joblib")
    with pytest.raises(ArtifactError, match="holds a dict, which has no predict method"):
        load_predictor(tmp_path)


def test_a_torch_model_is_handed_to_load_torch_with_its_weights_and_manifest(tmp_path: Path) -> None:
    load_torch = StandIn()

    predictor = load_predictor(torch_folder(tmp_path), load_torch=load_torch)

    assert load_torch.calls == [(b"tensors", MANIFEST)]
    assert predictor.framework == "pytorch"


def test_a_torch_model_is_refused_where_the_server_loads_none(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is a PyTorch model, which this server does not load"):
        load_predictor(torch_folder(tmp_path))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "has no model.json beside it"),
        ({**MANIFEST, "format": "other/v9"}, "not a modelloop-torch-mlp/v1 architecture: format 'other/v9'"),
        (["not", "an", "object"], "holds no JSON object"),
    ],
    ids=["missing", "other-format", "not-an-object"],
)
def test_a_torch_model_without_a_manifest_of_its_format_is_refused_before_it_is_loaded(
    tmp_path: Path, manifest: Any, message: str
) -> None:
    load_torch = StandIn()

    with pytest.raises(ArtifactError, match=message):
        load_predictor(torch_folder(tmp_path, manifest), load_torch=load_torch)
    assert load_torch.calls == []


def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    torch_folder(tmp_path)
    (tmp_path / "model.json").write_text("{format")

    with pytest.raises(ArtifactError, match=r"cannot read .*model.json"):
        load_predictor(tmp_path, load_torch=StandIn())


def test_what_load_torch_raises_becomes_an_artifact_error_naming_the_weights(tmp_path: Path) -> None:
    load_torch = StandIn(RuntimeError("size mismatch for 0.weight"))

    with pytest.raises(ArtifactError, match=r"cannot load .*model.pt: RuntimeError: size mismatch"):
        load_predictor(torch_folder(tmp_path), load_torch=load_torch)


def test_python_scalar_turns_numpy_scalars_into_python_ones_and_leaves_the_rest() -> None:
    assert type(python_scalar(np.int64(2))) is int
    assert type(python_scalar(np.float32(0.5))) is float
    assert python_scalar("setosa") == "setosa"
