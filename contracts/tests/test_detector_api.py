"""The drift detector's API bodies: what a client writes is what the detector reads, and a body that
lacks what is needed is refused saying what."""

from __future__ import annotations

from typing import Any

import pytest

from modelloop_contracts import (
    ExportedDataset,
    ExportRequest,
    InvalidMessage,
    Registration,
    VersionSpec,
)


def test_a_registration_reads_back_as_written() -> None:
    registration = Registration(
        model="iris",
        versions={
            "3": VersionSpec(
                "s3://models/iris/3/reference.csv", "s3://models/iris/3/reference_predictions.csv"
            ),
            "4": VersionSpec("s3://models/iris/4/reference.csv", endpoint="canary"),
        },
        target_column="species",
        categorical=("colour",),
    )

    body = registration.to_json()

    assert body == {
        "model": "iris",
        "versions": {
            "3": {
                "referenceUri": "s3://models/iris/3/reference.csv",
                "predictionsUri": "s3://models/iris/3/reference_predictions.csv",
                "endpoint": "default",
            },
            "4": {"referenceUri": "s3://models/iris/4/reference.csv", "endpoint": "canary"},
        },
        "targetColumn": "species",
        "categorical": ["colour"],
    }
    assert Registration.from_json(body) == registration


def test_a_registration_needs_only_a_model_and_each_versions_reference() -> None:
    registration = Registration.from_json(
        {"model": "iris", "versions": {3: {"referenceUri": "file:///r.csv"}}}
    )

    assert registration == Registration("iris", {"3": VersionSpec("file:///r.csv")})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({"versions": {}}, "'model' must be the model's name"),
        ({"model": "iris"}, "'versions' must map"),
        ({"model": "iris", "versions": {"3": {}}}, "version '3' needs a 'referenceUri'"),
        ({"model": "iris", "versions": {"3": {"referenceUri": "x", "predictionsUri": 1}}}, "must be a URI"),
        ({"model": "iris", "versions": {"3": {"referenceUri": "x", "endpoint": "blue"}}}, "not 'blue'"),
        ({"model": "iris", "versions": {}, "targetColumn": 3}, "'targetColumn' must be a column name"),
        ({"model": "iris", "versions": {}, "categorical": "colour"}, "'categorical' must be a list"),
    ],
)
def test_a_registration_without_what_is_needed_is_refused_saying_what(body: Any, message: str) -> None:
    with pytest.raises(InvalidMessage, match=message):
        Registration.from_json(body)


def test_an_export_request_reads_back_as_written_and_needs_a_uri_prefix() -> None:
    request = ExportRequest("s3://datasets/recent", version="3", target_column="species")

    body = {"uriPrefix": "s3://datasets/recent", "version": "3", "targetColumn": "species"}
    assert request.to_json() == body
    assert ExportRequest.from_json(request.to_json()) == request
    assert ExportRequest.from_json({"uriPrefix": "s3://d", "version": 3}).version == "3"
    with pytest.raises(InvalidMessage, match="must name a 'uriPrefix'"):
        ExportRequest.from_json({"version": "3"})


def test_an_exported_dataset_reads_back_as_written_and_a_missing_field_is_named() -> None:
    exported = ExportedDataset("s3://datasets/recent/a.csv", "sha256:" + "ab" * 32, rows=200, labelled=150)

    assert ExportedDataset.from_json(exported.to_json()) == exported
    assert ExportedDataset.from_json({"uri": "u", "hash": "h", "rows": 2}).labelled == 0
    with pytest.raises(InvalidMessage, match="lacks 'hash'"):
        ExportedDataset.from_json({"uri": "u", "rows": 2})
