"""kopf handlers, one module per kind; importing this package registers them all."""

from modelloop.controllers import (
    driftpolicy,
    inferenceservice,
    lifecycle,
    modelversion,
    trainingrun,
)

__all__ = ["driftpolicy", "inferenceservice", "lifecycle", "modelversion", "trainingrun"]
