"""How often windows are judged while rows stream in: judging must never take the core ingestion needs."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from modelloop_contracts import Registration, VersionSpec

from conftest import numeric_rows, write_reference
from modelloop_detector.detectors import DetectorSettings, Verdict
from modelloop_detector.evaluation import EvaluationLoop
from modelloop_detector.events import InferenceEvent
from modelloop_detector.service import DriftService, WindowSettings


def served(tmp_path: Path, settings: WindowSettings, clock: object = time.time) -> DriftService:
    service = DriftService(settings, DetectorSettings(device="cpu", mmd_permutations=10), clock=clock)  # type: ignore[arg-type]
    uri = write_reference(tmp_path, numeric_rows(60, seed=1))
    result = service.register("ml", "iris", Registration(model="iris", versions={"3": VersionSpec(uri)}))
    assert not result.errors
    return service


def feed(service: DriftService, first: int, count: int) -> None:
    for index, row in enumerate(numeric_rows(count, seed=first).tolist(), start=first):
        service.ingest(InferenceEvent("request", str(index), "ml", "iris", "default", {"instances": [row]}))
        service.ingest(InferenceEvent("response", str(index), "ml", "iris", "default", {"predictions": [1]}))


def test_ingestion_wakes_the_loops_once_per_due_window_not_at_every_row(tmp_path: Path) -> None:
    service = served(tmp_path, WindowSettings(window_rows=500, min_rows=10, evaluate_every_rows=20))
    wakes: list[int] = []
    service.add_waker(lambda: wakes.append(1))
    feed(service, 0, 9)
    assert wakes == []  # fewer than min_rows
    feed(service, 9, 200)
    assert len(wakes) == 1, "told once; the loops judge the window as it is when they get to it"
    state = service.service("ml", "iris")
    for kind in ("fast", "mmd"):
        service.judge(state, state.versions["3"], kind)  # type: ignore[arg-type]
    feed(service, 209, 19)
    assert len(wakes) == 1  # judged; 19 new rows are not yet due
    feed(service, 228, 1)
    assert len(wakes) == 2
    feed(service, 229, 100)
    assert len(wakes) == 2


def test_a_fast_stream_is_judged_at_most_once_per_interval_and_mmd_less_often(tmp_path: Path) -> None:
    # Every 5 rows would be due: without the bounds, the fast detectors (a few milliseconds on this
    # window) would judge a hundred times a second.
    settings = WindowSettings(
        window_rows=200,
        min_rows=10,
        evaluate_every_rows=5,
        evaluate_every_seconds=0.8,
        min_verdict_seconds=0.3,
    )
    service = served(tmp_path, settings)
    passes: dict[str, list[float]] = {"ks": [], "mmd": []}

    def observe(verdict: Verdict, seconds: float) -> None:
        # One combined verdict per detector and pass, stamped when its judging began: a pass rests from
        # its start, so the time a verdict is observed also carries how long judging took.
        if verdict.detector in passes:
            passes[verdict.detector].append(verdict.time)

    loops = [EvaluationLoop(service, kind, observe) for kind in ("fast", "mmd")]
    for loop in loops:
        loop.start()
    stop = threading.Event()

    def stream() -> None:
        first = 0
        while not stop.is_set():
            feed(service, first, 10)
            first += 10

    feeder = threading.Thread(target=stream)
    feeder.start()
    started = time.monotonic()
    try:
        deadline = started + 30
        while len(passes["ks"]) < 5 and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        feeder.join()
        for loop in loops:
            loop.stop()
    elapsed = time.monotonic() - started
    assert len(passes["ks"]) >= 5, passes
    gaps = [later - earlier for earlier, later in itertools.pairwise(passes["ks"])]
    assert min(gaps) >= 0.3 * 0.9, gaps  # the fast detectors rest between passes, however many rows come
    assert 1 <= len(passes["mmd"]) <= elapsed / 0.8 + 1, (passes["mmd"], elapsed)
    mmd_gaps = [later - earlier for earlier, later in itertools.pairwise(passes["mmd"])]
    assert all(gap >= 0.8 * 0.9 for gap in mmd_gaps), mmd_gaps
