"""Drift judged before the labels arrive: the detector estimates the served model's accuracy from the class
probabilities the model server returns (calibrated on the trainer's held-out rows), and a DriftPolicy acts
on that estimate. No label is ever posted in these tests.

- A shift that hurts the model (traffic moves to flowers between versicolor and virginica, where the model
  can only guess) lowers the estimate below the policy's threshold, and the policy starts a retraining
  whose evidence says the value was estimated, with its band.
- A shift of a feature the model never uses (a depth-2 decision tree splits on the petals only; the sepal
  width moves) is input drift the detector sees, but the estimate does not move, and nothing starts.

Every part is real but the pods (as in e2e/test_drift_loop.py: the operator, KServe's controller and
agent, the model server, the detector, Prometheus and the trainer run here; e2e/loop.py says how).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Cluster, wait_for
from e2e.loop import (
    DRIFT_QUERY,
    LOOP_TEST_SECONDS,
    POLICY,
    SELECT,
    SERVICE,
    Loop,
    drift_loop,
    inference_service,
    iris_rows,
    retraining_runs,
    runtimes_installed,
    status_of,
    training_run,
    training_template,
    wait_status,
    wait_watching,
)
from e2e.traffic import LoadGenerator, httproute_weights

pytestmark = pytest.mark.skipif(
    not runtimes_installed(),
    reason="the trainer, model server and detector runtimes are not installed (make setup)",
)

ESTIMATE = f'min(modelloop_estimated_performance{{{SELECT},metric="accuracy"}})'
LOWER = f'min(modelloop_estimated_performance_lower{{{SELECT},metric="accuracy"}})'
UPPER = f'min(modelloop_estimated_performance_upper{{{SELECT},metric="accuracy"}})'
THRESHOLD = 0.9
VERSICOLOR, VIRGINICA = 1, 2
SEPAL_WIDTH = 1


@dataclass
class UnlabelledTraffic:
    """Single-row requests through KServe's agent, each with its ``Ce-Id``; labels are never sent. The
    rows come from ``rows`` until ``shift`` is set, then from it."""

    rows: list[list[float]]
    shift: Any = None
    seed: int = 0
    sent: int = 0
    _random: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def body(self, _pod: str) -> Mapping[str, Any]:
        with self._lock:
            row = self.shift(self._random) if self.shift is not None else self._random.choice(self.rows)
            self.sent += 1
        return _Body({"instances": [row]}, str(uuid.uuid4()))

    @staticmethod
    def headers(body: Mapping[str, Any]) -> Mapping[str, str]:
        return {"Ce-Id": body.request_id} if isinstance(body, _Body) else {}


class _Body(dict[str, Any]):
    def __init__(self, body: Mapping[str, Any], request_id: str) -> None:
        super().__init__(body)
        self.request_id = request_id


def between_versicolor_and_virginica(rows: list[tuple[list[float], int]]) -> Any:
    """Flowers halfway between a versicolor and a virginica: where no model of iris can tell them apart.
    Their labels would be a coin toss, so the model's accuracy on them falls whatever it does."""
    versicolor = [features for features, species in rows if species == VERSICOLOR]
    virginica = [features for features, species in rows if species == VIRGINICA]

    def draw(rng: random.Random) -> list[float]:
        left, right, mix = rng.choice(versicolor), rng.choice(virginica), rng.uniform(0.4, 0.6)
        return [round(a * (1 - mix) + b * mix, 2) for a, b in zip(left, right, strict=True)]

    return draw


def wider_sepals(rows: list[tuple[list[float], int]]) -> Any:
    """The same flowers, their sepal width read 1.5 cm too wide: a feature the depth-2 tree never uses."""
    features = [list(row) for row, _ in rows]

    def draw(rng: random.Random) -> list[float]:
        row = list(rng.choice(features))
        row[SEPAL_WIDTH] = round(row[SEPAL_WIDTH] + 1.5, 2)
        return row

    return draw


@contextmanager
def unlabelled_traffic(loop: Loop, rate_per_s: float = 30) -> Iterator[UnlabelledTraffic]:
    traffic = UnlabelledTraffic([features for features, _ in iris_rows()])
    route = httproute_weights(loop.cluster, loop.namespace, f"{SERVICE}-traffic")
    with LoadGenerator(loop.serving, route, rate_per_s, traffic.body, headers=traffic.headers) as load:
        yield traffic
    assert all(code == 200 for (_, code) in load.responses()), load.responses()


def estimate_policy(loop: Loop, **params: Any) -> dict[str, Any]:
    """A policy on the estimated accuracy alone (and the input drift, shown but never breaching)."""
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "target": {"inferenceService": SERVICE},
            "detector": {"url": loop.detector.url},
            "metrics": [
                {
                    "name": "estimated-accuracy",
                    "query": ESTIMATE,
                    "threshold": THRESHOLD,
                    "comparison": "LessThan",
                    "estimate": {"lowerQuery": LOWER, "upperQuery": UPPER},
                },
                # Watched, never acted on: a threshold the 0/1 verdict cannot reach.
                {
                    "name": "input-drift",
                    "query": DRIFT_QUERY,
                    "threshold": 2,
                    "comparison": "GreaterThanOrEqual",
                },
            ],
            "window": "4s",
            "cooldown": "1h",
            "evaluationInterval": "1s",
            "retrain": {"labels": {}, "trainingRunTemplate": training_template(loop.artifacts, **params)},
        },
    }


def serve(loop: Loop, **params: Any) -> None:
    """Train iris-v1 with the real trainer (``params``: its estimator) and serve it behind KServe's agent."""
    cluster, namespace = loop.cluster, loop.namespace
    cluster.apply(training_run("iris-initial", loop.artifacts, **params), namespace)
    cluster.apply(inference_service(loop.detector), namespace)
    wait_status(
        cluster,
        "inferenceservices.modelloop.dev",
        SERVICE,
        namespace,
        timeout=240,
        stableVersion=1,
        phase="Stable",
    )
    loop.serving.wait_serving(1)


def detector_version(loop: Loop) -> dict[str, Any]:
    """The detector's state of the served version (its estimates and verdicts)."""
    state = loop.detector.state(loop.namespace)
    return dict(state["versions"]["1"])


@pytest.mark.timeout(LOOP_TEST_SECONDS)
def test_a_harmful_shift_is_seen_in_the_estimate_and_retrains_before_any_label(
    cluster: Cluster, namespace: str, kserve: Any, tmp_path: Path
) -> None:
    with drift_loop(cluster, namespace, tmp_path, kserve) as loop:
        serve(loop)
        cluster.apply(estimate_policy(loop), namespace)
        with unlabelled_traffic(loop) as traffic:
            watching = wait_watching(cluster, namespace)
            before = float(watching["evidence"]["estimated-accuracy"])
            assert before >= THRESHOLD, watching["evidence"]
            traffic.shift = between_versicolor_and_virginica(iris_rows())
            runs = wait_for(
                lambda: retraining_runs(cluster, namespace), timeout=180, what="the retraining run"
            )
        state = detector_version(loop)

    assert len(runs) == 1
    evidence = runs[0]["spec"]["triggeredBy"]["evidence"]
    text = evidence["estimated-accuracy"]
    assert "estimated" in text and "band" in text, evidence
    value = float(text.split()[0])
    assert value < THRESHOLD < before
    # Not one label reached the detector: the retraining came from the estimate alone.
    assert state["feedback"]["labels"] == 0 and state["labelledRows"] == 0, state
    assert state["estimation"]["error"] is None and state["estimation"]["realised"] is None, state
    assert state["estimation"]["estimates"], state


@pytest.mark.timeout(LOOP_TEST_SECONDS)
def test_a_shift_of_a_feature_the_model_ignores_moves_input_drift_not_the_estimate(
    cluster: Cluster, namespace: str, kserve: Any, tmp_path: Path
) -> None:
    tree = {"estimator": "DecisionTreeClassifier", "max_depth": 2}
    with drift_loop(cluster, namespace, tmp_path, kserve) as loop:
        serve(loop, **tree)
        cluster.apply(estimate_policy(loop, **tree), namespace)
        with unlabelled_traffic(loop) as traffic:
            watching = wait_watching(cluster, namespace)
            before = float(watching["evidence"]["estimated-accuracy"])
            traffic.shift = wider_sepals(iris_rows())
            # The detector sees the input drift (KS on the sepal width)...
            wait_for(
                lambda: watching_with(cluster, namespace, "input-drift", "1"),
                timeout=120,
                what="the policy seeing the input drift",
            )
            # ... and the policy keeps evaluating past its window with the estimate where it was.
            seen = status_of(cluster, "driftpolicy", POLICY, namespace)["lastEvaluationTime"]
            after = wait_for(
                lambda: evaluated_since(cluster, namespace, seen, seconds=8),
                timeout=60,
                what="the policy evaluating for twice its window",
            )
        runs = retraining_runs(cluster, namespace)

    assert runs == [], "a shift the model ignores started a retraining"
    assert after["lastResult"] == "Watching", after
    assert abs(float(after["evidence"]["estimated-accuracy"]) - before) < 0.05, (before, after["evidence"])


def watching_with(cluster: Cluster, namespace: str, metric: str, value: str) -> dict[str, Any] | None:
    status = status_of(cluster, "driftpolicy", POLICY, namespace)
    return status if (status.get("evidence") or {}).get(metric) == value else None


def evaluated_since(cluster: Cluster, namespace: str, since: str, *, seconds: float) -> dict[str, Any] | None:
    from datetime import datetime

    status = status_of(cluster, "driftpolicy", POLICY, namespace)
    last = status.get("lastEvaluationTime")
    if not last:
        return None
    parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return status if (parse(last) - parse(since)).total_seconds() >= seconds else None
