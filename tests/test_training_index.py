"""What the operator keeps of a TrainingRun in memory: its spec as compact text, none of an oversized one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modelloop.controllers.trainingrun import (
    MAX_SPEC_BYTES,
    OVERSIZED,
    TRIALS_JSON,
    training_runs,
    with_spec,
)


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ml", "uid": "u", "resourceVersion": "1"},
        "spec": spec,
        "status": status or {"phase": "Running"},
    }


def indexed(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = asyncio.run(training_runs(namespace="ml", name="r", body=body(spec, status)))
    return entry[("ml", "r")]


def test_the_index_keeps_the_spec_as_text_and_gives_it_back_whole() -> None:
    spec = {"image": "t:1", "params": {"lr": 0.1}, "affinity": {"nodeAffinity": {}}}
    entry = indexed(spec)
    assert "spec" not in entry
    assert with_spec(entry)["spec"] == spec
    assert with_spec(entry)["status"] == {"phase": "Running"}


def test_a_spec_over_the_bound_is_not_kept_only_its_size() -> None:
    entry = indexed({"params": {"blob": "x" * MAX_SPEC_BYTES}})
    assert entry[OVERSIZED] > MAX_SPEC_BYTES
    assert with_spec(entry)["spec"] == {}
    assert len(json.dumps(entry)) < 1000


def test_a_sweeps_trials_are_kept_as_text_and_the_rest_of_status_as_it_is() -> None:
    trials = [
        {"index": i, "phase": "Succeeded", "params": {"lr": 0.1 * i}, "metrics": {"a": 0.9}} for i in range(3)
    ]
    status = {"phase": "Running", "bestTrial": 0, "trials": trials}
    entry = indexed({"image": "t:1"}, status)
    # Other readers (the phase metrics, a DriftPolicy's last run) read status as it is, without trials.
    assert entry["status"] == {"phase": "Running", "bestTrial": 0}
    assert isinstance(entry[TRIALS_JSON], str)
    assert with_spec(entry)["status"] == status
