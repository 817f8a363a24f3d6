"""TorchMLP learns, is deterministic, saves and loads, and exports to ONNX as it predicts: on the CPU, and
on CUDA where there is a GPU."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from modelloop_contracts import ONNX_FORMAT, ONNX_MANIFEST_KEY
from sklearn import datasets
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

from modelloop_trainer.torch_mlp import TorchMLP, cuda_available, load_torch_mlp

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")


def wine_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = datasets.load_wine(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)  # type: ignore[no-any-return]


def fitted(device: str = "cpu", **params: object) -> tuple[TorchMLP, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, y_test = wine_split()
    model = TorchMLP(hidden_sizes=[32], epochs=30, batch_size=32, device=device, **params)  # type: ignore[arg-type]
    return model.fit(x_train, y_train), x_test, y_test


def test_it_classifies_wine_well_on_the_cpu() -> None:
    model, x_test, y_test = fitted()
    assert accuracy_score(y_test, model.predict(x_test)) >= 0.9
    probabilities = model.predict_proba(x_test)
    assert probabilities.shape == (len(x_test), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_it_regresses_diabetes() -> None:
    x, y = datasets.load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    model = TorchMLP(task="regression", hidden_sizes=[32], epochs=60, batch_size=32).fit(x_train, y_train)
    assert r2_score(y_test, model.predict(x_test)) > 0.3


def test_the_same_seed_gives_the_same_model_and_another_seed_does_not() -> None:
    first, x_test, _ = fitted(seed=5)
    second, _, _ = fitted(seed=5)
    other, _, _ = fitted(seed=6)
    assert first.loss_history_ == second.loss_history_
    np.testing.assert_array_equal(first.predict_proba(x_test), second.predict_proba(x_test))
    assert first.loss_history_ != other.loss_history_


def test_saved_weights_and_architecture_load_back_to_the_same_predictions() -> None:
    model, x_test, _ = fitted()
    architecture = json.loads(json.dumps(model.architecture()))
    loaded = load_torch_mlp(model.weights_bytes(), architecture)
    np.testing.assert_array_equal(loaded.predict(x_test), model.predict(x_test))
    np.testing.assert_allclose(loaded.predict_proba(x_test), model.predict_proba(x_test), rtol=1e-6)
    assert architecture["classes"] == [0, 1, 2]
    assert architecture["hidden_sizes"] == [32]


def test_missing_feature_values_are_filled_with_training_medians() -> None:
    x_train, x_test, y_train, _ = wine_split()
    x_train = x_train.copy()
    x_train[::7, 2] = np.nan
    model = TorchMLP(hidden_sizes=[16], epochs=5).fit(x_train, y_train)
    assert model.fill_[2] == pytest.approx(np.nanmedian(x_train[:, 2]))
    x_test = x_test.copy()
    x_test[:, 2] = np.nan
    assert np.isfinite(model.predict_proba(x_test)).all()


def test_string_labels_come_back_as_strings() -> None:
    x, y = datasets.load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = TorchMLP(hidden_sizes=[16], epochs=20).fit(x, names)
    assert set(model.predict(x)) <= set(names)
    assert model.architecture()["classes"] == ["setosa", "versicolor", "virginica"]


@needs_cuda
def test_on_cuda_it_is_deterministic_and_agrees_with_the_cpu() -> None:
    first, x_test, y_test = fitted(device="cuda", seed=3)
    second, _, _ = fitted(device="cuda", seed=3)
    on_cpu, _, _ = fitted(device="cpu", seed=3)
    assert next(first.network_.parameters()).device.type == "cuda"
    assert first.graph_replays_ > 0
    assert first.loss_history_ == second.loss_history_
    np.testing.assert_allclose(first.loss_history_, on_cpu.loss_history_, rtol=1e-3)
    assert (first.predict(x_test) == on_cpu.predict(x_test)).mean() >= 0.95
    assert accuracy_score(y_test, first.predict(x_test)) >= 0.9
    loaded = load_torch_mlp(first.weights_bytes(), first.architecture())
    np.testing.assert_allclose(loaded.predict_proba(x_test), first.predict_proba(x_test), atol=1e-5)


@needs_cuda
def test_the_cuda_graph_replays_the_same_training_as_eager_steps() -> None:
    graphed, x_test, _ = fitted(device="cuda", seed=2)
    eager, _, _ = fitted(device="cuda", seed=2, cuda_graph=False)
    assert graphed.graph_replays_ > 0
    assert eager.graph_replays_ == 0
    np.testing.assert_allclose(graphed.loss_history_, eager.loss_history_, rtol=1e-6)
    np.testing.assert_allclose(graphed.predict_proba(x_test), eager.predict_proba(x_test), atol=1e-6)


def test_the_cpu_never_uses_a_cuda_graph() -> None:
    model, _, _ = fitted(seed=2)
    assert model.graph_replays_ == 0


def onnx_session(model: TorchMLP) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.onnx_bytes(), providers=["CPUExecutionProvider"])


def test_the_onnx_export_of_a_classifier_gives_its_class_indices_and_probabilities() -> None:
    model, x_test, _ = fitted()
    x = x_test.astype(np.float32)
    x[::4, 1] = np.nan  # filled with the training median, in the graph

    session = onnx_session(model)
    index, probabilities = session.run(["class_index", "probabilities"], {"features": x})

    assert [node.name for node in session.get_inputs()] == ["features"]
    assert session.get_inputs()[0].shape == ["batch", 13]
    np.testing.assert_array_equal(model.classes_[index], model.predict(x))
    np.testing.assert_allclose(probabilities, model.predict_proba(x), atol=1e-6)


def test_the_onnx_export_of_a_regressor_gives_its_values_in_the_targets_units() -> None:
    x, y = datasets.load_diabetes(return_X_y=True)
    model = TorchMLP(task="regression", hidden_sizes=[16], epochs=20, batch_size=32).fit(x, y)

    (values,) = onnx_session(model).run(["value"], {"features": x.astype(np.float32)})

    assert values.dtype == np.float64
    np.testing.assert_allclose(values, model.predict(x), rtol=1e-6)


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_the_onnx_export_takes_any_number_of_rows(rows: int) -> None:
    model, x_test, _ = fitted(seed=1)

    (index,) = onnx_session(model).run(["class_index"], {"features": x_test[:rows].astype(np.float32)})

    assert index.shape == (rows,)


def test_the_onnx_export_carries_the_models_manifest_and_nothing_about_where_it_was_made() -> None:
    x, y = datasets.load_iris(return_X_y=True, as_frame=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = TorchMLP(hidden_sizes=[8], epochs=2).fit(x, names)

    exported = onnx.load_from_string(model.onnx_bytes())

    assert {prop.key: json.loads(prop.value) for prop in exported.metadata_props} == {
        ONNX_MANIFEST_KEY: {
            "format": ONNX_FORMAT,
            "task": "classification",
            "feature_names": list(x.columns),
            "classes": ["setosa", "versicolor", "virginica"],
        }
    }
    assert all(not node.metadata_props for node in exported.graph.node)
    assert __file__.rsplit("/", 2)[0] not in str(exported)  # no stack traces naming source files
    onnx.checker.check_model(exported, full_check=True)


def test_the_same_model_exports_to_the_same_bytes_and_prints_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    model, _, _ = fitted(seed=1)

    first, second = model.onnx_bytes(), model.onnx_bytes()

    assert first == second
    assert capfd.readouterr().out == ""  # the trainer's stdout holds progress lines and the result only


@needs_cuda
def test_a_model_trained_on_cuda_exports_from_the_cpu_and_stays_on_cuda() -> None:
    model, x_test, _ = fitted(device="cuda", seed=3)

    (index,) = onnx_session(model).run(["class_index"], {"features": x_test.astype(np.float32)})

    assert next(model.network_.parameters()).device.type == "cuda"
    assert (model.classes_[index] == model.predict(x_test)).mean() >= 0.95
