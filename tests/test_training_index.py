"""What the operator keeps of a TrainingRun in memory: its spec as compact text, none of an oversized one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modelloop.controllers.trainingrun import MAX_SPEC_BYTES, OVERSIZED, training_runs, with_spec


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ml", "uid": "u", "resourceVersion": "1"},
        "spec": spec,
        "status": {"phase": "Running"},
    }


def indexed(spec: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = asyncio.run(training_runs(namespace="ml", name="r", body=body(spec)))
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
