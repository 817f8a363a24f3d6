"""The Seldon Core backend: one ``machinelearning.seldon.io/v1`` SeldonDeployment per InferenceService.

Every version is a predictor named ``v<N>``: the stable one, and during a rollout the canary beside it,
with ``traffic`` weights that Seldon's service orchestrator splits by. In the shadow phase the canary is a
``shadow: true`` predictor: Seldon mirrors the traffic to it and drops its answers. Promotion keeps the
canary's predictor, so Seldon keeps its Deployment, and keeps the old one at 0% until its scale-down delay
is over.

Seldon's webhook (not its CRD) refuses predictors whose non-shadow weights do not sum to 100: modelloop
checks every SeldonDeployment it renders before it is written (:func:`check_weights`), so a bug here is
a Degraded status rather than a refused or, where the webhook is not installed, a half-routed write.

Seldon's status has no traffic per predictor: the traffic observed is the weight in the object's spec
once Seldon has observed that generation and reports it Available (its Deployments rolled out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelloop.api import Predictor, SeldonSettings
from modelloop.api.backend import BackendCapabilities
from modelloop.naming import LABEL_INFERENCE_SERVICE, LABEL_VERSION
from modelloop.serving.backend import (
    BackendPlugin,
    InvalidTraffic,
    OwnedKind,
    OwnedObject,
    ServiceContext,
    VersionInfo,
    resource_requirements,
)
from modelloop.serving.kserve import model_env
from modelloop.serving.rollout import Observed, Serving
from modelloop.settings import Settings

SELDON_API_VERSION = "machinelearning.seldon.io/v1"
MODEL_CONTAINER = "model"
"""The graph node's name and its container's: Seldon pairs them by name."""
STATE_AVAILABLE = "Available"
STATE_FAILED = "Failed"


SELDON_DEPLOYMENTS = OwnedKind(SELDON_API_VERSION, "SeldonDeployment", "seldondeployments", watched=True)


@dataclass(frozen=True)
class SeldonBackend:
    """Seldon Core v1."""

    def owned(self, service: ServiceContext) -> list[OwnedObject]:
        return [OwnedObject(SELDON_DEPLOYMENTS.plural, SELDON_API_VERSION, service.name)]

    def own_status(self, service: ServiceContext) -> dict[str, Any]:
        # Seldon's state and replicas reach status.backendState through what it reports (Observed).
        return {}

    def render(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        # A mirrored canary's answers reach no one: the stable version answers all of the traffic.
        weight = 0 if serving.canary is None or serving.shadow else serving.weight
        predictors = [_predictor(service, service.versions[serving.stable], 100 - weight)]
        if serving.canary is not None:
            canary = _predictor(service, service.versions[serving.canary], weight)
            if serving.shadow:
                canary["shadow"] = True
            predictors.append(canary)
        elif serving.retiring is not None and serving.retiring in service.versions:
            # Kept without traffic until its scale-down delay is over (its ModelVersion gone: it goes).
            predictors.append(_predictor(service, service.versions[serving.retiring], 0))
        check_weights(predictors)
        return [
            {
                "apiVersion": SELDON_API_VERSION,
                "kind": "SeldonDeployment",
                "metadata": service.metadata(service.name),
                "spec": {"name": service.name, "protocol": "seldon", "predictors": predictors},
            }
        ]

    def observe(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> Observed:
        sdep = current.get(service.name)
        if sdep is None:
            return Observed(message="Seldon has no SeldonDeployment for it yet")
        status = sdep.get("status") or {}
        state = status.get("state")
        generation = int(sdep["metadata"].get("generation") or 0)
        seen = status.get("observedGeneration")
        # Seldon's 1.x releases before observedGeneration: its state alone says it acted.
        acted = int(seen) >= generation if seen is not None else state in (STATE_AVAILABLE, STATE_FAILED)
        available = acted and state == STATE_AVAILABLE
        replicas, ready_replicas = _replicas(status)
        message = str(status.get("description") or "")
        if not available and not message:
            message = f"Seldon reports it {state or 'not yet reconciled'}"
        base = Observed(
            exists=True,
            current=acted and _serves(sdep, serving),
            ready=available,
            failed=acted and state == STATE_FAILED,
            url=((status.get("address") or {}).get("url")) or None,
            message="" if available else message,
            state=state,
            replicas=replicas,
            available_replicas=ready_replicas,
        )
        if serving.canary is None:
            return base
        canary = _find(sdep, serving.canary)
        if canary is None:
            return base
        shadow = bool(canary.get("shadow"))
        weight = 0 if shadow or not available else int(canary.get("traffic") or 0)
        return replace(base, canary_traffic=weight, shadow=shadow and available)


def check_weights(predictors: Sequence[Mapping[str, Any]]) -> None:
    """Refuse predictors Seldon's webhook would refuse: non-shadow weights must sum to 100, each 0..100."""
    weights = {p["name"]: int(p.get("traffic") or 0) for p in predictors if not p.get("shadow")}
    if any(not 0 <= w <= 100 for w in weights.values()) or sum(weights.values()) != 100:
        listed = ", ".join(f"{name}={weight}" for name, weight in weights.items())
        raise InvalidTraffic(f"SeldonDeployment traffic weights must sum to 100, not {listed}")


def predictor_name(version: int) -> str:
    return f"v{version}"


def _predictor(service: ServiceContext, version: VersionInfo, traffic: int) -> dict[str, Any]:
    settings = service.spec.predictor or Predictor()
    seldon = service.spec.seldon or SeldonSettings()
    graph: dict[str, Any] = {
        "name": MODEL_CONTAINER,
        "type": "MODEL",
        "implementation": seldon.implementation,
        "modelUri": version.artifact_uri,
        "parameters": [{"name": "model_version", "type": "STRING", "value": str(version.number)}],
        "children": [],
    }
    if settings.service_account_name:
        graph["serviceAccountName"] = settings.service_account_name
    if service.spec.logger is not None:
        graph["logger"] = {"url": service.spec.logger.url, "mode": service.spec.logger.mode.value}
    container: dict[str, Any] = {
        "name": MODEL_CONTAINER,
        # The version (its metrics' label) and the artifact's digest, which the server checks before loading.
        "env": model_env(version),
        # The root filesystem is read-only; seldon-core's workers and metrics need a writable /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if seldon.image:
        container["image"] = seldon.image
    resources = resource_requirements(settings)
    if resources:
        container["resources"] = resources
    component: dict[str, Any] = {
        "metadata": {"labels": {LABEL_INFERENCE_SERVICE: service.name}},
        "spec": {"containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}]},
    }
    minimum = settings.min_replicas if settings.min_replicas is not None else 1
    if settings.max_replicas is not None and settings.max_replicas > minimum:
        component["hpaSpec"] = {"minReplicas": max(1, minimum), "maxReplicas": settings.max_replicas}
    return {
        "name": predictor_name(version.number),
        "traffic": traffic,
        "replicas": minimum,
        # Seldon's metrics label every series predictor_version from the predictor's "version" label.
        "labels": {LABEL_VERSION: str(version.number), "version": str(version.number)},
        "graph": graph,
        "componentSpecs": [component],
    }


def _find(sdep: Mapping[str, Any], version: int) -> Mapping[str, Any] | None:
    predictors = (sdep.get("spec") or {}).get("predictors") or ()
    return next((p for p in predictors if p.get("name") == predictor_name(version)), None)


def _serves(sdep: Mapping[str, Any], serving: Serving) -> bool:
    """Whether the object as read is the one modelloop last asked for: the same predictors."""
    names = {p.get("name") for p in (sdep.get("spec") or {}).get("predictors") or ()}
    wanted = {predictor_name(serving.stable)}
    if serving.canary is not None:
        wanted.add(predictor_name(serving.canary))
    elif serving.retiring is not None:
        # A retiring predictor whose ModelVersion is gone is not rendered: either way is what was asked.
        return wanted <= names <= wanted | {predictor_name(serving.retiring)}
    return names == wanted


def _replicas(status: Mapping[str, Any]) -> tuple[int | None, int | None]:
    deployments = (status.get("deploymentStatus") or {}).values()
    if not deployments:
        replicas = status.get("replicas")
        return (int(replicas) if replicas is not None else None), None
    total = sum(int(d.get("replicas") or 0) for d in deployments)
    available = sum(int(d.get("availableReplicas") or 0) for d in deployments)
    return total, available


def _create(settings: Settings) -> SeldonBackend:
    return SeldonBackend()


PLUGIN = BackendPlugin(
    name="seldon",
    title="Seldon Core",
    summary="the SeldonDeployment of each of ours",
    owns=(SELDON_DEPLOYMENTS,),
    create=_create,
    capabilities=BackendCapabilities(shadow=True, header_routing=False, max_versions=2),
    settings=SeldonSettings,
    status_fields=("backend_state",),
)
"""Seldon Core v1 (``machinelearning.seldon.io/v1``): champion/challenger, with a shadow phase."""
