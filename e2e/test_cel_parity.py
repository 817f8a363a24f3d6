"""CEL parity: every CEL rule of our CRDs says the same at the API server as in the pydantic models.

The API server enforces the rules at admission; the operator checks every spec once more with the
pydantic models (``modelloop.reasons``). Each rule has cases here, a manifest that keeps it and one that
breaks it, and both checks must accept the first and refuse the second with the rule's message. A rule
without cases fails the suite, so a new rule cannot reach the CRDs without its pydantic twin.

Transition rules (those that read ``oldSelf``, such as an immutable spec) compare an object with its
previous version. A pydantic model validates one object and cannot see the previous one, so those are
checked at the API server alone: create, then apply a change.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest

from e2e.harness import Cluster
from modelloop.api import API_VERSION, KINDS, render_crds
from modelloop.reasons import describe_validation_error

Manifest = Mapping[str, Any]
RuleId = tuple[str, str, str]
"""A CEL rule as (kind, the schema node it sits on, its message), e.g.
``("TrainingRun", ".spec.tolerations[]", "operator must be Exists when key is empty")``."""

SPEC_MODELS = {info.kind: info.spec_model for info in KINDS}


@dataclass(frozen=True)
class Case:
    """One CEL rule, a manifest that keeps it and one that breaks it.

    For a transition rule, ``before`` is the object as created, and ``valid`` and ``invalid`` are
    changes applied to it.
    """

    kind: str
    at: str
    """The schema node the rule sits on, e.g. ``.spec.tolerations[]``; ``""`` for the whole object."""
    message: str
    """The rule's message: the API server and the model must both say it."""
    field: str
    """The field the API server names when it refuses ``invalid``, e.g. ``spec.tolerations[0].operator``;
    ``<nil>`` for a rule on the whole object, which names none."""
    valid: Manifest
    invalid: Manifest
    before: Manifest | None = None

    @property
    def rule(self) -> RuleId:
        return (self.kind, self.at, self.message)

    @property
    def id(self) -> str:
        return f"{self.kind}{self.at or '/'}-{self.invalid['metadata']['name']}"


def manifest(kind: str, name: str, spec: Mapping[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, **metadata}, "spec": spec}


TRAINING_RUN_SPEC: dict[str, Any] = {
    "image": "ghcr.io/modelloop/trainer:0.1.0",
    "params": {"estimator": "RandomForestClassifier", "n_estimators": 10},
    "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
    "output": {"modelName": "iris"},
}
SWEEP: dict[str, Any] = {
    "parameters": {"max_depth": [2, 4, 8]},
    "objective": {"metric": "accuracy"},
}
FLOAT_RANGE: dict[str, Any] = {"type": "float", "min": 0.0, "max": 1.0}
LOG_RANGE: dict[str, Any] = {"type": "float", "min": 1e-4, "max": 1.0, "log": True}
# The rules of one range: (a name, the message, what the API server appends to the field, valid, invalid).
RANGE_CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("bounds", "a float or int range needs min and max", "", FLOAT_RANGE, {"type": "float", "min": 0.0}),
    (
        "categorical",
        "a categorical range takes only values (no min, max, step or log)",
        "",
        {"type": "categorical", "values": ["relu", "tanh"]},
        {"type": "categorical", "values": ["relu"], "min": 1.0},
    ),
    ("order", "min must not exceed max", ".min", FLOAT_RANGE, {**FLOAT_RANGE, "min": 2.0}),
    ("log", "a log range needs min > 0", ".min", LOG_RANGE, {**LOG_RANGE, "min": 0.0}),
    ("log-step", "a log range takes no step", ".step", LOG_RANGE, {**LOG_RANGE, "step": 0.1}),
    (
        "int",
        "an int range's min, max and step are integers",
        "",
        {"type": "int", "min": 1, "max": 9, "step": 2},
        {"type": "int", "min": 1, "max": 9, "step": 1.5},
    ),
]
MODEL_VERSION_SPEC: dict[str, Any] = {
    "modelName": "iris",
    "version": 3,
    "artifact": {"uri": "s3://models/iris/3/model.joblib"},
    "framework": {"name": "sklearn"},
    "metrics": {"accuracy": 0.95},
}
ANALYSIS_METRIC: dict[str, Any] = {"name": "error-rate", "query": "sum(rate(errors[5m]))"}


def training_run(name: str, **spec: Any) -> dict[str, Any]:
    """A TrainingRun: the base spec with ``spec``'s top-level fields replaced."""
    return manifest("TrainingRun", name, {**copy.deepcopy(TRAINING_RUN_SPEC), **spec})


def model_version(name: str, **spec: Any) -> dict[str, Any]:
    return manifest("ModelVersion", name, {**copy.deepcopy(MODEL_VERSION_SPEC), **spec})


def inference_service(name: str, **spec: Any) -> dict[str, Any]:
    return manifest("InferenceService", name, {"model": {"name": "iris"}, **spec})


def analysis(**metric: Any) -> dict[str, Any]:
    """A canary rollout whose analysis has one metric: ANALYSIS_METRIC with ``metric``'s bounds."""
    return {"steps": [50, 100], "analysis": {"metrics": [{**ANALYSIS_METRIC, **metric}]}}


TEMPLATE = ".spec.retrain.trainingRunTemplate"
DETECTOR = {"url": "http://drift-detector.ml:8080"}
RECENT = {"uriPrefix": "s3://datasets/recent"}


def drift_policy(name: str, recent_data: Any = None, **spec: Any) -> dict[str, Any]:
    """A DriftPolicy of the TrainingRun base spec, with ``spec``'s fields and recent data in retrain."""
    retrain: dict[str, Any] = {"trainingRunTemplate": copy.deepcopy(TRAINING_RUN_SPEC)}
    if recent_data is not None:
        retrain["recentData"] = recent_data
    base = {
        "target": {"inferenceService": "iris"},
        "metrics": [
            {"name": "feature-drift", "query": "max(drift)", "threshold": 0.3, "comparison": "GreaterThan"}
        ],
        "retrain": retrain,
    }
    return manifest("DriftPolicy", name, {**base, **spec})


def in_drift_policy_template(case: Case) -> Case:
    """The same TrainingRun case, one level down: a DriftPolicy embeds a TrainingRunSpec as its
    retraining template, and the template carries the TrainingRun's spec rules."""

    def drift_policy(run: Manifest) -> dict[str, Any]:
        spec = {
            "target": {"inferenceService": "iris"},
            "metrics": [
                {
                    "name": "feature-drift",
                    "query": "max(drift)",
                    "threshold": 0.3,
                    "comparison": "GreaterThan",
                }
            ],
            "retrain": {"trainingRunTemplate": copy.deepcopy(run["spec"])},
        }
        return manifest("DriftPolicy", run["metadata"]["name"], spec)

    return Case(
        kind="DriftPolicy",
        at=TEMPLATE + case.at.removeprefix(".spec"),
        message=case.message,
        field=TEMPLATE.removeprefix(".") + case.field.removeprefix("spec"),
        valid=drift_policy(case.valid),
        invalid=drift_policy(case.invalid),
    )


ANALYSIS_BOUNDED = {**ANALYSIS_METRIC, "max": 1}
# The bounded durations: (a name, the field under .spec, its least and most, a value out of bounds, the
# spec's fields with a value there).
DRIFT_POLICY_DURATIONS: list[tuple[str, str, str, str, str, Any]] = [
    ("interval", "evaluationInterval", "1s", "24h", "0s", lambda v: {"evaluationInterval": v}),
    ("period", "budget.period", "1m", "8760h", "1ms", lambda v: {"budget": {"period": v}}),
    ("window", "window", "0s", "720h", "721h", lambda v: {"window": v}),
    ("cooldown", "cooldown", "0s", "8760h", "8761h", lambda v: {"cooldown": v}),
]
INFERENCE_SERVICE_DURATIONS: list[tuple[str, str, str, str, str, Any]] = [
    (
        "analysis-interval",
        "rollout.analysis.interval",
        "1s",
        "24h",
        "500ms",
        lambda v: {"steps": [50, 100], "analysis": {"interval": v, "metrics": [ANALYSIS_BOUNDED]}},
    ),
    ("step", "rollout.stepInterval", "1s", "168h", "0s", lambda v: {"steps": [100], "stepInterval": v}),
    (
        "scale-down-delay",
        "rollout.scaleDownDelay",
        "0s",
        "1h",
        "61m",
        lambda v: {"steps": [100], "scaleDownDelay": v},
    ),
]

TRAINING_RUN_CASES = [
    Case(
        kind="TrainingRun",
        at=".spec.tolerations[]",
        message="operator must be Exists when key is empty",
        field="spec.tolerations[0].operator",
        valid=training_run("any-taint", tolerations=[{"operator": "Exists"}]),
        invalid=training_run("equal-without-key", tolerations=[{"operator": "Equal", "value": "present"}]),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.tolerations[]",
        message="value must be empty when operator is Exists",
        field="spec.tolerations[0].value",
        valid=training_run("exists", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
        invalid=training_run(
            "exists-with-value",
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "value": "present"}],
        ),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.tolerations[]",
        message="tolerationSeconds requires effect NoExecute",
        field="spec.tolerations[0].tolerationSeconds",
        valid=training_run(
            "no-execute",
            tolerations=[
                {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
            ],
        ),
        invalid=training_run(
            "no-schedule-with-seconds",
            tolerations=[
                {"key": "spot", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}
            ],
        ),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.resources",
        message="spec.resources.gpuProduct requires spec.resources.gpus > 0",
        field="spec.resources.gpuProduct",
        valid=training_run("a100", resources={"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}),
        invalid=training_run("a100-no-gpus", resources={"gpus": 0, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.sweep",
        message="spec.sweep.parallelism must not exceed spec.sweep.maxTrials",
        field="spec.sweep.parallelism",
        valid=training_run("all-at-once", sweep={**SWEEP, "maxTrials": 3, "parallelism": 3}),
        invalid=training_run("more-than-trials", sweep={**SWEEP, "maxTrials": 3, "parallelism": 4}),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.sweep",
        message="spec.sweep.maxTrials is required unless spec.sweep.strategy is Grid",
        field="spec.sweep.maxTrials",
        valid=training_run("bayesian", sweep={**SWEEP, "strategy": "Bayesian", "maxTrials": 2}),
        invalid=training_run("random-unbounded", sweep={**SWEEP, "strategy": "Random"}),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.sweep",
        message="spec.sweep.space: a Grid sweep needs a step for every float range",
        field="spec.sweep.space",
        valid=training_run("stepped", sweep={**SWEEP, "space": {"lr": {**FLOAT_RANGE, "step": 0.25}}}),
        invalid=training_run("continuous-grid", sweep={**SWEEP, "space": {"lr": FLOAT_RANGE}}),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.sweep",
        message="spec.sweep.maxTrials is at most 300 for CMAES",
        field="spec.sweep.maxTrials",
        valid=training_run(
            "cmaes", sweep={**SWEEP, "strategy": "CMAES", "maxTrials": 300, "space": {"lr": LOG_RANGE}}
        ),
        invalid=training_run(
            "cmaes-long", sweep={**SWEEP, "strategy": "CMAES", "maxTrials": 301, "space": {"lr": LOG_RANGE}}
        ),
    ),
    Case(
        kind="TrainingRun",
        at=".spec.sweep",
        message="spec.sweep.earlyStopping.minTrials must be below spec.sweep.maxTrials",
        field="spec.sweep.earlyStopping.minTrials",
        valid=training_run("stops", sweep={**SWEEP, "maxTrials": 4, "earlyStopping": {"rule": "Median"}}),
        invalid=training_run(
            "never-stops",
            sweep={**SWEEP, "maxTrials": 3, "earlyStopping": {"rule": "Median", "minTrials": 3}},
        ),
    ),
    *(
        Case(
            kind="TrainingRun",
            at=".spec.sweep.space{}",
            message=message,
            field=f"spec.sweep.space[lr]{suffix}",
            valid=training_run(
                f"range-{name}", sweep={**SWEEP, "strategy": "Random", "maxTrials": 2, "space": {"lr": valid}}
            ),
            invalid=training_run(
                f"range-{name}-bad",
                sweep={**SWEEP, "strategy": "Random", "maxTrials": 2, "space": {"lr": invalid}},
            ),
        )
        for name, message, suffix, valid, invalid in RANGE_CASES
    ),
    *(
        Case(
            kind="TrainingRun",
            at=".spec",
            message=f"spec.distributed.procsPerNode: {per} needs spec.resources.{needed}",
            field="spec.distributed.procsPerNode",
            valid=training_run(
                f"per-{per}",
                params={"estimator": "TorchMLP"},
                distributed={"nodes": 2, "procsPerNode": per},
                resources=resources,
            ),
            invalid=training_run(
                f"per-{per}-without",
                params={"estimator": "TorchMLP"},
                distributed={"nodes": 2, "procsPerNode": per},
            ),
        )
        for per, needed, resources in (("gpu", "gpus > 0", {"gpus": 2}), ("cpu", "cpu", {"cpu": "4"}))
    ),
]

CASES = [
    *TRAINING_RUN_CASES,
    Case(
        kind="TrainingRun",
        at=".spec",
        message="spec is immutable: create a new TrainingRun instead",
        field="spec",
        before=training_run("iris-rf"),
        valid=training_run("iris-rf") | {"metadata": {"name": "iris-rf", "labels": {"team": "vision"}}},
        invalid=training_run("iris-rf", params={"estimator": "RandomForestClassifier", "n_estimators": 500}),
    ),
    Case(
        kind="ModelVersion",
        at="",
        message="metadata.name must be <spec.modelName>-v<spec.version>, e.g. iris-v3",
        field="<nil>",
        valid=model_version("iris-v3"),
        invalid=model_version("iris-v4"),
    ),
    Case(
        kind="ModelVersion",
        at="",
        message="metadata.name must be <spec.modelName>-v<spec.version>, e.g. iris-v3",
        field="<nil>",
        valid=model_version("iris-v30", version=30),
        invalid=model_version("iris-v030", version=30),
    ),
    Case(
        kind="ModelVersion",
        at=".spec",
        message="spec is immutable: register a new ModelVersion instead",
        field="spec",
        before=model_version("iris-v3"),
        valid=model_version("iris-v3") | {"metadata": {"name": "iris-v3", "labels": {"team": "vision"}}},
        invalid=model_version("iris-v3", metrics={"accuracy": 0.99}),
    ),
    Case(
        kind="ModelPolicy",
        at="",
        message="metadata.name must be the model's name (a DNS label, e.g. iris)",
        field="<nil>",
        valid=manifest("ModelPolicy", "iris", {}),
        invalid=manifest("ModelPolicy", "iris.v2", {}),
    ),
    Case(
        kind="ModelPolicy",
        at="",
        message="metadata.name must be the model's name (a DNS label, e.g. iris)",
        field="<nil>",
        valid=manifest("ModelPolicy", "model-name-of-63-characters-is-as-long-as-a-dns-label-may-be-ok", {}),
        invalid=manifest(
            "ModelPolicy", "a-model-name-of-64-characters-is-one-longer-than-a-dns-label-may", {}
        ),
    ),
    Case(
        kind="InferenceService",
        at=".spec.predictor",
        message="spec.predictor.minReplicas must not exceed spec.predictor.maxReplicas",
        field="spec.predictor.minReplicas",
        valid=inference_service("fixed", predictor={"minReplicas": 3, "maxReplicas": 3}),
        invalid=inference_service("inverted", predictor={"minReplicas": 4, "maxReplicas": 3}),
    ),
    Case(
        kind="InferenceService",
        at=".spec.rollout.steps",
        message="spec.rollout.steps must be non-empty and end at 100",
        field="spec.rollout.steps",
        valid=inference_service("ends-at-100", rollout={"steps": [10, 50, 100]}),
        invalid=inference_service("stops-at-50", rollout={"steps": [10, 50]}),
    ),
    Case(
        kind="InferenceService",
        at=".spec.rollout.steps",
        message="spec.rollout.steps must be strictly increasing",
        field="spec.rollout.steps",
        valid=inference_service("increasing", rollout={"steps": [10, 25, 100]}),
        invalid=inference_service("repeated", rollout={"steps": [10, 10, 100]}),
    ),
    Case(
        kind="InferenceService",
        at=".spec.rollout.steps",
        message="spec.rollout.steps must be strictly increasing",
        field="spec.rollout.steps",
        valid=inference_service("one-step", rollout={"steps": [100]}),
        invalid=inference_service("decreasing", rollout={"steps": [50, 25, 100]}),
    ),
    Case(
        kind="InferenceService",
        at=".spec.rollout.analysis.metrics[]",
        message="an analysis metric needs min, max or both",
        field="spec.rollout.analysis.metrics[0]",
        valid=inference_service("bounded-above", rollout=analysis(max=0.01)),
        invalid=inference_service("unbounded", rollout=analysis()),
    ),
    Case(
        kind="InferenceService",
        at=".spec.rollout.analysis.metrics[]",
        message="an analysis metric's min must not exceed its max",
        field="spec.rollout.analysis.metrics[0].min",
        valid=inference_service("exact", rollout=analysis(min=0.5, max=0.5)),
        invalid=inference_service("empty-range", rollout=analysis(min=0.6, max=0.5)),
    ),
    Case(
        kind="InferenceService",
        at=".spec",
        message="spec.kserve applies to the kserve backend only",
        field="spec.kserve",
        valid=inference_service("kserve-mode", kserve={"deploymentMode": "Standard"}),
        invalid=inference_service("seldon-mode", backend="seldon", kserve={"deploymentMode": "Standard"}),
    ),
    Case(
        kind="InferenceService",
        at=".spec",
        message="spec.seldon applies to the seldon backend only",
        field="spec.seldon",
        valid=inference_service("seldon-image", backend="seldon", seldon={"image": "ghcr.io/m/s:1"}),
        invalid=inference_service("kserve-image", seldon={"image": "ghcr.io/m/s:1"}),
    ),
    Case(
        kind="InferenceService",
        at=".spec",
        message="spec.rollout.shadow needs the seldon backend (KServe cannot mirror traffic)",
        field="spec.rollout.shadow",
        valid=inference_service("seldon-shadow", backend="seldon", rollout={"steps": [100], "shadow": True}),
        invalid=inference_service("kserve-shadow", rollout={"steps": [100], "shadow": True}),
    ),
    Case(
        kind="InferenceService",
        at=".spec",
        message=(
            "spec.backend cannot change: serve on the other backend with a new InferenceService, "
            "then delete this one"
        ),
        field="spec.backend",
        before=inference_service("switch"),
        valid=inference_service("switch") | {"metadata": {"name": "switch", "labels": {"team": "vision"}}},
        invalid=inference_service("switch", backend="seldon"),
    ),
    Case(
        kind="DriftPolicy",
        at=".spec",
        message="spec.retrain.recentData needs spec.detector: the detector exports the recent data",
        field="spec.retrain.recentData",
        valid=drift_policy("with-detector", detector=DETECTOR, recent_data=RECENT),
        invalid=drift_policy("no-detector", recent_data=RECENT),
    ),
    *(
        Case(
            kind="DriftPolicy",
            at=f".spec.{path}",
            message=f"spec.{path} must be between {least} and {most}",
            field=f"spec.{path}",
            valid=drift_policy(f"{name}-at-least", **spec(least)),
            invalid=drift_policy(f"{name}-out-of-bounds", **spec(wrong)),
        )
        for name, path, least, most, wrong, spec in DRIFT_POLICY_DURATIONS
    ),
    *(
        Case(
            kind="InferenceService",
            at=f".spec.{path}",
            message=f"spec.{path} must be between {least} and {most}",
            field=f"spec.{path}",
            valid=inference_service(f"{name}-at-least", rollout=rollout(least)),
            invalid=inference_service(f"{name}-out-of-bounds", rollout=rollout(wrong)),
        )
        for name, path, least, most, wrong, rollout in INFERENCE_SERVICE_DURATIONS
    ),
    *map(in_drift_policy_template, TRAINING_RUN_CASES),
]

ADMISSION_CASES = [case for case in CASES if case.before is None]
TRANSITION_CASES = [case for case in CASES if case.before is not None]


def cel_rules_of_the_crds() -> Iterator[tuple[RuleId, str]]:
    """Every ``x-kubernetes-validations`` entry of the generated CRDs, with its CEL expression."""
    for crd in render_crds():
        kind = crd["spec"]["names"]["kind"]
        for at, node in schema_nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            for entry in node.get("x-kubernetes-validations", []):
                yield (kind, at, entry["message"]), entry["rule"]


def schema_nodes(node: Mapping[str, Any], at: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every node of an OpenAPI schema with its path, e.g. ``.spec.tolerations[]`` or ``.spec.params{}``."""
    yield at, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{at}.{name}")
    if isinstance(node.get("items"), Mapping):
        yield from schema_nodes(node["items"], f"{at}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from schema_nodes(node["additionalProperties"], f"{at}{{}}")


def model_error(obj: Manifest) -> str | None:
    """What the kind's spec model says of the object's spec (None when it accepts it), in the words of
    the operator's InvalidSpec message. The name travels in the context for the rules that read it."""
    model = SPEC_MODELS[obj["kind"]]
    try:
        model.model_validate(obj["spec"], context={"name": obj["metadata"]["name"]})
    except pydantic.ValidationError as error:
        return describe_validation_error(error)
    return None


def dry_run_create(cluster: Cluster, namespace: str, obj: Manifest) -> tuple[int, str]:
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False
    )
    return result.returncode, result.stderr


def assert_refused_naming_the_field(error: str, case: Case) -> None:
    """kubectl prints one line per problem, ``<field>: <what>: <message>``."""
    assert any(f"{case.field}: " in line and case.message in line for line in error.splitlines()), error


def test_every_cel_rule_in_the_crds_has_cases_and_every_case_a_rule() -> None:
    found = dict(cel_rules_of_the_crds())
    covered = {case.rule for case in CASES}

    assert not set(found) - covered, f"rules without cases: {sorted(set(found) - covered)}"
    assert not covered - set(found), f"cases of no rule: {sorted(covered - set(found))}"
    transitions = {rule_id for rule_id, rule in found.items() if "oldSelf" in rule}
    assert {case.rule for case in TRANSITION_CASES} == transitions


@pytest.mark.parametrize("case", ADMISSION_CASES, ids=[case.id for case in ADMISSION_CASES])
def test_the_api_server_and_the_model_accept_and_refuse_alike(
    cluster: Cluster, namespace: str, case: Case
) -> None:
    code, error = dry_run_create(cluster, namespace, case.valid)
    assert code == 0, f"the API server refused the valid {case.kind}: {error}"
    assert model_error(case.valid) is None, f"the model refused the valid {case.kind}"

    code, error = dry_run_create(cluster, namespace, case.invalid)
    assert code != 0, f"the API server admitted the invalid {case.kind}"
    assert_refused_naming_the_field(error, case)
    complaint = model_error(case.invalid)
    assert complaint is not None, f"the model accepted the invalid {case.kind}"
    assert case.message in complaint, complaint
    # The model names the field the API server names, or the object that holds it (a map's entry is
    # spec.sweep.space[lr] at the API server and spec.sweep.space.lr in the model's words).
    where = next(line.split(": ")[0] for line in complaint.split("; ") if case.message in line)
    field = re.sub(r"\[([A-Za-z_][^\]]*)\]", r".\1", case.field)
    assert field.startswith(where) or case.at == "", (where, case.field)


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=[case.id for case in TRANSITION_CASES])
def test_the_api_server_refuses_a_change_that_a_transition_rule_forbids(
    cluster: Cluster, namespace: str, case: Case
) -> None:
    # No model check: a pydantic model validates one object and cannot compare it with its previous one.
    assert case.before is not None
    name = case.before["metadata"]["name"]
    cluster.apply(case.before, namespace)
    created = cluster.get(case.kind.lower(), name, namespace)

    cluster.apply(case.valid, namespace)
    result = cluster.apply_result(case.invalid, namespace)

    assert result.returncode != 0, f"the API server admitted the changed {case.kind}"
    assert_refused_naming_the_field(result.stderr, case)
    stored = cluster.get(case.kind.lower(), name, namespace)
    assert stored["spec"] == created["spec"]
    assert stored["metadata"]["labels"] == case.valid["metadata"]["labels"]
