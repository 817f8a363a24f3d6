"""The serving backends: every :class:`BackendPlugin` modelloop knows, and what follows from them.

This is the one list of backends. The controller makes its backends, watches their kinds and applies
their manifests through it; ``make crds`` (hack/sync_backends.py) copies what the API needs of each into
``modelloop.api.backends`` (``spec.backend``'s values, the CEL rules), writes the operator's RBAC rules
for their kinds and the capability table of the README. A new backend is one module with its plugin,
one line here, and ``make crds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelloop.api.backend import BackendDeclaration, either
from modelloop.serving import kserve, seldon
from modelloop.serving.backend import BackendPlugin, OwnedKind, ServingBackend
from modelloop.settings import Settings

BACKENDS: tuple[BackendPlugin, ...] = (kserve.PLUGIN, seldon.PLUGIN)
"""Every serving backend, in the order the API and the docs list them."""

DEFAULT_BACKEND: BackendPlugin = kserve.PLUGIN
"""The backend of an InferenceService whose spec names none."""


def check_backends(plugins: Sequence[BackendPlugin], default: BackendPlugin) -> None:
    """Refuse a list of backends that cannot work together: a name twice, a default not in the list, one
    kind (API version and kind) owned under two plurals."""
    names = [plugin.name for plugin in plugins]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"backends registered twice: {', '.join(twice)}")
    if default not in plugins:
        raise ValueError(f"the default backend {default.name} is not registered")
    plurals: dict[tuple[str, str], str] = {}
    for kind in (kind for plugin in plugins for kind in plugin.owns):
        if plurals.setdefault((kind.api_version, kind.kind), kind.plural) != kind.plural:
            raise ValueError(f"{kind.kind} ({kind.api_version}) is owned under two plurals")


check_backends(BACKENDS, DEFAULT_BACKEND)


def backend_plugin(name: str, plugins: Sequence[BackendPlugin] = BACKENDS) -> BackendPlugin:
    """The plugin of the backend ``name`` (a ``spec.backend`` value)."""
    for plugin in plugins:
        if plugin.name == name:
            return plugin
    raise KeyError(f"no serving backend {name!r}: modelloop has {either([p.name for p in plugins])}")


def declarations(plugins: Sequence[BackendPlugin] = BACKENDS) -> tuple[BackendDeclaration, ...]:
    """What the API needs of every backend (``modelloop.api.backends.BACKENDS`` holds a copy)."""
    return tuple(plugin.declaration() for plugin in plugins)


def create_backends(
    settings: Settings, plugins: Sequence[BackendPlugin] = BACKENDS
) -> dict[str, ServingBackend]:
    """One backend of each plugin, by name, made with the operator's settings."""
    return {plugin.name: plugin.create(settings) for plugin in plugins}


def owned_kinds(plugins: Sequence[BackendPlugin] = BACKENDS) -> tuple[OwnedKind, ...]:
    """Every kind a backend owns, once each (the first plugin's declaration of it wins)."""
    kinds: dict[tuple[str, str], OwnedKind] = {}
    for kind in (kind for plugin in plugins for kind in plugin.owns):
        kinds.setdefault((kind.api_version, kind.kind), kind)
    return tuple(kinds.values())


def watched_kinds(plugins: Sequence[BackendPlugin] = BACKENDS) -> tuple[OwnedKind, ...]:
    """The kinds whose events move a rollout on: the controller watches each of them."""
    return tuple(kind for kind in owned_kinds(plugins) if kind.watched)


def plural_of(api_version: str, kind: str, plugins: Sequence[BackendPlugin] = BACKENDS) -> str:
    """The resource (plural) of a kind a backend owns, where its manifests are applied."""
    for owned in owned_kinds(plugins):
        if (owned.api_version, owned.kind) == (api_version, kind):
            return owned.plural
    raise KeyError(f"no serving backend owns {kind} ({api_version})")


def rbac_rules(
    plugins: Sequence[BackendPlugin] = BACKENDS,
) -> list[tuple[BackendPlugin, list[dict[str, Any]]]]:
    """The operator's ClusterRole rules for the backends' kinds, by backend (a kind two backends own is
    granted with the first): what manifests/operator/rbac.yaml grants between its serving markers."""
    granted: set[tuple[str, str]] = set()
    rules: list[tuple[BackendPlugin, list[dict[str, Any]]]] = []
    for plugin in plugins:
        own = []
        for kind in plugin.owns:
            if (kind.group, kind.plural) in granted:
                continue
            granted.add((kind.group, kind.plural))
            own.append({"apiGroups": [kind.group], "resources": [kind.plural], "verbs": list(kind.verbs)})
        rules.append((plugin, own))
    return rules
