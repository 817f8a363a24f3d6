"""The Seldon backend: the SeldonDeployment it renders for each Serving, and what it reads back.

Every rendered object is checked against Seldon's real CRD (../shared/crds, tag v1.18.2; the schema of
``machinelearning.seldon.io/v1`` is the same as 1.17.1's for the fields written here). Seldon's webhook,
which refuses non-shadow weights that do not sum to 100, is not in the CRD: that rule is modelloop's own
check, tested here over every Serving the state machine can ask for.
"""

from __future__ import annotations

from typing import Any

import pytest

from crd_schema import SHARED_CRDS, crd_schema, schema_errors
from modelloop.api import InferenceServiceSpec
from modelloop.naming import LABEL_INFERENCE_SERVICE
from modelloop.serving.backend import OwnedObject, ServiceContext, VersionInfo
from modelloop.serving.rollout import Serving
from modelloop.serving.seldon import InvalidTraffic, SeldonBackend, check_weights

SELDON_CRD = SHARED_CRDS / "machinelearning.seldon.io_seldondeployments.yaml"
VERSIONS = {
    1: VersionInfo(1, "iris", "s3://models/iris/1", "sklearn"),
    2: VersionInfo(2, "iris", "s3://models/iris/2", "sklearn"),
}
BACKEND = SeldonBackend()


def service(**spec: Any) -> ServiceContext:
    body: dict[str, Any] = {"model": {"name": "iris"}, "backend": "seldon", **spec}
    return ServiceContext("ml", "iris", "uid-1", InferenceServiceSpec.model_validate(body), VERSIONS)


def render(context: ServiceContext, serving: Serving) -> dict[str, Any]:
    (sdep,) = BACKEND.render(context, serving, {})
    schema = crd_schema(SELDON_CRD, "v1")
    assert schema_errors({k: v for k, v in sdep.items() if k != "metadata"}, schema) == [], sdep
    return sdep


def weights(sdep: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    return {p["name"]: (p["traffic"], bool(p.get("shadow"))) for p in sdep["spec"]["predictors"]}


def with_status(sdep: dict[str, Any], generation: int = 2, observed: int | None = 2, **status: Any) -> Any:
    sdep["metadata"]["generation"] = generation
    if observed is not None:
        status["observedGeneration"] = observed
    return {**sdep, "status": status}


AVAILABLE = {
    "state": "Available",
    "address": {"url": "http://iris-default.ml.svc.cluster.local:8000/api/v1.0/predictions"},
    "deploymentStatus": {
        "iris-v1-0-model": {"replicas": 2, "availableReplicas": 2},
        "iris-v2-0-model": {"replicas": 1, "availableReplicas": 0},
    },
}


def test_the_stable_version_alone_takes_all_traffic_with_its_artifact_and_modelloops_server() -> None:
    sdep = render(service(), Serving(1))
    assert sdep["apiVersion"] == "machinelearning.seldon.io/v1"
    assert sdep["metadata"]["labels"][LABEL_INFERENCE_SERVICE] == "iris"
    assert sdep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    (predictor,) = sdep["spec"]["predictors"]
    assert predictor["name"] == "v1" and predictor["traffic"] == 100
    graph = predictor["graph"]
    assert graph["implementation"] == "MODELLOOP_SERVER"
    assert graph["modelUri"] == "s3://models/iris/1"
    assert graph["parameters"] == [{"name": "model_version", "type": "STRING", "value": "1"}]
    (container,) = predictor["componentSpecs"][0]["spec"]["containers"]
    assert container["name"] == graph["name"]  # Seldon pairs the graph node and its container by name
    assert "image" not in container  # seldon-config's predictor_servers names it
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # seldon-core needs a writable /tmp under a read-only root.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert predictor["componentSpecs"][0]["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert predictor["labels"]["version"] == "1"


def test_each_versions_server_gets_the_digest_its_model_version_records_to_check() -> None:
    digests = {1: "sha256:" + "a" * 64, 2: None}
    versions = {n: VersionInfo(n, "iris", f"s3://models/iris/{n}", "sklearn", digests[n]) for n in (1, 2)}
    body = {"model": {"name": "iris"}, "backend": "seldon"}
    context = ServiceContext("ml", "iris", "uid-1", InferenceServiceSpec.model_validate(body), versions)

    sdep = render(context, Serving(1, 2, 10))

    env = {
        p["name"]: p["componentSpecs"][0]["spec"]["containers"][0]["env"] for p in sdep["spec"]["predictors"]
    }
    assert env["v1"] == [
        {"name": "MODELLOOP_MODEL_VERSION", "value": "1"},
        {"name": "MODELLOOP_ARTIFACT_DIGEST", "value": "sha256:" + "a" * 64},
    ]
    assert env["v2"] == [{"name": "MODELLOOP_MODEL_VERSION", "value": "2"}]  # none recorded: none checked


@pytest.mark.parametrize("weight", [0, 10, 50, 90, 100])
def test_a_canary_gets_its_weight_and_the_stable_version_the_rest(weight: int) -> None:
    sdep = render(service(), Serving(1, 2, weight))
    assert weights(sdep) == {"v1": (100 - weight, False), "v2": (weight, False)}


def test_champion_challenger_at_90_10_is_a_first_step_of_10() -> None:
    context = service(rollout={"steps": [10, 100]})
    assert weights(render(context, Serving(1, 2, 10))) == {"v1": (90, False), "v2": (10, False)}


def test_a_shadow_canary_is_mirrored_and_the_stable_version_keeps_all_traffic() -> None:
    sdep = render(service(rollout={"steps": [100], "shadow": True}), Serving(1, 2, 0, shadow=True))
    assert weights(sdep) == {"v1": (100, False), "v2": (0, True)}


def test_no_serving_the_state_machine_can_ask_for_renders_weights_that_do_not_sum_to_100() -> None:
    context = service()
    for serving in [
        Serving(1),
        *(Serving(1, 2, weight) for weight in range(101)),
        *(Serving(1, 2, weight, shadow=True) for weight in range(101)),
    ]:
        predictors = render(context, serving)["spec"]["predictors"]
        assert sum(p["traffic"] for p in predictors if not p.get("shadow")) == 100, serving


@pytest.mark.parametrize(
    "predictors",
    [
        [{"name": "v1", "traffic": 90}],
        [{"name": "v1", "traffic": 90}, {"name": "v2", "traffic": 20}],
        [{"name": "v1", "traffic": 110}, {"name": "v2", "traffic": -10}],
        [{"name": "v1", "traffic": 50}, {"name": "v2", "traffic": 50, "shadow": True}],
    ],
)
def test_weights_seldons_webhook_would_refuse_are_refused_before_any_write(
    predictors: list[dict[str, Any]],
) -> None:
    with pytest.raises(InvalidTraffic, match="must sum to 100"):
        check_weights(predictors)


def test_a_weight_the_state_machine_should_never_ask_for_is_refused_by_render() -> None:
    with pytest.raises(InvalidTraffic, match="v1=-10, v2=110"):
        BACKEND.render(service(), Serving(1, 2, 110), {})


def test_predictor_settings_map_to_replicas_hpa_resources_gpus_and_service_account() -> None:
    context = service(
        predictor={
            "minReplicas": 2,
            "maxReplicas": 5,
            "resources": {"cpu": "500m", "memory": "1Gi", "gpus": 1},
            "serviceAccountName": "models-reader",
        },
        seldon={"image": "registry.example.com/seldon:1.0", "implementation": "CUSTOM_SERVER"},
        logger={"url": "http://detector.ml:8080/", "mode": "request"},
    )
    (predictor,) = render(context, Serving(1))["spec"]["predictors"]
    assert predictor["replicas"] == 2
    component = predictor["componentSpecs"][0]
    assert component["hpaSpec"] == {"minReplicas": 2, "maxReplicas": 5}
    (container,) = component["spec"]["containers"]
    assert container["image"] == "registry.example.com/seldon:1.0"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "1Gi", "nvidia.com/gpu": "1"},
    }
    graph = predictor["graph"]
    assert graph["implementation"] == "CUSTOM_SERVER"
    assert graph["serviceAccountName"] == "models-reader"
    assert graph["logger"] == {"url": "http://detector.ml:8080/", "mode": "request"}


def test_it_owns_one_seldon_deployment_named_after_the_service() -> None:
    assert BACKEND.owned(service()) == [
        OwnedObject("seldondeployments", "machinelearning.seldon.io/v1", "iris")
    ]


# What Seldon reports.


def test_no_seldon_deployment_yet_is_not_current() -> None:
    observed = BACKEND.observe(service(), Serving(1), {})
    assert not observed.exists and not observed.current
    assert "no SeldonDeployment" in observed.message


def test_a_generation_seldon_has_not_observed_is_not_current_even_if_it_said_available() -> None:
    sdep = with_status(render(service(), Serving(1, 2, 10)), generation=3, observed=2, **AVAILABLE)
    observed = BACKEND.observe(service(), Serving(1, 2, 10), {"iris": sdep})
    assert not observed.current and not observed.ready


def test_an_available_deployment_reports_the_weight_written_its_state_replicas_and_address() -> None:
    sdep = with_status(render(service(), Serving(1, 2, 10)), **AVAILABLE)
    observed = BACKEND.observe(service(), Serving(1, 2, 10), {"iris": sdep})
    assert observed.current and observed.ready and not observed.failed
    assert observed.canary_traffic == 10 and not observed.shadow
    assert (observed.state, observed.replicas, observed.available_replicas) == ("Available", 3, 2)
    assert observed.url == AVAILABLE["address"]["url"]


def test_a_deployment_still_creating_gives_the_canary_no_traffic_yet() -> None:
    sdep = with_status(render(service(), Serving(1, 2, 10)), state="Creating")
    observed = BACKEND.observe(service(), Serving(1, 2, 10), {"iris": sdep})
    assert observed.current and not observed.ready
    assert observed.canary_traffic == 0
    assert "Creating" in observed.message


def test_a_shadow_predictor_is_reported_mirrored_with_no_traffic() -> None:
    context = service(rollout={"steps": [100], "shadow": True})
    sdep = with_status(render(context, Serving(1, 2, 0, shadow=True)), **AVAILABLE)
    observed = BACKEND.observe(context, Serving(1, 2, 0, shadow=True), {"iris": sdep})
    assert observed.shadow and observed.canary_traffic == 0


def test_the_object_as_read_must_hold_the_predictors_asked_for() -> None:
    sdep = with_status(render(service(), Serving(1)), **AVAILABLE)
    observed = BACKEND.observe(service(), Serving(1, 2, 10), {"iris": sdep})
    assert not observed.current
    assert observed.canary_traffic is None


def test_a_failed_deployment_is_failed_with_seldons_description() -> None:
    sdep = with_status(render(service(), Serving(1)), state="Failed", description="image pull failed")
    observed = BACKEND.observe(service(), Serving(1), {"iris": sdep})
    assert observed.failed and not observed.ready
    assert observed.message == "image pull failed"


def test_a_seldon_without_observed_generation_is_current_once_it_reports_a_final_state() -> None:
    creating = with_status(render(service(), Serving(1)), observed=None, state="Creating")
    assert not BACKEND.observe(service(), Serving(1), {"iris": creating}).current
    available = with_status(render(service(), Serving(1)), observed=None, state="Available")
    assert BACKEND.observe(service(), Serving(1), {"iris": available}).ready


def test_a_retiring_version_keeps_its_predictor_at_zero_until_it_goes() -> None:
    assert weights(render(service(), Serving(2, retiring=1))) == {"v2": (100, False), "v1": (0, False)}
    assert weights(render(service(), Serving(2))) == {"v2": (100, False)}
    # Its ModelVersion gone, it cannot be rendered any more: it goes at once.
    gone = ServiceContext("ml", "iris", "uid-1", service().spec, {2: VERSIONS[2]})
    assert weights(render(gone, Serving(2, retiring=1))) == {"v2": (100, False)}


def test_a_deployment_with_the_retiring_predictor_is_current_for_the_ask_that_keeps_it() -> None:
    kept = with_status(render(service(), Serving(2, retiring=1)), **AVAILABLE)
    assert BACKEND.observe(service(), Serving(2, retiring=1), {"iris": kept}).current
    assert not BACKEND.observe(service(), Serving(2), {"iris": kept}).current
    alone = with_status(render(service(), Serving(2)), **AVAILABLE)
    assert BACKEND.observe(service(), Serving(2, retiring=1), {"iris": alone}).current
    assert BACKEND.observe(service(), Serving(2), {"iris": alone}).current
