"""TrainingRun: one training attempt.

The foundation validates the spec and reports it in status; the kind's own logic builds on this.
"""

from modelloop.api import TRAINING_RUN, TrainingRunSpec
from modelloop.controllers.reporting import register_spec_review
from modelloop.review import Verdict

ACCEPTED = Verdict(
    phase="Pending",
    ready="False",
    reason="Pending",
    message="The training run is accepted and waits for its Job.",
)

register_spec_review(TRAINING_RUN.plural, TrainingRunSpec, ACCEPTED)
