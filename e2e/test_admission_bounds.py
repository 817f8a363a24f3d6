"""The admission policy that bounds free-form values (manifests/admission/free-form-bounds.yaml), at the
real API server, and the operator's models that say the same.

A CRD's CEL rules cannot see untyped values (hyperparameters, sweep values), so a TrainingRun with a
100 x 100 x 100 grid or a megabyte-long parameter would pass the CRD alone. The ValidatingAdmissionPolicy
sees the whole object: each case here is a manifest that both the API server and the model refuse, the
API server with the policy's message naming the field, and a neighbour that both accept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.harness import Cluster
from e2e.test_cel_parity import (
    LOG_RANGE,
    SWEEP,
    TRAINING_RUN_SPEC,
    dry_run_create,
    manifest,
    model_error,
    training_run,
)


@dataclass(frozen=True)
class Bound:
    name: str
    message: str
    """What the API server says; the model refuses too (in its words where it has its own)."""
    valid: dict[str, Any]
    invalid: dict[str, Any]


GRID = "spec.sweep.parameters: a Grid sweep may have at most 1000 combinations"
BOUNDS = [
    Bound(
        "grid",
        GRID,
        training_run("grid-1000", sweep={**SWEEP, "parameters": {k: list(range(10)) for k in "abc"}}),
        training_run("grid-million", sweep={**SWEEP, "parameters": {k: list(range(100)) for k in "abc"}}),
    ),
    Bound(
        "grid-of-ranges",
        GRID,
        training_run(
            "grid-ranges",
            sweep={**SWEEP, "space": {"lr": {"type": "float", "min": 0.0, "max": 1.0, "step": 0.01}}},
        ),
        training_run(
            "grid-fine-ranges",
            sweep={**SWEEP, "space": {"lr": {"type": "float", "min": 0.0, "max": 1.0, "step": 0.001}}},
        ),
    ),
    Bound(
        "grid-bounded-by-max-trials",
        "or 1000000 with spec.sweep.maxTrials",
        training_run(
            "grid-max-trials",
            sweep={**SWEEP, "maxTrials": 10, "parameters": {k: list(range(100)) for k in "abc"}},
        ),
        training_run(
            "grid-too-big",
            sweep={**SWEEP, "maxTrials": 10, "parameters": {k: list(range(100)) for k in "abcd"}},
        ),
    ),
    Bound(
        "param-string",
        "spec.params: a string value has at most 1024 characters",
        training_run("short-param", params={"estimator": "x" * 1024}),
        training_run("long-param", params={"estimator": "x" * 1025}),
    ),
    Bound(
        "param-scalar",
        "spec.params: every value is a string, a number or a boolean",
        training_run("scalar-params", params={"lr": 0.1, "deep": True, "estimator": "MLP"}),
        training_run("nested-param", params={"lr": {"value": 0.1}}),
    ),
    Bound(
        "sweep-values",
        "spec.sweep: every value is a string (at most 128 characters), a number or a boolean",
        training_run("short-values", sweep={**SWEEP, "parameters": {"kernel": ["rbf", "x" * 128]}}),
        training_run("long-values", sweep={**SWEEP, "parameters": {"kernel": ["rbf", "x" * 129]}}),
    ),
    Bound(
        "varies-something",
        "spec.sweep needs parameters (lists) or space (ranges)",
        training_run(
            "space-only",
            sweep={
                **SWEEP,
                "parameters": {},
                "space": {"lr": LOG_RANGE},
                "strategy": "Random",
                "maxTrials": 2,
            },
        ),
        training_run("nothing-to-vary", sweep={"objective": {"metric": "accuracy"}}),
    ),
    Bound(
        "sixteen",
        "spec.sweep varies at most 16 parameters (parameters and space together)",
        training_run(
            "sixteen",
            sweep={
                **SWEEP,
                "maxTrials": 1,
                "parameters": {f"p{i}": [1] for i in range(8)},
                "space": {f"r{i}": {"type": "categorical", "values": [1]} for i in range(8)},
            },
        ),
        training_run(
            "seventeen",
            sweep={
                **SWEEP,
                "maxTrials": 1,
                "parameters": {f"p{i}": [1] for i in range(9)},
                "space": {f"r{i}": {"type": "categorical", "values": [1]} for i in range(8)},
            },
        ),
    ),
    Bound(
        "apart",
        "spec.sweep.space names a parameter that spec.sweep.parameters lists too",
        training_run(
            "apart", sweep={**SWEEP, "space": {"lr": {**LOG_RANGE}}, "strategy": "Random", "maxTrials": 2}
        ),
        training_run(
            "twice", sweep={**SWEEP, "space": {"max_depth": LOG_RANGE}, "strategy": "Random", "maxTrials": 2}
        ),
    ),
    Bound(
        "categorical",
        "spec.sweep.space: a categorical range needs values, and only a categorical range takes them",
        training_run(
            "with-values",
            sweep={
                **SWEEP,
                "strategy": "Random",
                "maxTrials": 2,
                "space": {"act": {"type": "categorical", "values": ["relu"]}},
            },
        ),
        training_run(
            "without-values",
            sweep={**SWEEP, "strategy": "Random", "maxTrials": 2, "space": {"act": {"type": "categorical"}}},
        ),
    ),
    Bound(
        "distributed-estimator",
        "spec.params.estimator: RandomForestClassifier cannot train across nodes (spec.distributed); only "
        "TorchMLP, TorchMLPClassifier, TorchMLPRegressor do",
        training_run("ddp", params={"estimator": "TorchMLPClassifier"}, distributed={"nodes": 4}),
        training_run("ddp-forest", distributed={"nodes": 4}),
    ),
    Bound(
        "distributed-sweep-estimator",
        "spec.sweep.estimator: SVC cannot train across nodes (spec.distributed)",
        training_run(
            "ddp-sweep",
            params={"estimator": "RandomForestClassifier"},
            sweep={**SWEEP, "parameters": {"estimator": ["TorchMLP", "TorchMLPClassifier"]}},
            distributed={"nodes": 2},
        ),
        training_run(
            "ddp-sweep-svc",
            sweep={**SWEEP, "parameters": {"estimator": ["TorchMLP", "SVC"]}},
            distributed={"nodes": 2},
        ),
    ),
]


def in_drift_policy(run: dict[str, Any]) -> dict[str, Any]:
    """The TrainingRun as a DriftPolicy's retraining template: the policy bounds it there too."""
    spec = {
        "target": {"inferenceService": "iris"},
        "metrics": [{"name": "drift", "query": "max(drift)", "threshold": 0.3, "comparison": "GreaterThan"}],
        "retrain": {"trainingRunTemplate": copy.deepcopy(run["spec"])},
    }
    return manifest("DriftPolicy", run["metadata"]["name"], spec)


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.name for b in BOUNDS])
def test_the_api_server_and_the_model_refuse_what_the_policy_bounds(
    cluster: Cluster, namespace: str, bound: Bound
) -> None:
    code, error = dry_run_create(cluster, namespace, bound.valid)
    assert code == 0, f"the API server refused {bound.valid['metadata']['name']}: {error}"
    assert model_error(bound.valid) is None

    code, error = dry_run_create(cluster, namespace, bound.invalid)
    assert code != 0, f"the API server admitted {bound.invalid['metadata']['name']}"
    assert "modelloop-free-form-bounds" in error and bound.message in error, error
    assert model_error(bound.invalid) is not None


@pytest.mark.parametrize("bound", BOUNDS[:1] + BOUNDS[3:5], ids=[b.name for b in BOUNDS[:1] + BOUNDS[3:5]])
def test_a_drift_policys_template_is_bounded_alike(cluster: Cluster, namespace: str, bound: Bound) -> None:
    code, error = dry_run_create(cluster, namespace, in_drift_policy(bound.valid))
    assert code == 0, error
    code, error = dry_run_create(cluster, namespace, in_drift_policy(bound.invalid))
    assert code != 0
    assert bound.message.replace("spec.", "spec.retrain.trainingRunTemplate.", 1) in error, error


def test_a_run_without_a_sweep_or_params_is_untouched(cluster: Cluster, namespace: str) -> None:
    spec = {k: v for k, v in TRAINING_RUN_SPEC.items() if k != "params"}
    code, error = dry_run_create(cluster, namespace, manifest("TrainingRun", "plain", spec))
    assert code == 0, error
