"""DriftPolicy: when a served model counts as drifted, and how to retrain it.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from modelloop.api import DRIFT_POLICY, GROUP, VERSION, DriftPolicySpec
from modelloop.controllers.reporting import SpecReviewer
from modelloop.objects import slim_object
from modelloop.review import ReviewOutcome

ACCEPTED = ReviewOutcome(
    phase="Watching",
    ready="True",
    reason="Watching",
    message="The drift policy is accepted.",
)


@kopf.index(GROUP, VERSION, DRIFT_POLICY.plural)
async def drift_policies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every DriftPolicy by (namespace, name)."""
    return {(namespace or "", name): slim_object(body)}


@kopf.on.event(GROUP, VERSION, DRIFT_POLICY.plural)
async def on_drift_policy(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    reviewer: SpecReviewer = memo.runtime.drift_policies
    if type == "DELETED":
        reviewer.forget((namespace or "", name))
    else:
        reviewer.queue.add((namespace or "", name))


def make_controller(indexes: Mapping[str, Any]) -> SpecReviewer:
    return SpecReviewer(
        DRIFT_POLICY.kind, DRIFT_POLICY.plural, DriftPolicySpec, ACCEPTED, lambda: indexes["drift_policies"]
    )
