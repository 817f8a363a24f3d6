"""Benchmark: DriftPolicy evaluations under load, and a confirmed breach to its TrainingRun, on the local
control plane with `modelloop run`.

N DriftPolicies (default 500) on one operator, each evaluated every --interval (5 s by default) with a
30 s window and one metric, `max(bench_drift_score{policy="{{name}}"})` breached above 0.3, its target
InferenceService `p-<i>` (which need not exist) named like the policy. A real Prometheus (Debian's
/usr/bin/prometheus, on 127.0.0.1) scrapes, every second, a tiny exporter the bench serves:
`bench_drift_score{policy="p-<i>"} 0.1` for every policy, so all stay Watching.

- evaluations: once all N are Watching, --duration seconds (120 by default) of steady evaluation. The
  operator's own histogram `modelloop_drift_evaluation_lag_seconds` (how late an evaluation ran after it
  was due; p50/p99 interpolated in its buckets as Prometheus's histogram_quantile does, and the upper bound
  of the highest bucket used) and its count of evaluations against the expected N x duration / interval;
  from the bench's watch on the DriftPolicies, the evaluations whose status arrived meanwhile and the time
  from each one's due moment (the previous `status.lastEvaluationTime`, whole seconds as the operator
  itself counts them, plus the interval) to the bench receiving its status (due_to_status_*); the
  operator's peak RSS (VmHWM), its CPU seconds, its DriftPolicy reconciles per second, their mean duration
  and queue wait, its API requests by verb, and the CPU seconds of the API server, Prometheus and the bench
  meanwhile. An evaluation's next one is due an interval after it ran, so lateness is not caught up (but for
  the part of a second that truncating lastEvaluationTime gives back): fewer evaluations than expected is
  the lag showing;
- breach to retraining: then --breach policies (20 by default) read 0.9; after their window each creates
  one TrainingRun (ghcr.io/modelloop/trainer:0.1.0 on sklearn://iris, labelled to stay Running under
  kwok). The operator's histogram `modelloop_drift_retraining_start_seconds` (from the start of the
  evaluation that confirms the breach to the TrainingRun created: count, mean, p99, highest bucket), and,
  from the bench's watch on the TrainingRuns, the time from each breach's confirming moment to the run's
  ADDED event. The confirming moment is the breach start, which the run's evidence records in whole
  seconds (evidence.breachStart; its name `<policy>-<Unix seconds>` carries it too), plus the window: the
  due moment of the confirming evaluation as the operator schedules it. The breach began up to 1 s after
  that truncated start, so the figure is an upper bound of the time from the breach having held a whole
  window to the run seen. confirming_pass_late_*: the run's evidence.confirmedAt (when the confirming
  pass began, whole seconds) less that due moment.

    .venv/bin/python bench/driftpolicies.py [--policies 500] [--interval 5] [--duration 120] [--breach 20]
        [--json] [--keep-cluster]

BENCH_OPERATOR_ENV="K=V ..." adds to the operator's environment (as in bench/trainingruns.py). The
operator's log is left in .cluster/bench/driftpolicies-operator.log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
from registry import wait
from rollouts import Prometheus, free_port, operator_metrics, percentile, rollout_requests
from trainingruns import EXTRA_ENV, STATE, WRITERS, ResumableWatch, cluster, cpu_seconds, peak_rss_mib

from modelloop.api import GROUP, VERSION
from modelloop.naming import LABEL_DRIFT_POLICY

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "drift-bench"
WINDOW_SECONDS = 30
THRESHOLD = 0.3
CLEAN, DRIFTED = 0.1, 0.9
QUERY = 'max(bench_drift_score{policy="{{name}}"})'

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def policy_name(i: int) -> str:
    return f"p-{i}"


def drift_policy(i: int, interval: float) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DriftPolicy",
        "metadata": {"name": policy_name(i)},
        "spec": {
            "target": {"inferenceService": policy_name(i)},
            "metrics": [
                {"name": "score", "query": QUERY, "threshold": THRESHOLD, "comparison": "GreaterThan"}
            ],
            "window": f"{WINDOW_SECONDS}s",
            "evaluationInterval": f"{interval:g}s",
            "retrain": {
                "trainingRunTemplate": {
                    "image": "ghcr.io/modelloop/trainer:0.1.0",
                    "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
                    "resources": {"cpu": "10m", "memory": "16Mi"},
                    "output": {"modelName": "iris"},
                },
                # kwok keeps the training pod Running: the run, and so its policy, stays where it is.
                "labels": {"sim.modelloop.dev/outcome": "Hold"},
            },
        },
    }


class Exporter:
    """`bench_drift_score{policy=...}` of every policy, served on 127.0.0.1 for Prometheus to scrape."""

    def __init__(self, names: list[str], value: float) -> None:
        self.scores = dict.fromkeys(names, value)
        scores = self.scores

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = [f'bench_drift_score{{policy="{n}"}} {v}\n' for n, v in list(scores.items())]
                body = ("# TYPE bench_drift_score gauge\n" + "".join(lines)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def watch_objects(watch_api: kubernetes.client.ApiClient, plural: str) -> ResumableWatch:
    """A watch of NAMESPACE's objects of ``plural`` (dicts, resumed where they were)."""
    custom = kubernetes.client.CustomObjectsApi(watch_api)
    return ResumableWatch(custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural)


class Evaluations:
    """A watch on the DriftPolicies: each policy's phase, and when each of its evaluations (a new
    `status.lastEvaluationTime`) reached the bench."""

    def __init__(self, watch_api: kubernetes.client.ApiClient) -> None:
        self.phase: dict[str, str] = {}
        self.received: dict[str, dict[float, float]] = defaultdict(dict)  # name: {evaluation time: received}
        self.changed = threading.Condition()
        self._watch = watch_objects(watch_api, "driftpolicies")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for event in self._watch.events():
            received = time.time()
            obj = event["object"]
            name = obj["metadata"]["name"]
            status = obj.get("status") or {}
            if status.get("lastEvaluationTime"):
                self.received[name].setdefault(seconds(status["lastEvaluationTime"]), received)
            with self.changed:
                self.phase[name] = str(status.get("phase"))
                self.changed.notify_all()

    def wait_all(self, phase: str, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(p == phase for p in self.phase.values()) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    phases: dict[str, int] = defaultdict(int)
                    for p in self.phase.values():
                        phases[p] += 1
                    raise TimeoutError(f"not {n} {phase} after {timeout:.0f} s; phases now: {dict(phases)}")
                self.changed.wait(min(left, 1.0))

    def due_to_status(self, interval: float, start: float, end: float) -> list[float]:
        """For each evaluation whose status arrived between start and end: received - due, its due moment
        the previous evaluation's time plus the interval."""
        lags = []
        for evaluations in self.received.values():
            times = sorted(evaluations)
            for previous, current in itertools.pairwise(times):
                received = evaluations[current]
                if start <= received < end:
                    lags.append(received - (previous + interval))
        return lags

    def listed(self) -> bool:
        """Whether the watch has listed the objects there were and is watching."""
        return self._watch.listed.is_set()

    def stop(self) -> None:
        self._watch.stop()


class Retrainings:
    """A watch on the TrainingRuns the policies start: when each one's ADDED event reached the bench, and
    the breach start and confirming moment its evidence records (whole seconds, as the operator wrote)."""

    def __init__(self, watch_api: kubernetes.client.ApiClient) -> None:
        self.added: dict[str, tuple[float, float, float]] = {}  # name: (received, breachStart, confirmedAt)
        self.changed = threading.Condition()
        self._watch = watch_objects(watch_api, "trainingruns")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for event in self._watch.events():
            received = time.time()
            obj = event["object"]
            if event["type"] != "ADDED" or LABEL_DRIFT_POLICY not in (obj["metadata"].get("labels") or {}):
                continue
            evidence = obj["spec"]["triggeredBy"]["evidence"]
            with self.changed:
                self.added.setdefault(
                    obj["metadata"]["name"],
                    (received, seconds(evidence["breachStart"]), seconds(evidence["confirmedAt"])),
                )
                self.changed.notify_all()

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.added) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.added)}/{n} TrainingRuns after {timeout:.0f} s")
                self.changed.wait(min(left, 1.0))

    def listed(self) -> bool:
        """Whether the watch has listed the objects there were and is watching."""
        return self._watch.listed.is_set()

    def stop(self) -> None:
        self._watch.stop()


def serving(port: int) -> bool:
    try:
        return bool(operator_metrics(port))
    except OSError:
        return False


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    """How much the operator's samples of ``name`` with these labels grew."""
    return sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == name and labels.items() <= dict(key[1]).items()
    )


def histogram(before: Metrics, after: Metrics, name: str) -> dict[str, Any]:
    """One histogram's growth between two readings: count, mean, p50, p99 (interpolated in the buckets,
    as Prometheus's histogram_quantile does) and the upper bound of the highest bucket used."""
    cumulative = sorted(
        (float(dict(key[1])["le"]), value - before.get(key, 0.0))
        for key, value in after.items()
        if key[0] == f"{name}_bucket"
    )
    count = delta(before, after, f"{name}_count")
    if not count:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None, "max_bucket_ms": None}

    def quantile(q: float) -> float:
        rank = q * count
        lower, below = 0.0, 0.0
        for upper, seen in cumulative:
            if seen >= rank:
                if math.isinf(upper):
                    return lower  # past the last finite bucket: its bound is all that is known
                return lower + (upper - lower) * (rank - below) / max(seen - below, 1e-9)
            lower, below = upper, seen
        return lower

    highest = next(upper for upper, seen in cumulative if seen >= count)
    return {
        "count": round(count),
        "mean_ms": round(1000 * delta(before, after, f"{name}_sum") / count, 1),
        "p50_ms": round(1000 * quantile(0.5), 1),
        "p99_ms": round(1000 * quantile(0.99), 1),
        "max_bucket_ms": "+Inf" if math.isinf(highest) else round(1000 * highest),
    }


def drift_work(before: Metrics, after: Metrics, elapsed: float) -> dict[str, Any]:
    """What the operator did meanwhile: DriftPolicy reconciles per second, their mean duration and queue
    wait, and its API requests by verb with their mean latency."""
    kind = {"kind": "DriftPolicy"}
    reconciles = delta(before, after, "modelloop_reconciles_total", **kind)
    durations = delta(before, after, "modelloop_reconcile_duration_seconds_count", **kind)
    spent = delta(before, after, "modelloop_reconcile_duration_seconds_sum", **kind)
    waited = delta(before, after, "modelloop_queue_wait_seconds_count", **kind)
    return {
        "reconciles": round(reconciles),
        "reconciles_per_second": round(reconciles / elapsed, 1),
        "reconcile_errors": round(delta(before, after, "modelloop_reconciles_total", result="error", **kind)),
        "reconcile_mean_ms": round(1000 * spent / max(1.0, durations), 1),
        "queue_wait_mean_ms": round(
            1000 * delta(before, after, "modelloop_queue_wait_seconds_sum", **kind) / max(1.0, waited), 1
        ),
        # The API requests by verb: rollout_requests reads them whatever the kind.
        **{k: v for k, v in rollout_requests(before, after).items() if k.startswith("api_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--interval", type=float, default=5.0, help="evaluationInterval (default 5)")
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of steady evaluation measured (default 120)"
    )
    parser.add_argument("--breach", type=int, default=20, help="policies then breached (default 20)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()
    n, interval = args.policies, args.interval
    names = [policy_name(i) for i in range(n)]

    bin_dir = Path(cluster("bin-dir").strip())
    cluster("up")
    kubeconfig = str(STATE / "kubeconfig")
    # HOME: kubectl's discovery cache goes to the cluster's state, not to ./.kube.
    env = {"KUBECONFIG": kubeconfig, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(STATE)}

    def kubectl(*words: Any) -> None:
        subprocess.run([bin_dir / "kubectl", *words], env=env, check=True, stdout=subprocess.DEVNULL)

    kubectl("apply", "--server-side", "--force-conflicts", "-f", ROOT / "crds")
    # A CRD created a moment ago may have no conditions yet, which kubectl wait takes for an error.
    established = [bin_dir / "kubectl", "wait", "--for=condition=Established", "crd", "--all"]
    wait(lambda: subprocess.run(established, env=env, capture_output=True).returncode == 0, timeout=60)
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=300s")
    kubectl("create", "namespace", NAMESPACE)
    kubernetes.config.load_kube_config(config_file=kubeconfig)
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = WRITERS * 2
    custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))

    exporter = Exporter(names, CLEAN)
    prometheus = Prometheus(exporter.address)
    metrics_port = free_port()
    log_path = STATE / "driftpolicies-operator.log"
    log = log_path.open("wb")
    operator = subprocess.Popen(
        [ROOT / ".venv" / "bin" / "modelloop", "run", "-n", NAMESPACE, "--metrics",
         f"127.0.0.1:{metrics_port}", "--log-format", "plain"],
        env={**env, "MODELLOOP_PROMETHEUS_URL": prometheus.url, **EXTRA_ENV},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    evaluations: Evaluations | None = None
    retrainings: Retrainings | None = None
    try:
        # Not part of any figure: Prometheus has every policy's score, and the operator serves metrics.
        wait(lambda: prometheus.query("count(bench_drift_score)") == n, timeout=120, interval=0.5)
        wait(lambda: serving(metrics_port), timeout=60, interval=0.5)
        watch_configuration = kubernetes.client.Configuration.get_default_copy()
        evaluations = Evaluations(kubernetes.client.ApiClient(watch_configuration))
        retrainings = Retrainings(kubernetes.client.ApiClient(watch_configuration))
        # Both watches open before the first create.
        wait(lambda: evaluations.listed() and retrainings.listed(), timeout=60, interval=0.1)

        created = time.time()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "driftpolicies", drift_policy(i, interval)
                    ),
                    range(n),
                )
            )
        evaluations.wait_all("Watching", n, timeout=600)
        all_watching_seconds = time.time() - created

        apiserver = int(next(STATE.glob("kwok/clusters/*/pids/kube-apiserver.pid")).read_text())
        cpu_before, metrics_before = cpu_seconds(operator.pid), operator_metrics(metrics_port)
        apiserver_before, prometheus_before = cpu_seconds(apiserver), cpu_seconds(prometheus.process.pid)
        bench_before = time.process_time()
        steady_start = time.time()
        time.sleep(args.duration)
        steady_end = time.time()
        cpu_steady = cpu_seconds(operator.pid) - cpu_before
        others_steady = {
            "apiserver": cpu_seconds(apiserver) - apiserver_before,
            "prometheus": cpu_seconds(prometheus.process.pid) - prometheus_before,
            "bench": time.process_time() - bench_before,
        }
        metrics_steady = operator_metrics(metrics_port)
        load_steady = os.getloadavg()
        lag = histogram(metrics_before, metrics_steady, "modelloop_drift_evaluation_lag_seconds")
        work = drift_work(metrics_before, metrics_steady, steady_end - steady_start)
        due_to_status = [x * 1000 for x in evaluations.due_to_status(interval, steady_start, steady_end)]

        breached = names[: args.breach]
        for name in breached:
            exporter.scores[name] = DRIFTED
        switched = time.time()
        # A breach starts at the first evaluation after Prometheus's next scrape and holds a window.
        retrainings.wait_for(len(breached), timeout=WINDOW_SECONDS + 3 * interval + 120)
        time.sleep(1)  # the histogram's last observations are made after the create returns
        metrics_breach = operator_metrics(metrics_port)
        start_seconds = histogram(metrics_steady, metrics_breach, "modelloop_drift_retraining_start_seconds")
        # The confirming evaluation is due a window after the breach start (whole seconds, as the operator
        # counts it); confirmedAt is when that pass began, truncated to the second.
        runs = [
            (received, start + WINDOW_SECONDS, confirmed)
            for received, start, confirmed in retrainings.added.values()
        ]
        confirmed_to_seen = [(received - due) * 1000 for received, due, _ in runs]
        confirming_pass_late = [confirmed - due for _, due, confirmed in runs]
        operator_log = log_path.read_text(errors="replace")
        row: dict[str, Any] = {
            "policies": n,
            "interval_seconds": interval,
            "duration_seconds": args.duration,
            "all_watching_seconds": round(all_watching_seconds, 2),
            "evaluations": lag["count"],
            "evaluations_expected": round(n * args.duration / interval),
            "evaluations_seen": len(due_to_status),
            "evaluation_lag_p50_ms": lag["p50_ms"],
            "evaluation_lag_p99_ms": lag["p99_ms"],
            "evaluation_lag_max_bucket_ms": lag["max_bucket_ms"],
            "evaluation_lag_mean_ms": lag["mean_ms"],
            "due_to_status_p50_ms": round(statistics.median(due_to_status)) if due_to_status else None,
            "due_to_status_p99_ms": round(percentile(due_to_status, 99)) if due_to_status else None,
            "due_to_status_max_ms": round(max(due_to_status)) if due_to_status else None,
            **{f"steady_{k}": v for k, v in work.items()},
            "steady_operator_cpu_seconds": round(cpu_steady, 2),
            "steady_operator_cpu_share": round(cpu_steady / (steady_end - steady_start), 2),
            **{f"steady_{k}_cpu_seconds": round(v, 2) for k, v in others_steady.items()},
            "breached": len(breached),
            "retrainings_seen": len(retrainings.added),
            "breach_to_all_runs_seconds": round(max(received for received, _, _ in runs) - switched, 2),
            "retraining_start_count": start_seconds["count"],
            "retraining_start_mean_ms": start_seconds["mean_ms"],
            "retraining_start_p99_ms": start_seconds["p99_ms"],
            "retraining_start_max_bucket_ms": start_seconds["max_bucket_ms"],
            "confirmed_to_run_seen_p50_ms": round(statistics.median(confirmed_to_seen)),
            "confirmed_to_run_seen_max_ms": round(max(confirmed_to_seen)),
            "confirmed_to_run_seen_over_1s": sum(x > 1000 for x in confirmed_to_seen),
            "confirming_pass_late_p50_s": statistics.median(confirming_pass_late),
            "confirming_pass_late_max_s": max(confirming_pass_late),
            "operator_peak_rss_mib": round(peak_rss_mib(operator.pid), 1),
            "operator_cpu_seconds": round(cpu_seconds(operator.pid), 2),
            "operator_log_errors": sum(
                "ERROR" in line or "Traceback" in line for line in operator_log.splitlines()
            ),
            "load_average_steady": [round(x, 2) for x in load_steady],
            "cpus": os.cpu_count(),
        }
        if args.json:
            print(json.dumps(row), flush=True)
        width = max(map(len, row))
        print(f"\n{'figure':<{width}}  value")
        for key, value in row.items():
            print(f"{key:<{width}}  {value}")
    finally:
        for part in (evaluations, retrainings):
            if part is not None:
                part.stop()
        prometheus.stop()
        exporter.stop()
        operator.terminate()
        operator.wait(timeout=30)
        log.close()
        if not args.keep_cluster:
            cluster("down")


if __name__ == "__main__":
    main()
