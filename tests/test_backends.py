"""Serving backends are plugins: the registry (``modelloop.serving.backends``) is the one list of them, and
the API's ``spec.backend`` values, the CEL rules, the RBAC rules, the controller's watches, where manifests
are applied and the docs all follow from it. A made-up third backend, registered here, reaches each of them
without any other change."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import pytest
import yaml

from modelloop import api
from modelloop.api import DeploymentMode, InferenceServiceSpec, InferenceServiceStatus
from modelloop.api.backend import BackendCapabilities, backend_refusal, backend_rules
from modelloop.cli.render import render_rollout
from modelloop.controllers.inferenceservice import watch_backend_kinds
from modelloop.serving import backends
from modelloop.serving.backend import BackendPlugin, OwnedKind, OwnedObject, ServiceContext
from modelloop.serving.backends import BACKENDS, DEFAULT_BACKEND
from modelloop.serving.rollout import Observed, Serving
from modelloop.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_sync_backends() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_backends", REPO_ROOT / "hack" / "sync_backends.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_backends"] = module
    spec.loader.exec_module(module)
    return module


sync_backends = _load_sync_backends()


class TritonBackend:
    """A backend that serves nothing: enough to be registered."""

    def owned(self, service: ServiceContext) -> list[OwnedObject]:
        return [OwnedObject("tritonservices", "serving.example.com/v1", service.name)]

    def render(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        return []

    def observe(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> Observed:
        return Observed()

    def own_status(self, service: ServiceContext) -> dict[str, Any]:
        return {}


def triton(shadow: bool = True) -> BackendPlugin:
    return BackendPlugin(
        name="triton",
        title="Triton",
        summary="the TritonService of each of ours",
        owns=(
            OwnedKind("serving.example.com/v1", "TritonService", "tritonservices", watched=True),
            OwnedKind("serving.example.com/v1", "TritonRoute", "tritonroutes"),
        ),
        create=lambda settings: TritonBackend(),
        capabilities=BackendCapabilities(shadow=shadow, header_routing=True, max_versions=3),
    )


WITH_TRITON = (*BACKENDS, triton())


def selectors(registry: kopf.OperatorRegistry) -> set[tuple[str | None, str | None, str | None]]:
    return {
        (handler.selector.group, handler.selector.version, handler.selector.any_name)
        for handler in registry._watching.get_all_handlers()
        if handler.selector is not None
        and handler.labels == {"modelloop.dev/inference-service": kopf.PRESENT}
    }


def cluster_role_rules(text: str) -> list[dict[str, Any]]:
    """The rules of the ClusterRole in a manifest or a chart template (whose template lines are dropped)."""
    plain = "\n".join(line for line in text.splitlines() if not re.fullmatch(r"\s*\{\{-.*\}\}\s*", line))
    plain = re.sub(r"\{\{.*?\}\}", "NAME", plain)
    (role,) = [doc for doc in yaml.safe_load_all(plain) if doc and doc.get("kind") == "ClusterRole"]
    return list(role["rules"])


# -- the two backends, found through the registry ------------------------------------------------------


def test_the_registry_lists_kserve_then_seldon_and_kserve_is_the_default() -> None:
    assert [plugin.name for plugin in BACKENDS] == ["kserve", "seldon"]
    assert DEFAULT_BACKEND.name == "kserve"
    assert backends.backend_plugin("seldon").title == "Seldon Core"
    with pytest.raises(KeyError, match="no serving backend 'triton': modelloop has kserve or seldon"):
        backends.backend_plugin("triton")


def test_the_api_offers_exactly_the_registered_backends() -> None:
    assert backends.declarations() == api.BACKENDS
    assert [backend.value for backend in api.Backend] == [plugin.name for plugin in BACKENDS]
    assert DEFAULT_BACKEND.name == api.DEFAULT_BACKEND
    assert InferenceServiceSpec.model_validate({"model": {"name": "iris"}}).backend == DEFAULT_BACKEND.name


def test_what_make_crds_writes_from_the_registry_is_up_to_date() -> None:
    assert sync_backends.stale_files() == [], "run `make crds`"


@pytest.mark.parametrize("plugin", BACKENDS, ids=lambda plugin: plugin.name)
def test_a_backend_with_settings_has_them_as_its_own_field_of_the_spec(plugin: BackendPlugin) -> None:
    field = InferenceServiceSpec.model_fields.get(plugin.name)
    assert plugin.settings is not None and field is not None
    assert field.annotation == plugin.settings | None


def test_every_field_of_the_spec_beyond_the_common_ones_is_a_registered_backends_settings() -> None:
    common = {"model", "backend", "predictor", "rollout", "logger", "paused"}
    settings = {plugin.name for plugin in BACKENDS if plugin.settings is not None}
    assert set(InferenceServiceSpec.model_fields) - common == settings


@pytest.mark.parametrize("plugin", BACKENDS, ids=lambda plugin: plugin.name)
def test_a_backends_status_fields_are_fields_of_the_status(plugin: BackendPlugin) -> None:
    assert set(plugin.status_fields) <= set(InferenceServiceStatus.model_fields)


def test_the_controller_makes_one_backend_of_each_plugin_with_the_operators_settings() -> None:
    made = backends.create_backends(Settings(kserve_mode="Standard"))
    assert list(made) == ["kserve", "seldon"]
    spec = InferenceServiceSpec.model_validate({"model": {"name": "iris"}})
    service = ServiceContext("ml", "iris", "uid-1", spec, {})
    assert made["kserve"].own_status(service) == {"deployment_mode": DeploymentMode.STANDARD}
    assert made["seldon"].own_status(service) == {}


def test_the_controller_watches_the_kinds_the_backends_declare_watched() -> None:
    registry = kopf.OperatorRegistry()
    watch_backend_kinds(BACKENDS, registry)
    assert selectors(registry) == {
        ("serving.kserve.io", "v1beta1", "inferenceservices"),
        ("machinelearning.seldon.io", "v1", "seldondeployments"),
    }
    # Importing the controller registered the same with kopf's own registry.
    assert selectors(registry) <= selectors(kopf.get_default_registry())


def test_manifests_are_applied_to_the_plural_their_backend_declares() -> None:
    assert backends.plural_of("serving.kserve.io/v1beta1", "InferenceService") == "inferenceservices"
    assert backends.plural_of("gateway.networking.k8s.io/v1", "HTTPRoute") == "httproutes"
    assert backends.plural_of("machinelearning.seldon.io/v1", "SeldonDeployment") == "seldondeployments"
    with pytest.raises(KeyError, match="no serving backend owns InferenceService"):
        backends.plural_of("modelloop.dev/v1alpha1", "InferenceService")


@pytest.mark.parametrize(
    "path", ["manifests/operator/rbac.yaml", "charts/modelloop/templates/clusterrole.yaml"]
)
def test_the_cluster_roles_grant_on_backend_kinds_exactly_what_the_registry_declares(path: str) -> None:
    declared = [rule for _, rules in backends.rbac_rules() for rule in rules]
    groups = {group for rule in declared for group in rule["apiGroups"]}
    granted = [
        rule for rule in cluster_role_rules((REPO_ROOT / path).read_text()) if groups & set(rule["apiGroups"])
    ]
    assert granted == declared
    assert declared == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "verbs": ["get", "create", "patch"],
        },
        {
            "apiGroups": ["machinelearning.seldon.io"],
            "resources": ["seldondeployments"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
    ]


def test_the_cli_shows_the_default_backend_for_a_spec_that_names_none() -> None:
    shown = render_rollout({"metadata": {"name": "iris", "namespace": "ml"}, "spec": {}, "status": {}})
    assert f"Backend:    {DEFAULT_BACKEND.name}" in shown


# -- a third backend is one plugin --------------------------------------------------------------------


def test_a_third_backend_reaches_the_apis_values_through_the_generated_module() -> None:
    text = sync_backends.api_module(WITH_TRITON, DEFAULT_BACKEND)
    generated: dict[str, Any] = {
        "__name__": "modelloop.api.generated_for_test",
        "__package__": "modelloop.api",
    }
    exec(compile(text, "backends.py", "exec"), generated)

    assert [backend.value for backend in generated["Backend"]] == ["kserve", "seldon", "triton"]
    assert generated["Backend"].TRITON == "triton"
    assert generated["DEFAULT_BACKEND"] == "kserve"
    assert generated["BACKENDS"] == backends.declarations(WITH_TRITON)


def test_a_third_backend_that_can_mirror_may_have_a_shadow_phase() -> None:
    declarations = backends.declarations(WITH_TRITON)
    rules = {rule.field_path: rule for rule in backend_rules(declarations)}

    assert set(rules) == {".kserve", ".seldon", ".rollout.shadow"}  # triton has no settings block
    shadow = rules[".rollout.shadow"]
    assert shadow.rule.endswith("|| self.backend == 'seldon' || self.backend == 'triton'")
    assert shadow.message == (
        "spec.rollout.shadow needs the seldon or triton backend (KServe cannot mirror traffic)"
    )
    assert backend_refusal(declarations, "triton", [], shadow=True) is None
    assert backend_refusal(declarations, "kserve", [], shadow=True) == shadow.message
    assert backend_refusal(declarations, "triton", ["seldon"], shadow=False) == (
        "spec.seldon applies to the seldon backend only"
    )


def test_a_third_backend_that_cannot_mirror_is_named_in_the_shadow_rule() -> None:
    declarations = backends.declarations((*BACKENDS, triton(shadow=False)))
    (shadow,) = [rule for rule in backend_rules(declarations) if rule.field_path == ".rollout.shadow"]
    assert shadow.rule.endswith("!self.rollout.shadow || self.backend == 'seldon'")
    assert shadow.message == (
        "spec.rollout.shadow needs the seldon backend (KServe and Triton cannot mirror traffic)"
    )


def test_the_shipped_rules_are_the_ones_the_crd_has_always_had() -> None:
    assert [rule.to_schema() for rule in backend_rules(api.BACKENDS)] == [
        {
            "rule": "!has(self.kserve) || self.backend == 'kserve'",
            "message": "spec.kserve applies to the kserve backend only",
            "fieldPath": ".kserve",
        },
        {
            "rule": "!has(self.seldon) || self.backend == 'seldon'",
            "message": "spec.seldon applies to the seldon backend only",
            "fieldPath": ".seldon",
        },
        {
            "rule": "!has(self.rollout) || !has(self.rollout.shadow) || !self.rollout.shadow "
            "|| self.backend == 'seldon'",
            "message": "spec.rollout.shadow needs the seldon backend (KServe cannot mirror traffic)",
            "fieldPath": ".rollout.shadow",
        },
    ]


def test_a_third_backend_gets_rbac_rules_for_what_it_owns() -> None:
    (plugin, rules) = backends.rbac_rules(WITH_TRITON)[-1]
    assert plugin.name == "triton"
    assert rules == [
        {
            "apiGroups": ["serving.example.com"],
            "resources": ["tritonservices"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
        {
            "apiGroups": ["serving.example.com"],
            "resources": ["tritonroutes"],
            "verbs": ["get", "create", "patch"],
        },
    ]
    block = sync_backends.rbac_block(WITH_TRITON)
    assert "# Triton: the TritonService of each of ours.\n- apiGroups: [serving.example.com]\n" in block
    assert yaml.safe_load(block)[-2:] == rules


def test_a_third_backend_is_watched_made_and_applied_to() -> None:
    registry = kopf.OperatorRegistry()
    watch_backend_kinds(WITH_TRITON, registry)
    assert ("serving.example.com", "v1", "tritonservices") in selectors(registry)
    assert ("serving.example.com", "v1", "tritonroutes") not in selectors(registry)
    assert isinstance(backends.create_backends(Settings(), WITH_TRITON)["triton"], TritonBackend)
    assert backends.plural_of("serving.example.com/v1", "TritonRoute", WITH_TRITON) == "tritonroutes"


def test_a_third_backend_is_a_row_of_the_docs_table() -> None:
    table = sync_backends.capability_table(WITH_TRITON, DEFAULT_BACKEND)
    assert "| `triton` | Triton | **TritonService**, TritonRoute | yes | yes | 3 | - |" in table
    assert "| `kserve` (default) | KServe |" in table


def test_the_registry_refuses_backends_that_cannot_work_together() -> None:
    with pytest.raises(ValueError, match="registered twice: seldon"):
        backends.check_backends((*BACKENDS, backends.backend_plugin("seldon")), DEFAULT_BACKEND)
    with pytest.raises(ValueError, match="the default backend triton is not registered"):
        backends.check_backends(BACKENDS, triton())
    clash = BackendPlugin(
        name="other",
        title="Other",
        summary="a SeldonDeployment under another plural",
        owns=(OwnedKind("machinelearning.seldon.io/v1", "SeldonDeployment", "sdeps"),),
        create=lambda settings: TritonBackend(),
        capabilities=BackendCapabilities(),
    )
    with pytest.raises(ValueError, match="owned under two plurals"):
        backends.check_backends((*BACKENDS, clash), DEFAULT_BACKEND)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"name": "Triton-2"}, "backend name 'Triton-2' must match"),
        ({"status_fields": ("tritonState",)}, "InferenceServiceStatus has no field tritonState"),
        ({"owns": (OwnedKind("TritonService", "TritonService", "tritonservices"),)}, "is not group/version"),
    ],
)
def test_a_plugin_that_cannot_be_a_backend_is_refused_where_it_is_written(
    fields: dict[str, Any], complaint: str
) -> None:
    declared = {
        "name": "triton",
        "title": "Triton",
        "summary": "-",
        "owns": (),
        "create": lambda settings: TritonBackend(),
        "capabilities": BackendCapabilities(),
    }
    with pytest.raises(ValueError, match=complaint):
        BackendPlugin(**{**declared, **fields})
