"""DriftPolicy: when a served model counts as drifted, and how to retrain it.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from modelloop.api import DRIFT_POLICY, DriftPolicySpec
from modelloop.controllers.reporting import register_spec_review
from modelloop.review import Verdict

ACCEPTED = Verdict(
    phase="Watching",
    ready="True",
    reason="Watching",
    message="The drift policy is accepted.",
)

register_spec_review(DRIFT_POLICY.plural, DriftPolicySpec, ACCEPTED)
