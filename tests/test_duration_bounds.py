"""Every duration a user writes in a DriftPolicy or an InferenceService is bounded, by the CRD (a CEL rule
the API server checks at admission: e2e/test_cel_parity.py) and by the operator's own parsing of the spec,
with one message that names the field: an interval of 0s would be a hot loop, a budget period of 1ms no
budget, and a duration of centuries overflows the operator's clock arithmetic."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest

from modelloop.api import DRIFT_POLICY, INFERENCE_SERVICE, DriftPolicySpec, InferenceServiceSpec
from modelloop.api.crd import openapi_schema
from modelloop.reasons import describe_validation_error

POLICY: dict[str, Any] = {
    "target": {"inferenceService": "iris"},
    "metrics": [{"name": "drift", "query": "max(drift)", "threshold": 0.3, "comparison": "GreaterThan"}],
    "retrain": {
        "trainingRunTemplate": {
            "image": "trainer:1",
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "output": {"modelName": "iris"},
        }
    },
}
SERVICE: dict[str, Any] = {
    "model": {"name": "iris"},
    "rollout": {"steps": [50, 100], "analysis": {"metrics": [{"name": "e", "query": "q", "max": 1}]}},
}

# (the field, its path in the spec, the least and the most it takes, a value below and one above)
DRIFT_POLICY_BOUNDS = [
    ("spec.evaluationInterval", ("evaluationInterval",), "1s", "24h", "0s", "24h1s"),
    ("spec.budget.period", ("budget", "period"), "1m", "8760h", "1ms", "8761h"),
    ("spec.window", ("window",), "0s", "720h", None, "721h"),
    ("spec.cooldown", ("cooldown",), "0s", "8760h", None, "99999999999999999999h"),
]
INFERENCE_SERVICE_BOUNDS = [
    ("spec.rollout.analysis.interval", ("rollout", "analysis", "interval"), "1s", "24h", "999ms", "25h"),
    ("spec.rollout.stepInterval", ("rollout", "stepInterval"), "1s", "168h", "0s", "169h"),
]
CASES = [(DriftPolicySpec, POLICY, *bound) for bound in DRIFT_POLICY_BOUNDS] + [
    (InferenceServiceSpec, SERVICE, *bound) for bound in INFERENCE_SERVICE_BOUNDS
]


def with_value(spec: dict[str, Any], path: tuple[str, ...], value: str) -> dict[str, Any]:
    changed = copy.deepcopy(spec)
    node = changed
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return changed


def refusal(model: type[pydantic.BaseModel], spec: dict[str, Any]) -> str | None:
    try:
        model.model_validate(spec)
    except pydantic.ValidationError as error:
        return describe_validation_error(error)
    return None


@pytest.mark.parametrize(("model", "spec", "field", "path", "least", "most", "below", "above"), CASES)
def test_a_duration_outside_its_bounds_is_refused_naming_the_field(
    model: type[pydantic.BaseModel],
    spec: dict[str, Any],
    field: str,
    path: tuple[str, ...],
    least: str,
    most: str,
    below: str | None,
    above: str,
) -> None:
    message = f"{field}: Value error, {field} must be between {least} and {most}"
    assert refusal(model, with_value(spec, path, least)) is None
    assert refusal(model, with_value(spec, path, most)) is None
    assert refusal(model, with_value(spec, path, above)) == message
    if below is not None:
        assert refusal(model, with_value(spec, path, below)) == message


@pytest.mark.parametrize(("model", "spec", "field", "path", "least", "most", "below", "above"), CASES)
def test_the_crd_carries_the_same_bound_as_a_cel_rule(
    model: type[pydantic.BaseModel],
    spec: dict[str, Any],
    field: str,
    path: tuple[str, ...],
    least: str,
    most: str,
    below: str | None,
    above: str,
) -> None:
    info = DRIFT_POLICY if model is DriftPolicySpec else INFERENCE_SERVICE
    node = openapi_schema(info.spec_model)
    for key in path:
        node = node["properties"][key]
    assert node["x-kubernetes-validations"] == [
        {
            "rule": f"duration(self) >= duration('{least}') && duration(self) <= duration('{most}')",
            "message": f"{field} must be between {least} and {most}",
        }
    ]


def test_the_defaults_are_within_their_bounds() -> None:
    assert refusal(DriftPolicySpec, POLICY) is None
    assert refusal(InferenceServiceSpec, SERVICE) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@prometheus:9090",
        "http://prometheus:9090/?q=1",
        "ftp://prometheus",
        "prometheus:9090",
    ],
)
def test_a_service_url_is_plain_http_without_credentials_query_or_fragment(url: str) -> None:
    complaint = refusal(DriftPolicySpec, {**POLICY, "prometheus": {"url": url}})
    assert complaint is not None and complaint.startswith("spec.prometheus.url: ")
    complaint = refusal(DriftPolicySpec, {**POLICY, "detector": {"url": url}})
    assert complaint is not None and complaint.startswith("spec.detector.url: ")
    rollout = {**SERVICE["rollout"], "analysis": {**SERVICE["rollout"]["analysis"], "prometheusUrl": url}}
    complaint = refusal(InferenceServiceSpec, {**SERVICE, "rollout": rollout})
    assert complaint is not None and complaint.startswith("spec.rollout.analysis.prometheusUrl: ")
