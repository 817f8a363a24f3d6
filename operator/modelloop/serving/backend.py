"""The one small interface between the rollout state machine and a serving platform (KServe, Seldon Core),
and the plugin that declares such a platform to the rest of modelloop.

A backend renders what to serve into the objects the operator owns on that platform, and reads back from
those objects what the platform really does (ready or not, the traffic the canary really gets). The state
machine (``rollout.decide``) knows nothing else about the platform.

A :class:`BackendPlugin` says, in one place, everything else the operator needs to know of a backend:
its name, settings and capabilities (copied into the API: ``spec.backend``, the CEL rules, the docs),
the kinds it owns (the controller's watches, the RBAC rules, where to apply a manifest), the status it
adds, and how to make its :class:`ServingBackend`. ``modelloop.serving.backends`` lists the plugins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelloop.api import ApiModel, InferenceServiceSpec, InferenceServiceStatus, Predictor
from modelloop.api.backend import BackendCapabilities, BackendDeclaration
from modelloop.naming import LABEL_INFERENCE_SERVICE, LABEL_MANAGED_BY, MANAGED_BY, owner_reference
from modelloop.serving.rollout import Observed, Serving
from modelloop.settings import Settings


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
    digest: str | None = None
    """The artifact's recorded digest (``spec.artifact.digest``), which the model server checks."""


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

    def own_status(self, service: ServiceContext) -> Mapping[str, Any]:
        """The InferenceServiceStatus fields this backend sets itself (by field name, e.g. KServe's
        ``deployment_mode``); the plugin's ``status_fields`` names them."""
        ...


@dataclass(frozen=True)
class OwnedKind:
    """A kind of object a backend writes for a service (a kind of the platform's API group): server-side
    applied (create the first time, then patch) and read back, never deleted (owner references let the
    garbage collector remove it with the service). A watched kind is listed and watched too: what the
    platform reports there moves a rollout on, so each of its events looks at the owning service again."""

    api_version: str
    kind: str
    plural: str
    watched: bool = False

    @property
    def group(self) -> str:
        """Its API group, e.g. ``serving.kserve.io``."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        """Its API version within the group, e.g. ``v1beta1``."""
        return self.api_version.rpartition("/")[2]

    @property
    def verbs(self) -> tuple[str, ...]:
        """What the operator does with it, as RBAC verbs."""
        return ("get", "list", "watch", "create", "patch") if self.watched else ("get", "create", "patch")


@dataclass(frozen=True)
class BackendPlugin:
    """Everything modelloop knows of one serving backend, in one place."""

    name: str
    """The ``spec.backend`` value, and the name of the settings block ``spec.<name>``."""
    title: str
    """The platform's name in messages and docs, e.g. ``KServe``."""
    summary: str
    """What it renders for a service, in a sentence of the docs and of the RBAC rules' comment."""
    owns: tuple[OwnedKind, ...]
    """The kinds it writes and reads: the controller's watches, the RBAC rules, where a manifest goes."""
    create: Callable[[Settings], ServingBackend]
    """Makes the backend, with the operator's settings (its defaults)."""
    capabilities: BackendCapabilities
    """What it can do (the CEL rules and the docs follow)."""
    settings: type[ApiModel] | None = None
    """The model of ``spec.<name>`` (a field of InferenceServiceSpec), if it has settings."""
    status_fields: tuple[str, ...] = ()
    """The InferenceServiceStatus fields that only this backend fills (by field name)."""

    def __post_init__(self) -> None:
        # A plugin that cannot be a backend fails where it is written, not at `make crds` or at start-up.
        self.declaration()  # checks the name
        unknown = [f for f in self.status_fields if f not in InferenceServiceStatus.model_fields]
        if unknown:
            raise ValueError(f"backend {self.name}: InferenceServiceStatus has no field {', '.join(unknown)}")
        for kind in self.owns:
            if not re.fullmatch(r"[a-z0-9.-]+/v[a-z0-9]+", kind.api_version):
                raise ValueError(f"backend {self.name}: {kind.api_version!r} is not group/version")

    def declaration(self) -> BackendDeclaration:
        """What the API needs of this backend (``make crds`` copies it into ``modelloop.api.backends``)."""
        return BackendDeclaration(self.name, self.title, self.settings is not None, self.capabilities)


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
