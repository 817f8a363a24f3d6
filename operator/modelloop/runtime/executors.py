"""Where blocking work runs, apart from the event loop.

The operator's Kubernetes calls are asynchronous (``modelloop.kube``) and never take a thread. Queries of
other systems through synchronous clients (prometheus-api-client) run in a pool of their own, so that a
slow Prometheus never holds up the event loop or anything else; each query also has a deadline of its own.
kopf's own blocking work (synchronous handlers, of which modelloop has none) gets a small default pool.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

QUERY_THREADS = 4
DEFAULT_THREADS = 4

# The pools live as long as the process: their threads are made on first use.
_queries = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="modelloop-query")
_default = ThreadPoolExecutor(max_workers=DEFAULT_THREADS, thread_name_prefix="modelloop")


def default_executor() -> ThreadPoolExecutor:
    """The event loop's default pool (kopf's own blocking calls)."""
    return _default


async def call_query(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking query of another system (Prometheus) in its own pool."""
    return await asyncio.get_running_loop().run_in_executor(
        _queries, functools.partial(function, *args, **kwargs)
    )
