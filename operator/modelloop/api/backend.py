"""What the API knows of a serving backend: its name, whether it has a settings block, and what it can do.

A serving backend is a plugin (``modelloop.serving.backends`` lists them). The API sits below the
plugins and cannot import them, so ``make crds`` copies what the API needs of each plugin into
``modelloop.api.backends``; the InferenceService's ``spec.backend`` values, the CEL rules that tie a
backend's settings and capabilities to it, and the same checks in the pydantic model all follow from
those declarations through the functions here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .meta import CelRule

BACKEND_NAME_PATTERN = r"^[a-z][a-z0-9]*$"
"""A backend's name is its ``spec.backend`` value and the name of its settings block (``spec.<name>``):
lower-case letters and digits, so that it is also a Python identifier and its own camelCase."""


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do beyond serving a stable version and a canary by weight."""

    shadow: bool = False
    """It can mirror the traffic to the canary before its first step (``spec.rollout.shadow``)."""
    header_routing: bool = False
    """It can route requests by header."""
    max_versions: int = 2
    """The versions it serves at once (the stable one and the canary: 2)."""


@dataclass(frozen=True)
class BackendDeclaration:
    """One serving backend as the API sees it."""

    name: str
    """Its ``spec.backend`` value, e.g. ``kserve``."""
    title: str
    """Its name in messages and docs, e.g. ``KServe``."""
    settings: bool
    """Whether ``spec.<name>`` holds settings of this backend (a field of InferenceServiceSpec)."""
    capabilities: BackendCapabilities

    def __post_init__(self) -> None:
        if not re.fullmatch(BACKEND_NAME_PATTERN, self.name):
            raise ValueError(f"backend name {self.name!r} must match {BACKEND_NAME_PATTERN}")


def either(words: Sequence[str], conjunction: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def backend_choices(declarations: Sequence[BackendDeclaration]) -> str:
    """The backends a user may name, as a description says it: ``kserve or seldon``."""
    return either([declaration.name for declaration in declarations])


def shadow_choices(declarations: Sequence[BackendDeclaration]) -> str:
    """The backends that can mirror traffic, as a description says it: ``seldon`` (``no`` for none)."""
    return either([d.name for d in declarations if d.capabilities.shadow]) or "no"


def _settings_message(declaration: BackendDeclaration) -> str:
    return f"spec.{declaration.name} applies to the {declaration.name} backend only"


def _shadow_message(declarations: Sequence[BackendDeclaration]) -> str:
    able = [d.name for d in declarations if d.capabilities.shadow]
    unable = [d.title for d in declarations if not d.capabilities.shadow]
    if not able:
        return "spec.rollout.shadow needs a backend that can mirror traffic, and none can"
    return (
        f"spec.rollout.shadow needs the {either(able)} backend "
        f"({either(unable, 'and')} cannot mirror traffic)"
    )


def backend_rules(declarations: Sequence[BackendDeclaration]) -> tuple[CelRule, ...]:
    """The CEL rules on an InferenceService's spec that follow from its backends: a backend's settings
    only with that backend, and a shadow phase only on a backend that can mirror traffic."""
    rules = [
        CelRule(
            rule=f"!has(self.{d.name}) || self.backend == '{d.name}'",
            message=_settings_message(d),
            field_path=f".{d.name}",
        )
        for d in declarations
        if d.settings
    ]
    able = [d.name for d in declarations if d.capabilities.shadow]
    if len(able) < len(declarations):
        shadow = "!has(self.rollout) || !has(self.rollout.shadow) || !self.rollout.shadow"
        rules.append(
            CelRule(
                rule=" || ".join([shadow, *(f"self.backend == '{name}'" for name in able)]),
                message=_shadow_message(declarations),
                field_path=".rollout.shadow",
            )
        )
    return tuple(rules)


def backend_refusal(
    declarations: Sequence[BackendDeclaration], backend: str, settings: Collection[str], shadow: bool
) -> str | None:
    """What ``backend_rules`` refuses, checked in Python with the same message (the first one broken):
    ``settings`` names the settings blocks the spec has, ``shadow`` whether it asks for a shadow phase."""
    for declaration in declarations:
        if declaration.settings and declaration.name in settings and backend != declaration.name:
            return _settings_message(declaration)
    chosen = next((d for d in declarations if d.name == backend), None)
    if shadow and (chosen is None or not chosen.capabilities.shadow):
        return _shadow_message(declarations)
    return None
