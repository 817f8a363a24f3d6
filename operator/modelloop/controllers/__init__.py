"""kopf handlers, one module per kind; importing this package registers them all."""

from modelloop.controllers import (
    driftpolicy,
    inferenceservice,
    kopf_settings,
    manager,
    modelversion,
    trainingrun,
)

__all__ = ["driftpolicy", "inferenceservice", "kopf_settings", "manager", "modelversion", "trainingrun"]
