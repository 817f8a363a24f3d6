"""What the operator keeps of a TrainingRun in memory: its spec as compact text, none of an oversized one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modelloop.controllers.trainingrun import (
    MAX_SPEC_BYTES,
    OVERSIZED,
    TRIALS_JSON,
    compact_run,
    training_runs,
    with_spec,
)
from modelloop.machinery.status import ObjectMemory


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


def test_what_the_status_writer_remembers_of_a_run_is_in_the_index_form_and_reads_back_whole() -> None:
    trials = [{"index": i, "phase": "Succeeded", "params": {"lr": 0.1 * i}} for i in range(3)]
    entry = indexed({"image": "t:1"}, {"phase": "Running", "trials": trials})
    run = with_spec(entry)
    memory = ObjectMemory(compact_run)

    memory.remember({**run, "metadata": {**run["metadata"], "resourceVersion": "2"}})
    remembered = memory.view(entry)  # the index still shows resourceVersion 1: the newer copy wins

    assert remembered["metadata"]["resourceVersion"] == "2"
    assert "spec" not in remembered and "trials" not in remembered["status"]
    assert isinstance(remembered[TRIALS_JSON], str)
    assert with_spec(remembered)["spec"] == run["spec"]
    assert with_spec(remembered)["status"] == run["status"]
