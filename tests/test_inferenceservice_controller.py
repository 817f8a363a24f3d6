"""The InferenceService controller's glue, with an injected client: the backend's objects read from the
watch's index (not asked of the API server on every pass), one status write per decision (applied first,
its status held until the backend reports on the apply, for a bounded time, in virtual loop time), an
unchanged render not applied again even while the index lags behind the apply, the echo of its own apply
ignored, events posted after the apply, and what the shell refuses. The decisions are ``plan_service``'s
(tests/test_service_plan.py) and ``decide``'s (tests/test_rollout.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from controller_fakes import RecordingClient
from modelloop import kube
from modelloop.controllers.inferenceservice import (
    REPORT_WAIT_SECONDS,
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


def reported(made: Any, client: RecordingClient, status: dict[str, Any] | None = None) -> None:
    """KServe's report on the last apply: its watch's index shows the applied object at a newer
    resourceVersion (with ``status``)."""
    applied = client.applied[-1]
    meta = {**applied["metadata"], "resourceVersion": str(client.resource_version + 100), "generation": 1}
    made.indexes[KSERVE_INDEX][KEY] = [{**applied, "metadata": meta, "status": status or {}}]


def test_a_new_service_applies_then_writes_its_status_once_when_the_backend_reports() -> None:
    client = RecordingClient()
    made = controller(service(), client)

    wait = asyncio.run(made.reconcile(KEY))

    # The apply goes first; the decided status waits for KServe's report, a bounded time.
    assert client.calls == [("apply", "inferenceservices", "iris")]
    assert client.applied[0]["metadata"]["labels"]["modelloop.dev/inference-service"] == "iris"
    held = made.pending(KEY)
    assert held is not None and (held.stable_version, held.phase) == (1, "Progressing")
    assert wait is not None and 0 < wait <= REPORT_WAIT_SECONDS

    reported(made, client)
    asyncio.run(made.reconcile(KEY))

    # The next pass plans on the held status and writes it, once; nothing is asked of the API server.
    assert client.calls == [("apply", "inferenceservices", "iris"), ("patch_status", "iris")]
    [status] = client.statuses
    assert status["stableVersion"] == 1 and status["phase"] == "Progressing"
    assert made.pending(KEY) is None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_held_status_is_written_when_the_backend_does_not_report_in_time() -> None:
    client = RecordingClient()
    made = controller(service(), client)
    await made.reconcile(KEY)

    await asyncio.sleep(REPORT_WAIT_SECONDS / 2)
    wait = await made.reconcile(KEY)  # no report yet: still held, for the rest of the bound
    assert not client.statuses and made.pending(KEY) is not None
    assert wait == pytest.approx(REPORT_WAIT_SECONDS / 2)

    await asyncio.sleep(wait)
    await made.reconcile(KEY)
    [status] = client.statuses
    assert status["stableVersion"] == 1 and made.pending(KEY) is None
    await made.queue.shutdown()


def test_a_held_status_belongs_to_its_object_not_to_a_new_one_of_the_same_name() -> None:
    client = RecordingClient()
    made = controller(service(), client)
    asyncio.run(made.reconcile(KEY))
    assert made.pending(KEY) is not None and made.pending(KEY).backend == "kserve"

    # Deleted and made again under the same name, on Seldon, before KServe's report: the new object plans
    # on its own (empty) status; planned on the held one, it would be refused as a change of backend.
    again = service(backend="seldon")
    again["metadata"] = {**again["metadata"], "uid": "s2"}
    made.indexes["inference_services"][KEY] = [again]
    asyncio.run(made.reconcile(KEY))

    assert ("apply", "seldondeployments", "iris") in client.calls
    held = made._pending.get(KEY)
    decided = client.statuses[-1] if client.statuses else held[1].model_dump(mode="json", by_alias=True)
    assert decided["phase"] == "Progressing" and decided["backend"] == "seldon"


VERSION_2 = {
    "metadata": {"namespace": "ml", "name": "iris-v2"},
    "spec": {"modelName": "iris", "version": 2, "artifact": {"uri": "s3://m/iris/2"}},
    "status": {"phase": "Validated"},
}
CANARY_AT_20 = {
    "phase": "Progressing",
    "reason": "StepRunning",
    "backend": "kserve",
    "stableVersion": 1,
    "canaryVersion": 2,
    "canaryWeight": 20,
    "canaryTraffic": 20,
    "stepIndex": 1,
    "stepStartTime": "2026-12-06T00:00:00Z",
}


@pytest.mark.parametrize(
    ("action", "first"),
    [
        ("abort", ["patch_status", "apply"]),  # takes the canary's traffic: written before its apply
        ("promote", ["apply"]),  # gives the canary all of it: held for KServe's report
    ],
)
def test_a_decision_that_takes_traffic_from_a_canary_is_written_before_its_apply(
    action: str, first: list[str]
) -> None:
    client = RecordingClient()
    obj = service(CANARY_AT_20)
    obj["spec"]["rollout"] = {"steps": [10, 20, 50, 100]}
    obj["metadata"]["annotations"] = {"modelloop.dev/rollout-action": action}
    made = controller(obj, client)
    made.indexes["model_versions"][KEY] = [VERSION_1, VERSION_2]

    asyncio.run(made.reconcile(KEY))

    assert [call[0] for call in client.calls] == first
    decided = client.statuses[0] if client.statuses else made.pending(KEY).model_dump(by_alias=True)
    assert decided["phase"] == ("RolledBack" if action == "abort" else "Promoted")


def knative_report(applied: dict[str, Any], canary: int, resource_version: str) -> dict[str, Any]:
    """KServe's InferenceService as applied, with the status KServe writes once Knative gives the latest
    revision ``canary``% of the traffic."""
    traffic = [
        {"revisionName": "iris-predictor-2", "latestRevision": True, "percent": canary},
        {"revisionName": "iris-predictor-1", "latestRevision": False, "percent": 100 - canary},
    ]
    status = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "url": "http://iris.ml.example.com",
        "components": {
            "predictor": {
                "latestCreatedRevision": "iris-predictor-2",
                "latestReadyRevision": "iris-predictor-2",
                "traffic": traffic,
            }
        },
    }
    meta = {**applied["metadata"], "resourceVersion": resource_version, "generation": 3}
    return {**applied, "metadata": meta, "status": status}


def test_an_operator_that_stopped_before_writing_a_step_is_followed_by_one_that_asks_for_that_step() -> None:
    due = {**CANARY_AT_20, "stepStartTime": "2026-01-01T00:00:00Z"}  # the step at 20% is long due
    obj = service(due)
    obj["spec"]["rollout"] = {"steps": [10, 20, 50, 100], "stepInterval": "10s"}
    client = RecordingClient()
    stopped = controller(obj, client)
    stopped.indexes["model_versions"][KEY] = [VERSION_1, VERSION_2]
    stopped.indexes[KSERVE_INDEX][KEY] = [knative_report(rendered_at(stopped, 20), 20, "5")]
    asyncio.run(stopped.reconcile(KEY))
    [applied] = client.applied
    assert applied["spec"]["predictor"]["canaryTrafficPercent"] == 50
    assert not client.statuses  # held for KServe's report, when the operator stops

    # KServe reports 50%; a new operator starts from the status written before, which still says 20%.
    client = RecordingClient()
    restarted = controller(obj, client)
    restarted.indexes["model_versions"][KEY] = [VERSION_1, VERSION_2]
    restarted.indexes[KSERVE_INDEX][KEY] = [knative_report(dict(applied), 50, "9")]

    async def apply_at_generation_3(plural: str, manifest: Mapping[str, Any], **_: Any) -> kube.Applied:
        # This process never applied it: it applies its render once; the same spec keeps generation 3.
        client.calls.append(("apply", plural, manifest["metadata"]["name"]))
        client.applied.append(manifest)
        return kube.Applied({**manifest, "metadata": {**manifest["metadata"], "generation": 3}})

    client.server_side_apply = apply_at_generation_3  # type: ignore[method-assign,assignment]
    asyncio.run(restarted.reconcile(KEY))

    # It decides the step again and asks for 50%: the traffic is never taken back to 20%.
    assert [m["spec"]["predictor"]["canaryTrafficPercent"] for m in client.applied] == [50]
    [status] = client.statuses
    assert (status["stepIndex"], status["canaryWeight"], status["canaryTraffic"]) == (2, 50, 50)


def rendered_at(made: Any, weight: int) -> dict[str, Any]:
    """What the controller applies for the canary at ``weight`` (rendered by a throwaway pass)."""
    status = {**CANARY_AT_20, "canaryWeight": weight, "stepStartTime": "2999-01-01T00:00:00Z"}
    obj = service(status)
    obj["spec"]["rollout"] = {"steps": [10, 20, 50, 100], "stepInterval": "10s"}
    client = RecordingClient()
    throwaway = controller(obj, client)
    throwaway.indexes["model_versions"][KEY] = [VERSION_1, VERSION_2]
    asyncio.run(throwaway.reconcile(KEY))
    return dict(client.applied[0])


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
    # The decision is written when its apply fails too (nothing is held for a report that cannot come).
    [status] = refused.statuses
    assert status["phase"] == "Progressing" and made.pending(KEY) is None
