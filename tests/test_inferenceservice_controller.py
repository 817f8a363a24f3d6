"""The InferenceService controller's glue, with an injected client: the backend's objects read from the
watch's index (not asked of the API server on every pass), status written before anything is applied,
an unchanged render not applied again even while the index lags behind the apply, the echo of its own
apply ignored, events posted after the apply, and what the shell refuses. The decisions are
``plan_service``'s (tests/test_service_plan.py) and ``decide``'s (tests/test_rollout.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop import kube
from modelloop.controllers.inferenceservice import (
    InferenceServiceController,
    backend_index,
    on_backend_object,
)
from modelloop.serving.kserve import INFERENCE_SERVICES
from modelloop.settings import Settings

KEY = ("ml", "iris")
KSERVE_INDEX = backend_index(INFERENCE_SERVICES)
pytestmark = pytest.mark.usefixtures("posted")


def service(status: dict[str, Any] | None = None, backend: str = "kserve") -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"namespace": "ml", "name": "iris", "uid": "s1", "generation": 1, "resourceVersion": "4"},
        "spec": {"model": {"name": "iris"}, "backend": backend},
        "status": status or {},
    }


VERSION_1 = {
    "metadata": {"namespace": "ml", "name": "iris-v1"},
    "spec": {"modelName": "iris", "version": 1, "artifact": {"uri": "s3://m/iris/1"}},
    "status": {"phase": "Validated"},
}


def controller(
    obj: dict[str, Any], client: RecordingClient, kserve: list[dict[str, Any]] | None = None
) -> Any:
    indexes = {
        "inference_services": {KEY: [obj]},
        "model_versions": {KEY: [VERSION_1]},
        KSERVE_INDEX: {KEY: kserve} if kserve else {},
    }
    return InferenceServiceController(Settings(), indexes, client)


def test_a_new_service_writes_status_then_applies_and_asks_nothing_of_the_api_server() -> None:
    client = RecordingClient()
    made = controller(service(), client)

    asyncio.run(made.reconcile(KEY))

    assert client.calls == [("patch_status", "iris"), ("apply", "inferenceservices", "iris")]
    [status] = client.statuses
    assert status["stableVersion"] == 1 and status["phase"] == "Progressing"
    assert client.applied[0]["metadata"]["labels"]["modelloop.dev/inference-service"] == "iris"


def test_a_render_already_applied_is_not_applied_again_while_the_index_lags() -> None:
    client = RecordingClient()
    made = controller(service(), client)
    asyncio.run(made.reconcile(KEY))
    applied = dict(client.applied[0])
    # The index still shows KServe's object from before the apply (an older resourceVersion) ...
    stale = {**applied, "metadata": {**applied["metadata"], "resourceVersion": "1", "generation": 0}}
    made.indexes[KSERVE_INDEX][KEY] = [stale]
    client.calls.clear()

    asyncio.run(made.reconcile(KEY))

    # ... and the pass reads this process's newer copy: the same render, nothing to apply.
    assert ("apply", "inferenceservices", "iris") not in client.calls
    assert not any(call[0] == "get" for call in client.calls)
    assert made._written[KEY]

    # Once the index shows the apply, the copy goes, and the index alone is read.
    caught_up = {**applied, "metadata": {**applied["metadata"], "resourceVersion": "99", "generation": 1}}
    made.indexes[KSERVE_INDEX][KEY] = [caught_up]
    asyncio.run(made.reconcile(KEY))
    assert made._written[KEY] == {}
    assert ("apply", "inferenceservices", "iris") not in client.calls


def test_a_changed_backend_is_refused_and_nothing_is_applied() -> None:
    client = RecordingClient()
    made = controller(service({"phase": "Stable", "stableVersion": 1, "backend": "seldon"}), client)

    asyncio.run(made.reconcile(KEY))

    [status] = client.statuses
    assert (status["phase"], status["reason"]) == ("Degraded", "BackendChanged")
    assert "spec.backend changed from seldon to kserve" in status["message"]
    assert not any(call[0] == "apply" for call in client.calls)


def test_a_backend_the_api_server_does_not_serve_degrades_the_service_saying_what_to_install() -> None:
    client = RecordingClient()
    made = controller(service(), client)

    async def not_served(*_: Any, **__: Any) -> None:
        raise kube.ApiException(404, "Not Found", None)

    client.server_side_apply = not_served  # type: ignore[method-assign,assignment]
    with pytest.raises(kube.ApiException) as raised:
        asyncio.run(made.reconcile(KEY))

    asyncio.run(made.objects.report_failure(KEY, raised.value, 1))

    status = client.statuses[-1]
    assert (status["phase"], status["reason"]) == ("Degraded", "ApiRequestRefused")
    assert "does not serve InferenceService (serving.kserve.io/v1beta1): install it" in status["message"]


def test_the_echo_of_its_own_apply_queues_nothing_but_anyone_elses_change_does(
    posted: list[tuple[str, str, str]],
) -> None:
    client = RecordingClient()
    made = controller(service(), client)
    asyncio.run(made.reconcile(KEY))
    applied = client.applied[0]["metadata"]["name"]
    echo = made._written[KEY][applied]["metadata"]["resourceVersion"]
    memo = SimpleNamespace(manager=SimpleNamespace(inference_services=made))
    labels = {"modelloop.dev/inference-service": "iris"}

    async def event(resource_version: str) -> float | None:
        meta = {"resourceVersion": resource_version}
        await on_backend_object(namespace="ml", name=applied, labels=labels, meta=meta, memo=memo)
        due = made.queue.due_time(KEY)
        made.queue.forget(KEY)
        await made.queue.shutdown()
        return due

    assert asyncio.run(event(echo)) is None
    made.queue = type(made.queue)("InferenceService", made.objects.reconcile)
    # KServe's own status write: a newer resourceVersion than the apply returned.
    assert asyncio.run(event(str(int(echo) + 1))) is not None


def test_events_are_posted_after_the_apply_and_also_when_it_fails(posted: list[tuple[str, str, str]]) -> None:
    client = RecordingClient()
    made = controller(service(), client)
    seen_at_apply: list[int] = []
    apply = client.server_side_apply

    async def recording_apply(*args: Any, **kwargs: Any) -> Any:
        seen_at_apply.append(len(posted))
        return await apply(*args, **kwargs)

    client.server_side_apply = recording_apply  # type: ignore[method-assign]
    asyncio.run(made.reconcile(KEY))
    assert seen_at_apply == [0] and [reason for _, reason, _ in posted] == ["Deploying"]

    posted.clear()
    refused = RecordingClient()
    made = controller(service(), refused)

    async def unprocessable(*_: Any, **__: Any) -> None:
        raise kube.ApiException(422, "Unprocessable", None)

    refused.server_side_apply = unprocessable  # type: ignore[method-assign,assignment]
    with pytest.raises(kube.ApiException):
        asyncio.run(made.reconcile(KEY))
    assert [reason for _, reason, _ in posted] == ["Deploying"]
