"""DriftPolicy: when a served model counts as drifted, and how to retrain it.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelloop.api import DRIFT_POLICY, DriftPolicySpec
from modelloop.controllers.reporting import SpecReviewer, watch_reviewed_kind
from modelloop.review import ReviewOutcome

ACCEPTED = ReviewOutcome(
    phase="Watching",
    ready="True",
    reason="Watching",
    message="The drift policy is accepted.",
)

watch_reviewed_kind(DRIFT_POLICY, "drift_policies")


def make_controller(indexes: Mapping[str, Any]) -> SpecReviewer:
    return SpecReviewer(
        DRIFT_POLICY.kind, DRIFT_POLICY.plural, DriftPolicySpec, ACCEPTED, lambda: indexes["drift_policies"]
    )
