"""ModelVersion: the immutable record of one trained model.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from modelloop.api import MODEL_VERSION, ModelVersionSpec
from modelloop.controllers.reporting import register_spec_review
from modelloop.review import Verdict

ACCEPTED = Verdict(
    phase="Pending",
    ready="False",
    reason="ValidationPending",
    message="The model version is registered and waits for validation.",
)

register_spec_review(MODEL_VERSION.plural, ModelVersionSpec, ACCEPTED)
