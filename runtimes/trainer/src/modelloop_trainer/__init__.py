"""modelloop's trainer runtime: the program inside a TrainingRun's Job container.

It reads its whole configuration from ``MODELLOOP_*`` environment variables (see
:mod:`modelloop_trainer.config`), validates the data, trains one estimator, writes the
artifacts and reports a compact JSON result through the container's termination message.
"""

from modelloop_trainer.config import TrainerConfig, TrainingSettings
from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.training import TrainingOutcome, train
from modelloop_trainer.version import TRAINER_VERSION

__version__ = TRAINER_VERSION

__all__ = [
    "FailureReason",
    "TrainerConfig",
    "TrainerError",
    "TrainingOutcome",
    "TrainingSettings",
    "__version__",
    "train",
]
