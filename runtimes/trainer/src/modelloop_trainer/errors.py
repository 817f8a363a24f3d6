"""The failures a user can cause, each with the reason reported in the result."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FailureReason(StrEnum):
    """The ``reason`` of a failed result; the operator copies it into the TrainingRun's conditions."""

    DATA_VALIDATION_FAILED = "DataValidationFailed"
    INVALID_PARAMETERS = "InvalidParameters"
    DATASET_UNAVAILABLE = "DatasetUnavailable"
    DEVICE_UNAVAILABLE = "DeviceUnavailable"
    TRAINING_FAILED = "TrainingFailed"
    OUTPUT_UNAVAILABLE = "OutputUnavailable"
    DISTRIBUTED_NOT_SUPPORTED = "DistributedNotSupported"


class TrainerError(Exception):
    """A failure with a reason and a message that tells the user what to change.

    ``extra`` holds further result fields (the data checks, the dataset hash) that go
    into the failed result next to ``reason`` and ``message``.
    """

    def __init__(self, reason: FailureReason, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.extra = extra
