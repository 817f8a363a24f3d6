"""An InferenceService's pass as a pure decision (``plan_service``): what the controller once decided by
itself (a backend that cannot change, a version that is gone, a split a backend cannot route) is decided
and tested here, next to the status and conditions it writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from modelloop.api import Backend, DeploymentMode, InferenceServiceSpec
from modelloop.api.inferenceservice import InferenceServiceStatus
from modelloop.machinery.status import status_patch
from modelloop.serving.backend import InvalidTraffic, OwnedObject, ServiceContext
from modelloop.serving.kserve import KServeBackend
from modelloop.serving.plan import backend_change, plan_service, version_infos
from modelloop.serving.rollout import Observed, Serving

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"name": "iris"}, **fields})


def version(number: int) -> dict[str, Any]:
    return {
        "spec": {"modelName": "iris", "version": number, "artifact": {"uri": f"s3://m/iris/{number}"}},
        "status": {"phase": "Validated"},
    }


def context(service: InferenceServiceSpec, versions: list[dict[str, Any]]) -> ServiceContext:
    return ServiceContext("ml", "iris", "uid-1", service, version_infos(versions))


class Refusing:
    """A backend that cannot route what it is asked (as Seldon refuses weights that do not sum to 100)."""

    def owned(self, service: ServiceContext) -> list[OwnedObject]:
        return []

    def render(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        raise InvalidTraffic("weights must sum to 100, not v1=60, v2=60")

    def observe(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> Observed:
        return Observed()


@dataclass(frozen=True)
class Planned:
    """A plan as the tests read it: its status as stored, and the merge patch the writer sends."""

    status: dict[str, Any]
    patch: dict[str, Any]
    manifests: list[dict[str, Any]]


def plan(
    service: InferenceServiceSpec,
    previous: dict[str, Any],
    versions: list[dict[str, Any]],
    backend: Any = None,
    observed: Observed | None = None,
    action: str | None = None,
) -> Planned:
    backend = backend or KServeBackend()
    result = plan_service(
        service,
        InferenceServiceStatus.model_validate(previous),
        versions,
        context(service, versions),
        backend,
        {},
        observed or Observed(),
        action,
        [],
        NOW,
        3,
        {"deployment_mode": DeploymentMode.STANDARD},
    )
    stored = result.status.model_dump(mode="json", exclude_none=True)
    return Planned(stored, status_patch(previous, result.status), result.manifests)


def test_a_new_service_serves_the_newest_validated_version_and_says_it_waits_for_the_backend() -> None:
    result = plan(spec(), {}, [version(1), version(2)])

    assert result.status["stableVersion"] == 2
    assert [m["kind"] for m in result.manifests] == ["InferenceService"]
    assert result.status["backend"] == "kserve" and result.status["deploymentMode"] == "Standard"
    assert result.status["observedGeneration"] == 3
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "BackendNotReady")
    assert ready["lastTransitionTime"] == "2026-11-01T12:00:00Z"


def test_a_version_served_that_no_longer_exists_degrades_the_service_and_writes_nothing() -> None:
    # Version 1 serves; its ModelVersion was deleted, and nothing newer is validated.
    previous = {"phase": "Stable", "stableVersion": 1, "backend": "kserve"}

    result = plan(spec(model={"name": "iris", "version": 1}), previous, [])

    assert result.status["phase"] == "Degraded"
    assert result.status["reason"] == "VersionMissing"
    assert "ModelVersion 1 of model iris no longer exists" in result.status["message"]
    assert result.manifests == []


def test_a_split_the_backend_cannot_route_degrades_the_service_and_writes_nothing() -> None:
    result = plan(spec(), {}, [version(1)], backend=Refusing())

    assert (result.status["phase"], result.status["reason"]) == ("Degraded", "InvalidTraffic")
    assert result.status["message"] == "weights must sum to 100, not v1=60, v2=60; nothing was written."
    assert result.manifests == []


def test_a_changed_backend_is_refused_naming_both() -> None:
    kserve = InferenceServiceStatus(backend=Backend.KSERVE)
    assert backend_change(spec(backend="seldon"), kserve) == (
        "spec.backend changed from kserve to seldon, which this service cannot follow: it goes on "
        "serving on kserve. Create a new InferenceService instead."
    )
    assert backend_change(spec(backend="kserve"), kserve) is None
    # Not deployed yet: any backend.
    assert backend_change(spec(backend="seldon"), InferenceServiceStatus()) is None


@pytest.mark.parametrize(("previous_action", "cleared"), [("promote@1", True), (None, False)])
def test_an_action_annotation_that_is_gone_is_forgotten(previous_action: str | None, cleared: bool) -> None:
    previous = {"phase": "Stable", "stableVersion": 1, "backend": "kserve"}
    if previous_action:
        previous["action"] = previous_action

    result = plan(spec(), previous, [version(1)], observed=Observed(exists=True, current=True, ready=True))

    assert ("action" in result.patch and result.patch["action"] is None) is cleared
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")


def test_versions_without_a_number_are_not_offered_to_a_backend() -> None:
    infos = version_infos([version(2), {"spec": {"modelName": "iris"}}, {"spec": {"version": "3"}}])
    assert list(infos) == [2]
    assert infos[2].artifact_uri == "s3://m/iris/2" and infos[2].framework == "sklearn"
    assert infos[2].digest is None


def test_a_versions_recorded_digest_is_offered_to_its_backend() -> None:
    recorded = version(4)
    recorded["spec"]["artifact"]["digest"] = "sha256:" + "c" * 64
    assert version_infos([recorded])[4].digest == "sha256:" + "c" * 64
