"""What a finished run may register: a result with an artifact, and only files inside the output folder
that the operator gave the run, so that a trainer (user code) cannot register another run's or another
team's artifact as its own."""

from __future__ import annotations

import pytest

from modelloop.training.register import (
    ARTIFACT_OUTSIDE_FOLDER,
    RESULT_MISSING,
    registration_problem,
    within_folder,
)
from modelloop.training.result import TrainerResult

FOLDER = "s3://models/team-a/iris/run-abc-3f2a1b4c"


def result(artifact_uri: str | None = f"{FOLDER}/model.joblib", **reported: str) -> TrainerResult:
    return TrainerResult(succeeded=True, artifact_uri=artifact_uri, framework="sklearn", **reported)


@pytest.mark.parametrize(
    "uri",
    [
        f"{FOLDER}/model.joblib",
        f"{FOLDER}/trial-3/model.onnx",
        f"{FOLDER}/nested/deeper/model.joblib",
        FOLDER,
        f"{FOLDER}/",
        "S3://models/team-a/iris/run-abc-3f2a1b4c/model.joblib",  # the scheme is case-insensitive
        f"{FOLDER}/model%20v2.joblib",  # an encoded name that is no path separator
    ],
)
def test_a_file_inside_the_run_folder_is_within_it(uri: str) -> None:
    assert within_folder(uri, FOLDER)
    assert within_folder(uri, FOLDER + "/")  # a folder written with its trailing slash means the same


@pytest.mark.parametrize(
    "uri",
    [
        # A sibling whose name starts with the folder's: a prefix match on a path-segment boundary only.
        "s3://models/team-a/iris/run-abc-3f2a1b4cd/model.joblib",
        "s3://models/team-a/iris/run-abc-3f2a1b4c.joblib",
        # Another team's artifact on the same bucket, outright or climbing out of the run's folder.
        "s3://models/team-b/fraud/run-x-0a0b0c0d/model.pkl",
        f"{FOLDER}/../../../team-b/fraud/run-x-0a0b0c0d/model.pkl",
        f"{FOLDER}/./model.joblib",
        f"{FOLDER}/%2e%2e/run-x-0a0b0c0d/model.joblib",
        f"{FOLDER}/%2E%2E%2Frun-x/model.joblib",
        f"{FOLDER}/..%5c..%5cteam-b/model.pkl",
        f"{FOLDER}//model.joblib",
        # The same path under another scheme or in another bucket.
        "file:///models/team-a/iris/run-abc-3f2a1b4c/model.joblib",
        "gs://models/team-a/iris/run-abc-3f2a1b4c/model.joblib",
        "s3://other-bucket/team-a/iris/run-abc-3f2a1b4c/model.joblib",
        "s3://user@models/team-a/iris/run-abc-3f2a1b4c/model.joblib",
        # A plain path, a query or a fragment can point anywhere a storage client resolves them to.
        "/models/team-a/iris/run-abc-3f2a1b4c/model.joblib",
        f"{FOLDER}/model.joblib?versionId=other",
        f"{FOLDER}/model.joblib#../../team-b",
        "s3://models/team-a/iris",
        "",
        "s3://[models/team-a/iris/run-abc-3f2a1b4c/model.joblib",  # not a URI urllib can split
    ],
)
def test_anything_else_is_not_within_the_run_folder(uri: str) -> None:
    assert not within_folder(uri, FOLDER)


def test_a_result_inside_the_run_folder_can_be_registered() -> None:
    reported = result(
        reference_uri=f"{FOLDER}/reference.csv",
        reference_predictions_uri=f"{FOLDER}/reference_predictions.csv",
        holdout_uri=f"{FOLDER}/holdout.csv",
    )
    assert registration_problem(reported, FOLDER) is None


def test_a_result_without_an_artifact_is_refused_as_before() -> None:
    problem = registration_problem(result(None), FOLDER)

    assert problem is not None
    assert problem.reason == RESULT_MISSING
    assert problem.message == "The trainer reported success but no artifactUri."


def test_another_teams_artifact_is_refused_naming_the_uri_and_the_folder_it_must_be_in() -> None:
    foreign = "s3://models/team-b/fraud/run-x-0a0b0c0d/model.pkl"

    problem = registration_problem(result(foreign), FOLDER)

    assert problem is not None
    assert problem.reason == ARTIFACT_OUTSIDE_FOLDER
    assert "artifactUri" in problem.message
    assert foreign in problem.message
    assert f"{FOLDER}/" in problem.message


@pytest.mark.parametrize("field", ["referenceUri", "referencePredictionsUri", "holdoutUri"])
def test_reference_data_outside_the_run_folder_is_refused_too(field: str) -> None:
    # The drift detector of the version's namespace reads these: another team's data must not get there.
    foreign = "s3://models/team-b/fraud/run-x-0a0b0c0d/reference.csv"
    attribute = {
        "referenceUri": "reference_uri",
        "referencePredictionsUri": "reference_predictions_uri",
        "holdoutUri": "holdout_uri",
    }

    problem = registration_problem(result(**{attribute[field]: foreign}), FOLDER)

    assert problem is not None
    assert problem.reason == ARTIFACT_OUTSIDE_FOLDER
    assert field in problem.message and foreign in problem.message


def test_a_long_foreign_uri_is_shortened_in_the_message() -> None:
    foreign = "s3://models/team-b/" + "x" * 1000

    problem = registration_problem(result(foreign), FOLDER)

    assert problem is not None
    assert foreign not in problem.message
    assert len(problem.message) < 800
