"""InferenceService: a served model and its rollout.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from modelloop.api import GROUP, INFERENCE_SERVICE, VERSION, InferenceServiceSpec
from modelloop.controllers.reporting import SpecReviewer
from modelloop.objects import slim_object
from modelloop.review import ReviewOutcome

ACCEPTED = ReviewOutcome(
    phase="Pending",
    ready="False",
    reason="RolloutPending",
    message="The inference service is accepted and waits for its rollout.",
)


@kopf.index(GROUP, VERSION, INFERENCE_SERVICE.plural)
async def inference_services(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every InferenceService by (namespace, name)."""
    return {(namespace or "", name): slim_object(body)}


@kopf.on.event(GROUP, VERSION, INFERENCE_SERVICE.plural)
async def on_inference_service(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    reviewer: SpecReviewer = memo.runtime.inference_services
    if type == "DELETED":
        reviewer.forget((namespace or "", name))
    else:
        reviewer.queue.add((namespace or "", name))


def make_controller(indexes: Mapping[str, Any]) -> SpecReviewer:
    return SpecReviewer(
        INFERENCE_SERVICE.kind,
        INFERENCE_SERVICE.plural,
        InferenceServiceSpec,
        ACCEPTED,
        lambda: indexes["inference_services"],
    )
