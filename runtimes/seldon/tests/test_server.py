"""``seldon-core-microservice modelloop_seldon.ModelloopModel`` as a process, over HTTP (and gRPC)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pandas as pd
import pytest
import requests
from seldon_core.proto import prediction_pb2_grpc
from seldon_core.utils import json_to_seldon_message, seldon_message_to_json
from sklearn import datasets

from conftest import RunningServer, TrainedMLP, start_server, stop_server

SETOSA = [5.1, 3.5, 1.4, 0.2]
# What Seldon's operator sets on the container of graph node "classifier", predictor "canary" (labelled
# version v2) of SeldonDeployment "iris".
SELDON_ENV = {
    "SELDON_DEPLOYMENT_ID": "iris",
    "PREDICTOR_ID": "canary",
    "PREDICTOR_LABELS": json.dumps({"version": "v2"}),
    "PREDICTIVE_UNIT_ID": "classifier",
    "PREDICTIVE_UNIT_IMAGE": "ghcr.io/modelloop/seldon:0.1.0",
}
SELDON_LABELS = {
    "method": "predict",
    "deployment_name": "iris",
    "seldon_deployment_name": "iris",
    "predictor_name": "canary",
    "predictor_version": "v2",
    "model_name": "classifier",
    "model_image": "ghcr.io/modelloop/seldon",
    "model_version": "0.1.0",
    "image_name": "ghcr.io/modelloop/seldon",
    "image_version": "0.1.0",
}


@pytest.fixture(scope="module")
def iris_server(serve: Callable[..., RunningServer], iris_artifact: Path) -> RunningServer:
    return serve(iris_artifact, version=3, env=SELDON_ENV)


@pytest.fixture(scope="module")
def diabetes_server(serve: Callable[..., RunningServer], diabetes_artifact: Path) -> RunningServer:
    return serve(diabetes_artifact.as_uri(), version="2024-06-01")


def test_an_iris_classifier_answers_the_labels_its_model_predicts(
    iris_server: RunningServer, iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    features = iris_frame.drop(columns=["species"])
    expected = joblib.load(iris_artifact / "model.joblib").predict(features)

    response = iris_server.predict_rows(features.to_numpy().tolist())

    assert response.status_code == 200, response.text
    assert response.json()["data"]["ndarray"] == expected.tolist()
    assert set(expected) == {"setosa", "versicolor", "virginica"}
    # What Seldon's payload logger logs for the drift detector: the version and the class probabilities.
    probabilities = joblib.load(iris_artifact / "model.joblib").predict_proba(features.to_numpy())
    assert response.json()["meta"]["tags"] == {"model_version": "3", "probabilities": probabilities.tolist()}


def test_with_probabilities_off_the_answer_tags_the_version_only(
    serve: Callable[..., RunningServer], iris_artifact: Path
) -> None:
    server = serve(iris_artifact, version=3, env={"MODELLOOP_SERVE_PROBABILITIES": "false"})

    response = server.predict_rows([SETOSA])

    assert response.status_code == 200, response.text
    assert response.json()["data"]["ndarray"] == ["setosa"]
    assert response.json()["meta"]["tags"] == {"model_version": "3"}


def test_named_columns_in_another_order_get_the_same_answers(
    iris_server: RunningServer, iris_frame: pd.DataFrame
) -> None:
    features = iris_frame.drop(columns=["species"]).iloc[::10]
    reordered = features[features.columns[::-1]]

    in_order = iris_server.predict_rows(features.to_numpy().tolist(), names=list(features.columns))
    reversed_ = iris_server.predict_rows(reordered.to_numpy().tolist(), names=list(reordered.columns))

    assert in_order.status_code == reversed_.status_code == 200, reversed_.text
    assert reversed_.json()["data"]["ndarray"] == in_order.json()["data"]["ndarray"]


def test_a_tensor_request_is_answered_and_a_missing_value_is_imputed(iris_server: RunningServer) -> None:
    response = iris_server.predict(
        {"data": {"tensor": {"shape": [2, 4], "values": [*SETOSA, 6.7, 3.0, 5.2, None]}}}
    )

    assert response.status_code == 200, response.text
    assert response.json()["data"]["ndarray"] == ["setosa", "virginica"]


def test_a_regressor_answers_its_models_values_in_the_form_it_was_asked(
    diabetes_server: RunningServer, diabetes_artifact: Path
) -> None:
    frame = datasets.load_diabetes(as_frame=True).data.iloc[:20]
    expected = joblib.load(diabetes_artifact / "model.joblib").predict(frame)
    features = frame.to_numpy()

    as_ndarray = diabetes_server.predict_rows(features.tolist())
    as_tensor = diabetes_server.predict(
        {"data": {"tensor": {"shape": list(features.shape), "values": features.ravel().tolist()}}}
    )

    assert as_ndarray.status_code == as_tensor.status_code == 200, as_tensor.text
    np.testing.assert_allclose(as_ndarray.json()["data"]["ndarray"], expected, rtol=1e-9)
    assert as_ndarray.json()["meta"]["tags"] == {"model_version": "2024-06-01"}
    tensor = as_tensor.json()["data"]["tensor"]
    assert tensor["shape"] == [20]
    np.testing.assert_allclose(tensor["values"], expected, rtol=1e-9)


def test_a_trained_mlp_answers_what_pytorch_predicts(
    serve: Callable[..., RunningServer], trained_iris_mlp: TrainedMLP
) -> None:
    rows = trained_iris_mlp.rows
    server = serve(trained_iris_mlp.folder)

    # The rows with missing values too: null, filled by the model with the training medians.
    response = server.predict_rows(
        [[None if np.isnan(value) else value for value in row] for row in rows.tolist()]
    )

    assert response.status_code == 200, response.text
    assert response.json()["data"]["ndarray"] == trained_iris_mlp.expected.tolist()


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (
            {"data": {"ndarray": [[5.1, 3.5, 1.4]]}},
            "invalid_features",
            "each row must have 4 feature values, got 3",
        ),
        ({"data": {"ndarray": [[5.1, "wide", 1.4, 0.2]]}}, "invalid_features", "each a list of numbers"),
        ({"data": {"ndarray": SETOSA}}, "invalid_features", "list of rows"),
        (
            {"data": {"names": ["a", "b", "c", "d"], "ndarray": [SETOSA]}},
            "invalid_features",
            "model's features",
        ),
        ({"instances": [SETOSA]}, "invalid_message", 'needs "data"'),
        ({"strData": "5.1,3.5,1.4,0.2"}, "invalid_message", '"strData" is not supported'),
        ([SETOSA], "invalid_message", "must be a Seldon message"),
    ],
)
def test_a_request_the_model_cannot_take_is_a_400_that_says_why_and_is_counted(
    iris_server: RunningServer, body: Any, reason: str, says: str
) -> None:
    errors_before = iris_server.value("modelloop_seldon_errors_total", version="3", reason=reason)
    requests_before = iris_server.value("modelloop_seldon_requests_total", version="3", code="400")

    response = iris_server.predict(body)

    assert response.status_code == 400
    status = response.json()["status"]
    assert says in status["info"]
    assert (status["code"], status["reason"], status["status"]) == (400, "MICROSERVICE_BAD_DATA", "FAILURE")
    assert iris_server.value("modelloop_seldon_errors_total", version="3", reason=reason) == errors_before + 1
    assert (
        iris_server.value("modelloop_seldon_requests_total", version="3", code="400") == requests_before + 1
    )
    assert iris_server.predict_rows([SETOSA]).json()["data"]["ndarray"] == ["setosa"]


def test_rows_the_model_itself_rejects_are_a_400_in_its_words(diabetes_server: RunningServer) -> None:
    row = datasets.load_diabetes().data[0].tolist()
    row[3] = None  # NaN, and this Ridge has no imputer

    response = diabetes_server.predict_rows([row])

    assert response.status_code == 400
    assert "the model cannot predict these rows" in response.json()["status"]["info"]
    assert "NaN" in response.json()["status"]["info"]
    assert diabetes_server.value("modelloop_seldon_errors_total", reason="model_rejected") == 1
    assert diabetes_server.predict_rows([datasets.load_diabetes().data[0].tolist()]).status_code == 200


def test_a_body_that_is_not_json_is_seldons_own_400_and_the_server_goes_on(
    iris_server: RunningServer,
) -> None:
    response = requests.post(
        f"{iris_server.url}/api/v1.0/predictions",
        data=b"5.1,3.5",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json()["status"]["info"] == "Can't find JSON in data"
    assert iris_server.predict_rows([SETOSA]).status_code == 200


def test_the_metrics_carry_the_version_the_class_and_seldons_labels_from_the_environment(
    iris_server: RunningServer,
) -> None:
    iris_server.predict_rows([SETOSA])
    iris_server.predict_rows([SETOSA[:2]])

    series = {
        (name, frozenset(labels.items()) - {("worker_id", labels["worker_id"])})
        for name, labels, _ in iris_server.samples()
    }
    worker_ids = {labels["worker_id"] for _, labels, _ in iris_server.samples()}

    def labelled(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
        return name, frozenset({**SELDON_LABELS, "version": "3", **labels}.items())

    assert series == {
        labelled("modelloop_seldon_requests_total", code="200"),
        labelled("modelloop_seldon_requests_total", code="400"),
        *(
            labelled("modelloop_seldon_errors_total", reason=reason)
            for reason in ("invalid_message", "invalid_features", "model_rejected", "internal")
        ),
        *(
            labelled("modelloop_seldon_predictions_total", **{"class": label})
            for label in ("setosa", "versicolor", "virginica")
        ),
    }
    # One gunicorn worker, whose process id Seldon adds to each series.
    assert len(worker_ids) == 1
    assert worker_ids.pop().isdigit()


def test_the_predictions_are_counted_by_class(iris_server: RunningServer) -> None:
    def counted(label: str) -> float:
        return iris_server.value("modelloop_seldon_predictions_total", version="3", **{"class": label})

    before = {label: counted(label) for label in ("setosa", "virginica")}

    iris_server.predict_rows([SETOSA, SETOSA, [6.7, 3.0, 5.2, 2.3]])

    assert counted("setosa") == before["setosa"] + 2
    assert counted("virginica") == before["virginica"] + 1


def test_a_folder_without_a_model_ends_the_server_with_the_reason(tmp_path: Path) -> None:
    server = start_server(tmp_path, tmp_path / "missing", wait=False)
    try:
        returncode = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_server(server)
        raise

    assert returncode == 3  # gunicorn's status for a worker that failed to boot
    assert f"model folder {tmp_path / 'missing'} does not exist" in server.output()
    assert "Worker failed to boot" in server.output()


def test_grpc_answers_the_same_when_turned_on(
    serve: Callable[..., RunningServer], iris_artifact: Path
) -> None:
    server = serve(iris_artifact, version=3, grpc=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        model = prediction_pb2_grpc.ModelStub(channel)

        answer = model.Predict(json_to_seldon_message({"data": {"ndarray": [SETOSA]}}), timeout=10)
        refused = model.Predict(json_to_seldon_message({"data": {"ndarray": [SETOSA[:3]]}}), timeout=10)

    assert seldon_message_to_json(answer)["data"]["ndarray"] == ["setosa"]
    probabilities = joblib.load(iris_artifact / "model.joblib").predict_proba(np.array([SETOSA]))
    assert seldon_message_to_json(answer)["meta"]["tags"] == {
        "model_version": "3",
        "probabilities": probabilities.tolist(),
    }
    assert seldon_message_to_json(refused)["status"]["code"] == 400
    assert server.value("modelloop_seldon_errors_total", reason="invalid_features") == 1
