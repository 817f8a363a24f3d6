"""Benchmark: N TrainingRuns on the local control plane, the operator against a bare client.

For each N, two measurements on a fresh namespace each:

- bare client: for every run, the API writes the operator makes for it — create the TrainingRun, create its
  Job, patch its status — with 16 concurrent writers, timed until the last write returns;
- operator: `modelloop run` (a fresh process, watching that namespace) while the same 16 writers create the
  N TrainingRuns; timed until every Job exists and every run's status has a phase. The operator's peak RSS
  (VmHWM) and CPU seconds are read from /proc when that point is reached.

Training pods are labelled to stay Running (kwok), so both sides see the same steady cluster.

    .venv/bin/python bench/trainingruns.py [--sizes 100 500 1000] [--repeat 5]

On a 2-core machine one pair of measurements varies by about ±10%: --repeat N measures each size N
times (bare client and operator alternately, each on a fresh namespace, the two taking turns at going
first) and reports the median ratio with its spread. A first pair warms the fresh cluster up and is not
counted (--no-warmup counts it: the bare client, going first, measured 11.6 s there against 9.4 to 9.9 s
in the pairs after it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

from modelloop.api import TrainingRunSpec
from modelloop.training.job import render_job

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the e2e suite's resumable watches, which the benches wait with too
from e2e.watches import ResumableWatch, wait_until_each  # noqa: E402

STATE = ROOT / ".cluster" / "bench"
WRITERS = 16
OPERATOR_COMMAND = os.environ.get("BENCH_OPERATOR_COMMAND", str(ROOT / ".venv" / "bin" / "modelloop")).split()
EXTRA_ENV = dict(e.split("=", 1) for e in os.environ.get("BENCH_OPERATOR_ENV", "").split() if e)


def single_run(i: int) -> dict[str, Any]:
    """The i-th TrainingRun: one held pod (kwok keeps it Running)."""
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": f"run-{i:05d}", "labels": {"sim.modelloop.dev/outcome": "Hold"}},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "RandomForestClassifier", "n_estimators": 100},
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "output": {"modelName": "bench"},
        },
    }


training_run = single_run
"""What the measurement creates (bench/distributed_runs.py swaps in distributed runs)."""


def cluster(*args: str) -> str:
    env = {**os.environ, "MODELLOOP_CLUSTER_DIR": str(STATE), "MODELLOOP_CLUSTER_NAME": "modelloop-bench"}
    return subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), *args], env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout


def kubectl(*args: str) -> None:
    subprocess.run([str(BIN / "kubectl"), *args], check=True, env=ENV, stdout=subprocess.DEVNULL)


def bare_client(n: int, namespace: str) -> float:
    custom = kubernetes.client.CustomObjectsApi(API)
    batch = kubernetes.client.BatchV1Api(API)

    def one(i: int) -> None:
        run = custom.create_namespaced_custom_object(
            "modelloop.dev", "v1alpha1", namespace, "trainingruns", training_run(i)
        )
        job = render_job(run, TrainingRunSpec.model_validate(run["spec"]), "file:///bench")
        batch.create_namespaced_job(namespace, job)
        status = {
            "phase": "Pending",
            "jobName": job["metadata"]["name"],
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
        custom.patch_namespaced_custom_object_status(
            "modelloop.dev",
            "v1alpha1",
            namespace,
            "trainingruns",
            run["metadata"]["name"],
            {"status": status},
        )

    start = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - start


def with_operator(n: int, namespace: str) -> dict[str, float]:
    custom = kubernetes.client.CustomObjectsApi(API)
    batch = kubernetes.client.BatchV1Api(API)
    port = 18190
    log = open(STATE / f"operator-{n}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [*OPERATOR_COMMAND, "run", "-n", namespace, "--liveness",
         f"http://127.0.0.1:{port}/healthz", "--log-format", "plain"],
        env={**ENV, **EXTRA_ENV}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # Watches, not polling lists: a thousand-object list every few hundred milliseconds would load the
        # API server that both sides share and slow the operator down for the measurement's sake. The API
        # server ends watches (at its timeout, or when it drops a watcher that reads slowly): they resume
        # from their last resourceVersion, and list again after 410 Gone.
        runs = ResumableWatch(
            custom.list_namespaced_custom_object, "modelloop.dev", "v1alpha1", namespace, "trainingruns"
        )
        jobs = ResumableWatch(
            batch.list_namespaced_job, namespace, label_selector="modelloop.dev/training-run"
        )

        def finished(watch: ResumableWatch, reached: Any, what: str) -> float:
            wait_until_each(watch, reached, n, timeout=600, what=what)
            return time.monotonic()

        waiters = ThreadPoolExecutor(2)
        try:
            runs_done = waiters.submit(
                finished, runs, lambda run: bool((run.get("status") or {}).get("phase")), "runs with a phase"
            )
            jobs_done = waiters.submit(finished, jobs, lambda _: True, "Jobs")
            for watch in (runs, jobs):  # both watches open before the first create
                if not watch.listed.wait(timeout=60):
                    raise TimeoutError("the bench's watches did not start in 60 s")
            cpu_before = cpu_seconds(process.pid)
            start = time.monotonic()
            with ThreadPoolExecutor(WRITERS) as pool:
                list(
                    pool.map(
                        lambda i: custom.create_namespaced_custom_object(
                            "modelloop.dev", "v1alpha1", namespace, "trainingruns", training_run(i)
                        ),
                        range(n),
                    )
                )
            created = time.monotonic() - start
            elapsed = max(runs_done.result(), jobs_done.result()) - start
        finally:
            runs.stop()
            jobs.stop()
            waiters.shutdown(wait=True, cancel_futures=True)
        if os.environ.get("BENCH_SIGNAL_OPERATOR"):
            process.send_signal(signal.SIGUSR1)
            time.sleep(20)
        return {
            "seconds": elapsed,
            "creates_seconds": created,
            "peak_rss_mib": peak_rss_mib(process.pid),
            "cpu_seconds": cpu_seconds(process.pid) - cpu_before,
        }
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fresh_namespace(name: str) -> None:
    kubectl("create", "namespace", name)


def drop_namespace(name: str) -> None:
    kubectl("delete", "namespace", name, "--wait=true", "--timeout=600s")


def measure_pair(n: int, suffix: str, operator_first: bool) -> tuple[float, dict[str, float]]:
    """The bare client's seconds and the operator's figures for ``n`` runs, each on a fresh namespace."""

    def bare() -> float:
        fresh_namespace(f"bare-{suffix}")
        seconds = bare_client(n, f"bare-{suffix}")
        drop_namespace(f"bare-{suffix}")
        return seconds

    def operator() -> dict[str, float]:
        fresh_namespace(f"op-{suffix}")
        figures = with_operator(n, f"op-{suffix}")
        drop_namespace(f"op-{suffix}")
        return figures

    if operator_first:
        figures = operator()
        return bare(), figures
    seconds = bare()
    return seconds, operator()


def main() -> None:
    global BIN, ENV, API
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each size (median reported)")
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="count the first pair too (a cold cluster)"
    )
    args = parser.parse_args()

    BIN = Path(cluster("bin-dir").strip())
    cluster("up")
    ENV = {**os.environ, "KUBECONFIG": str(STATE / "kubeconfig"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    os.environ["KUBECONFIG"] = ENV["KUBECONFIG"]
    kubernetes.config.load_kube_config(config_file=ENV["KUBECONFIG"])
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = WRITERS * 2
    API = kubernetes.client.ApiClient(configuration)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    results = []
    try:
        if args.warmup:
            # A fresh API server and etcd are slower at their first thousands of writes: a pair that is not
            # counted, so that the first counted pair does not flatter the side that goes second.
            measure_pair(min(args.sizes), "warmup", operator_first=False)
        for n in args.sizes:
            for attempt in range(args.repeat):
                # The two sides take turns going first: whatever the cluster carries over from one
                # measurement to the next (the Job controller and kwok still settling the last thousand
                # pods) falls on each side alike.
                bare, operator = measure_pair(n, f"{n}-{attempt}", operator_first=attempt % 2 == 1)
                row = {
                    "runs": n,
                    "bare_seconds": round(bare, 2),
                    **{k: round(v, 2) for k, v in operator.items()},
                }
                row["ratio"] = round(operator["seconds"] / bare, 2)
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.keep_cluster:
            cluster("down")
    print(f"\n{'runs':>6} {'bare s':>8} {'operator s':>11} {'ratio':>6} {'peak RSS MiB':>13} {'CPU s':>7}")
    for r in results:
        print(
            f"{r['runs']:>6} {r['bare_seconds']:>8} {r['seconds']:>11} {r['ratio']:>6} "
            f"{r['peak_rss_mib']:>13} {r['cpu_seconds']:>7}"
        )
    if args.repeat > 1:
        print(
            f"\n{'runs':>6} {'ratio median':>13} {'min':>6} {'max':>6} {'peak RSS MiB median':>20} {'max':>7}"
        )
        for n in args.sizes:
            rows = [r for r in results if r["runs"] == n]
            ratios = [r["ratio"] for r in rows]
            rss = [r["peak_rss_mib"] for r in rows]
            print(
                f"{n:>6} {statistics.median(ratios):>13.2f} {min(ratios):>6} {max(ratios):>6} "
                f"{statistics.median(rss):>20.1f} {max(rss):>7}"
            )


BIN: Path
ENV: dict[str, str]
API: kubernetes.client.ApiClient

if __name__ == "__main__":
    main()
