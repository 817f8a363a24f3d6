"""Choosing where the model trains: scikit-learn always on the CPU, PyTorch on CUDA when asked or seen."""

from __future__ import annotations

import logging
from typing import Literal

from modelloop_trainer.config import Device
from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.estimators import Framework
from modelloop_trainer.torch_mlp import cuda_available, torch_installed

ResolvedDevice = Literal["cpu", "cuda"]

log = logging.getLogger(__name__)


def resolve_device(requested: Device, framework: Framework) -> ResolvedDevice:
    """The device to train on for MODELLOOP_DEVICE ``requested`` (cpu, cuda or auto)."""
    if framework == "sklearn":
        if requested == "cuda":
            log.warning("MODELLOOP_DEVICE is cuda but scikit-learn estimators train on the CPU")
        return "cpu"
    if not torch_installed():
        raise TrainerError(
            FailureReason.INVALID_PARAMETERS, "PyTorch estimators need PyTorch, which is not installed here"
        )
    if requested == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if requested == "cuda":
        raise TrainerError(
            FailureReason.DEVICE_UNAVAILABLE,
            "MODELLOOP_DEVICE is cuda but PyTorch sees no CUDA device: request a GPU for the TrainingRun "
            "(resources) or set device to auto or cpu",
        )
    return "cpu"
