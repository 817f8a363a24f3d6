"""The KServe backend: what it renders for each Serving, in Knative and Standard mode, and what it reads back.

Every rendered object is also checked against the real CRD schemas in ../shared/crds (KServe v0.20.0's
InferenceService, Gateway API v1.5.1's HTTPRoute) with a small checker of their OpenAPI subset: types,
enums, bounds, patterns, required and unknown fields (which the API server would silently prune). The
``jsonschema`` package is not in the project's environment, and CEL rules are not checked here: the e2e
suite applies the same objects to a real API server.
"""

from __future__ import annotations

from typing import Any

import pytest

from crd_schema import SHARED_CRDS, crd_schema, schema_errors
from modelloop.api import InferenceServiceSpec
from modelloop.naming import LABEL_INFERENCE_SERVICE
from modelloop.serving.backend import OwnedObject, ServiceContext, VersionInfo
from modelloop.serving.kserve import KServeBackend, predictor_service, route_name
from modelloop.serving.rollout import Serving

CRDS = SHARED_CRDS
KSERVE_CRD = CRDS / "serving.kserve.io_inferenceservices.yaml"
HTTPROUTE_CRD = CRDS / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
VERSIONS = {
    1: VersionInfo(1, "iris", "s3://models/iris/1", "sklearn"),
    2: VersionInfo(2, "iris", "s3://models/iris/2", "sklearn"),
    3: VersionInfo(3, "iris", "s3://models/iris/3", "xgboost"),
}
BACKEND = KServeBackend()
URL = "http://iris-ml.example.com"
"""The URL KServe reports for the service (its default domain template: <name>-<namespace>.<domain>)."""
REPORTED = {"iris": {"status": {"url": URL}}}
"""KServe's InferenceService once it reports the service's URL."""


def service(mode: str | None = None, **spec: Any) -> ServiceContext:
    body: dict[str, Any] = {"model": {"name": "iris"}, **spec}
    if mode is not None:
        body["kserve"] = {**body.get("kserve", {}), "deploymentMode": mode}
    return ServiceContext("ml", "iris", "uid-1", InferenceServiceSpec.model_validate(body), VERSIONS)


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """Where ``manifest`` breaks its kind's CRD schema (metadata is the API server's own to check)."""
    crd = {"InferenceService": KSERVE_CRD, "HTTPRoute": HTTPROUTE_CRD}[manifest["kind"]]
    schema = crd_schema(crd, manifest["apiVersion"].rsplit("/", 1)[1])
    return schema_errors({k: v for k, v in manifest.items() if k != "metadata"}, schema)


def rendered(context: ServiceContext, serving: Serving, current: dict[str, Any] | None = None) -> list[Any]:
    manifests = BACKEND.render(context, serving, current or {})
    for manifest in manifests:
        assert crd_errors(manifest) == [], manifest
    return manifests


def test_the_schema_checker_finds_what_the_api_server_would_refuse_or_prune() -> None:
    (isvc,) = BACKEND.render(service(), Serving(1, 2, 10), {})
    isvc["spec"]["predictor"]["canaryTrafficPercentage"] = 10
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    isvc["spec"]["predictor"]["model"]["env"][0].pop("name")
    assert sorted(crd_errors(isvc)) == [
        ".spec.predictor.canaryTrafficPercentage: unknown field, the API server would prune it",
        ".spec.predictor.minReplicas: expected integer, got 'one'",
        ".spec.predictor.model.env[0].name: required",
    ]
    isvc, route = BACKEND.render(service("Standard"), Serving(1, 2, 10), REPORTED)
    isvc["spec"]["canary"][0]["trafficPercent"] = 101
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    route["spec"]["parentRefs"][0].pop("name")
    route["spec"]["hostnames"] = ["*.*.example.com"]
    assert ".spec.canary[0].trafficPercent: 101 is above 100" in crd_errors(isvc)
    hostname, *others = sorted(crd_errors(route))
    assert hostname.startswith(".spec.hostnames[0]: '*.*.example.com' does not match")
    assert others == [
        ".spec.parentRefs[0].name: required",
        ".spec.rules[0].backendRefs[0].weight: -1 is below 0",
    ]


def test_a_standard_canary_names_its_model_container_as_kserves_crd_requires() -> None:
    (isvc,) = BACKEND.render(service("Standard"), Serving(1, 2, 10), {})
    assert crd_errors(isvc) == []


# Knative mode: rendering.


def test_knative_serves_the_stable_version_with_modelloops_model_server() -> None:
    (isvc,) = rendered(service(), Serving(1))
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["spec"] == {
        "predictor": {
            "model": {
                "modelFormat": {"name": "modelloop-sklearn"},
                "runtime": "modelloop-server",
                "storageUri": "s3://models/iris/1",
                "env": [{"name": "MODELLOOP_MODEL_VERSION", "value": "1"}],
            }
        }
    }


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_the_model_server_gets_the_digest_its_model_version_records_to_check(mode: str) -> None:
    digest = "sha256:" + "b" * 64
    versions = {**VERSIONS, 2: VersionInfo(2, "iris", "s3://models/iris/2", "sklearn", digest)}
    context = ServiceContext("ml", "iris", "uid-1", service(mode).spec, versions)

    isvc = rendered(context, Serving(1, 2, 10), canary_ready(2))[0]

    canary = isvc["spec"]["predictor"] if mode == "Knative" else isvc["spec"]["canary"][0]["predictor"]
    assert canary["model"]["env"] == [
        {"name": "MODELLOOP_MODEL_VERSION", "value": "2"},
        {"name": "MODELLOOP_ARTIFACT_DIGEST", "value": digest},
    ]
    if mode == "Standard":  # version 1 records no digest: its server has none to check
        assert isvc["spec"]["predictor"]["model"]["env"] == [
            {"name": "MODELLOOP_MODEL_VERSION", "value": "1"}
        ]


def test_knative_is_the_default_mode_and_says_so_in_its_annotation() -> None:
    (isvc,) = rendered(service(), Serving(1))
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Knative"}
    (isvc,) = rendered(service("Knative"), Serving(1))
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Knative"}


def test_every_object_is_owned_by_the_inference_service_and_labelled_with_it() -> None:
    for manifest in [*rendered(service(), Serving(1)), *rendered(service("Standard"), Serving(1))]:
        meta = manifest["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"] == {
            LABEL_INFERENCE_SERVICE: "iris",
            "app.kubernetes.io/managed-by": "modelloop",
        }
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "modelloop.dev/v1alpha1",
                "kind": "InferenceService",
                "name": "iris",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]


def test_knative_puts_the_canary_in_the_predictor_with_its_traffic_percent() -> None:
    (isvc,) = rendered(service(), Serving(1, 3, 25))
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert predictor["model"]["storageUri"] == "s3://models/iris/3"
    assert predictor["model"]["modelFormat"] == {"name": "modelloop-xgboost"}
    assert predictor["model"]["env"] == [{"name": "MODELLOOP_MODEL_VERSION", "value": "3"}]


def test_knative_retiring_a_canary_asks_zero_percent_of_it() -> None:
    (isvc,) = rendered(service(), Serving(1, 2, 0))
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_knative_without_a_rollout_in_progress_has_no_canary_traffic_percent() -> None:
    (isvc,) = rendered(service(), Serving(2))
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_predictor_settings_map_to_kserve_scaling_resources_gpus_and_service_account() -> None:
    predictor = {
        "minReplicas": 0,
        "maxReplicas": 4,
        "scaleTarget": 20,
        "scaleMetric": "rps",
        "resources": {"cpu": "500m", "memory": "2Gi", "gpus": 1},
        "serviceAccountName": "model-reader",
        "runtime": "kserve-sklearnserver",
        "modelFormat": "sklearn",
    }
    (isvc,) = rendered(service(predictor=predictor), Serving(1))
    rendered_predictor = isvc["spec"]["predictor"]
    assert {
        k: rendered_predictor[k] for k in ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric")
    } == {
        "minReplicas": 0,
        "maxReplicas": 4,
        "scaleTarget": 20,
        "scaleMetric": "rps",
    }
    assert rendered_predictor["serviceAccountName"] == "model-reader"
    model = rendered_predictor["model"]
    assert (model["runtime"], model["modelFormat"]) == ("kserve-sklearnserver", {"name": "sklearn"})
    assert model["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
    }


def test_a_cpu_only_request_sets_no_limits() -> None:
    (isvc,) = rendered(service(predictor={"resources": {"cpu": 2}}), Serving(1))
    assert isvc["spec"]["predictor"]["model"]["resources"] == {"requests": {"cpu": "2"}}


def test_the_payload_logger_maps_to_kserves_logger() -> None:
    logger = {"url": "http://drift.ml.svc/events", "mode": "request"}
    (isvc,) = rendered(service(logger=logger), Serving(1, 2, 10))
    assert isvc["spec"]["predictor"]["logger"] == {"url": "http://drift.ml.svc/events", "mode": "request"}


# Standard mode: rendering.


def canary_ready(version: int, ready: bool = True) -> dict[str, Any]:
    """KServe's InferenceService as it reports the canary predictor v<version>."""
    return {"iris": {"status": {"url": URL, "canaryStatuses": [{"name": f"v{version}", "ready": ready}]}}}


def backends(route: dict[str, Any]) -> list[tuple[str, int, int]]:
    (rule,) = route["spec"]["rules"]
    return [(ref["name"], ref["port"], ref["weight"]) for ref in rule["backendRefs"]]


def test_standard_names_the_stable_predictor_by_its_version_and_routes_all_traffic_to_it() -> None:
    isvc, route = rendered(service("Standard"), Serving(1), REPORTED)
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Standard"}
    assert isvc["spec"]["predictor"]["name"] == "v1"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/iris/1"
    assert "canary" not in isvc["spec"]
    assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert route["metadata"]["name"] == "iris-traffic" == route_name("iris")
    assert backends(route) == [("iris-v1-predictor", 80, 100)]


def test_standard_keeps_the_canary_at_zero_weight_until_kserve_reports_it_ready() -> None:
    isvc, route = rendered(service("Standard"), Serving(1, 2, 25), REPORTED)
    assert isvc["spec"]["canary"] == [
        {
            "predictor": {
                "name": "v2",
                "model": {
                    "modelFormat": {"name": "modelloop-sklearn"},
                    "runtime": "modelloop-server",
                    "storageUri": "s3://models/iris/2",
                    "env": [{"name": "MODELLOOP_MODEL_VERSION", "value": "2"}],
                    "name": "kserve-container",
                },
            },
            "trafficPercent": 25,
        }
    ]
    assert backends(route) == [("iris-v1-predictor", 80, 100), ("iris-v2-predictor", 80, 0)]
    _, route = rendered(service("Standard"), Serving(1, 2, 25), canary_ready(2, ready=False))
    assert backends(route) == [("iris-v1-predictor", 80, 100), ("iris-v2-predictor", 80, 0)]
    _, route = rendered(service("Standard"), Serving(1, 2, 25), canary_ready(1))
    assert backends(route)[1][2] == 0  # another version's canary being ready says nothing of this one


@pytest.mark.parametrize("weight", [0, 10, 25, 50, 99])
def test_standard_splits_the_route_by_the_weight_once_the_canary_is_ready(weight: int) -> None:
    _, route = rendered(service("Standard"), Serving(1, 2, weight), canary_ready(2))
    assert backends(route) == [("iris-v1-predictor", 80, 100 - weight), ("iris-v2-predictor", 80, weight)]
    assert sum(w for _, _, w in backends(route)) == 100


def test_standard_routes_through_the_default_gateway_or_the_one_asked_for() -> None:
    _, route = rendered(service("Standard"), Serving(1), REPORTED)
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "kserve-ingress-gateway",
            "namespace": "kserve",
        }
    ]
    _, route = rendered(service("Standard", kserve={"gateway": {"name": "models"}}), Serving(1), REPORTED)
    assert route["spec"]["parentRefs"][0] | {"group": "", "kind": ""} == {
        "group": "",
        "kind": "",
        "name": "models",
        "namespace": "ml",
    }
    assert predictor_service("iris", 7) == "iris-v7-predictor"


def test_standard_routes_only_the_host_kserve_reports_for_the_service() -> None:
    """On a shared Gateway, a route without hostnames would take every other service's requests."""
    _, route = rendered(service("Standard"), Serving(1, 2, 25), canary_ready(2))

    assert route["spec"]["hostnames"] == ["iris-ml.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


def test_standard_renders_no_route_before_kserve_reports_the_services_url() -> None:
    for current in ({}, {"iris": {"status": {}}}, {"iris": {"status": {"url": "http://10.0.0.7"}}}):
        (isvc,) = rendered(service("Standard"), Serving(1), current)
        assert isvc["kind"] == "InferenceService"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Iris-ML.Example.com:8443/v1/models", "iris-ml.example.com"),
        ("http://iris.ml.svc.cluster.local", "iris.ml.svc.cluster.local"),
    ],
)
def test_the_routes_host_is_the_urls_without_port_or_path_in_lower_case(url: str, host: str) -> None:
    _, route = rendered(service("Standard"), Serving(1), {"iris": {"status": {"url": url}}})
    assert route["spec"]["hostnames"] == [host]


def test_a_route_keeps_its_hosts_when_kserves_status_loses_the_url() -> None:
    _, route = rendered(service("Standard"), Serving(1, 2, 25), canary_ready(2))
    lost = {"iris": {"status": {"canaryStatuses": [{"name": "v2", "ready": True}]}}, "iris-traffic": route}

    _, again = rendered(service("Standard"), Serving(1, 2, 50), lost)

    assert again["spec"]["hostnames"] == ["iris-ml.example.com"]
    assert backends(again)[1][2] == 50


def test_standard_owns_its_route_beside_kserves_inference_service() -> None:
    assert BACKEND.owned(service()) == [OwnedObject("inferenceservices", "serving.kserve.io/v1beta1", "iris")]
    assert BACKEND.owned(service("Standard")) == [
        OwnedObject("inferenceservices", "serving.kserve.io/v1beta1", "iris"),
        OwnedObject("httproutes", "gateway.networking.k8s.io/v1", "iris-traffic"),
    ]


def test_the_operators_default_mode_applies_when_the_service_names_none() -> None:
    standard = KServeBackend(default_mode=KServeBackend().mode(service("Standard")))
    assert len(standard.render(service(), Serving(1), REPORTED)) == 2
    assert len(standard.render(service("Knative"), Serving(1), REPORTED)) == 1


# Observing.


def kserve_isvc(
    *,
    created: str | None = "iris-predictor-00002",
    ready_revision: str | None = "iris-predictor-00002",
    ready: str | None = "True",
    traffic: list[dict[str, Any]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": "http://iris.ml.example.com", "observedGeneration": 1, **status}
    if ready is not None:
        body["conditions"] = [{"type": "Ready", "status": ready, "reason": "RevisionMissing", "message": "m"}]
    predictor: dict[str, Any] = {}
    if created is not None:
        predictor["latestCreatedRevision"] = created
    if ready_revision is not None:
        predictor["latestReadyRevision"] = ready_revision
    if traffic is not None:
        predictor["traffic"] = traffic
    body["components"] = {"predictor": predictor}
    # KServe's observedGeneration is its Deployment's or Knative Service's, never the InferenceService's.
    return {"metadata": {"name": "iris", "generation": 7}, "status": body}


def test_nothing_is_observed_before_kserve_has_the_inference_service() -> None:
    observed = BACKEND.observe(service(), Serving(1), {"iris": None})
    assert (observed.exists, observed.current, observed.ready) == (False, False, False)
    assert "no InferenceService" in observed.message


def test_a_ready_inference_service_whose_newest_revision_is_ready_is_current_and_ready() -> None:
    observed = BACKEND.observe(service(), Serving(1), {"iris": kserve_isvc()})
    assert (observed.exists, observed.current, observed.ready, observed.failed) == (True, True, True, False)
    assert observed.url == "http://iris.ml.example.com"
    assert observed.canary_traffic is None


@pytest.mark.parametrize(
    ("created", "ready_revision"), [("iris-predictor-00003", "iris-predictor-00002"), (None, None)]
)
def test_knative_is_not_current_until_its_newest_revision_is_ready(
    created: str | None, ready_revision: str | None
) -> None:
    isvc = kserve_isvc(created=created, ready_revision=ready_revision)
    assert not BACKEND.observe(service(), Serving(1), {"iris": isvc}).current


def test_standard_is_current_once_kserve_reports_the_canary_at_the_percentage_asked() -> None:
    context = service("Standard")
    asked = kserve_isvc(canaryStatuses=[{"name": "v2", "ready": True, "trafficPercent": 25}])
    assert BACKEND.observe(context, Serving(1, 2, 25), {"iris": asked}).current
    assert not BACKEND.observe(context, Serving(1, 2, 50), {"iris": asked}).current
    assert not BACKEND.observe(context, Serving(1, 3, 25), {"iris": asked}).current
    # Without a canary, KServe is current once it no longer reports one.
    assert not BACKEND.observe(context, Serving(2), {"iris": asked}).current
    assert BACKEND.observe(context, Serving(2), {"iris": kserve_isvc()}).current


@pytest.mark.parametrize("ready", ["False", "Unknown", None])
def test_an_inference_service_without_a_true_ready_condition_is_not_ready(ready: str | None) -> None:
    observed = BACKEND.observe(service(), Serving(1), {"iris": kserve_isvc(ready=ready)})
    assert not observed.ready
    assert not observed.failed


def test_a_model_that_failed_to_load_is_failed_saying_why() -> None:
    model_status = {
        "transitionStatus": "BlockedByFailedLoad",
        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no model.joblib at s3://models/iris/2"},
    }
    isvc = kserve_isvc(ready="False", modelStatus=model_status)
    observed = BACKEND.observe(service(), Serving(2), {"iris": isvc})
    assert observed.failed
    assert observed.message == "no model.joblib at s3://models/iris/2"


def test_knative_canary_traffic_is_what_the_latest_revision_gets() -> None:
    traffic = [
        {"revisionName": "iris-predictor-00002", "percent": 25, "latestRevision": True, "tag": "latest"},
        {"revisionName": "iris-predictor-00001", "percent": 75, "latestRevision": False, "tag": "prev"},
    ]
    observed = BACKEND.observe(service(), Serving(1, 2, 25), {"iris": kserve_isvc(traffic=traffic)})
    assert observed.canary_traffic == 25


def test_knative_canary_traffic_at_zero_reads_zero_and_without_a_latest_revision_unknown() -> None:
    pinned = [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "tag": "latest"},
        {"revisionName": "iris-predictor-00001", "percent": 100, "latestRevision": False},
    ]
    observed = BACKEND.observe(service(), Serving(1, 2, 0), {"iris": kserve_isvc(traffic=pinned)})
    assert observed.canary_traffic == 0
    old = [{"revisionName": "iris-predictor-00001", "percent": 100, "latestRevision": False}]
    observed = BACKEND.observe(service(), Serving(1, 2, 10), {"iris": kserve_isvc(traffic=old)})
    assert observed.canary_traffic is None


def standard_current(weight: int, ready: bool) -> dict[str, Any]:
    context = service("Standard")
    isvc = kserve_isvc(canaryStatuses=[{"name": "v2", "ready": ready, "trafficPercent": weight}])
    _, route = BACKEND.render(context, Serving(1, 2, weight), {"iris": isvc})
    return {"iris": isvc, "iris-traffic": route}


def test_standard_canary_traffic_is_the_routes_weight_once_kserve_reports_the_canary_ready() -> None:
    observed = BACKEND.observe(service("Standard"), Serving(1, 2, 25), standard_current(25, ready=True))
    assert observed.canary_traffic == 25


def test_standard_canary_traffic_is_zero_while_kserve_reports_the_canary_not_ready() -> None:
    current = standard_current(25, ready=True)
    current["iris"]["status"]["canaryStatuses"] = [{"name": "v2", "ready": False}]
    observed = BACKEND.observe(service("Standard"), Serving(1, 2, 25), current)
    assert observed.canary_traffic == 0
    assert "v2 not ready" in observed.message


def test_standard_canary_traffic_is_unknown_without_the_route_and_zero_when_it_lacks_the_canary() -> None:
    current = standard_current(25, ready=True)
    without_route = {"iris": current["iris"], "iris-traffic": None}
    assert BACKEND.observe(service("Standard"), Serving(1, 2, 25), without_route).canary_traffic is None
    _, stable_route = BACKEND.render(service("Standard"), Serving(1), REPORTED)
    old_route = {"iris": current["iris"], "iris-traffic": stable_route}
    assert BACKEND.observe(service("Standard"), Serving(1, 2, 25), old_route).canary_traffic == 0


def test_standard_keeps_a_retiring_version_beside_the_new_stable_one_without_traffic() -> None:
    # After a promotion, version 1 keeps its Deployment in the canary's slot at 0%, with the stable's
    # replicas (KServe would size a 0% canary to none), and the route sends it nothing.
    context = service("Standard", predictor={"minReplicas": 2})
    isvc, route = rendered(context, Serving(2, retiring=1), REPORTED)
    assert isvc["spec"]["predictor"]["name"] == "v2"
    (kept,) = isvc["spec"]["canary"]
    assert (kept["predictor"]["name"], kept["trafficPercent"]) == ("v1", 0)
    assert kept["predictor"]["minReplicas"] == 2
    assert kept["predictor"]["model"]["storageUri"] == "s3://models/iris/1"
    assert backends(route) == [("iris-v2-predictor", 80, 100)]
    isvc, _ = rendered(service("Standard"), Serving(2, retiring=1), REPORTED)
    assert isvc["spec"]["canary"][0]["predictor"]["minReplicas"] == 1
    # Once it has retired, KServe removes its Deployment.
    isvc, _ = rendered(service("Standard"), Serving(2), REPORTED)
    assert "canary" not in isvc["spec"]


def test_a_retiring_version_whose_model_version_is_gone_is_not_rendered() -> None:
    context = ServiceContext("ml", "iris", "uid-1", service("Standard").spec, {2: VERSIONS[2]})
    isvc, _ = rendered(context, Serving(2, retiring=1), REPORTED)
    assert "canary" not in isvc["spec"]


def test_knative_keeps_no_retiring_predictor_of_its_own() -> None:
    # Knative keeps the previous revisions itself: the promoted predictor is rendered as without one.
    assert rendered(service("Knative"), Serving(2, retiring=1)) == rendered(service("Knative"), Serving(2))


def test_standard_is_current_with_a_retiring_version_once_kserve_reports_it_at_zero() -> None:
    context = service("Standard")
    kept = kserve_isvc(canaryStatuses=[{"name": "v1", "ready": True, "trafficPercent": 0}])
    assert BACKEND.observe(context, Serving(2, retiring=1), {"iris": kept}).current
    assert not BACKEND.observe(context, Serving(2, retiring=1), {"iris": kserve_isvc()}).current
    assert not BACKEND.observe(context, Serving(2), {"iris": kept}).current
