"""Benchmark: how punctually the controllers' work queue (modelloop.machinery.workqueue) keeps requeue-after
times.

N keys are added at once; each key's first reconcile asks to run again after a random time, uniform in
[0, spread] seconds (seeded), and its second reconcile records how late it started: ``loop.time() - due``.
Measured twice on the same keys and times, 8 workers, the default debounce:

- real time: a plain asyncio loop; the run takes about ``spread`` seconds, and lateness includes the
  queue's own CPU time (its timers, the ready queue, the workers);
- virtual time (looptime): the loop's clock jumps to each next timer and stands still while anything is
  ready to run, so lateness shows only whether the queue ran each key at its due time, in due order.

The first wave (N keys due at the same moment, one debounce after the adds) is a burst, not a timer: its
drain time is printed apart. Target: p99 lateness <= 50 ms in both modes. Peak RSS is the whole process's.

    .venv/bin/python bench/workqueue.py [--keys 10000] [--spread 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import looptime

from modelloop.machinery.workqueue import WorkQueue

WORKERS = 8
TARGET_P99_MS = 50.0


@dataclass
class Run:
    """What one measurement saw: the requeued runs' lateness (seconds), the first wave's drain time in
    loop time, and the wall-clock time of the whole run."""

    lateness: list[float]
    burst_drain: float
    wall: float


async def measure(delays: list[float]) -> Run:
    loop = asyncio.get_running_loop()
    due: dict[int, float] = {}
    lateness: list[float] = []
    first_wave: list[float] = []
    done = asyncio.Event()

    async def reconcile(key: int) -> float | None:
        if key not in due:
            first_wave.append(loop.time())
            due[key] = loop.time() + delays[key]
            return delays[key]
        lateness.append(loop.time() - due[key])
        if len(lateness) == len(delays):
            done.set()
        return None

    queue = WorkQueue("bench", reconcile, workers=WORKERS)
    wall = time.perf_counter()
    for key in range(len(delays)):
        queue.add(key)
    first_due = queue.due_time(0)
    await done.wait()
    wall = time.perf_counter() - wall
    await queue.shutdown()
    assert first_due is not None
    assert queue.stats.processed == 2 * len(delays)
    return Run(lateness=lateness, burst_drain=max(first_wave) - first_due, wall=wall)


def run_on(new_loop: Callable[[], asyncio.AbstractEventLoop], delays: list[float]) -> Run:
    loop = new_loop()
    try:
        return loop.run_until_complete(measure(delays))
    finally:
        loop.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=5.0, help="requeue-after times: uniform in [0, S] s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    delays = [rng.uniform(0.0, args.spread) for _ in range(args.keys)]
    runs = {
        "real": run_on(asyncio.new_event_loop, delays),
        "virtual": run_on(looptime.new_event_loop, delays),
    }

    print(f"{args.keys} keys, requeue-after uniform in [0, {args.spread:g}] s, seed {args.seed}", end="")
    print(f", {WORKERS} workers; lateness of the requeued runs:")
    print(
        f"{'time':8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8} {'burst ms':>9} {'wall s':>7}"
    )
    for mode, run in runs.items():
        ms = [late * 1000 for late in run.lateness]
        print(
            f"{mode:8} {percentile(ms, 0.50):8.3f} {percentile(ms, 0.99):8.3f} {max(ms):8.3f} "
            f"{statistics.fmean(ms):8.3f} {run.burst_drain * 1000:9.1f} {run.wall:7.2f}"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    p99 = {mode: percentile(run.lateness, 0.99) * 1000 for mode, run in runs.items()}
    verdict = "met" if all(value <= TARGET_P99_MS for value in p99.values()) else "MISSED"
    print(f"target p99 <= {TARGET_P99_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
