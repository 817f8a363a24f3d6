"""How often windows are judged while rows stream in: judging must never take the core ingestion needs.

Time is virtual: the service, the loops and the verdicts read one clock that only the test moves, and
judging "takes" a fixed time (the service below advances the clock by it), so every pass's start time is
exact.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from modelloop_contracts import Registration, VersionSpec

from conftest import artifact_roots, numeric_rows, write_reference
from modelloop_detector.detectors import DetectorSettings, Verdict
from modelloop_detector.evaluation import EvaluationLoop, rest_after
from modelloop_detector.events import InferenceEvent
from modelloop_detector.service import DriftService, LoopKind, ServiceState, VersionState, WindowSettings


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TimedService(DriftService):
    """The real service, whose verdicts take ``cost[kind]`` virtual seconds."""

    def __init__(self, settings: WindowSettings, clock: VirtualClock, cost: dict[LoopKind, float]) -> None:
        super().__init__(
            settings,
            # MMD (and PyTorch) only where a test judges it.
            DetectorSettings(device="cpu", mmd_permutations=10, mmd=cost["mmd"] > 0),
            clock=clock,
            roots=artifact_roots(),
        )
        self.virtual_clock, self.cost = clock, cost

    def judge(self, state: ServiceState, version: VersionState, kind: LoopKind) -> list[Verdict]:
        verdicts = super().judge(state, version, kind)
        self.virtual_clock.advance(self.cost[kind])
        return verdicts


def served(
    tmp_path: Path, settings: WindowSettings, cost: dict[LoopKind, float] | None = None
) -> TimedService:
    service = TimedService(settings, VirtualClock(), cost or {"fast": 0.0, "mmd": 0.0})
    tmp_path.mkdir(exist_ok=True)
    uri = write_reference(tmp_path, numeric_rows(60, seed=1))
    result = service.register("ml", "iris", Registration(model="iris", versions={"3": VersionSpec(uri)}))
    assert not result.errors
    return service


def feed(service: DriftService, first: int, count: int) -> None:
    for index, row in enumerate(numeric_rows(count, seed=first).tolist(), start=first):
        service.ingest(InferenceEvent("request", str(index), "ml", "iris", "default", {"instances": [row]}))
        service.ingest(InferenceEvent("response", str(index), "ml", "iris", "default", {"predictions": [1]}))


def stream_passes(
    service: TimedService, kind: LoopKind, *, seconds: float, tick: float = 0.01
) -> list[float]:
    """Stream 10 rows every ``tick`` virtual seconds for ``seconds`` while loop ``kind`` passes as its
    thread would (judge what is due, rest as told); the start time of every pass that judged."""
    detector = "ks" if kind == "fast" else "mmd"
    starts: list[float] = []

    def observe(verdict: Verdict, spent: float) -> None:
        if verdict.detector == detector:
            starts.append(verdict.time)

    loop = EvaluationLoop(service, kind, observe, clock=service.virtual_clock)
    clock = service.virtual_clock
    end, first = clock.now + seconds, 0
    resting_until = clock.now
    while clock.now < end:
        feed(service, first, 10)
        first += 10
        if clock.now >= resting_until - 1e-9:
            rest = loop.pass_once()
            resting_until = clock.now + rest
        clock.advance(tick)
    return starts


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


SETTINGS = WindowSettings(
    window_rows=200, min_rows=10, evaluate_every_rows=5, evaluate_every_seconds=0.8, min_verdict_seconds=0.3
)


def gaps(starts: list[float]) -> list[float]:
    return [round(later - earlier, 6) for earlier, later in itertools.pairwise(starts)]


def test_a_fast_stream_is_judged_once_per_min_verdict_interval_however_many_rows_come(tmp_path: Path) -> None:
    # Every 5 rows would be due, and 10 come every 10 ms: without the floor, the fast detectors would
    # judge a hundred times a second. A 50 ms pass rests 250 ms: passes start 300 ms apart.
    service = served(tmp_path, SETTINGS, {"fast": 0.05, "mmd": 0.0})
    starts = stream_passes(service, "fast", seconds=2.9)
    assert len(starts) == 10
    assert gaps(starts) == [0.3] * 9


def test_a_slow_fast_pass_rests_three_times_its_length_to_take_a_quarter_of_a_core(tmp_path: Path) -> None:
    service = served(tmp_path, SETTINGS, {"fast": 0.2, "mmd": 0.0})
    starts = stream_passes(service, "fast", seconds=3.9)
    assert gaps(starts) == [0.8] * 4  # 0.2 s judging, 0.6 s rest


def test_mmd_is_judged_at_most_once_per_evaluation_interval_and_at_a_fifth_of_a_core(tmp_path: Path) -> None:
    quick = served(tmp_path / "quick", SETTINGS, {"fast": 0.0, "mmd": 0.1})
    assert gaps(stream_passes(quick, "mmd", seconds=3.9)) == [0.8] * 4  # the interval bounds it
    slow = served(tmp_path / "slow", SETTINGS, {"fast": 0.0, "mmd": 0.5})
    assert gaps(stream_passes(slow, "mmd", seconds=9.9)) == [2.5] * 3  # 0.5 s judging, 2 s rest


def test_a_pass_with_nothing_due_judges_nothing_and_does_not_rest(tmp_path: Path) -> None:
    service = served(tmp_path, SETTINGS, {"fast": 0.05, "mmd": 0.5})
    feed(service, 0, 5)  # fewer than min_rows
    for kind in ("fast", "mmd"):
        assert EvaluationLoop(service, kind, clock=service.virtual_clock).pass_once() == 0.0  # type: ignore[arg-type]
    assert service.service("ml", "iris").versions["3"].verdicts == {}


@pytest.mark.parametrize(
    ("kind", "spent", "rest"),
    [("fast", 0.0, 0.3), ("fast", 0.05, 0.25), ("fast", 0.2, 0.6), ("mmd", 0.1, 0.7), ("mmd", 0.5, 2.0)],
)
def test_rest_after_a_pass_keeps_the_floor_and_the_duty_share(
    kind: LoopKind, spent: float, rest: float
) -> None:
    assert rest_after(kind, spent, SETTINGS) == pytest.approx(rest)
