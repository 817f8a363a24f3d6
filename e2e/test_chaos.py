"""The whole loop under a storm of faults (e2e/chaos.py): it still closes, and every invariant holds.

`make test` runs it at a small size (8 operator SIGKILLs and one of the standby in a handover, one fixed
seed); `make chaos` at full size (30). Each run prints its seed; MODELLOOP_CHAOS_SEED=<seed> replays its
schedule.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from e2e.chaos import (
    FailingOnceTrainingKubelet,
    Operator,
    Recorder,
    Storm,
    dump,
    schedule,
    seed_and_kills,
    summary,
    unexplained_unroutable,
    violations,
)
from e2e.harness import Cluster, wait_for
from e2e.loop import (
    LOOP_TEST_SECONDS,
    drift_loop,
    drift_policy,
    run_the_loop,
    runtimes_installed,
    serve_the_first_model,
    wait_status,
    wait_watching,
)

SMALL_KILLS = 8
SMALL_SEED = 20261206  # `make test` replays one schedule; `make chaos` draws a new seed each run
CHAMPION_MARGIN = 0.1  # how much worse than the champion the retrained version may be (see below)

pytestmark = pytest.mark.skipif(
    not runtimes_installed(),
    reason="the trainer, model server and detector runtimes are not installed (make setup)",
)


def test_the_schedule_is_replayable_from_its_seed() -> None:
    assert schedule(7, 30) == schedule(7, 30)
    assert schedule(7, 30) != schedule(8, 30)
    kinds = [f.kind for f in schedule(7, 30)]
    assert kinds.count("kill-operator") == 30
    assert {"kill-in-handover", "restart-apiserver", "prometheus-down", "restart-detector"} <= set(kinds)


@pytest.mark.timeout(LOOP_TEST_SECONDS)
def test_the_loop_closes_and_keeps_every_invariant_under_a_storm_of_faults(
    cluster: Cluster, namespace: str, kserve: Any, tmp_path: Path
) -> None:
    seed, kills = seed_and_kills(SMALL_KILLS, SMALL_SEED)
    faults = schedule(seed, kills)
    print(f"chaos seed {seed}: {kills} operator SIGKILLs and {len(faults) - kills} other faults", flush=True)
    origin = time.monotonic()
    timings: dict[str, float] | None = None
    with (
        drift_loop(
            cluster, namespace, tmp_path, kserve, training_kubelet=FailingOnceTrainingKubelet, operator=False
        ) as loop,
        Recorder(cluster, namespace, origin) as recorder,
    ):
        operator = Operator(loop)
        operator.start()
        storm = Storm(loop, operator, faults, origin)
        try:
            serve_the_first_model(loop)
            policy = drift_policy(loop)
            template = policy["spec"]["retrain"]["trainingRunTemplate"]
            template["backoffLimit"] = 1  # the failed pod is retried
            # The detector's restart empties its windows: when it falls just before the breach, the
            # retraining gets a few dozen recent rows, and the new version and the champion can differ by a
            # row or two of a 42-row hold-out (seen: 0.952 against 0.976, rejected, and the loop waited for
            # a promotion). This test is about the loop closing under faults; the comparison itself is
            # test_drift_loop's.
            template["validation"]["champion"]["margin"] = CHAMPION_MARGIN
            cluster.apply(policy, namespace)
            with loop.traffic() as (traffic, load):
                wait_watching(cluster, namespace)
                storm.start()  # with the shift: the faults fall on the loop as it runs
                timings = run_the_loop(loop, traffic)
                # The faults left once the loop has closed fall on a loop at rest: it must stay closed.
                storm.join(timeout=sum(f.pause for f in faults) + 60 * len(faults))
                assert not storm.is_alive(), "the storm did not finish"
                wait_status(
                    cluster,
                    "inferenceservices.modelloop.dev",
                    "iris",
                    namespace,
                    timeout=120,
                    phase="Promoted",
                    stableVersion=2,
                )
                responses, unroutable = load.responses(), load.unroutable_times()
        finally:
            storm.stopping.set()
            if storm.is_alive():
                storm.join(timeout=120)
            operator.stop()
            print(summary(seed, storm.injected, timings), flush=True)
        # Every write the recorder saw up to now, checked against the invariants.
        wait_for(lambda: recorder.seen, timeout=10, what="the recorder's history")
    dump(recorder, tmp_path / "history.jsonl")
    broken = violations(recorder, loop)
    assert storm.error is None, f"a fault could not be injected: {storm.trace}\n" + "\n".join(broken)
    assert [i.kind for i in storm.injected] == [f.kind for f in faults]
    assert operator.starts == kills + 2  # the first start, one per kill, one after the handover's
    assert operator.standby_starts == 2  # the first, and after the handover's kill
    failures = {key: count for key, count in responses.items() if key[1] != 200}
    assert not failures, f"requests failed: {failures}"
    # Every request found a serving pod, but a new version's first moments (the stand-ins' readiness: their
    # count is printed); one routed by weights just changed still finds the version that lost its traffic.
    print(f"requests that found a new version not answering yet: {len(unroutable)}", flush=True)
    assert not unexplained_unroutable(unroutable, origin)
    training = loop.training
    assert isinstance(training, FailingOnceTrainingKubelet) and training.failed, "no training pod failed"
    retries = [r for r in training.ran if r[3] == 0 and not r[0].startswith("iris-initial")]
    assert retries, f"the failed pod was not retried: {training.ran}"
    assert not broken, "\n".join([summary(seed, storm.injected, timings), *broken])
