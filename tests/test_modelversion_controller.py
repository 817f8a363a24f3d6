"""The model controller's glue, with an injected client: a model's versions and policy read from the
indexes, the plan applied in order (status, then labels, then events; deletions last), a version deleted
meanwhile skipped, a conflict re-planned on a fresh copy. The decisions are ``plan_model``'s
(tests/test_registry_plan.py)."""

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
