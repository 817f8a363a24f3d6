"""InferenceService: a served model and its rollout.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelloop.api import INFERENCE_SERVICE, InferenceServiceSpec
from modelloop.controllers.reporting import SpecReviewer, watch_reviewed_kind
from modelloop.review import ReviewOutcome

ACCEPTED = ReviewOutcome(
    phase="Pending",
    ready="False",
    reason="RolloutPending",
    message="The inference service is accepted and waits for its rollout.",
)

watch_reviewed_kind(INFERENCE_SERVICE, "inference_services")


def make_controller(indexes: Mapping[str, Any]) -> SpecReviewer:
    return SpecReviewer(
        INFERENCE_SERVICE.kind,
        INFERENCE_SERVICE.plural,
        InferenceServiceSpec,
        ACCEPTED,
        lambda: indexes["inference_services"],
    )
