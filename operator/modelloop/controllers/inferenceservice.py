"""InferenceService: a served model and its rollout.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from modelloop.api import INFERENCE_SERVICE, InferenceServiceSpec
from modelloop.controllers.reporting import register_spec_review
from modelloop.review import Verdict

ACCEPTED = Verdict(
    phase="Pending",
    ready="False",
    reason="RolloutPending",
    message="The inference service is accepted and waits for its rollout.",
)

register_spec_review(INFERENCE_SERVICE.plural, InferenceServiceSpec, ACCEPTED)
