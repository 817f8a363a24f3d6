"""The model controller's glue, with an injected client: a model's versions and policy read from the
indexes, the plan applied in order (status, then labels, then events; deletions last), a version deleted
meanwhile skipped, a conflict re-planned on a fresh copy, a status left as it was not written, one that
cannot be read refused. The decisions are ``plan_model``'s (tests/test_registry_plan.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop import kube
from modelloop.controllers.modelversion import ModelRegistry
from modelloop.settings import Settings
from registry_fixtures import decided, version

KEY = ("ml", "iris")
pytestmark = pytest.mark.usefixtures("posted")


def controller(versions: list[dict[str, Any]], client: RecordingClient) -> ModelRegistry:
    indexes = {
        "model_versions": {KEY: versions},
        "model_policies": {},
        "served_versions": {},
    }
    return ModelRegistry(Settings(), indexes, client)


def test_a_new_version_gets_its_status_then_its_labels_then_its_event(
    posted: list[tuple[str, str, str]],
) -> None:
    client = RecordingClient()
    made = controller([version(1)], client)

    asyncio.run(made.reconcile(KEY))

    assert client.calls == [("patch_status", "iris-v1"), ("patch_labels", "iris-v1")]
    [status] = client.statuses
    assert status["phase"] == "Validated" and status["stage"] == "Candidate"
    assert posted and all(reason for _, reason, _ in posted)


def test_a_version_deleted_meanwhile_is_skipped_without_events(posted: list[tuple[str, str, str]]) -> None:
    client = RecordingClient()
    client.refuse = kube.ApiException(404, "Not Found", None)
    made = controller([version(1)], client)

    asyncio.run(made.reconcile(KEY))

    assert client.calls == [("patch_status", "iris-v1")]
    assert posted == []


def test_a_conflict_reads_the_version_again_and_plans_on_it() -> None:
    fresh = version(1, status=decided("Champion"))
    fresh["metadata"]["resourceVersion"] = "500"
    client = RecordingClient(objects={("modelversions", "ml", "iris-v1"): fresh})
    client.conflicts = 1
    made = controller([version(1)], client)

    asyncio.run(made.reconcile(KEY))

    # The fresh copy is validated already (by another replica): only its labels are left to write.
    assert client.calls == [
        ("patch_status", "iris-v1"),
        ("get", "modelversions", "iris-v1"),
        ("patch_labels", "iris-v1"),
    ]


def test_a_status_left_as_it_was_is_not_written_again(posted: list[tuple[str, str, str]]) -> None:
    # Validated and Champion already, its labels in place; its time spelled otherwise than the operator
    # writes it, the same instant once parsed.
    settled = version(1, status=decided("Champion", since="2026-11-01T01:00:00+01:00"))
    settled["metadata"]["labels"].update({"modelloop.dev/model": "iris", "modelloop.dev/stage": "champion"})
    client = RecordingClient()

    asyncio.run(controller([settled], client).reconcile(KEY))

    assert client.calls == []
    assert posted == []


def test_a_status_that_cannot_be_read_is_refused_naming_the_field_and_the_rest_goes_on(
    posted: list[tuple[str, str, str]],
) -> None:
    broken = version(1, status={**decided("Champion"), "stage": "Gold"})
    client = RecordingClient()

    asyncio.run(controller([broken, version(2)], client).reconcile(KEY))

    refusal, validated = client.statuses
    assert client.calls[0] == ("patch_status", "iris-v1")
    assert refusal["reason"] == "InvalidStatus"
    assert refusal["message"].startswith("status cannot be read, left as it is: status.stage: ")
    assert refusal["conditions"][0]["status"] == "False"
    assert "phase" not in refusal and "stage" not in refusal  # its phase kept, the field left as it is
    assert ("Warning", "InvalidStatus", refusal["message"]) in posted
    assert validated["phase"] == "Validated" and validated["stage"] == "Candidate"

    # The next pass finds the refusal written: nothing to write again, nothing to tell again.
    posted.clear()
    refused = {**broken, "status": {**broken["status"], **refusal}}
    settled = version(2, status=decided("Candidate"))
    settled["metadata"]["labels"].update({"modelloop.dev/model": "iris", "modelloop.dev/stage": "candidate"})
    again = RecordingClient()
    asyncio.run(controller([refused, settled], again).reconcile(KEY))
    assert again.calls == []
    assert posted == []
