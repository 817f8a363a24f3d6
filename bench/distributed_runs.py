"""Benchmark: the operator's cost of distributed TrainingRuns against single-node ones.

N runs created at once (16 concurrent writers) into a fresh namespace watched by a fresh `modelloop run`;
timed until every run's Job exists and every run's status has a phase, with the operator's peak RSS (VmHWM)
and CPU seconds read from /proc at that point (bench/trainingruns.py's measurement). Two kinds of run, taking
turns at going first, each measured --repeat times:

- single: one pod per run (a Job);
- distributed: `distributed: {nodes: 4, procsPerNode: 2}` on the plain engine, a headless Service and an
  Indexed Job of 4 pods per run (the local control plane serves no Kubeflow Trainer here).

Pods are labelled to stay Running (kwok), so the cluster settles the same way for both. Reported: each
measurement, and the median ratio distributed / single with its spread.

    .venv/bin/python bench/distributed_runs.py [--runs 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainingruns as base  # bench/trainingruns.py: the cluster and the measurement

NODES = 4


def run_of(distributed: bool) -> Any:
    """The TrainingRun manifest maker for one kind of run."""

    def training_run(i: int) -> dict[str, Any]:
        manifest: dict[str, Any] = base.single_run(i)
        if distributed:
            manifest["spec"]["params"] = {"estimator": "TorchMLPClassifier", "epochs": 5}
            manifest["spec"]["distributed"] = {"nodes": NODES, "procsPerNode": 2}
        return manifest

    return training_run


def measure(n: int, distributed: bool, suffix: str) -> dict[str, float]:
    kind = "distributed" if distributed else "single"
    namespace = f"{kind}-{suffix}"
    base.training_run = run_of(distributed)
    base.fresh_namespace(namespace)
    try:
        return base.with_operator(n, namespace)
    finally:
        base.drop_namespace(namespace)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()

    base.BIN = Path(base.cluster("bin-dir").strip())
    base.cluster("up")
    base.ENV = {
        **os.environ,
        "KUBECONFIG": str(base.STATE / "kubeconfig"),
        "PATH": f"{base.BIN}:{os.environ['PATH']}",
    }
    os.environ["KUBECONFIG"] = base.ENV["KUBECONFIG"]
    kubernetes.config.load_kube_config(config_file=base.ENV["KUBECONFIG"])
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = base.WRITERS * 2
    base.API = kubernetes.client.ApiClient(configuration)
    base.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(base.ROOT / "crds"))
    base.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    rows: list[dict[str, Any]] = []
    try:
        measure(min(args.runs, 20), False, "warmup")  # a fresh API server is slower at its first writes
        for attempt in range(args.repeat):
            order = (False, True) if attempt % 2 == 0 else (True, False)
            pair = {d: measure(args.runs, d, str(attempt)) for d in order}
            row = {
                "runs": args.runs,
                "single_seconds": round(pair[False]["seconds"], 2),
                "distributed_seconds": round(pair[True]["seconds"], 2),
                "single_rss_mib": round(pair[False]["peak_rss_mib"], 1),
                "distributed_rss_mib": round(pair[True]["peak_rss_mib"], 1),
                "single_cpu_s": round(pair[False]["cpu_seconds"], 2),
                "distributed_cpu_s": round(pair[True]["cpu_seconds"], 2),
            }
            row["time_ratio"] = round(row["distributed_seconds"] / row["single_seconds"], 2)
            row["rss_ratio"] = round(row["distributed_rss_mib"] / row["single_rss_mib"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep_cluster:
            base.cluster("down")
    for key in ("time_ratio", "rss_ratio"):
        values = [r[key] for r in rows]
        print(f"{key}: median {statistics.median(values):.2f} (min {min(values)}, max {max(values)})")


if __name__ == "__main__":
    main()
