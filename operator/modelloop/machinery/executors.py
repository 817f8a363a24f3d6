"""Where blocking work runs, apart from the event loop.

The operator's Kubernetes calls are asynchronous (``modelloop.kube``) and never take a thread. Queries of
other systems through blocking clients (Prometheus's HTTP API, ``modelloop.serving.analysis``) run in a
pool of their own, so that a slow Prometheus never holds up the event loop or anything else. Each query has
a deadline for all of it (a server trickling bytes cannot stretch it), and one host gets at most
``QUERIES_PER_HOST`` of the pool's threads at a time (the default Prometheus ``QUERIES_PER_SHARED_HOST``;
a host's other queries wait in the event loop, holding no thread), so that one tenant's slow Prometheus
leaves the rest of the pool to the others.
kopf's own blocking work (synchronous handlers, of which modelloop has none) gets a small default pool.

No pool exists at import: the controller manager makes the query pool at start-up and shuts it down at
clean-up, and the event loop owns its default pool (``asyncio.run`` shuts it down with the loop).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

# The default Prometheus's share (QUERIES_PER_SHARED_HOST, 4) and four times a tenant host's
# (QUERIES_PER_HOST, 2): while the default and three tenants' hosts are saturated, a fourth finds a thread.
QUERY_THREADS = 12
DEFAULT_THREADS = 4


def query_pool() -> ThreadPoolExecutor:
    """A pool for blocking queries of other systems (Prometheus); its threads are made on first use."""
    return ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="modelloop-query")


def default_pool() -> ThreadPoolExecutor:
    """A pool for the event loop's default executor (kopf's own blocking calls)."""
    return ThreadPoolExecutor(max_workers=DEFAULT_THREADS, thread_name_prefix="modelloop")
