"""The wrapper class in-process: its parameters, its loading, and its answers to REST and gRPC messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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


def test_a_grpc_message_is_answered_with_a_grpc_message(iris_artifact: Path) -> None:
    model = ModelloopModel(str(iris_artifact))
    model.load()
    request = json_to_seldon_message({"data": {"tensor": {"shape": [1, 4], "values": SETOSA}}})

    answer = model.predict_raw(request)

    assert isinstance(answer, prediction_pb2.SeldonMessage)
    assert seldon_message_to_json(answer)["data"]["ndarray"] == ["setosa"]


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


def test_a_fault_of_the_server_is_a_500_that_is_counted(
    iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelloopModel(str(iris_artifact))
    model.load()
    assert model.predictor is not None

    def broken(rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "predictor", dataclasses.replace(model.predictor, predict=broken))

    answer = model.predict_raw({"data": {"ndarray": [SETOSA]}})

    assert answer["status"]["code"] == 500
    assert "RuntimeError: out of memory" in answer["status"]["info"]
    errors = [metric for metric in answer["meta"]["metrics"] if metric["key"] == "modelloop_seldon_errors"]
    assert {"version": "unknown", "reason": "internal"} in [
        metric["tags"] for metric in errors if metric["value"] == 1
    ]
