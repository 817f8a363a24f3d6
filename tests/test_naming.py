"""Names and label values derived from what users wrote are valid at any length."""

from __future__ import annotations

import re

import pytest

from modelloop.api import TrainingRunSpec
from modelloop.naming import (
    ANNOTATION_TRAINING_RUN,
    LABEL_TRAINING_RUN,
    job_name,
    label_value,
    run_annotations,
    run_of,
)
from modelloop.training.job import render_job
from modelloop.training.register import render_model_version
from modelloop.training.result import TrainerResult

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONGEST_NAME = "r" * 200 + ".a-b" + "x" * 49  # 253 characters: a valid object name


@pytest.mark.parametrize("name", ["iris", "a", "x" * 63, "run.v1-final"])
def test_a_valid_label_value_is_kept_as_it_is(name: str) -> None:
    assert label_value(name) == name


@pytest.mark.parametrize("length", [64, 100, 200, 253])
def test_a_long_name_becomes_a_valid_label_value(length: int) -> None:
    value = label_value("a" * (length - 1) + "z")
    assert len(value) <= 63 and LABEL_VALUE.match(value)


def test_two_long_names_with_one_prefix_get_different_label_values() -> None:
    assert label_value("p" * 70 + "1") != label_value("p" * 70 + "2")


def run_named(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "labels": {}},
        "spec": {
            "image": "trainer:1",
            "dataset": {"uri": "s3://d/iris.csv", "format": "csv", "targetColumn": "y"},
            "output": {"modelName": "iris"},
        },
    }


def test_the_job_of_a_run_with_the_longest_name_has_only_valid_names_and_labels() -> None:
    run = run_named(LONGEST_NAME)
    job = render_job(run, TrainingRunSpec.model_validate(run["spec"]), "file:///a")

    assert len(job["metadata"]["name"]) <= 63
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        for key, value in labels.items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    # The whole name travels in an annotation: the operator finds the run again from the Job and its pods.
    assert run_of(job["metadata"]) == LONGEST_NAME
    assert run_of(job["spec"]["template"]["metadata"]) == LONGEST_NAME


def test_the_model_version_of_a_run_with_the_longest_name_has_valid_labels() -> None:
    run = run_named(LONGEST_NAME)
    result = TrainerResult(succeeded=True, metrics={"accuracy": 0.9}, artifact_uri="file:///m")
    manifest = render_model_version(run, TrainingRunSpec.model_validate(run["spec"]), result, 1, {}, None)

    assert manifest["metadata"]["labels"][LABEL_TRAINING_RUN] == label_value(LONGEST_NAME)
    assert manifest["metadata"]["annotations"][ANNOTATION_TRAINING_RUN] == LONGEST_NAME
    assert manifest["spec"]["lineage"]["trainingRun"] == LONGEST_NAME


def test_run_of_falls_back_to_the_label_for_objects_made_before_the_annotation() -> None:
    assert run_of({"labels": {LABEL_TRAINING_RUN: "iris"}}) == "iris"
    assert run_of({"annotations": run_annotations(run_named("iris-2"))}) == "iris-2"


def test_job_names_stay_deterministic_and_short() -> None:
    assert job_name(LONGEST_NAME, "u-1") == job_name(LONGEST_NAME, "u-1")
    assert job_name(LONGEST_NAME, "u-1") != job_name(LONGEST_NAME, "u-2")
