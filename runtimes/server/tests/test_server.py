"""``modelloop-serve`` end to end: a real process, real HTTP, KServe's V1 and V2 protocols, /metrics."""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import RunningServer, TrainedMLP

Serve = Callable[..., RunningServer]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def iris_server(serve: Serve, iris_artifact: Path) -> RunningServer:
    return serve(iris_artifact, "--model_version=v7", name="iris")


def expected_labels(artifact: Path, rows: list[list[float]], columns: list[str]) -> list[str]:
    return [
        str(label)
        for label in joblib.load(artifact / "model.joblib").predict(pd.DataFrame(rows, columns=columns))
    ]


def expected_probabilities(artifact: Path, rows: list[list[float]], columns: list[str]) -> list[list[float]]:
    model = joblib.load(artifact / "model.joblib")
    return [[float(p) for p in row] for row in model.predict_proba(pd.DataFrame(rows, columns=columns))]


def test_v1_predictions_and_probabilities_are_the_estimators_own(
    iris_server: RunningServer, iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    response = iris_server.v1(ROWS)

    assert response.status_code == 200, response.text
    columns = list(iris_frame.columns[:4])
    # JSON carries each float64 as its shortest repr, which reads back as the same float.
    assert response.json() == {
        "predictions": expected_labels(iris_artifact, ROWS, columns),
        "probabilities": expected_probabilities(iris_artifact, ROWS, columns),
        "model_version": "v7",
    }
    assert response.json()["predictions"] == ["setosa", "versicolor", "virginica"]


def test_v1_instances_keyed_by_feature_name_are_put_in_the_models_column_order(
    iris_server: RunningServer, iris_frame: pd.DataFrame
) -> None:
    columns = list(iris_frame.columns[:4])
    keyed = [dict(reversed(list(zip(columns, row, strict=True)))) for row in ROWS]

    response = iris_server.v1(keyed)

    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == ["setosa", "versicolor", "virginica"]


def test_v1_missing_values_reach_the_pipelines_imputer(iris_server: RunningServer) -> None:
    response = iris_server.v1([[5.1, None, 1.4, 0.2]])

    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == ["setosa"]


def test_v2_infers_from_one_rows_by_features_tensor(
    iris_server: RunningServer, iris_artifact: Path, iris_frame: pd.DataFrame
) -> None:
    response = iris_server.v2(
        [
            {
                "name": "input-0",
                "shape": [3, 4],
                "datatype": "FP32",
                "data": [value for row in ROWS for value in row],
            }
        ]
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("iris", "v7")
    [output, probabilities] = body["outputs"]
    assert (output["datatype"], output["shape"], output["data"]) == (
        "BYTES",
        [3],
        ["setosa", "versicolor", "virginica"],
    )
    # The request's FP32 rows, as the model sees them: float64 from float32.
    rows32 = np.asarray(ROWS, dtype=np.float32).astype(np.float64).tolist()
    expected = expected_probabilities(iris_artifact, rows32, list(iris_frame.columns[:4]))
    assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == (
        "probabilities",
        "FP64",
        [3, 3],
    )
    assert probabilities["data"] == [p for row in expected for p in row]


def test_v2_answers_only_the_outputs_a_request_asks_for(iris_server: RunningServer) -> None:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}

    response = httpx_post(
        iris_server, "/v2/models/iris/infer", {"inputs": [tensor], "outputs": [{"name": "output-0"}]}
    )

    assert response.status_code == 200, response.text
    assert [output["name"] for output in response.json()["outputs"]] == ["output-0"]


def test_with_probabilities_off_the_answers_carry_predictions_only(serve: Serve, iris_artifact: Path) -> None:
    server = serve(iris_artifact, name="iris", env={"MODELLOOP_SERVE_PROBABILITIES": "false"})

    v1 = server.v1(ROWS)
    v2 = server.v2(
        [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [v for row in ROWS for v in row]}]
    )

    assert v1.status_code == 200, v1.text
    assert v1.json() == {"predictions": ["setosa", "versicolor", "virginica"], "model_version": "unknown"}
    assert v2.status_code == 200, v2.text
    assert [output["name"] for output in v2.json()["outputs"]] == ["output-0"]


def test_v2_infers_from_one_tensor_per_named_feature(
    iris_server: RunningServer, iris_frame: pd.DataFrame
) -> None:
    columns = list(iris_frame.columns[:4])
    inputs = [
        {"name": name, "shape": [3], "datatype": "FP64", "data": [row[index] for row in ROWS]}
        for index, name in enumerate(columns)
    ]

    response = iris_server.v2(inputs[::-1])

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["setosa", "versicolor", "virginica"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1.0, 2.0]]}, "each row must have 4 feature values, got 2"),
        ({"instances": "rows"}, '"instances"'),
        ({"instances": [["a", "b", "c", "d"]]}, "list of numbers"),
        ({"rows": [[1.0, 2.0, 3.0, 4.0]]}, '"instances"'),
    ],
)
def test_a_malformed_v1_request_is_a_400_counted_under_its_code(
    iris_server: RunningServer, body: dict[str, object], message: str
) -> None:
    labels = {"model": "iris", "version": "v7", "protocol": "v1", "code": "400"}
    before = iris_server.sample("modelloop_server_requests_total", **labels)

    response = httpx_post(iris_server, "/v1/models/iris:predict", body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert iris_server.sample("modelloop_server_requests_total", **labels) == before + 1


def test_a_v2_tensor_that_does_not_match_its_shape_is_a_400(iris_server: RunningServer) -> None:
    labels = {"model": "iris", "version": "v7", "protocol": "v2", "code": "400"}
    before = iris_server.sample("modelloop_server_requests_total", **labels)

    response = iris_server.v2([{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1.0]}])

    assert response.status_code == 400
    assert iris_server.sample("modelloop_server_requests_total", **labels) == before + 1


def test_a_request_for_another_model_is_a_404_counted_under_its_code(iris_server: RunningServer) -> None:
    labels = {"model": "iris", "version": "v7", "protocol": "v1", "code": "404"}
    before = iris_server.sample("modelloop_server_requests_total", **labels)

    response = httpx_post(iris_server, "/v1/models/other:predict", {"instances": ROWS})

    assert response.status_code == 404
    assert iris_server.sample("modelloop_server_requests_total", **labels) == before + 1


def test_answered_requests_count_by_protocol_and_code_with_their_latency(iris_server: RunningServer) -> None:
    ok = {"model": "iris", "version": "v7", "code": "200"}
    before = iris_server.metrics()

    for _ in range(3):
        assert iris_server.v1(ROWS[:1]).status_code == 200
    assert (
        iris_server.v2([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]).status_code
        == 200
    )
    after = iris_server.metrics()

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("modelloop_server_requests_total", **ok, protocol="v1") == 3
    assert delta("modelloop_server_requests_total", **ok, protocol="v2") == 1
    assert delta("modelloop_server_request_duration_seconds_count", model="iris", version="v7") == 4
    assert 0 < delta("modelloop_server_request_duration_seconds_sum", model="iris", version="v7") < 4.0
    # Sub-millisecond buckets exist, so a fast model's latency is not lumped into one bucket.
    assert (
        "modelloop_server_request_duration_seconds_bucket",
        frozenset({"model": "iris", "version": "v7", "le": "0.001"}.items()),
    ) in after


def test_a_classifiers_predictions_are_counted_by_class(iris_server: RunningServer) -> None:
    def count(label: str) -> float:
        return iris_server.sample(
            "modelloop_server_predictions_total", model="iris", version="v7", **{"class": label}
        )

    before = {label: count(label) for label in ("setosa", "versicolor", "virginica")}

    assert iris_server.v1(ROWS + ROWS[:1]).status_code == 200

    assert {label: count(label) - before[label] for label in before} == {
        "setosa": 2,
        "versicolor": 1,
        "virginica": 1,
    }


def test_metrics_keep_kserves_own_latency_histograms(iris_server: RunningServer) -> None:
    assert iris_server.v1(ROWS[:1]).status_code == 200

    assert iris_server.sample("request_predict_seconds_count", model_name="iris") >= 1


def test_a_regressors_predictions_fill_the_value_histogram(serve: Serve, diabetes_artifact: Path) -> None:
    server = serve(diabetes_artifact, name="diabetes", env={"MODELLOOP_MODEL_VERSION": "3"})
    features, _ = datasets.load_diabetes(return_X_y=True, as_frame=True)
    rows = features.iloc[:5].to_numpy().tolist()
    expected = joblib.load(diabetes_artifact / "model.joblib").predict(features.iloc[:5])

    response = server.v1(rows)

    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], expected)
    assert "probabilities" not in response.json()
    labels = {"model": "diabetes", "version": "3"}
    assert server.sample("modelloop_server_prediction_value_count", **labels) == 5
    assert server.sample("modelloop_server_prediction_value_sum", **labels) == pytest.approx(expected.sum())
    assert server.sample("modelloop_server_prediction_value_bucket", **labels, le="+Inf") == 5
    assert server.sample("modelloop_server_requests_total", **labels, protocol="v1", code="200") == 1


def test_a_trained_mlp_serves_what_pytorch_predicts(serve: Serve, trained_iris_mlp: TrainedMLP) -> None:
    server = serve(trained_iris_mlp.folder, name="iris-mlp")
    rows, expected = trained_iris_mlp.rows[::10], trained_iris_mlp.expected[::10].tolist()
    complete = ~np.isnan(rows).any(axis=1)

    # V1 takes a missing value as null; V2's FP32 tensor has no such value: it gets the complete rows.
    v1 = server.v1([[None if np.isnan(value) else value for value in row] for row in rows.tolist()])
    v2 = server.v2(
        [
            {
                "name": "x",
                "shape": list(rows[complete].shape),
                "datatype": "FP32",
                "data": rows[complete].ravel().tolist(),
            }
        ]
    )

    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == expected
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == [
        label for label, kept in zip(expected, complete, strict=True) if kept
    ]
    # The graph's softmax, in the classes' order: each row sums to 1, its largest is the predicted class.
    classes = ["setosa", "versicolor", "virginica"]
    probabilities = np.asarray(v1.json()["probabilities"])
    assert probabilities.shape == (len(rows), 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert [classes[index] for index in probabilities.argmax(axis=1)] == expected
    second = v2.json()["outputs"][1]
    assert (second["name"], second["datatype"], second["shape"]) == (
        "probabilities",
        "FP64",
        [complete.sum(), 3],
    )
    assert np.allclose(second["data"], probabilities[complete].ravel(), rtol=1e-6, atol=1e-7)
    total = sum(
        server.sample(
            "modelloop_server_predictions_total", model="iris-mlp", version="unknown", **{"class": label}
        )
        for label in ("setosa", "versicolor", "virginica")
    )
    assert total == len(rows) + complete.sum()


def httpx_post(server: RunningServer, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=10)


def test_a_model_that_fails_is_a_500_counted_under_its_code(serve: Serve, tmp_path: Path) -> None:
    # A model with a bug: its first step indexes rows that only the training set has (IndexError).
    features, target = datasets.load_iris(return_X_y=True)
    broken = make_pipeline(
        FunctionTransformer(operator.methodcaller("take", list(range(len(features))), axis=0)),
        LogisticRegression(max_iter=500),
    ).fit(features, target)
    joblib.dump(broken, tmp_path / "model.joblib")
    server = serve(tmp_path, "--model_version=1", name="broken")

    response = server.v1(ROWS)

    assert response.status_code == 500
    labels = {"model": "broken", "version": "1", "protocol": "v1"}
    assert server.sample("modelloop_server_requests_total", **labels, code="500") == 1
    assert server.sample("modelloop_server_request_duration_seconds_count", model="broken", version="1") == 1
