"""Where blocking work runs, apart from the event loop.

The operator's Kubernetes calls are asynchronous (``modelloop.kube``) and never take a thread. Queries of
other systems through synchronous clients (prometheus-api-client) run in a pool of their own, so that a
slow Prometheus never holds up the event loop or anything else; each query also has a deadline of its own.
kopf's own blocking work (synchronous handlers, of which modelloop has none) gets a small default pool.

No pool exists at import: the controller manager makes the query pool at start-up and shuts it down at
clean-up, and the event loop owns its default pool (``asyncio.run`` shuts it down with the loop).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

QUERY_THREADS = 4
DEFAULT_THREADS = 4


def query_pool() -> ThreadPoolExecutor:
    """A pool for blocking queries of other systems (Prometheus); its threads are made on first use."""
    return ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="modelloop-query")


def default_pool() -> ThreadPoolExecutor:
    """A pool for the event loop's default executor (kopf's own blocking calls)."""
    return ThreadPoolExecutor(max_workers=DEFAULT_THREADS, thread_name_prefix="modelloop")
