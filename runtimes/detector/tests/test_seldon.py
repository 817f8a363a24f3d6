"""Seldon Core v1's logged inferences: events built exactly as seldon-core 1.17's executor sends them
(``executor/logger/worker.go``: CloudEvents 1.0 in HTTP binary mode, a new id per event, the puid in
``Ce-Requestid``), read, paired and windowed like KServe's, in-process on virtual time and over real HTTP."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelloop_contracts import Registration, VersionSpec

from conftest import FEATURES, Detector, artifact_roots, numeric_rows, write_reference
from modelloop_detector.detectors import DetectorSettings
from modelloop_detector.events import DropReason, EventRejected, InferenceEvent, read_asgi_event, read_event
from modelloop_detector.limits import Refused
from modelloop_detector.payloads import PayloadError, ProbabilitiesIgnored
from modelloop_detector.seldon import (
    parse_seldon_request,
    parse_seldon_response,
    seldon_one_prediction,
    seldon_request_row,
)
from modelloop_detector.service import DriftService, WindowSettings
from modelloop_detector.tenancy import Tenancy

ROW = [5.1, 3.5, 1.4, 0.2]


def executor_event(
    kind: str,
    puid: str,
    body: Any,
    *,
    namespace: str = "ml",
    deployment: str = "iris",
    predictor: str = "v3",
    protocol: str = "seldon",
    content: bytes | None = None,
) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and body the executor's logger worker posts: Go's canonical header names, the
    sdk-go v1 binary encoding of a 1.0 event, a fresh UUID as the event's id."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": str(uuid.uuid4()),
        "Ce-Type": f"io.seldon.serving.inference.{kind}",
        "Ce-Source": "http://0.0.0.0:8000/",
        "Ce-Time": "2024-05-02T10:11:12.345678901Z",
        "Content-Type": "application/json",
        "Ce-Modelid": "model",
        "Ce-Requestid": puid,
        "Ce-Inferenceservicename": deployment,
        "Ce-Namespace": namespace,
        "Ce-Endpoint": predictor,
        "Ce-Protocol": protocol,
    }
    return headers, json.dumps(body).encode() if content is None else content


def asgi(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI server gives them: lower-case names, latin-1 bytes."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


def read(kind: str, puid: str, body: Any, **where: str) -> InferenceEvent:
    headers, data = executor_event(kind, puid, body, **where)
    return read_asgi_event(asgi(headers), data)


def seldon_response(predictions: list[Any], version: str | None = "3", **tags: Any) -> dict[str, Any]:
    """What modelloop's Seldon model server answers: predictions in data, the version and probabilities
    in meta.tags, beside the metrics seldon-core reads."""
    meta: dict[str, Any] = {"metrics": [{"type": "COUNTER", "key": "predictions", "value": 1}]}
    meta["tags"] = {**({"model_version": version} if version is not None else {}), **tags}
    return {"data": {"names": ["t:0"], "ndarray": predictions}, "meta": meta}


# --- reading the events ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "response"])
def test_an_executor_event_is_read_with_its_request_id_as_the_id(kind: str) -> None:
    body = {"data": {"ndarray": [ROW]}} if kind == "request" else seldon_response([0])
    headers, data = executor_event(kind, "puid-1", body, namespace="team-a", predictor="v4")
    fast = read_asgi_event(asgi(headers), data)
    generic = read_event({name.lower(): value for name, value in headers.items()}, data)
    assert fast == generic
    assert (fast.kind, fast.id, fast.namespace, fast.service, fast.endpoint, fast.protocol, fast.body) == (
        kind,
        "puid-1",
        "team-a",
        "iris",
        "v4",
        "seldon",
        body,
    )


def test_a_request_and_its_response_have_different_event_ids_and_the_same_id_read() -> None:
    request = executor_event("request", "puid-2", {"data": {"ndarray": [ROW]}})
    response = executor_event("response", "puid-2", seldon_response([0]))
    assert request[0]["Ce-Id"] != response[0]["Ce-Id"]
    assert (
        read_asgi_event(asgi(request[0]), request[1]).id == read_asgi_event(asgi(response[0]), response[1]).id
    )


@pytest.mark.parametrize("protocol", ["v2", "kfserving", "tensorflow"])
def test_a_deployment_of_another_protocol_sends_kserve_bodies(protocol: str) -> None:
    assert read("request", "p", {"instances": [ROW]}, protocol=protocol).protocol == "kserve"


def test_a_seldon_event_without_its_request_id_cannot_be_paired() -> None:
    headers, data = executor_event("request", "", {"data": {"ndarray": [ROW]}})
    with pytest.raises(EventRejected) as rejected:
        read_asgi_event(asgi(headers), data)
    assert rejected.value.reason == DropReason.MISSING_REQUEST_ID


def test_seldon_feedback_events_are_an_unknown_type() -> None:
    headers, data = executor_event("request", "p", {"reward": 1})
    headers["Ce-Type"] = "io.seldon.serving.feedback"
    with pytest.raises(EventRejected) as rejected:
        read_asgi_event(asgi(headers), data)
    assert rejected.value.reason == DropReason.UNKNOWN_TYPE


def test_a_grpc_deployments_protobuf_body_is_not_json() -> None:
    headers, data = executor_event("request", "p", None, content=b"\n\x05\x12\x03\n\x01A")
    headers["Content-Type"] = "application/protobuf"
    with pytest.raises(EventRejected) as rejected:
        read_asgi_event(asgi(headers), data)
    assert rejected.value.reason == DropReason.INVALID_JSON


# --- SeldonMessage bodies --------------------------------------------------------------------------


def test_ndarray_rows_named_by_data_names_are_laid_out_by_name() -> None:
    rows = parse_seldon_request({"data": {"names": ["c", "a", "b"], "ndarray": [[3, 1, 2], [6, 4, 5]]}})
    assert rows.to_matrix(("a", "b", "c"), {}).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_unnamed_rows_are_positional() -> None:
    rows = parse_seldon_request({"data": {"names": [], "ndarray": [[1, 2, 3]]}})
    assert rows.to_matrix(("a", "b", "c"), {}).tolist() == [[1, 2, 3]]


def test_a_tensor_is_rows_of_its_shape() -> None:
    rows = parse_seldon_request({"data": {"tensor": {"shape": [2, 3], "values": [1, 2, 3, 4, 5, 6]}}})
    assert rows.to_matrix(("a", "b", "c"), {}).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"jsonData": {"rows": [1]}}, "'jsonData' carries no rows"),
        ({"strData": "1,2,3"}, "'strData' carries no rows"),
        ({"data": {"tftensor": {}}}, "neither 'ndarray' nor 'tensor'"),
        ({"data": {"ndarray": [1, 2, 3]}}, "list of rows"),
        ({"data": {"tensor": {"shape": [2, 3], "values": [1, 2]}}}, "has 2 values"),
        ({"data": {"tensor": {"shape": [3], "values": [1, 2, 3]}}}, r"rows need \[rows, features\]"),
        ({"data": {"names": ["a", "b"], "ndarray": [[1, 2, 3]]}}, "names 2 columns"),
        ([ROW], "must be a SeldonMessage"),
    ],
)
def test_a_request_without_rows_says_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_seldon_request(body)


def test_names_that_are_not_the_references_features_do_not_fit() -> None:
    rows = parse_seldon_request({"data": {"names": ["a", "b", "x"], "ndarray": [[1, 2, 3]]}})
    with pytest.raises(PayloadError, match=r"missing \['c'\]; unknown \['x'\]"):
        rows.to_matrix(("a", "b", "c"), {})


def test_a_response_gives_predictions_version_and_probabilities_from_its_tags() -> None:
    response = parse_seldon_response(
        seldon_response([[0], [2]], probabilities=[[0.9, 0.1, 0], [0, 0.2, 0.8]])
    )
    assert response.values.tolist() == [0, 2]
    assert response.model_version == "3"
    assert response.probabilities is not None and response.probabilities.tolist() == [
        [0.9, 0.1, 0],
        [0, 0.2, 0.8],
    ]
    assert response.ignored is None


def test_a_tensor_response_is_one_value_per_row() -> None:
    body = {"data": {"tensor": {"shape": [2, 1], "values": [1.5, 2.5]}}}
    response = parse_seldon_response(body)
    assert response.values.tolist() == [1.5, 2.5]
    assert response.model_version is None and response.probabilities is None


def test_probabilities_that_are_not_one_row_per_prediction_are_ignored() -> None:
    response = parse_seldon_response(seldon_response([0, 1], probabilities=[[0.9, 0.1]]))
    assert response.values.tolist() == [0, 1]
    assert (response.probabilities, response.ignored) == (None, ProbabilitiesIgnored.ROWS)


def test_a_failure_answer_is_not_predictions() -> None:
    failure = {"status": {"code": 400, "info": "bad rows", "status": "FAILURE"}, "meta": {}}
    with pytest.raises(PayloadError, match=r"a failure \(400\)"):
        parse_seldon_response(failure)


# --- the service -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A service watching SeldonDeployment ml/iris: version 3 (stable) and 4 (canary)."""

    def __init__(self, tmp_path: Path, tenancy: Tenancy | None = None) -> None:
        self.clock = Clock()
        self.drops: Counter[DropReason] = Counter()
        self.service = DriftService(
            WindowSettings(window_rows=100, window_seconds=60.0, min_rows=10),
            DetectorSettings(device="cpu"),
            clock=self.clock,
            on_drop=lambda reason, count: self.drops.update({reason: count}),
            roots=artifact_roots(),
            tenancy=tenancy,
        )
        uri = write_reference(tmp_path, numeric_rows(40, seed=1))
        versions = {"3": VersionSpec(uri, endpoint="default"), "4": VersionSpec(uri, endpoint="canary")}
        result = self.service.register("ml", "iris", Registration(model="iris", versions=versions))
        assert not result.errors

    def post(self, kind: str, puid: str, body: Any, **where: str) -> int:
        return self.service.ingest(read(kind, puid, body, **where))

    def window(self, version: str) -> list[str]:
        return self.service.service("ml", "iris").versions[version].window.ids()


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_request_and_its_response_pair_by_request_id_in_either_order(harness: Harness) -> None:
    assert harness.post("request", "a", {"data": {"ndarray": [ROW]}}) == 0
    assert harness.post("response", "a", seldon_response([0])) == 1
    assert harness.post("response", "b", seldon_response([1, 2])) == 0
    assert harness.post("request", "b", {"data": {"names": FEATURES, "ndarray": [ROW, ROW]}}) == 2
    assert harness.window("3") == ["a", "b/0", "b/1"]


def test_the_model_version_tag_decides_the_version(harness: Harness) -> None:
    harness.post("request", "a", {"data": {"ndarray": [ROW]}}, predictor="v4")
    harness.post("response", "a", seldon_response([0], version="4"), predictor="v4")
    assert harness.window("4") == ["a"] and harness.window("3") == []


def test_without_the_version_tag_a_predictor_that_is_no_registered_endpoint_is_an_unknown_version(
    harness: Harness,
) -> None:
    # modelloop's predictors are named v<N>, its registered endpoints default and canary.
    harness.post("request", "a", {"data": {"ndarray": [ROW]}})
    assert harness.post("response", "a", seldon_response([0], version=None)) == 0
    assert harness.drops == {DropReason.UNKNOWN_VERSION: 1}


def test_a_shadow_predictor_logging_the_same_request_id_pairs_apart(harness: Harness) -> None:
    # A caller-set puid reaches the stable predictor and its shadow alike.
    harness.post("request", "same", {"data": {"ndarray": [ROW]}}, predictor="v3")
    harness.post("request", "same", {"data": {"ndarray": [ROW]}}, predictor="v4")
    assert harness.post("response", "same", seldon_response([1], version="4"), predictor="v4") == 1
    assert harness.post("response", "same", seldon_response([0], version="3"), predictor="v3") == 1
    assert harness.window("3") == ["same"] and harness.window("4") == ["same"]
    assert not harness.drops


def test_a_tensor_request_is_paired_like_ndarray_rows(harness: Harness) -> None:
    rows = numeric_rows(2, seed=3)
    tensor = {"shape": [2, 4], "values": rows.ravel().tolist()}
    harness.post("request", "t", {"data": {"tensor": tensor}})
    harness.post(
        "response",
        "t",
        {"data": {"tensor": {"shape": [2], "values": [0, 1]}}, "meta": {"tags": {"model_version": "3"}}},
    )
    window = harness.service.service("ml", "iris").versions["3"].window
    assert np.allclose(window.snapshot().features, rows)


def test_json_data_is_an_invalid_payload(harness: Harness) -> None:
    with pytest.raises(EventRejected) as rejected:
        harness.post("request", "j", {"jsonData": {"a": 1}})
    assert rejected.value.reason == DropReason.INVALID_PAYLOAD


def test_rows_that_do_not_fit_the_reference_are_a_feature_mismatch(harness: Harness) -> None:
    with pytest.raises(EventRejected) as rejected:
        harness.post("request", "w", {"data": {"ndarray": [[1.0, 2.0]]}})
    assert rejected.value.reason == DropReason.FEATURE_MISMATCH


def test_another_namespaces_events_are_refused_before_anything_is_kept(tmp_path: Path) -> None:
    harness = Harness(tmp_path, Tenancy("ml"))
    with pytest.raises(Refused) as refused:
        harness.post("request", "x", {"data": {"ndarray": [ROW]}}, namespace="team-b")
    assert refused.value.status == 403
    assert harness.service.pending() == (0, 0)


# --- over HTTP -------------------------------------------------------------------------------------


def test_a_detector_process_windows_what_the_executor_posts(detector: Detector, reference_uri: str) -> None:
    versions = {"3": {"referenceUri": reference_uri}}
    reply = detector.register("seldon-iris", {"model": "iris", "versions": versions})
    assert reply.status_code == 200, reply.text
    rows = numeric_rows(5, seed=4)
    for index, row in enumerate(rows.tolist()):
        puid = str(uuid.uuid4())
        request = {"data": {"names": FEATURES, "ndarray": [row]}}
        for kind, body in (("request", request), ("response", seldon_response([index % 3]))):
            headers, data = executor_event(kind, puid, body, deployment="seldon-iris")
            answer = detector.client.post("/", headers=headers, content=data)
            assert answer.status_code == 202, answer.text
    state = detector.wait_for("seldon-iris", lambda s: s["versions"]["3"]["windowRows"] == 5)
    assert state["versions"]["3"]["windowRows"] == 5


# --- one row, without numpy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"ndarray": [ROW]}},
        {"data": {"names": FEATURES, "ndarray": [ROW]}},
        {"data": {"names": [], "ndarray": [ROW]}},
        {"data": {"names": FEATURES[:2], "ndarray": [ROW]}},
        {"data": {"names": [1, 2, 3, 4], "ndarray": [ROW]}},
        {"data": {"ndarray": [ROW, ROW]}},
        {"data": {"ndarray": [[]]}},
        {"data": {"tensor": {"shape": [1, 4], "values": ROW}}},
        {"data": {"ndarray": [{"sepal_length": 1.0}]}},
        {"jsonData": {"x": 1}},
    ],
)
def test_a_one_row_seldon_request_read_without_numpy_is_the_general_readers_row(body: Any) -> None:
    fast = seldon_request_row(body)
    if fast is None:
        return
    row, names = fast
    general = parse_seldon_request(body)
    assert general.positional is not None and general.count == 1
    assert np.asarray(row, dtype=np.float64).tolist() == general.positional[0].tolist()
    assert names == general.names


@pytest.mark.parametrize(
    "body",
    [
        seldon_response([[1]]),
        seldon_response([2], version=None),
        seldon_response(["setosa"], version=""),
        seldon_response([[1]], probabilities=[[0.25, 0.75]]),
        seldon_response([[1]], probabilities=[[0.5, 1.5]]),
        seldon_response([[1]], probabilities=[[0.5, "x"]]),
        seldon_response([[1]], probabilities=[[0.5], [0.5]]),
        seldon_response([[1], [2]]),
        seldon_response([[1, 2]]),
        {"data": {"ndarray": [[1]]}},
        {"data": {"ndarray": [[1]]}, "meta": {"tags": "x"}},
        {"data": {"tensor": {"shape": [1], "values": [1.5]}}},
        {"status": {"status": "FAILURE", "code": 500}},
    ],
)
def test_a_one_prediction_seldon_response_read_without_numpy_is_the_general_readers(body: Any) -> None:
    fast = seldon_one_prediction(body)
    if fast is None:
        return
    general = parse_seldon_response(body)
    probabilities = None if general.probabilities is None else general.probabilities[0].tolist()
    assert (fast.value, fast.model_version, fast.probabilities, fast.ignored) == (
        general.values.tolist()[0],
        general.model_version,
        probabilities,
        general.ignored,
    )
