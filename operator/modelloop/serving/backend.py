"""The one small interface between the rollout state machine and a serving platform (KServe, Seldon Core).

A backend renders what to serve into the objects the operator owns on that platform, and reads back from
those objects what the platform really does (ready or not, the traffic the canary really gets). The state
machine (``rollout.decide``) knows nothing else about the platform.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelloop.api import InferenceServiceSpec, Predictor
from modelloop.naming import LABEL_MANAGED_BY, MANAGED_BY, owner_reference
from modelloop.serving.rollout import Observed, Serving

LABEL_INFERENCE_SERVICE = "modelloop.dev/inference-service"


class InvalidTraffic(ValueError):
    """A backend refuses to render a traffic split it cannot route exactly (Seldon: weights of the
    non-shadow predictors that do not sum to 100); nothing is written."""


@dataclass(frozen=True)
class VersionInfo:
    """What a backend needs of a ModelVersion to serve it."""

    number: int
    model: str
    artifact_uri: str
    framework: str


@dataclass(frozen=True)
class ServiceContext:
    """One InferenceService of ours, as a backend sees it."""

    namespace: str
    name: str
    uid: str
    spec: InferenceServiceSpec
    versions: Mapping[int, VersionInfo]

    def metadata(self, name: str, **extra: Any) -> dict[str, Any]:
        """The metadata of an object a backend owns for this service: its labels and owner reference."""
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": {LABEL_INFERENCE_SERVICE: self.name, LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [self.owner_reference()],
            **extra,
        }

    def owner_reference(self) -> dict[str, Any]:
        # Deleting our InferenceService deletes what it owns; no finalizer rights on KServe's or Seldon's
        # kinds are needed to block it.
        owner = {"metadata": {"name": self.name, "uid": self.uid}}
        return owner_reference(owner, "InferenceService", block_deletion=False)


@dataclass(frozen=True)
class OwnedObject:
    """An object a backend owns: its resource (plural), API version, and name."""

    plural: str
    api_version: str
    name: str


class ServingBackend(Protocol):
    """A serving platform."""

    def owned(self, service: ServiceContext) -> list[OwnedObject]:
        """The objects this backend owns for ``service`` (read before each pass)."""
        ...

    def render(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """The manifests to server-side apply so that the platform serves ``serving``; ``current``
        holds the owned objects as they are now (by name; None when absent)."""
        ...

    def observe(
        self, service: ServiceContext, serving: Serving, current: Mapping[str, dict[str, Any] | None]
    ) -> Observed:
        """What the platform reports about serving ``serving``."""
        ...


def resource_requirements(settings: Predictor) -> dict[str, Any]:
    """A predictor container's requests and limits: memory and GPUs limited to what is requested."""
    wanted = settings.resources
    if wanted is None:
        return {}
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if wanted.cpu is not None:
        requests["cpu"] = str(wanted.cpu)
    if wanted.memory is not None:
        requests["memory"] = limits["memory"] = str(wanted.memory)
    if wanted.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(wanted.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
