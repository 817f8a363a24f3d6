"""Start kopf with modelloop's handlers and settings."""

from __future__ import annotations

import kopf

from modelloop.settings import Settings

_LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def run_operator(settings: Settings) -> None:
    """Run the operator in this process until it is interrupted (SIGINT/SIGTERM)."""
    kopf.configure(verbose=settings.verbose, log_format=_LOG_FORMATS[settings.log_format])
    import modelloop.controllers  # noqa: F401  # registers the handlers

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
        standalone=settings.peering is None,
        peering_name=settings.peering,
    )
