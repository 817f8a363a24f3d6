"""Loading artifact folders as the trainer writes them, and refusing the ones that cannot be served.

The trainer's PyTorch MLP is served from its ONNX export: ``fixtures/`` holds two, a classifier and a
regressor, exported by the trainer's own code with what PyTorch predicts for some of their rows
(``fixtures/make_onnx_fixtures.py`` writes them). Their tests run where onnxruntime is installed (every
runtime's environment but the drift detector's); the ones that alter a model's manifest need the ``onnx``
package too (the trainer's environment).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from modelloop_contracts import (
    ONNX_FORMAT,
    ONNX_MANIFEST_KEY,
    ArtifactError,
    load_predictor,
    python_scalar,
)

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "onnx_expected.json").read_text())

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed here"
)


def onnx_folder(folder: Path, name: str) -> Path:
    """``folder`` holding the fixture ``name`` as its ``model.onnx``."""
    shutil.copyfile(FIXTURES / f"{name}.onnx", folder / "model.onnx")
    return folder


def fixture_rows(name: str) -> np.ndarray:
    """The fixture's rows as a float array, NaN where a value is missing (JSON's null)."""
    return np.array([[np.nan if value is None else value for value in row] for row in EXPECTED[name]["rows"]])


def with_manifest(source: Path, target: Path, edit: Any) -> Path:
    """Copy the ONNX model ``source`` to ``target`` with its manifest replaced by ``edit(manifest)``."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(source)
    (entry,) = [prop for prop in model.metadata_props if prop.key == ONNX_MANIFEST_KEY]
    entry.value = edit(json.loads(entry.value))
    onnx.save(model, target)
    return target


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

    holds = r"neither model.joblib nor model.onnx \(it holds: \['metrics.json'\]\)"
    with pytest.raises(ArtifactError, match=holds):
        load_predictor(tmp_path)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_predictor(tmp_path / "absent")


@pytest.mark.parametrize("other", ["model.onnx", "model.pt"])
def test_a_folder_with_two_models_is_refused(iris_artifact: Path, other: str) -> None:
    (iris_artifact / other).write_bytes(b"")

    with pytest.raises(ArtifactError, match=rf"holds both model.joblib and {other}"):
        load_predictor(iris_artifact)


def test_a_joblib_file_that_does_not_load_or_cannot_predict_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match=r"cannot load .*model.joblib"):
        load_predictor(tmp_path)

    joblib.dump({"weights": [1, 2]}, tmp_path / "model.joblib")
    with pytest.raises(ArtifactError, match="holds a dict, which has no predict method"):
        load_predictor(tmp_path)


@needs_onnxruntime
def test_an_onnx_classifier_predicts_what_pytorch_predicted_with_its_feature_names_and_classes(
    tmp_path: Path,
) -> None:
    expected = EXPECTED["iris"]

    predictor = load_predictor(onnx_folder(tmp_path, "iris"))
    predictions = predictor.predict(fixture_rows("iris"))

    assert predictor.framework == "pytorch"
    assert predictor.feature_names == tuple(expected["feature_names"])
    assert predictor.n_features == 4
    assert predictor.classes == ("setosa", "versicolor", "virginica")
    # The labels themselves, as PyTorch's predict gives them: a 1-D array of the classes' values.
    assert predictions.shape == (len(expected["rows"]),)
    assert predictions.tolist() == expected["predictions"]


@needs_onnxruntime
def test_an_onnx_regressor_predicts_what_pytorch_predicted_in_the_targets_units(tmp_path: Path) -> None:
    expected = EXPECTED["diabetes"]

    predictor = load_predictor(onnx_folder(tmp_path, "diabetes"))
    predictions = predictor.predict(fixture_rows("diabetes"))

    assert predictor.classes is None
    assert predictor.feature_names == tuple(expected["feature_names"])
    assert predictions.dtype == np.float64
    assert predictions.shape == (len(expected["rows"]),)
    # onnxruntime's and PyTorch's float32 sums differ in their last bits; nothing more.
    assert np.allclose(predictions, expected["predictions"], rtol=1e-6, atol=0)


@needs_onnxruntime
@pytest.mark.parametrize("count", [0, 1], ids=["no-rows", "one-row"])
def test_an_onnx_model_takes_any_number_of_rows(tmp_path: Path, count: int) -> None:
    predictor = load_predictor(onnx_folder(tmp_path, "iris"))

    predictions = predictor.predict(fixture_rows("iris")[:count])

    assert predictions.tolist() == EXPECTED["iris"]["predictions"][:count]


@needs_onnxruntime
def test_rows_of_another_width_are_a_value_error_naming_the_width(tmp_path: Path) -> None:
    predictor = load_predictor(onnx_folder(tmp_path, "iris"))

    with pytest.raises(ValueError, match=r"expected rows of 4 values, got an array of shape \(2, 3\)"):
        predictor.predict(np.zeros((2, 3)))


@needs_onnxruntime
def test_an_onnx_file_that_does_not_load_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a model")

    with pytest.raises(ArtifactError, match=r"cannot load .*model.onnx"):
        load_predictor(tmp_path)


@needs_onnxruntime
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda manifest: "{format", "metadata is not JSON"),
        (
            lambda manifest: json.dumps({**manifest, "format": "other/v9"}),
            f"not a {ONNX_FORMAT} model: .*other/v9",
        ),
        (lambda manifest: json.dumps({**manifest, "task": "ranking"}), "task 'ranking'"),
        (lambda manifest: json.dumps({**manifest, "classes": []}), "classes must be a non-empty list"),
        (
            lambda manifest: json.dumps({**manifest, "feature_names": ["a", "b"]}),
            r"expected one input 'features' of shape \[batch, 2\]",
        ),
    ],
    ids=["not-json", "other-format", "unknown-task", "no-classes", "other-features"],
)
def test_an_onnx_model_whose_manifest_does_not_describe_it_is_refused(
    tmp_path: Path, edit: Any, message: str
) -> None:
    with_manifest(FIXTURES / "iris.onnx", tmp_path / "model.onnx", edit)

    with pytest.raises(ArtifactError, match=message):
        load_predictor(tmp_path)


@needs_onnxruntime
def test_an_onnx_model_without_a_manifest_is_refused_as_not_the_trainers(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(FIXTURES / "iris.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "model.onnx")

    with pytest.raises(
        ArtifactError, match="no 'modelloop' entry in its metadata: it is not a model exported"
    ):
        load_predictor(tmp_path)


def test_a_pytorch_model_without_its_onnx_export_is_refused_saying_how_to_export_it(tmp_path: Path) -> None:
    """An artifact of a trainer from before ONNX: the servers have no PyTorch to run it with."""
    (tmp_path / "model.pt").write_bytes(b"tensors")
    (tmp_path / "model.json").write_text("{}")

    with pytest.raises(
        ArtifactError, match=r"holds a PyTorch model \(model.pt\) but no model.onnx"
    ) as raised:
        load_predictor(tmp_path)
    assert "modelloop-train --export-onnx" in str(raised.value)


def test_an_onnx_model_where_onnxruntime_is_missing_is_refused_saying_so(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['onnxruntime'] = None; from pathlib import Path; "
        "from modelloop_contracts import ArtifactError, load_predictor\n"
        "try: load_predictor(Path(sys.argv[1]))\n"
        "except ArtifactError as error: print(error)"
    )
    folder = onnx_folder(tmp_path, "iris")
    process = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True
    )
    assert "onnxruntime is not installed here" in process.stdout


def test_python_scalar_turns_numpy_scalars_into_python_ones_and_leaves_the_rest() -> None:
    assert type(python_scalar(np.int64(2))) is int
    assert type(python_scalar(np.float32(0.5))) is float
    assert python_scalar("setosa") == "setosa"
