"""Where blocking work runs: one thread pool for Kubernetes API calls, another for queries of other
systems (Prometheus), so that a slow Prometheus never holds up the status writes of every controller.

The kubernetes client is synchronous; every call made beside kopf's own watches goes through
``call_api``, every query through ``call_query``. Each call also has a deadline of its own
(``kube.REQUEST_TIMEOUT``, the query client's timeout): a pool thread is never lost to a hung peer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

API_THREADS = 16
QUERY_THREADS = 4

# The pools live as long as the process: their threads are made on first use.
_api = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="modelloop-api")
_queries = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="modelloop-query")


def api_executor() -> ThreadPoolExecutor:
    """The pool of the Kubernetes API calls (also the event loop's default executor, for kopf's own)."""
    return _api


async def call_api(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking Kubernetes API call in the API pool."""
    return await asyncio.get_running_loop().run_in_executor(
        _api, functools.partial(function, *args, **kwargs)
    )


async def call_query(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking query of another system (Prometheus) in its own pool."""
    return await asyncio.get_running_loop().run_in_executor(
        _queries, functools.partial(function, *args, **kwargs)
    )
