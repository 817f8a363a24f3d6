"""The KServe backend: one ``serving.kserve.io/v1beta1`` InferenceService per InferenceService of ours.

Knative mode: the predictor is the version being rolled out and ``canaryTrafficPercent`` its share (the
rest goes to KServe's previously rolled-out revision); promotion removes the field; a rollback first sets
it to 0, which pins the previous revision, and then restores the stable predictor. The traffic observed is
``status.components.predictor.traffic[]``.

Standard mode: KServe v0.20.0's ``spec.canary[]`` makes the canary's Deployment and Service (sized by its
percentage) but routes nothing by it, so modelloop owns a Gateway API HTTPRoute whose weighted backends are
the stable and canary Services. Every version's predictor is named ``v<N>`` (KServe names its Service
``<name>-v<N>-predictor``); promotion renames the stable predictor to the canary's name, which KServe's
controller reconciles onto the canary's existing Deployment, and puts the old stable version in the
canary's slot at 0% (with the stable's replicas, which KServe would otherwise size to 0) until its
scale-down delay is over; then KServe deletes its Deployment. The traffic observed
is the route's weight once KServe reports the canary ready, 0 before. The route matches only the service's
own host, the one in the URL KServe reports for it (KServe's domain template applied to its name and
namespace): a route without hostnames would take every host's requests on a shared Gateway. Until KServe
reports that URL there is no route (nor anything ready to route to).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from modelloop.api import DeploymentMode, KServeSettings, Predictor
from modelloop.api.backend import BackendCapabilities
from modelloop.serving.backend import (
    BackendPlugin,
    OwnedKind,
    OwnedObject,
    ServiceContext,
    VersionInfo,
    resource_requirements,
)
from modelloop.serving.rollout import Observed, Serving
from modelloop.settings import Settings

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
ANNOTATION_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
DEFAULT_RUNTIME = "modelloop-server"
VERSION_ENV = "MODELLOOP_MODEL_VERSION"
DIGEST_ENV = "MODELLOOP_ARTIFACT_DIGEST"
"""The model server's environment variable holding the artifact's recorded digest, which it checks before
loading the artifact."""
SERVICE_PORT = 80
MODEL_CONTAINER = "kserve-container"
# Gateway API's Hostname (a precise one: a wildcard would match other services' hosts too).
_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_HOSTNAME = 253
_MAX_HOSTNAMES = 16


INFERENCE_SERVICES = OwnedKind(KSERVE_API_VERSION, "InferenceService", "inferenceservices", watched=True)
HTTP_ROUTES = OwnedKind(HTTPROUTE_API_VERSION, "HTTPRoute", "httproutes")


@dataclass(frozen=True)
class KServeBackend:
    """KServe, in the mode an InferenceService asks for or the operator's default."""

    default_mode: DeploymentMode = DeploymentMode.KNATIVE
    default_gateway: str = "kserve/kserve-ingress-gateway"

    def mode(self, service: ServiceContext) -> DeploymentMode:
        settings = service.spec.kserve
        return (settings.deployment_mode if settings else None) or self.default_mode

    def owned(self, service: ServiceContext) -> list[OwnedObject]:
        owned = [OwnedObject(INFERENCE_SERVICES.plural, KSERVE_API_VERSION, service.name)]
        if self.mode(service) == DeploymentMode.STANDARD:
            owned.append(OwnedObject(HTTP_ROUTES.plural, HTTPROUTE_API_VERSION, route_name(service.name)))
        return owned

    def own_status(self, service: ServiceContext) -> dict[str, Any]:
        return {"deployment_mode": self.mode(service)}

    def render(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        if self.mode(service) == DeploymentMode.KNATIVE:
            return [self._knative(service, serving)]
        isvc = current.get(service.name)
        canary_ready = serving.canary is not None and _canary_ready(isvc, serving.canary)
        manifests = [self._standard(service, serving)]
        hostnames = route_hostnames(isvc, current.get(route_name(service.name)))
        if hostnames:
            manifests.append(self._route(service, serving, canary_ready, hostnames))
        return manifests

    def observe(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> Observed:
        isvc = current.get(service.name)
        if isvc is None:
            return Observed(message="KServe has no InferenceService for it yet")
        status = isvc.get("status") or {}
        ready = _condition(status, "Ready")
        failed, message = _failure(status, ready)
        url = status.get("url")
        knative = self.mode(service) == DeploymentMode.KNATIVE
        # KServe's status.observedGeneration is its Deployment's or Knative Service's, not the
        # InferenceService's: whether KServe acted on modelloop's last write is read from what it reports.
        predictor = (status.get("components") or {}).get("predictor") or {}
        if knative:
            created, ready_revision = (
                predictor.get("latestCreatedRevision"),
                predictor.get("latestReadyRevision"),
            )
            acted = created is not None and created == ready_revision
        else:
            kept = _kept(service, serving)
            if serving.canary is not None:
                acted = _canary_status(isvc, serving.canary, serving.weight)
            elif kept is not None:
                acted = _canary_status(isvc, kept, 0)
            else:
                acted = not status.get("canaryStatuses")
        base = Observed(
            exists=True,
            current=acted,
            ready=bool(ready and ready.get("status") == "True"),
            failed=failed,
            url=str(url) if url else None,
            message=message,
        )
        if serving.canary is None:
            return base
        if knative:
            latest = [t for t in predictor.get("traffic") or () if t.get("latestRevision")]
            percent = sum(int(t.get("percent") or 0) for t in latest) if latest else None
            return replace(base, canary_traffic=percent)
        weight = _route_weight(
            current.get(route_name(service.name)), predictor_service(service.name, serving.canary)
        )
        if not _canary_ready(isvc, serving.canary):
            weight = 0 if weight is not None else None
            message = message or f"KServe reports canary predictor v{serving.canary} not ready"
        return replace(base, canary_traffic=weight, message=message)

    # -- rendering -----------------------------------------------------------------------------------

    def _knative(self, service: ServiceContext, serving: Serving) -> dict[str, Any]:
        serving_version = serving.canary if serving.canary is not None else serving.stable
        predictor = predictor_spec(service, service.versions[serving_version])
        predictor.update(_scaling(service.spec.predictor))
        if serving.canary is not None:
            predictor["canaryTrafficPercent"] = serving.weight
        return self._isvc(service, DeploymentMode.KNATIVE, predictor)

    def _standard(self, service: ServiceContext, serving: Serving) -> dict[str, Any]:
        predictor = predictor_spec(service, service.versions[serving.stable])
        predictor.update(_scaling(service.spec.predictor), name=f"v{serving.stable}")
        isvc = self._isvc(service, DeploymentMode.STANDARD, predictor)
        kept = _kept(service, serving)
        # The canary's slot also keeps a retiring version running, without traffic, until it goes.
        beside, percent = (serving.canary, serving.weight) if serving.canary is not None else (kept, 0)
        if beside is not None:
            canary = predictor_spec(service, service.versions[beside])
            canary["name"] = f"v{beside}"
            # KServe's CRD requires the canary's container name (the stable one is named by KServe).
            canary["model"]["name"] = MODEL_CONTAINER
            if serving.canary is None:
                # KServe sizes a canary by its share of the stable replicas: 0% would stop it at once.
                settings = service.spec.predictor
                canary["minReplicas"] = max(1, (settings.min_replicas if settings else None) or 1)
            isvc["spec"]["canary"] = [{"predictor": canary, "trafficPercent": percent}]
        return isvc

    def _isvc(
        self, service: ServiceContext, mode: DeploymentMode, predictor: dict[str, Any]
    ) -> dict[str, Any]:
        meta = service.metadata(service.name, annotations={ANNOTATION_DEPLOYMENT_MODE: mode.value})
        return {
            "apiVersion": KSERVE_API_VERSION,
            "kind": "InferenceService",
            "metadata": meta,
            "spec": {"predictor": predictor},
        }

    def _route(
        self, service: ServiceContext, serving: Serving, canary_ready: bool, hostnames: list[str]
    ) -> dict[str, Any]:
        weight = serving.weight if canary_ready else 0
        backends = [
            {
                "name": predictor_service(service.name, serving.stable),
                "port": SERVICE_PORT,
                "weight": 100 - weight,
            }
        ]
        if serving.canary is not None:
            backends.append(
                {
                    "name": predictor_service(service.name, serving.canary),
                    "port": SERVICE_PORT,
                    "weight": weight,
                }
            )
        gateway = service.spec.kserve.gateway if service.spec.kserve else None
        if gateway is not None:
            parent = {"name": gateway.name, "namespace": gateway.namespace or service.namespace}
        else:
            namespace, _, name = self.default_gateway.rpartition("/")
            parent = {"name": name, "namespace": namespace or service.namespace}
        return {
            "apiVersion": HTTPROUTE_API_VERSION,
            "kind": "HTTPRoute",
            "metadata": service.metadata(route_name(service.name)),
            "spec": {
                "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", **parent}],
                "hostnames": hostnames,
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}
                ],
            },
        }


def _kept(service: ServiceContext, serving: Serving) -> int | None:
    """The retiring version a Standard-mode service keeps running (None when there is none, or when its
    ModelVersion is gone and it cannot be rendered any more). Knative keeps previous revisions itself."""
    if serving.retiring is None or serving.retiring not in service.versions:
        return None
    return serving.retiring


def route_hostnames(isvc: Mapping[str, Any] | None, route: Mapping[str, Any] | None) -> list[str]:
    """The hosts modelloop's HTTPRoute matches: the host of the URL KServe reports for the service (its
    domain template applied to the name and namespace), else the ones the route already has (a status that
    lost its URL must neither widen the route nor drop it); empty when neither is known."""
    url = ((isvc or {}).get("status") or {}).get("url")
    host = _hostname(url) if isinstance(url, str) else None
    if host is not None:
        return [host]
    kept = ((route or {}).get("spec") or {}).get("hostnames") or ()
    return [h for h in kept if isinstance(h, str) and _hostname_valid(h)][:_MAX_HOSTNAMES]


def _hostname(url: str) -> str | None:
    """The host of ``url`` as Gateway API's Hostname takes it (no port, no IP address), or None."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host if host is not None and _hostname_valid(host) else None


def _hostname_valid(host: str) -> bool:
    if len(host) > _MAX_HOSTNAME or not _HOSTNAME.fullmatch(host):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def route_name(name: str) -> str:
    """modelloop's HTTPRoute for a Standard-mode service (KServe's own routes are named otherwise)."""
    return f"{name}-traffic"


def predictor_service(name: str, version: int) -> str:
    """The Service KServe makes for the predictor named v<version> (constants.PredictorServiceName)."""
    return f"{name}-v{version}-predictor"


def predictor_spec(service: ServiceContext, version: VersionInfo) -> dict[str, Any]:
    """The predictor that serves ``version`` with modelloop's model server (or the runtime asked for)."""
    settings = service.spec.predictor or Predictor()
    model: dict[str, Any] = {
        "modelFormat": {"name": settings.model_format or f"modelloop-{version.framework}"},
        "runtime": settings.runtime or DEFAULT_RUNTIME,
        "storageUri": version.artifact_uri,
        "env": model_env(version),
    }
    resources = resource_requirements(settings)
    if resources:
        model["resources"] = resources
    predictor: dict[str, Any] = {"model": model}
    if settings.service_account_name:
        predictor["serviceAccountName"] = settings.service_account_name
    if service.spec.logger is not None:
        predictor["logger"] = {"url": service.spec.logger.url, "mode": service.spec.logger.mode.value}
    return predictor


def model_env(version: VersionInfo) -> list[dict[str, str]]:
    """The model server's environment: the version (its metrics' label) and, where the ModelVersion records
    one, the artifact's digest, which the server checks before it loads the artifact."""
    env = [{"name": VERSION_ENV, "value": str(version.number)}]
    if version.digest:
        env.append({"name": DIGEST_ENV, "value": version.digest})
    return env


def _scaling(settings: Predictor | None) -> dict[str, Any]:
    if settings is None:
        return {}
    scaling: dict[str, Any] = {}
    if settings.min_replicas is not None:
        scaling["minReplicas"] = settings.min_replicas
    if settings.max_replicas is not None:
        scaling["maxReplicas"] = settings.max_replicas
    if settings.scale_target is not None:
        scaling["scaleTarget"] = settings.scale_target
    if settings.scale_metric is not None:
        scaling["scaleMetric"] = settings.scale_metric.value
    return scaling


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), None)


def _failure(status: Mapping[str, Any], ready: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether KServe reports that the model cannot be served (not merely not ready yet), and why."""
    model = status.get("modelStatus") or {}
    transition = model.get("transitionStatus")
    failure = model.get("lastFailureInfo") or {}
    if transition in ("BlockedByFailedLoad", "InvalidSpec"):
        return True, str(failure.get("message") or failure.get("reason") or transition)
    if ready is not None and ready.get("status") != "True":
        return False, str(ready.get("message") or ready.get("reason") or "")
    return False, ""


def _canary_status(isvc: Mapping[str, Any], canary: int, weight: int) -> bool:
    """Whether KServe reports the canary named v<canary> at the percentage last asked for."""
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or ()
    return any(
        s.get("name") == f"v{canary}" and int(s.get("trafficPercent") or 0) == weight for s in statuses
    )


def _canary_ready(isvc: Mapping[str, Any] | None, canary: int) -> bool:
    if isvc is None:
        return False
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or ()
    return any(s.get("name") == f"v{canary}" and s.get("ready") for s in statuses)


def _route_weight(route: Mapping[str, Any] | None, backend: str) -> int | None:
    if route is None:
        return None
    for rule in (route.get("spec") or {}).get("rules") or ():
        for ref in rule.get("backendRefs") or ():
            if ref.get("name") == backend:
                return int(ref.get("weight", 1))
    return 0


def _create(settings: Settings) -> KServeBackend:
    return KServeBackend(DeploymentMode(settings.kserve_mode), settings.gateway)


PLUGIN = BackendPlugin(
    name="kserve",
    title="KServe",
    summary=(
        "the KServe InferenceService of each of ours and, in KServe's Standard mode, the HTTPRoute that "
        "splits its traffic"
    ),
    owns=(INFERENCE_SERVICES, HTTP_ROUTES),
    create=_create,
    # KServe cannot mirror traffic; its header routing is not modelloop's to configure.
    capabilities=BackendCapabilities(shadow=False, header_routing=False, max_versions=2),
    settings=KServeSettings,
    status_fields=("deployment_mode",),
)
"""KServe (``serving.kserve.io/v1beta1``), in Knative or Standard mode."""
