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


# -- labels with probabilities ------------------------------------------------------------------------


def served(folder: Path, estimator: Any, rows: np.ndarray, target: np.ndarray) -> Any:
    """``estimator`` fitted on the rows, written as the trainer writes it, loaded as the servers load it."""
    joblib.dump(estimator.fit(rows, target), folder / "model.joblib")
    return load_predictor(folder)


def classifiers() -> list[Any]:
    """The trainer's classifiers, and a few more kinds, each as the servers may meet them."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    return [
        make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=7, random_state=0)),
        ExtraTreesClassifier(n_estimators=5, random_state=0),
        DecisionTreeClassifier(max_depth=3, random_state=0),
        GradientBoostingClassifier(n_estimators=5, random_state=0),
        HistGradientBoostingClassifier(max_iter=5),
        LogisticRegression(max_iter=500),
        GaussianNB(),
        KNeighborsClassifier(n_neighbors=4),
        KNeighborsClassifier(n_neighbors=4, weights="distance"),
        make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(4,), max_iter=50, random_state=0)),
        CalibratedClassifierCV(DecisionTreeClassifier(max_depth=2, random_state=0), cv=3),
        SVC(probability=True, random_state=0),
    ]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("binary", [False, True], ids=["three-classes", "two-classes"])
@pytest.mark.parametrize("index", range(len(classifiers())), ids=lambda i: str(i))
def test_a_classifiers_labels_with_probabilities_are_exactly_predicts_and_its_probabilities_predict_probas(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, list[str]], index: int, binary: bool
) -> None:
    rows, labels, _ = iris
    if binary:
        rows, labels = rows[50:], labels[50:]  # versicolor against virginica: the classes overlap
    estimator = classifiers()[index]

    predictor = served(tmp_path, estimator, rows, labels)
    predictions, probabilities = predictor.predict_with_probabilities(rows)

    assert predictions.tolist() == estimator.predict(rows).tolist()
    assert predictions.tolist() == predictor.predict(rows).tolist()
    assert probabilities is not None and probabilities.dtype == np.float64
    assert probabilities.shape == (len(rows), len(predictor.classes or ()))
    assert np.array_equal(probabilities, estimator.predict_proba(rows))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_an_svcs_labels_are_its_predictions_where_its_probabilities_say_otherwise(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    from sklearn.svm import SVC

    rows, labels, _ = iris
    svc = SVC(probability=True, random_state=0)
    predictor = served(tmp_path, svc, rows, labels)

    predictions, probabilities = predictor.predict_with_probabilities(rows)

    assert probabilities is not None
    most_probable = svc.classes_[probabilities.argmax(axis=1)]
    assert (most_probable != svc.predict(rows)).any(), "Platt scaling disagrees with predict on some row"
    assert predictions.tolist() == svc.predict(rows).tolist()


def test_a_row_whose_largest_probability_is_tied_gets_predicts_label(tmp_path: Path) -> None:
    """Gradient boosting says the second class where its score is 0, where its probabilities tie at 0.5:
    the label is predict's, not the first of the tied probabilities."""
    from sklearn.ensemble import GradientBoostingClassifier

    rows, target = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array(["no", "yes", "no", "yes"])
    zero_scores = GradientBoostingClassifier(init="zero", learning_rate=0.0, n_estimators=1)

    predictions, probabilities = served(tmp_path, zero_scores, rows, target).predict_with_probabilities(rows)

    assert probabilities is not None and probabilities.tolist() == [[0.5, 0.5]] * 4
    assert predictions.tolist() == ["yes"] * 4 == zero_scores.predict(rows).tolist()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_classifiers_that_label_from_their_probabilities_are_known_by_their_class(
    iris: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    """One model call for these; scikit-learn moving one of them to another module would lose that."""
    from modelloop_contracts.loading import _label_rule

    rows, labels, _ = iris
    rules = [_label_rule(estimator.fit(rows, labels)) for estimator in classifiers()]

    assert rules == [
        "argmax",
        "argmax",
        "argmax",
        "ordered",
        "ordered",
        "ordered",
        "ordered",
        "ordered",
        None,  # distance-weighted votes
        "ordered",
        "argmax",
        None,  # an SVC's probabilities do not decide its labels
    ]


def test_a_regressor_and_a_classifier_without_predict_proba_answer_no_probabilities(
    diabetes_artifact: Path, tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    from sklearn.svm import SVC

    regressor = load_predictor(diabetes_artifact)
    rows, labels, _ = iris
    svc = SVC().fit(rows, labels)
    joblib.dump(svc, tmp_path / "model.joblib")
    classifier = load_predictor(tmp_path)

    values, none = regressor.predict_with_probabilities(np.zeros((2, 10)))
    predictions, nothing = classifier.predict_with_probabilities(rows[:5])

    assert none is None and values.tolist() == regressor.predict(np.zeros((2, 10))).tolist()
    assert nothing is None and predictions.tolist() == svc.predict(rows[:5]).tolist()


def test_a_multi_output_classifier_predicts_as_before_without_probabilities(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    rows = np.arange(20.0).reshape(10, 2)
    targets = np.column_stack([rows[:, 0] > 9, rows[:, 1] > 5]).astype(int)
    forest = RandomForestClassifier(n_estimators=3, random_state=0)

    predictions, probabilities = served(tmp_path, forest, rows, targets).predict_with_probabilities(rows)

    assert probabilities is None
    assert predictions.tolist() == forest.predict(rows).tolist()


@needs_onnxruntime
def test_an_onnx_classifier_answers_its_labels_and_probabilities_in_one_run(tmp_path: Path) -> None:
    predictor = load_predictor(onnx_folder(tmp_path, "iris"))
    rows = fixture_rows("iris")

    predictions, probabilities = predictor.predict_with_probabilities(rows)

    assert predictions.tolist() == EXPECTED["iris"]["predictions"] == predictor.predict(rows).tolist()
    assert probabilities is not None and probabilities.dtype == np.float64
    assert probabilities.shape == (len(rows), 3)
    # The graph's float32 softmax: each row sums to 1 up to float32 rounding.
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    classes = np.asarray(predictor.classes)
    assert classes[probabilities.argmax(axis=1)].tolist() == predictions.tolist()


@needs_onnxruntime
def test_an_onnx_regressor_answers_no_probabilities(tmp_path: Path) -> None:
    predictor = load_predictor(onnx_folder(tmp_path, "diabetes"))
    rows = fixture_rows("diabetes")

    values, probabilities = predictor.predict_with_probabilities(rows)

    assert probabilities is None
    assert values.tolist() == predictor.predict(rows).tolist()


@needs_onnxruntime
def test_an_onnx_classifier_without_the_probabilities_output_still_answers_its_labels(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(FIXTURES / "iris.onnx")
    kept = [output for output in model.graph.output if output.name != "probabilities"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, tmp_path / "model.onnx")
    predictor = load_predictor(tmp_path)

    predictions, probabilities = predictor.predict_with_probabilities(fixture_rows("iris"))

    assert probabilities is None
    assert predictions.tolist() == EXPECTED["iris"]["predictions"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(None, True), ("", True), ("true", True), ("1", True), (" Yes ", True), ("ON", True)],
        *[("false", False), ("0", False), ("no", False), ("Off", False)],
    ],
)
def test_the_probabilities_switch_is_on_unless_set_off(value: str | None, expected: bool) -> None:
    from modelloop_contracts.loading import SERVE_PROBABILITIES_ENV, serve_probabilities

    env = {} if value is None else {SERVE_PROBABILITIES_ENV: value}

    assert serve_probabilities(env) is expected


def test_a_probabilities_switch_that_is_neither_on_nor_off_is_refused_naming_the_variable() -> None:
    from modelloop_contracts.loading import serve_probabilities

    with pytest.raises(ValueError, match=r"MODELLOOP_SERVE_PROBABILITIES must be true or false.*'maybe'"):
        serve_probabilities({"MODELLOOP_SERVE_PROBABILITIES": "maybe"})
