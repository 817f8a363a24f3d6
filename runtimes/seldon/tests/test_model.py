"""The wrapper class in-process: its parameters, its loading, and its answers to REST and gRPC messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from seldon_core.proto import prediction_pb2
from seldon_core.utils import json_to_seldon_message, seldon_message_to_json

from conftest import TrainedMLP
from modelloop_seldon import ArtifactError, ModelloopModel

SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def no_version_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELLOOP_MODEL_VERSION", raising=False)


@pytest.mark.usefixtures("no_version_env")
def test_the_version_is_the_parameter_then_the_environment_then_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ModelloopModel("/models", model_version=7).version == "7"
    assert ModelloopModel("/models").version == "unknown"
    monkeypatch.setenv("MODELLOOP_MODEL_VERSION", "5")
    assert ModelloopModel("/models").version == "5"
    assert ModelloopModel("/models", model_version="6").version == "6"


def test_the_model_folder_defaults_to_mnt_models_and_may_be_a_file_uri() -> None:
    assert ModelloopModel().model_dir == Path("/mnt/models")
    assert ModelloopModel("file:///data/my%20model").model_dir == Path("/data/my model")


def test_a_remote_model_uri_is_refused_with_where_seldon_puts_models() -> None:
    with pytest.raises(ArtifactError, match="storage initializer"):
        ModelloopModel("s3://models/iris")


def test_loading_a_folder_without_a_model_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")

    with pytest.raises(
        ArtifactError, match=r"neither model.joblib nor model.onnx \(it holds: \['notes.txt'\]\)"
    ):
        ModelloopModel(str(tmp_path)).load()


def test_an_unreadable_model_file_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")

    with pytest.raises(ArtifactError, match="cannot load"):
        ModelloopModel(str(tmp_path)).load()


def test_a_rest_message_is_answered_with_labels_and_metrics(iris_artifact: Path) -> None:
    model = ModelloopModel(str(iris_artifact), model_version=1)
    model.load()

    answer = model.predict_raw({"data": {"ndarray": [SETOSA]}, "meta": {"puid": "abc"}})

    assert answer["data"] == {"names": [], "ndarray": ["setosa"]}
    assert answer["meta"]["puid"] == "abc"
    assert {
        "type": "COUNTER",
        "key": "modelloop_seldon_requests",
        "value": 1,
        "tags": {"version": "1", "code": "200"},
    } in (answer["meta"]["metrics"])


def iris_probabilities(artifact: Path, rows: list[list[float]]) -> list[list[float]]:
    probabilities: list[list[float]] = joblib.load(artifact / "model.joblib").predict_proba(rows).tolist()
    return probabilities


def test_a_classifiers_answer_tags_its_probabilities_and_version_beside_the_requests_tags(
    iris_artifact: Path,
) -> None:
    model = ModelloopModel(str(iris_artifact), model_version=4)
    model.load()
    rows = [SETOSA, [6.7, 3.0, 5.2, 2.3]]

    answer = model.predict_raw({"data": {"ndarray": rows}, "meta": {"tags": {"caller": "test"}}})

    assert answer["data"]["ndarray"] == ["setosa", "virginica"]
    assert answer["meta"]["tags"] == {
        "caller": "test",
        "model_version": "4",
        "probabilities": iris_probabilities(iris_artifact, rows),
    }


def test_a_regressors_answer_tags_its_version_only(diabetes_artifact: Path) -> None:
    model = ModelloopModel(str(diabetes_artifact), model_version="2")
    model.load()

    answer = model.predict_raw({"data": {"ndarray": [[0.0] * 10]}})

    assert answer["meta"]["tags"] == {"model_version": "2"}


@pytest.mark.parametrize(
    ("parameter", "env"),
    [(False, None), ("false", "true"), (None, "0"), (None, "false")],
    ids=["bool-parameter", "string-parameter-over-env", "env-0", "env-false"],
)
def test_with_probabilities_off_an_answer_tags_its_version_only(
    iris_artifact: Path, monkeypatch: pytest.MonkeyPatch, parameter: bool | str | None, env: str | None
) -> None:
    if env is None:
        monkeypatch.delenv("MODELLOOP_SERVE_PROBABILITIES", raising=False)
    else:
        monkeypatch.setenv("MODELLOOP_SERVE_PROBABILITIES", env)
    model = ModelloopModel(str(iris_artifact), model_version=1, serve_probabilities=parameter)
    model.load()

    answer = model.predict_raw({"data": {"ndarray": [SETOSA]}})

    assert answer["data"]["ndarray"] == ["setosa"]
    assert answer["meta"]["tags"] == {"model_version": "1"}


def test_a_probabilities_switch_that_is_neither_true_nor_false_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELLOOP_SERVE_PROBABILITIES", "perhaps")
    with pytest.raises(ValueError, match="MODELLOOP_SERVE_PROBABILITIES must be true or false"):
        ModelloopModel("/models")
    with pytest.raises(ValueError, match="the parameter serve_probabilities must be true or false"):
        ModelloopModel("/models", serve_probabilities="perhaps")


def test_a_grpc_message_is_answered_with_a_grpc_message(iris_artifact: Path) -> None:
    model = ModelloopModel(str(iris_artifact))
    model.load()
    request = json_to_seldon_message({"data": {"tensor": {"shape": [1, 4], "values": SETOSA}}})

    answer = model.predict_raw(request)

    assert isinstance(answer, prediction_pb2.SeldonMessage)
    as_json = seldon_message_to_json(answer)
    assert as_json["data"]["ndarray"] == ["setosa"]
    # A protobuf Struct: its numbers are doubles, the probabilities' own type.
    assert as_json["meta"]["tags"] == {
        "model_version": "unknown",
        "probabilities": iris_probabilities(iris_artifact, [SETOSA]),
    }


def test_a_trained_mlp_regressor_answers_what_pytorch_predicts_in_the_targets_units(
    trained_diabetes_mlp: TrainedMLP,
) -> None:
    model = ModelloopModel(str(trained_diabetes_mlp.folder))
    model.load()
    rows = trained_diabetes_mlp.rows

    answer = model.predict_raw(
        {"data": {"tensor": {"shape": list(rows.shape), "values": rows.ravel().tolist()}}}
    )

    assert model.predictor is not None and model.predictor.framework == "pytorch"
    # onnxruntime's float32 sums and PyTorch's differ in their last bits; nothing more.
    np.testing.assert_allclose(answer["data"]["tensor"]["values"], trained_diabetes_mlp.expected, rtol=1e-6)
    assert answer["meta"]["tags"] == {"model_version": "unknown"}


def test_a_trained_mlp_classifier_tags_the_probabilities_of_its_graph(trained_iris_mlp: TrainedMLP) -> None:
    model = ModelloopModel(str(trained_iris_mlp.folder))
    model.load()
    rows = trained_iris_mlp.rows

    answer = model.predict_raw(
        {"data": {"ndarray": [[None if np.isnan(v) else v for v in row] for row in rows]}}
    )

    assert answer["data"]["ndarray"] == trained_iris_mlp.expected.tolist()
    probabilities = np.asarray(answer["meta"]["tags"]["probabilities"])
    assert probabilities.shape == (len(rows), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    classes = np.array(["setosa", "versicolor", "virginica"])
    assert classes[probabilities.argmax(axis=1)].tolist() == trained_iris_mlp.expected.tolist()


def test_a_fault_of_the_server_is_a_500_that_is_counted(
    iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelloopModel(str(iris_artifact))
    model.load()
    assert model.predictor is not None

    def broken(rows: np.ndarray) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(
        model,
        "predictor",
        dataclasses.replace(model.predictor, predict=broken, predict_with_probabilities=broken),
    )

    answer = model.predict_raw({"data": {"ndarray": [SETOSA]}})

    assert answer["status"]["code"] == 500
    assert "RuntimeError: out of memory" in answer["status"]["info"]
    errors = [metric for metric in answer["meta"]["metrics"] if metric["key"] == "modelloop_seldon_errors"]
    assert {"version": "unknown", "reason": "internal"} in [
        metric["tags"] for metric in errors if metric["value"] == 1
    ]
