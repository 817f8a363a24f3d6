"""Benchmark: modelloop's KubeClient against the maintained async Kubernetes clients, on the local cluster.

Issue 18 asks whether lightkube's AsyncClient or kubernetes_asyncio does what ``modelloop.kube.KubeClient``
does at the same speed and memory. Each client runs the same workload in a process of its own (so that
its memory is its own), on a fresh namespace:

- N creates of a TrainingRun, N GETs, N merge-PATCHes of its status subresource (16 at a time), one LIST;
- measured: requests per second over the whole workload, p50/p99 latency of the single-object requests,
  the LIST's milliseconds, the client's import time, the process's RSS after the import and its peak
  (VmHWM), and the CPU seconds the workload took in the client process.

Every process first imports aiohttp and PyYAML (kopf, the operator's framework, runs on aiohttp, and the
operator reads YAML whichever client it uses, so neither is a client's own cost there) and KubeClient's
process also modelloop.api (the domain models ``modelloop.kube`` imports); "base" is the RSS after that,
and "+import"/"+peak" are the client's own memory above it. Each repetition runs every client once (the
order rotated between repetitions) and compares each to KubeClient measured in that same repetition.

The third-party clients live in a throwaway virtualenv, never in the project's requirements:

    python3.11 -m venv /tmp/clients-venv
    /tmp/clients-venv/bin/pip install lightkube kubernetes_asyncio aiohttp
    .venv/bin/python bench/clients.py --python /tmp/clients-venv/bin/python [-n 500] [-c 16] [--repeat 3]

The control plane is hack/cluster.sh's, with its own state (--cluster-dir, --cluster-name) so that it does
not meet the other benches' or the e2e suite's; it is stopped at the end unless --keep-cluster. On a
2-core machine shared with other work one measurement varies by ±10-20 %: compare the medians and the
per-repetition ratios, not single rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, KIND, PLURAL = "modelloop.dev", "v1alpha1", "TrainingRun", "trainingruns"
CLIENTS = ("kubeclient", "lightkube", "kubernetes_asyncio")
MERGE_PATCH = "application/merge-patch+json"
# The status bench/trainingruns.py writes, spelled here again: the worker runs under the third-party
# clients' interpreter, which has neither modelloop nor the kubernetes package to import it from.
STATUS = {
    "phase": "Pending",
    "jobName": "bench-job",
    "observedGeneration": 1,
    "reason": "JobCreated",
    "message": "Created Job.",
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "JobCreated",
            "message": "Created Job.",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
        }
    ],
}


def training_run(name: str, namespace: str) -> dict[str, Any]:
    """The object every client creates: bench/trainingruns.py's TrainingRun."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {"sim.modelloop.dev/outcome": "Hold"}},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "RandomForestClassifier", "n_estimators": 100},
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "output": {"modelName": "bench"},
        },
    }


# --- the worker: one client, one process -----------------------------------------------------------------
# Only the standard library is imported above: the worker runs in the project's virtualenv (KubeClient) or
# in the throwaway one (the others), and what a client imports is part of what is measured.


class TrainingRuns(Protocol):
    """The calls of the workload, as each client makes them in its own idiom."""

    async def create(self, manifest: dict[str, Any]) -> None: ...
    async def get(self, name: str) -> None: ...
    async def patch_status(self, name: str, status: dict[str, Any]) -> None: ...
    async def count(self) -> int: ...
    async def phase(self, name: str) -> str | None: ...
    async def close(self) -> None: ...


Opener = Callable[[str], Awaitable[TrainingRuns]]


def import_kubeclient() -> Opener:
    """Import modelloop's KubeClient; return how to open it on a namespace."""
    from modelloop.kube import KubeClient

    class Runs:
        def __init__(self, namespace: str) -> None:
            self.namespace = namespace
            self.client = KubeClient()

        async def create(self, manifest: dict[str, Any]) -> None:
            await self.client.create_object(PLURAL, manifest)

        async def get(self, name: str) -> None:
            await self.client.get_object(PLURAL, self.namespace, name)

        async def patch_status(self, name: str, status: dict[str, Any]) -> None:
            await self.client.patch_status(PLURAL, self.namespace, name, status, None)

        async def count(self) -> int:
            return len(await self.client.list_objects(PLURAL, self.namespace))

        async def phase(self, name: str) -> str | None:
            obj = await self.client.get_object(PLURAL, self.namespace, name) or {}
            return (obj.get("status") or {}).get("phase")

        async def close(self) -> None:
            await self.client.close()

    async def open_runs(namespace: str) -> TrainingRuns:
        return Runs(namespace)

    return open_runs


def import_lightkube() -> Opener:
    """Import lightkube's AsyncClient and declare TrainingRun as a generic resource (no generated model)."""
    from lightkube import AsyncClient
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.types import PatchType

    resource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

    class Runs:
        def __init__(self, namespace: str) -> None:
            self.namespace = namespace
            self.client = AsyncClient(namespace=namespace)  # KUBECONFIG, as kubectl reads it

        async def create(self, manifest: dict[str, Any]) -> None:
            await self.client.create(resource.from_dict(manifest))

        async def get(self, name: str) -> None:
            await self.client.get(resource, name)

        async def patch_status(self, name: str, status: dict[str, Any]) -> None:
            await self.client.patch(resource.Status, name, {"status": status}, patch_type=PatchType.MERGE)

        async def count(self) -> int:
            return len([run async for run in self.client.list(resource)])

        async def phase(self, name: str) -> str | None:
            run = await self.client.get(resource, name)
            return (run.status or {}).get("phase")

        async def close(self) -> None:
            await self.client.close()

    async def open_runs(namespace: str) -> TrainingRuns:
        return Runs(namespace)

    return open_runs


def import_kubernetes_asyncio() -> Opener:
    """Import kubernetes_asyncio's client and its kubeconfig loader; TrainingRuns go through
    CustomObjectsApi (plain dicts, no generated model)."""
    from kubernetes_asyncio import client, config

    class Runs:
        def __init__(self, namespace: str, api: Any) -> None:
            self.namespace = namespace
            self.api = api
            self.custom = client.CustomObjectsApi(api)

        async def create(self, manifest: dict[str, Any]) -> None:
            await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest
            )

        async def get(self, name: str) -> None:
            await self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

        async def patch_status(self, name: str, status: dict[str, Any]) -> None:
            # Without _content_type a dict body is sent as a JSON Patch, which the API server refuses.
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
            )

        async def count(self) -> int:
            listed = await self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            return len(listed["items"])

        async def phase(self, name: str) -> str | None:
            run = await self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            return (run.get("status") or {}).get("phase")

        async def close(self) -> None:
            await self.api.close()

    async def open_runs(namespace: str) -> TrainingRuns:
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=os.environ["KUBECONFIG"], client_configuration=configuration
        )
        return Runs(namespace, client.ApiClient(configuration))

    return open_runs


IMPORTERS: dict[str, Callable[[], Opener]] = {
    "kubeclient": import_kubeclient,
    "lightkube": import_lightkube,
    "kubernetes_asyncio": import_kubernetes_asyncio,
}


def proc_status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


async def concurrently(
    call: Callable[[str], Awaitable[None]], names: Iterable[str], writers: int
) -> list[float]:
    """Call ``call`` on every name, ``writers`` at a time; return each call's seconds."""
    pending = iter(names)
    seconds: list[float] = []

    async def writer() -> None:
        for name in pending:  # one iterator shared by all writers: each name is taken once
            started = time.perf_counter()
            await call(name)
            seconds.append(time.perf_counter() - started)

    await asyncio.gather(*(writer() for _ in range(writers)))
    return seconds


async def workload(runs: TrainingRuns, namespace: str, n: int, writers: int) -> dict[str, Any]:
    """Create, get and patch the status of n TrainingRuns, then list them; the timings."""
    names = [f"run-{i:05d}" for i in range(n)]
    phases: dict[str, Callable[[str], Awaitable[None]]] = {
        "create": lambda name: runs.create(training_run(name, namespace)),
        "get": runs.get,
        "patch": lambda name: runs.patch_status(name, STATUS),
    }
    latencies: list[float] = []
    rates: dict[str, float] = {}
    cpu_started, started = time.process_time(), time.perf_counter()
    for phase, call in phases.items():
        phase_started = time.perf_counter()
        latencies += await concurrently(call, names, writers)
        rates[f"{phase}_per_s"] = n / (time.perf_counter() - phase_started)
    list_started = time.perf_counter()
    listed = await runs.count()
    list_seconds = time.perf_counter() - list_started
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    # Not timed: the workload did what it says (every run exists, the status patch landed).
    if listed != n or await runs.phase(names[-1]) != STATUS["phase"]:
        raise AssertionError(f"listed {listed} of {n} runs, or the status patch did not land")
    latencies.sort()
    return {
        "requests_per_s": (3 * n + 1) / seconds,
        **rates,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "list_ms": 1000 * list_seconds,
        "cpu_s": cpu,
    }


def run_worker(client: str, namespace: str, n: int, writers: int) -> dict[str, Any]:
    """One client's measurement in this process (KUBECONFIG names the cluster)."""
    # What the operator has loaded whichever client it uses: kopf's HTTP library, and YAML (the CRDs).
    import aiohttp  # noqa: F401
    import yaml  # noqa: F401

    if client == "kubeclient":
        import modelloop.api  # noqa: F401  the domain models modelloop.kube imports: not the client's cost
    base = proc_status_mib("VmRSS")
    started = time.perf_counter()
    open_runs = IMPORTERS[client]()
    import_ms = 1000 * (time.perf_counter() - started)
    after_import = proc_status_mib("VmRSS")

    async def measure() -> dict[str, Any]:
        runs = await open_runs(namespace)
        try:
            return await workload(runs, namespace, n, writers)
        finally:
            await runs.close()

    figures = asyncio.run(measure())
    peak = proc_status_mib("VmHWM")
    return {
        "client": client,
        **figures,
        "import_ms": import_ms,
        "base_mib": base,
        "import_mib": after_import,
        "peak_mib": peak,
        "plus_import_mib": after_import - base,
        "plus_peak_mib": peak - base,
    }


# --- the driver: the cluster, the repetitions, the table -------------------------------------------------

ROUNDED = 2
FIGURES = (  # (key, heading, format)
    ("requests_per_s", "req/s", ".0f"),
    ("p50_ms", "p50 ms", ".1f"),
    ("p99_ms", "p99 ms", ".1f"),
    ("list_ms", "LIST ms", ".0f"),
    ("cpu_s", "CPU s", ".2f"),
    ("import_ms", "import ms", ".0f"),
    ("base_mib", "base MiB", ".1f"),
    ("import_mib", "RSS import", ".1f"),
    ("peak_mib", "peak MiB", ".1f"),
    ("plus_import_mib", "+import", ".1f"),
    ("plus_peak_mib", "+peak", ".1f"),
)
RATIOS = ("requests_per_s", "p99_ms", "cpu_s", "import_ms", "plus_import_mib", "plus_peak_mib")


def spread(values: list[float], fmt: str) -> str:
    """The median of the values and their range, e.g. ``412 (398-430)``."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def print_table(headings: list[str], cells: dict[str, list[str]]) -> None:
    """One row per client, right-aligned columns."""
    first = max(len("client"), *(len(client) for client in cells))
    widths = [max(len(h), *(len(row[i]) for row in cells.values())) for i, h in enumerate(headings)]
    print(f"{'client':<{first}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(headings, widths, strict=True)))
    for client, row in cells.items():
        print(f"{client:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)))


def print_tables(rows: list[dict[str, Any]], clients: list[str]) -> None:
    """The figures of each client, then their ratios to KubeClient's of the same repetition."""
    print("\nmedian (min-max) over the repetitions; MiB are RSS; +import/+peak: above the base")
    print_table(
        [heading for _, heading, _ in FIGURES],
        {
            client: [spread([r[key] for r in rows if r["client"] == client], fmt) for key, _, fmt in FIGURES]
            for client in clients
        },
    )
    others = [c for c in clients if c != "kubeclient"]
    if "kubeclient" not in clients or not others:
        return
    print("\nratio to KubeClient of the same repetition, median (min-max); req/s: >1 faster, others: <1 less")
    by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_repeat.setdefault(row["repeat"], {})[row["client"]] = row
    headings = {key: heading for key, heading, _ in FIGURES}
    print_table(
        [headings[key] for key in RATIOS],
        {
            client: [
                spread(
                    [
                        measured[client][key] / measured["kubeclient"][key]
                        for measured in by_repeat.values()
                        if client in measured and measured.get("kubeclient", {}).get(key)
                    ],
                    ".2f",
                )
                for key in RATIOS
            ]
            for client in others
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--objects", type=int, default=500, help="TrainingRuns per measurement")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each client")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument(
        "--python",
        default="/tmp/clients-venv/bin/python",
        help="the interpreter with lightkube and kubernetes_asyncio",
    )
    parser.add_argument("--cluster-dir", default="/tmp/cl-bench")
    parser.add_argument("--cluster-name", default="cl-bench")
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.namespace, args.objects, args.concurrency)), flush=True)
        return

    # The driver alone needs the e2e harness (the worker imports nothing it does not measure).
    sys.path.insert(0, str(ROOT))
    from e2e.harness import Cluster, cluster_script

    began = time.monotonic()
    state = Path(args.cluster_dir)
    env = {**os.environ, "MODELLOOP_CLUSTER_DIR": str(state), "MODELLOOP_CLUSTER_NAME": args.cluster_name}
    bin_dir = Path(cluster_script("bin-dir", env=env).strip())
    interpreters = dict.fromkeys(CLIENTS, args.python) | {"kubeclient": sys.executable}
    rows: list[dict[str, Any]] = []
    try:
        cluster_script("up", env=env)
        cluster = Cluster(kubeconfig=state / "kubeconfig", bin_dir=bin_dir, state_dir=state)
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / f"{GROUP}_{PLURAL}.yaml")
        )
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")

        def measure(client: str, namespace: str, n: int) -> dict[str, Any]:
            cluster.kubectl("create", "namespace", namespace)
            try:
                done = subprocess.run(
                    [interpreters[client], __file__, "--worker", client, "--namespace", namespace,
                     "-n", str(n), "-c", str(args.concurrency)],
                    env=cluster.env, capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                if done.returncode != 0:
                    raise RuntimeError(f"{client} failed ({done.returncode}):\n{done.stderr}")
                return dict(json.loads(done.stdout.splitlines()[-1]))
            finally:
                # One DELETE of the whole collection, then the empty namespace: the next measurement
                # starts on an API server that is not still deleting the last one's objects.
                cluster.kubectl("delete", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
                cluster.kubectl(
                    "delete", "namespace", namespace, "--wait=true", "--timeout=120s", timeout=150
                )

        # Warm the API server (its caches, the CRD's schema) on a run that is not counted.
        measure(args.clients[0], "cl-warmup", min(100, args.objects))
        for repeat in range(args.repeat):
            # Rotated, so that no client is always the first after a namespace deletion.
            order = args.clients[repeat % len(args.clients) :] + args.clients[: repeat % len(args.clients)]
            for client in order:
                row = {
                    "repeat": repeat,
                    **measure(client, f"cl-{client.replace('_', '-')}-{repeat}", args.objects),
                }
                rows.append(row)
                print(
                    json.dumps({k: round(v, ROUNDED) if isinstance(v, float) else v for k, v in row.items()})
                )
    finally:
        if not args.keep_cluster:
            cluster_script("down", env=env)
    print(
        f"\n{args.objects} TrainingRuns: creates, GETs, status merge-PATCHes ({args.concurrency} in flight), "
        f"one LIST; {args.repeat} repetitions; whole run {time.monotonic() - began:.0f} s"
    )
    print_tables(rows, args.clients)


if __name__ == "__main__":
    main()
