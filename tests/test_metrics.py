"""The operator's own metrics: what a reconcile, a failure, a wait in the queue and the depth of a queue
look like on /metrics (in virtual loop time, as the queue's own tests)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from modelloop.machinery import metrics
from modelloop.machinery.workqueue import WorkQueue

pytestmark = pytest.mark.looptime


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    """A registry of the test's own: the operator's collectors, made anew in it, stand in for the process's
    while the test runs, so that it reads only what the code under test wrote (nothing another test did)."""
    own = CollectorRegistry(auto_describe=True)
    for name, collector in metrics.OperatorMetrics(own).by_name().items():
        monkeypatch.setattr(metrics, name, collector)
    return own


def samples(registry: CollectorRegistry, name: str, **labels: str) -> dict[str, float]:
    """The samples of metric family ``name`` whose labels include ``labels``, by sample name."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render(registry).decode()):
        if family.name != name:
            continue
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and "le" not in sample.labels:
                found[sample.name] = sample.value
    return found


@pytest.mark.asyncio
async def test_reconciles_are_counted_by_kind_and_result_and_timed(registry: CollectorRegistry) -> None:
    async def reconcile(key: str) -> None:
        await asyncio.sleep(0.3)
        if key == "bad":
            raise RuntimeError("no")

    queue = WorkQueue("metrics-a", reconcile, debounce=0.1, backoff_base=60)
    for key in ("one", "two", "bad"):
        queue.add(key)
    await asyncio.sleep(5)
    await queue.shutdown()

    assert samples(registry, "modelloop_reconciles", kind="metrics-a", result="success") == {
        "modelloop_reconciles_total": 2
    }
    assert samples(registry, "modelloop_reconciles", kind="metrics-a", result="error") == {
        "modelloop_reconciles_total": 1
    }
    durations = samples(registry, "modelloop_reconcile_duration_seconds", kind="metrics-a")
    assert durations["modelloop_reconcile_duration_seconds_count"] == 3
    assert durations["modelloop_reconcile_duration_seconds_sum"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.asyncio
async def test_the_wait_for_a_worker_is_measured_and_the_depth_is_read_when_scraped(
    registry: CollectorRegistry,
) -> None:
    async def reconcile(key: str) -> None:
        await asyncio.sleep(1)

    queue = WorkQueue("metrics-b", reconcile, workers=1, debounce=0)
    depth = metrics.QueueDepth(lambda: [(queue.name, queue.depth(), queue.scheduled())])
    registry.register(depth)
    for key in ("a", "b", "c"):
        queue.add(key)
    queue.add("later", after=100)
    await asyncio.sleep(0.5)  # "a" runs; "b" and "c" wait for the one worker

    assert samples(registry, "modelloop_queue_depth", kind="metrics-b") == {"modelloop_queue_depth": 2}
    assert samples(registry, "modelloop_queue_scheduled", kind="metrics-b") == {
        "modelloop_queue_scheduled": 1
    }
    await asyncio.sleep(5)
    await queue.shutdown()
    waits = samples(registry, "modelloop_queue_wait_seconds", kind="metrics-b")
    assert waits["modelloop_queue_wait_seconds_count"] == 3
    assert waits["modelloop_queue_wait_seconds_sum"] == pytest.approx(0 + 1 + 2, abs=0.01)
    registry.unregister(depth)


@pytest.mark.asyncio
async def test_no_label_carries_an_objects_name(registry: CollectorRegistry) -> None:
    async def reconcile(key: str) -> None:
        metrics.observe_api_request("PATCH", 200, 0.01)
        if key.endswith("bad"):
            raise RuntimeError("no")

    keys = ("team-a/secret-project-run", "team-b/other-run-bad")
    queue = WorkQueue("TrainingRun", reconcile, debounce=0, backoff_base=60)
    for key in keys:
        queue.add(key)
    await asyncio.sleep(1)
    await queue.shutdown()

    text = metrics.render(registry).decode()
    written = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels
    ]
    assert {s.labels.get("result") for s in written} >= {"success", "error"}, "the reconciles were counted"
    assert {s.labels.get("verb") for s in written} >= {"PATCH"}, "the requests were counted"
    # The registry holds what this test wrote and nothing else: the other tests' queues are not there.
    assert {s.labels["kind"] for s in written if "kind" in s.labels} == {"TrainingRun"}
    for sample in written:
        assert set(sample.labels) <= {"kind", "result", "verb", "code", "le", "reason"}, sample
    for key in keys:
        for part in key.split("/"):
            assert part not in text
