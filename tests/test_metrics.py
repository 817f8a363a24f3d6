"""The operator's own metrics: what a reconcile, a failure, a wait in the queue and the depth of a queue
look like on /metrics (in virtual loop time, as the queue's own tests)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelloop.machinery import metrics
from modelloop.machinery.workqueue import WorkQueue

pytestmark = pytest.mark.looptime


def samples(name: str, **labels: str) -> dict[str, float]:
    """The samples of metric family ``name`` whose labels include ``labels``, by sample name."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name != name:
            continue
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and "le" not in sample.labels:
                found[sample.name] = sample.value
    return found


@pytest.mark.asyncio
async def test_reconciles_are_counted_by_kind_and_result_and_timed() -> None:
    async def reconcile(key: str) -> None:
        await asyncio.sleep(0.3)
        if key == "bad":
            raise RuntimeError("no")

    queue = WorkQueue("metrics-a", reconcile, debounce=0.1, backoff_base=60)
    for key in ("one", "two", "bad"):
        queue.add(key)
    await asyncio.sleep(5)
    await queue.shutdown()

    assert samples("modelloop_reconciles", kind="metrics-a", result="success") == {
        "modelloop_reconciles_total": 2
    }
    assert samples("modelloop_reconciles", kind="metrics-a", result="error") == {
        "modelloop_reconciles_total": 1
    }
    durations = samples("modelloop_reconcile_duration_seconds", kind="metrics-a")
    assert durations["modelloop_reconcile_duration_seconds_count"] == 3
    assert durations["modelloop_reconcile_duration_seconds_sum"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.asyncio
async def test_the_wait_for_a_worker_is_measured_and_the_depth_is_read_when_scraped() -> None:
    async def reconcile(key: str) -> None:
        await asyncio.sleep(1)

    queue = WorkQueue("metrics-b", reconcile, workers=1, debounce=0)
    depth = metrics.QueueDepth(lambda: [(queue.name, queue.depth(), queue.scheduled())])
    metrics.REGISTRY.register(depth)
    for key in ("a", "b", "c"):
        queue.add(key)
    queue.add("later", after=100)
    await asyncio.sleep(0.5)  # "a" runs; "b" and "c" wait for the one worker

    assert samples("modelloop_queue_depth", kind="metrics-b") == {"modelloop_queue_depth": 2}
    assert samples("modelloop_queue_scheduled", kind="metrics-b") == {"modelloop_queue_scheduled": 1}
    await asyncio.sleep(5)
    await queue.shutdown()
    waits = samples("modelloop_queue_wait_seconds", kind="metrics-b")
    assert waits["modelloop_queue_wait_seconds_count"] == 3
    assert waits["modelloop_queue_wait_seconds_sum"] == pytest.approx(0 + 1 + 2, abs=0.01)
    metrics.REGISTRY.unregister(depth)


RETRAINING_REASONS = {"DriftConfirmed", "InFlight", "Cooldown", "BudgetExhausted"}


def test_no_label_carries_an_objects_name() -> None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            assert set(sample.labels) <= {"kind", "result", "verb", "code", "le", "reason"}, sample
            # A retraining's reason is one of a fixed few (started, or why it was skipped).
            assert sample.labels.get("reason", "DriftConfirmed") in RETRAINING_REASONS, sample
