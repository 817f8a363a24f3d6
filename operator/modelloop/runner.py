"""Start kopf with modelloop's handlers and settings."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import secrets
import socket
import sys

# kopf imports the kubernetes package whenever it is installed (to log in through it, and to accept its
# model objects). The operator uses neither: its client is modelloop.kube, and it logs kopf in itself
# (controllers/kopf_settings.py). Kept out of this process, that is about 20 MiB less memory.
if "kubernetes" not in sys.modules:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]

import kopf

from modelloop.kube import KubeClient, PreflightError
from modelloop.settings import Settings

_LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def run_operator(settings: Settings) -> None:
    """Check the cluster, then run the operator in this process until it is interrupted (SIGINT/SIGTERM).

    Raises PreflightError when the API server cannot be reached or does not serve our kinds, so that a
    misconfigured operator stops at once with the reason instead of retrying in silence.
    """
    limit_malloc_arenas()
    # Text logs name the object each line is about; JSON logs carry it as fields instead.
    kopf.configure(verbose=settings.verbose, log_format=_LOG_FORMATS[settings.log_format], log_prefix=None)
    if not settings.verbose:
        logging.getLogger("kopf.objects").addFilter(_drop_routine_event_logs)
    logger = logging.getLogger("modelloop")
    server_version = asyncio.run(KubeClient().preflight())
    logger.info("API server %s serves every modelloop kind", server_version)
    settings = dataclasses.replace(settings, namespaces=watchable_namespaces(settings.namespaces))
    import modelloop.controllers  # noqa: F401  # registers the handlers

    priority = settings.priority
    if settings.peering is not None and priority is None:
        priority = random.SystemRandom().randrange(1, 2**31)
    settings = dataclasses.replace(settings, priority=priority)
    # kopf names this replica in the peering object by POD_ID (a Deployment sets it to the pod's name);
    # the peering gate must know which entry is its own.
    identity = os.environ.setdefault("POD_ID", f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=priority,
        memo=kopf.Memo(settings=settings, identity=identity),
    )


def watchable_namespaces(namespaces: tuple[str, ...]) -> tuple[str, ...]:
    """The namespaces to watch: ``namespaces`` less those this identity may not list and watch (kopf would
    retry them, then stop the whole operator, and every other team's namespace with it). Each one left out
    is logged as an error saying what to bind; PreflightError when none is left."""
    if not namespaces:
        return namespaces
    refused = asyncio.run(KubeClient().unwatchable(namespaces))
    for namespace, why in refused.items():
        logging.getLogger("modelloop").error(
            "not watching namespace %s: this operator %s (bind the operator's ClusterRole there with a "
            "RoleBinding, as the chart does for operator.watchNamespaces, and restart it)",
            namespace,
            why,
        )
    left = tuple(n for n in namespaces if n not in refused)
    if not left:
        raise PreflightError(f"this operator may not watch any of the namespaces {', '.join(namespaces)}")
    return left


# glibc gives each thread that allocates an arena of its own (up to 8 per core), and keeps what it frees
# there. The operator's threads (kopf's executor, the sweeps' search threads) allocate in bursts; with two
# arenas, 100 sweeps of 100 trials peak 8 MiB lower (bench/sweeps.py) at no measurable cost in speed.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX would) before any thread starts; whether it could
    (not on other C libraries, nor when MALLOC_ARENA_MAX is set: the person who set it decides)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def _drop_routine_event_logs(record: logging.LogRecord) -> bool:
    """kopf logs every successful event handler at INFO: thousands of lines a minute that say nothing
    (every handler of the operator only queues a key or indexes an object; the controllers log what
    matters, and post events). A failed handler still shows; ``--verbose`` shows them all."""
    if record.levelno != logging.INFO:
        return True
    message = record.getMessage()
    return not (message.startswith("Handler '") and message.endswith("' succeeded."))
