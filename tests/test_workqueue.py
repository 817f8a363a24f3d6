"""The controllers' work queue (modelloop.machinery.workqueue), in virtual loop time (looptime): every
``asyncio.sleep`` below fast-forwards the loop's clock instead of waiting, so the timings asserted are
exact and the whole file runs in well under a second."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
from collections.abc import Hashable
from dataclasses import dataclass, field

import pytest

from modelloop.kube import ApiException, api_message
from modelloop.machinery.workqueue import WorkQueue

pytestmark = pytest.mark.looptime

DEBOUNCE = 0.2


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Reconciler:
    """A reconcile that records when each key ran and how many ran at once. Each run of a key takes the
    next outcome of ``outcomes[key]`` (a number: requeue after it; an exception: raise it; None: done),
    after ``duration`` seconds of work."""

    duration: float = 0.0
    outcomes: dict[Hashable, list[float | BaseException | None]] = field(default_factory=dict)
    runs: list[tuple[Hashable, float]] = field(default_factory=list)
    finished: list[tuple[Hashable, float]] = field(default_factory=list)
    active: set[Hashable] = field(default_factory=set)
    overlaps: int = 0
    max_active: int = 0

    async def __call__(self, key: Hashable) -> float | None:
        self.runs.append((key, now()))
        if key in self.active:
            self.overlaps += 1
        self.active.add(key)
        self.max_active = max(self.max_active, len(self.active))
        try:
            await asyncio.sleep(self.duration)
            outcome = self.outcomes[key].pop(0) if self.outcomes.get(key) else None
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.active.discard(key)
            self.finished.append((key, now()))

    def times(self, key: Hashable) -> list[float]:
        return [at for ran, at in self.runs if ran == key]

    def keys(self) -> list[Hashable]:
        return [ran for ran, _ in self.runs]


def intervals(times: list[float]) -> list[float]:
    return [round(later - earlier, 6) for earlier, later in itertools.pairwise(times)]


def status_error(status: int, reason: str, body: str | bytes | None) -> ApiException:
    return ApiException(status=status, reason=reason, body=body)


# Coalescing and timers.


@pytest.mark.asyncio
@pytest.mark.parametrize("adds", [1, 2, 10])
@pytest.mark.parametrize("spacing", [0.0, 0.01, 0.019])
async def test_adds_within_the_debounce_coalesce_into_one_run(adds: int, spacing: float) -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    for _ in range(adds):
        queue.add("a")
        await asyncio.sleep(spacing)
    await asyncio.sleep(5)
    assert reconcile.times("a") == [pytest.approx(start + DEBOUNCE)]
    assert queue.stats.added == adds
    assert queue.stats.processed == 1
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize(("first", "second"), [(10.0, 1.0), (3.0, 0.0), (100.0, 99.0)])
async def test_an_earlier_add_moves_the_timer_earlier(first: float, second: float) -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a", after=first)
    queue.add("a", after=second)
    assert queue.due_time("a") == pytest.approx(start + second + DEBOUNCE)
    assert queue.scheduled() == 1
    await asyncio.sleep(first + 10)
    assert reconcile.times("a") == [pytest.approx(start + second + DEBOUNCE)]
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize(("first", "second"), [(1.0, 10.0), (0.0, 3.0), (5.0, 5.0)])
async def test_a_later_add_never_delays_a_pending_run(first: float, second: float) -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a", after=first)
    await asyncio.sleep(first / 2)
    queue.add("a", after=second)
    assert queue.due_time("a") == pytest.approx(start + first + DEBOUNCE)
    await asyncio.sleep(first + second + 10)
    assert reconcile.times("a") == [pytest.approx(start + first + DEBOUNCE)]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_an_add_without_debounce_runs_at_once_and_takes_pending_debounced_adds_with_it() -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a")
    queue.add("a", debounce=False)
    queue.add("a")
    await asyncio.sleep(5)
    assert reconcile.times("a") == [pytest.approx(start)]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_a_key_due_and_waiting_for_a_worker_is_not_queued_twice() -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    queue.pause()
    queue.add("a")
    await asyncio.sleep(1)
    assert queue.depth() == 1
    queue.add("a")
    await asyncio.sleep(1)
    assert (queue.depth(), queue.scheduled()) == (1, 0)
    queue.resume()
    await asyncio.sleep(1)
    assert reconcile.keys() == ["a"]
    await queue.shutdown()


# One key at a time.


@pytest.mark.asyncio
@pytest.mark.parametrize("add_at", [[0.1], [0.1, 0.5, 0.9], [0.9, 0.95]])
async def test_adds_during_a_run_coalesce_into_one_more_run_after_it(add_at: list[float]) -> None:
    reconcile = Reconciler(duration=1.0)
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a")
    await asyncio.sleep(DEBOUNCE)  # the first run starts now and lasts 1s
    for at in add_at:
        await asyncio.sleep(start + DEBOUNCE + at - now())
        queue.add("a")
    await asyncio.sleep(10)
    first_end = start + DEBOUNCE + 1.0
    # The earliest add's due time (add + debounce) wins, but never before the first run is over.
    expected = max(first_end, start + DEBOUNCE + add_at[0] + DEBOUNCE)
    assert reconcile.times("a") == [pytest.approx(start + DEBOUNCE), pytest.approx(expected)]
    assert reconcile.overlaps == 0
    await queue.shutdown()


@pytest.mark.asyncio
async def test_a_key_added_again_and_again_during_its_runs_never_overlaps() -> None:
    reconcile = Reconciler(duration=0.3)
    queue = WorkQueue("test", reconcile, debounce=0.0, workers=8)
    for _ in range(50):
        queue.add("a")
        await asyncio.sleep(0.05)
    await asyncio.sleep(5)
    assert reconcile.overlaps == 0
    assert reconcile.max_active == 1
    # Strictly sequential: each run starts after the one before it ended.
    finished = [at for _, at in reconcile.finished]
    assert all(start >= end for start, end in zip(reconcile.times("a")[1:], finished, strict=False))
    await queue.shutdown()


# Order and concurrency.


@pytest.mark.asyncio
@pytest.mark.parametrize("keys", [["a", "b", "c", "d", "e"], ["e", "d", "c", "b", "a"], list(range(40))])
async def test_keys_due_at_the_same_time_are_served_in_the_order_they_were_added(keys: list[str]) -> None:
    reconcile = Reconciler(duration=1.0)
    queue = WorkQueue("test", reconcile, workers=1, debounce=DEBOUNCE)
    for key in keys:
        queue.add(key)
    await asyncio.sleep(len(keys) + 5)
    assert reconcile.keys() == keys
    await queue.shutdown()


@pytest.mark.asyncio
async def test_keys_that_fell_due_while_the_workers_were_busy_are_served_first_due_first() -> None:
    reconcile = Reconciler(duration=1.0)
    queue = WorkQueue("test", reconcile, workers=1, debounce=0.0)
    queue.add("busy")
    await asyncio.sleep(0)
    # Added in one order, falling due (during the busy run) in another.
    for key, after in [("c", 0.7), ("a", 0.1), ("d", 0.9), ("b", 0.4)]:
        queue.add(key, after=after)
    await asyncio.sleep(10)
    assert reconcile.keys() == ["busy", "a", "b", "c", "d"]
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 3, 8])
async def test_at_most_workers_reconciles_run_at_once(workers: int) -> None:
    reconcile = Reconciler(duration=1.0)
    queue = WorkQueue("test", reconcile, workers=workers, debounce=DEBOUNCE)
    start = now()
    for key in range(20):
        queue.add(key)
    await asyncio.sleep(30)
    assert reconcile.max_active == workers
    assert len(reconcile.runs) == 20
    last_end = max(at for _, at in reconcile.finished)
    assert last_end == pytest.approx(start + DEBOUNCE + math.ceil(20 / workers))
    await queue.shutdown()


# Requeue-after.


@pytest.mark.asyncio
@pytest.mark.parametrize("requeue_after", [0.0, 0.3, 7.5, 3600.0])
async def test_requeue_after_runs_the_key_again_at_exactly_that_time(requeue_after: float) -> None:
    reconcile = Reconciler(duration=0.25, outcomes={"a": [requeue_after, None]})
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 0.25 + requeue_after + 5)
    first_end = start + DEBOUNCE + 0.25
    assert reconcile.times("a") == [pytest.approx(start + DEBOUNCE), pytest.approx(first_end + requeue_after)]
    assert queue.stats.requeued == 1
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("requeue_after", "add_after", "second_run"),
    [
        (10.0, 0.0, 1.3),  # the add during the run (due at 1.1 + debounce) is earlier than the requeue
        (0.05, 5.0, 1.25),  # the requeue (the run ends at 1.2) is earlier than the add
    ],
)
async def test_requeue_after_and_an_add_during_the_run_the_earlier_wins(
    requeue_after: float, add_after: float, second_run: float
) -> None:
    reconcile = Reconciler(duration=1.0, outcomes={"a": [requeue_after, None]})
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    start = now()
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 0.9)
    queue.add("a", after=add_after)
    await asyncio.sleep(30)
    assert reconcile.times("a") == [pytest.approx(start + DEBOUNCE), pytest.approx(start + second_run)]
    await queue.shutdown()


# Failures.


@pytest.mark.asyncio
async def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    reconcile = Reconciler(outcomes={"a": [RuntimeError("boom")] * 8})
    queue = WorkQueue("test", reconcile, backoff_base=0.5, backoff_cap=4.0, jitter=0.0, debounce=DEBOUNCE)
    queue.add("a")
    await asyncio.sleep(60)
    assert intervals(reconcile.times("a")) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert queue.stats.failed == 8
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", [1, 2, 42])
async def test_backoff_is_jittered_within_bounds_by_the_rng(seed: int) -> None:
    jitter = 0.1
    reconcile = Reconciler(outcomes={"a": [RuntimeError("boom")] * 10})
    queue = WorkQueue(
        "test", reconcile, backoff_base=0.5, backoff_cap=8.0, jitter=jitter, rng=random.Random(seed)
    )
    queue.add("a")
    await asyncio.sleep(100)
    base = [min(8.0, 0.5 * 2**n) for n in range(10)]
    replay = random.Random(seed)
    expected = [round(delay * replay.uniform(1 - jitter, 1 + jitter), 6) for delay in base]
    observed = intervals(reconcile.times("a"))
    assert observed == pytest.approx(expected, abs=1e-5)
    assert all(d * (1 - jitter) <= o <= d * (1 + jitter) for d, o in zip(base, observed, strict=True))
    assert observed != pytest.approx(base, abs=1e-5)


@pytest.mark.asyncio
async def test_a_success_resets_the_failure_count() -> None:
    boom = RuntimeError("boom")
    counts: list[int] = []

    async def on_failure(key: Hashable, error: BaseException, count: int) -> None:
        counts.append(count)

    reconcile = Reconciler(outcomes={"a": [boom, boom, boom, 1.0, boom, None]})
    queue = WorkQueue("test", reconcile, jitter=0.0, on_failure=on_failure, debounce=DEBOUNCE)
    queue.add("a")
    await asyncio.sleep(60)
    assert counts == [1, 2, 3, 1]
    # 0.5, 1, 2 after the failures; 1.0 asked for by the success; 0.5 again after the next failure.
    assert intervals(reconcile.times("a")) == [0.5, 1.0, 2.0, 1.0, 0.5]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_on_failure_gets_the_key_the_error_and_the_consecutive_count() -> None:
    errors = [RuntimeError("one"), ValueError("two"), KeyError("three")]
    calls: list[tuple[Hashable, BaseException, int, float]] = []

    async def on_failure(key: Hashable, error: BaseException, count: int) -> None:
        calls.append((key, error, count, now()))
        await asyncio.sleep(0.1)

    reconcile = Reconciler(outcomes={"a": list(errors), "b": [errors[0]]})
    queue = WorkQueue("test", reconcile, jitter=0.0, on_failure=on_failure)
    queue.add("a")
    queue.add("b")
    await asyncio.sleep(30)
    assert [(key, error, count) for key, error, count, _ in calls if key == "a"] == [
        ("a", errors[0], 1),
        ("a", errors[1], 2),
        ("a", errors[2], 3),
    ]
    assert [(key, count) for key, _, count, _ in calls if key == "b"] == [("b", 1)]
    # The retry waits for on_failure to finish: back-off counts from its end.
    assert intervals(reconcile.times("a")) == [0.6, 1.1, 2.1]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_an_error_in_on_failure_is_logged_and_the_key_still_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def on_failure(key: Hashable, error: BaseException, count: int) -> None:
        raise LookupError("on_failure broke")

    reconcile = Reconciler(outcomes={"a": [RuntimeError("boom"), None]})
    queue = WorkQueue("test", reconcile, jitter=0.0, on_failure=on_failure)
    with caplog.at_level(logging.WARNING, logger="modelloop.machinery.workqueue"):
        queue.add("a")
        await asyncio.sleep(10)
    assert len(reconcile.runs) == 2
    assert any("on_failure of test a failed" in record.getMessage() for record in caplog.records)
    await queue.shutdown()


@pytest.mark.asyncio
async def test_a_failing_api_call_is_logged_as_one_line_with_the_servers_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = json.dumps({"kind": "Status", "message": 'Job.batch "x" is invalid: spec.template: Required'})
    reconcile = Reconciler(outcomes={"a": [status_error(422, "Unprocessable Entity", body)]})
    queue = WorkQueue("runs", reconcile, jitter=0.0)
    with caplog.at_level(logging.WARNING, logger="modelloop.machinery.workqueue"):
        queue.add("a")
        await asyncio.sleep(1)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "reconcile of runs a failed: 422 Unprocessable Entity: "
        'Job.batch "x" is invalid: spec.template: Required'
    )
    assert record.exc_info is None
    await queue.shutdown()


@pytest.mark.asyncio
async def test_any_other_failure_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    reconcile = Reconciler(outcomes={"a": [ZeroDivisionError("division by zero")]})
    queue = WorkQueue("runs", reconcile)
    with caplog.at_level(logging.WARNING, logger="modelloop.machinery.workqueue"):
        queue.add("a")
        await asyncio.sleep(1)
    [record] = caplog.records
    assert record.getMessage() == "reconcile of runs a failed"
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError
    await queue.shutdown()


@pytest.mark.asyncio
async def test_a_cancelled_error_escaping_a_reconcile_is_a_failure_not_a_lost_worker() -> None:
    reconcile = Reconciler(outcomes={"a": [asyncio.CancelledError(), None]})
    queue = WorkQueue("test", reconcile, workers=1, jitter=0.0)
    queue.add("a")
    await asyncio.sleep(5)
    assert len(reconcile.runs) == 2
    assert queue.stats.failed == 1
    queue.add("b")
    await asyncio.sleep(5)
    assert reconcile.keys() == ["a", "a", "b"]
    await queue.shutdown()


# forget, pause, shutdown.


@pytest.mark.asyncio
@pytest.mark.parametrize("after", [0.0, 5.0])
async def test_forget_cancels_a_pending_run(after: float) -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile)
    queue.add("a", after=after)
    queue.add("b", after=after)
    queue.forget("a")
    assert queue.scheduled() == 1
    assert queue.due_time("a") is None
    await asyncio.sleep(after + 5)
    assert reconcile.keys() == ["b"]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_forget_drops_a_key_waiting_for_a_worker() -> None:
    reconcile = Reconciler()
    queue = WorkQueue("test", reconcile)
    queue.pause()
    queue.add("a")
    queue.add("b")
    await asyncio.sleep(1)
    queue.forget("a")
    assert queue.depth() == 1
    queue.resume()
    await asyncio.sleep(1)
    assert reconcile.keys() == ["b"]
    await queue.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize("outcome", [1.0, RuntimeError("gone")])
async def test_forget_during_a_run_lets_it_finish_and_drops_its_next_run(outcome: float | Exception) -> None:
    reconcile = Reconciler(duration=1.0, outcomes={"a": [outcome]})
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 0.5)
    queue.add("a")  # dirty: would run again
    queue.forget("a")
    await asyncio.sleep(30)
    assert len(reconcile.finished) == 1  # not cancelled, finished
    assert len(reconcile.runs) == 1  # no requeue, no retry, no dirty re-run
    assert queue.due_time("a") is None
    await queue.shutdown()


@pytest.mark.asyncio
async def test_a_key_added_back_after_forget_runs_again() -> None:
    reconcile = Reconciler(duration=1.0, outcomes={"a": [RuntimeError("gone")]})
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE, jitter=0.0)
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 0.5)
    queue.forget("a")
    queue.add("a")  # re-created under the same name
    await asyncio.sleep(30)
    assert len(reconcile.runs) == 2
    assert queue.stats.failed == 1
    await queue.shutdown()
    await queue.shutdown()


@pytest.mark.asyncio
async def test_pause_holds_due_keys_and_resume_releases_them_in_order() -> None:
    reconcile = Reconciler(duration=0.1)
    queue = WorkQueue("test", reconcile, workers=1, debounce=DEBOUNCE)
    queue.pause()
    assert queue.paused
    for key in ["a", "b", "a", "c", "b"]:
        queue.add(key)
        await asyncio.sleep(0.5)
    await asyncio.sleep(60)
    assert reconcile.runs == []
    assert (queue.depth(), queue.scheduled()) == (3, 0)
    resumed = now()
    queue.resume()
    assert not queue.paused
    await asyncio.sleep(1)
    assert reconcile.keys() == ["a", "b", "c"]
    assert reconcile.times("a") == [pytest.approx(resumed)]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_pause_lets_a_running_reconcile_finish_but_starts_no_other() -> None:
    reconcile = Reconciler(duration=1.0)
    queue = WorkQueue("test", reconcile, workers=4, debounce=DEBOUNCE)
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 0.5)
    queue.pause()
    queue.add("b")
    await asyncio.sleep(10)
    assert reconcile.keys() == ["a"]
    assert [key for key, _ in reconcile.finished] == ["a"]
    queue.resume()
    await asyncio.sleep(2)
    assert reconcile.keys() == ["a", "b"]
    await queue.shutdown()


@pytest.mark.asyncio
async def test_shutdown_lets_a_running_reconcile_finish_and_then_nothing_runs() -> None:
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    reconcile = Reconciler(duration=1.0, outcomes={"a": [0.5]})
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE)
    queue.add("a")
    queue.add("b", after=5.0)
    await asyncio.sleep(DEBOUNCE + 0.5)
    started = now()
    await queue.shutdown(timeout=10)
    assert now() == pytest.approx(started + 0.5)  # waited for the run, not for the timeout
    assert [key for key, _ in reconcile.finished] == ["a"]
    assert (queue.depth(), queue.scheduled()) == (0, 0)
    queue.add("c")
    await asyncio.sleep(60)
    assert reconcile.keys() == ["a"]  # no requeue of a, no b, no c
    assert (queue.depth(), queue.scheduled()) == (0, 0)
    assert loop_errors == []
    await queue.shutdown()  # idempotent
    assert queue.stats.added == 2


@pytest.mark.asyncio
async def test_shutdown_cancels_a_reconcile_still_running_after_the_timeout() -> None:
    calls: list[int] = []

    async def on_failure(key: Hashable, error: BaseException, count: int) -> None:
        calls.append(count)

    reconcile = Reconciler(duration=100.0)
    queue = WorkQueue("test", reconcile, debounce=DEBOUNCE, on_failure=on_failure)
    queue.add("a")
    await asyncio.sleep(DEBOUNCE + 1)
    started = now()
    await queue.shutdown(timeout=2.0)
    assert now() == pytest.approx(started + 2.0)
    [(key, ended)] = reconcile.finished
    assert key == "a"
    assert ended == pytest.approx(started + 2.0)  # cancelled there
    assert calls == []
    assert queue.stats.failed == 0
    await asyncio.sleep(200)
    assert len(reconcile.runs) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 8])
async def test_workers_start_on_the_first_add_and_no_more_than_asked(workers: int) -> None:
    queue = WorkQueue("test", Reconciler(), workers=workers)
    before = asyncio.all_tasks()
    await asyncio.sleep(1)
    assert asyncio.all_tasks() == before
    queue.add("a")
    queue.add("b")
    assert len(asyncio.all_tasks() - before) == workers
    await queue.shutdown()
    assert asyncio.all_tasks() == before


def test_a_queue_is_made_without_a_running_loop() -> None:
    queue = WorkQueue("test", Reconciler())
    assert (queue.depth(), queue.scheduled(), queue.paused) == (0, 0, False)


# api_message: what the API server said.


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            json.dumps({"kind": "Status", "status": "Failure", "message": 'Job.batch "x" is invalid'}),
            '422 Unprocessable Entity: Job.batch "x" is invalid',
        ),
        (
            json.dumps({"kind": "Status", "message": "admission webhook denied"}).encode(),
            "422 Unprocessable Entity: admission webhook denied",
        ),
        ("upstream connect error", "422 Unprocessable Entity: upstream connect error"),
        ("x" * 2000, "422 Unprocessable Entity: " + "x" * 500),
        (None, "422 Unprocessable Entity"),
        ("", "422 Unprocessable Entity"),
    ],
)
def test_api_message_gives_the_servers_own_message(body: str | bytes | None, expected: str) -> None:
    assert api_message(status_error(422, "Unprocessable Entity", body)) == expected


def test_api_message_of_any_other_error_names_its_type() -> None:
    assert api_message(TimeoutError("read timed out")) == "TimeoutError: read timed out"
    assert api_message(TimeoutError()) == "TimeoutError"
