"""Benchmark: rollout decisions under load, on the local control plane with `modelloop run`.

N InferenceServices (default 200) of one model, KServe backend in Knative mode, each with the rollout
steps [10, 20, 30, 40, 50, 100] every --step-seconds (2 by default) and an analysis whose one metric
(`sum(up{job="operator"})`, min 1) passes, measured at the same interval, so every step's due moment needs
a measurement. All are brought to Stable on version 1; then version 2 is registered and all N roll out at
once, in lockstep.

- decision latency: for each step transition, from the step's due moment (`status.stepStartTime` as the
  operator wrote it, plus the step interval) to the moment the bench's watch on KServe's InferenceServices
  receives the new `spec.predictor.canaryTrafficPercent` (or its removal at promotion); 5 per service;
  due_to_pass_* and pass_to_write_* split it, for the transitions to a next step, at the next step's
  stepStartTime (the `now` of the operator's deciding pass);
- the time from registering version 2 until all N are Promoted, the operator's peak RSS (VmHWM) and its
  CPU seconds; rollout_*: what the operator and the API server did meanwhile (reconciles, their mean
  duration and queue wait, API requests by verb and their mean latency, from the operator's own metrics;
  the API server's and the bench's own CPU seconds).

A real Prometheus (Debian's /usr/bin/prometheus, on 127.0.0.1) scrapes the operator's own metrics
endpoint every second; the analysis queries it. There is no KServe controller: the bench plays its part in
Knative mode, a watch on `serving.kserve.io/v1beta1` InferenceServices whose every change of spec gets the
status KServe would write (observedGeneration, Ready, url, and `components.predictor.traffic`: the latest
revision at canaryTrafficPercent beside the previous one, or 100 % to the latest), through a pool of
writers. Its own lag (spec received to status written) is reported beside the figures.

    .venv/bin/python bench/rollouts.py [--services 200] [--step-seconds 2] [--keep-cluster]

BENCH_OPERATOR_ENV="K=V ..." adds to the operator's environment (as in bench/trainingruns.py), e.g.
PYTHONPATH=<a copy of operator/> to measure a change. The operator's log and a per-service timeline of
every status, spec and traffic change seen are left in .cluster/bench/ (rollouts-operator.log,
rollouts-timeline.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from prometheus_client.parser import text_string_to_metric_families
from registry import wait
from trainingruns import EXTRA_ENV, STATE, WRITERS, ResumableWatch, cluster, cpu_seconds, peak_rss_mib

from modelloop.api import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "rollout-bench"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
SHARED = Path(os.environ.get("MODELLOOP_SHARED_DIR", ROOT.parent / "shared"))
KSERVE_CRD = SHARED / "crds" / "serving.kserve.io_inferenceservices.yaml"
STEPS = [10, 20, 30, 40, 50, 100]
STATUS_WRITERS = 8


def operator_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's own metrics now, by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rollout_requests(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """What the operator did during the rollout: InferenceService reconciles, their mean duration and
    queue wait, and its API requests by verb with their mean latency."""

    def delta(name: str, **labels: str) -> float:
        return sum(
            value - before.get(key, 0.0)
            for key, value in after.items()
            if key[0] == name and labels.items() <= dict(key[1]).items()
        )

    kind = {"kind": "InferenceService"}
    reconciles = delta("modelloop_reconciles_total", **kind)
    waited = delta("modelloop_queue_wait_seconds_count", **kind)
    row: dict[str, Any] = {
        "reconciles": round(reconciles),
        "reconcile_mean_ms": round(
            1000
            * delta("modelloop_reconcile_duration_seconds_sum", **kind)
            / max(1.0, delta("modelloop_reconcile_duration_seconds_count", **kind))
        ),
        "queue_wait_mean_ms": round(
            1000 * delta("modelloop_queue_wait_seconds_sum", **kind) / max(1.0, waited)
        ),
    }
    verbs = sorted({dict(k[1])["verb"] for k in after if k[0] == "modelloop_api_requests_total"})
    for verb in verbs:
        count = delta("modelloop_api_request_duration_seconds_count", verb=verb)
        if count:
            row[f"api_{verb}"] = round(count)
            row[f"api_{verb}_mean_ms"] = round(
                1000 * delta("modelloop_api_request_duration_seconds_sum", verb=verb) / count
            )
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """Prometheus on 127.0.0.1 scraping one target every second, its data in a folder of STATE."""

    def __init__(self, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = STATE / "rollouts-prometheus"
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "operator", "static_configs": [{"targets": [target]}]}],
        }
        (self.home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (self.home / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            ["/usr/bin/prometheus", f"--config.file={self.home / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.home / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def query(self, promql: str) -> float | None:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                result = json.load(response)["data"]["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


class KServeStandIn:
    """KServe's controller in Knative mode, as far as modelloop reads it: for each new generation of an
    InferenceService, the status KServe writes once the new revision is ready. Also records, per service,
    when each new canaryTrafficPercent (None: removed) was received."""

    def __init__(self, api: kubernetes.client.ApiClient, watch_api: kubernetes.client.ApiClient) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.watch_custom = kubernetes.client.CustomObjectsApi(watch_api)
        self.traffic_changes: dict[str, list[tuple[int | None, float]]] = defaultdict(list)
        self.status_lag: list[float] = []
        self.written: dict[str, list[tuple[float, int | None]]] = defaultdict(list)
        self.errors: list[str] = []
        self._canary: dict[str, int | None] = {}
        self._generation: dict[str, int] = {}
        self._revisions: dict[str, tuple[str, int]] = {}  # name: (predictor template, revision number)
        self._pending: dict[str, tuple[dict[str, Any], float]] = {}
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(STATUS_WRITERS)
        self._watch = ResumableWatch(
            self.watch_custom.list_namespaced_custom_object, *KSERVE[:2], NAMESPACE, KSERVE[2]
        )
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for event in self._watch.events():
            received = time.time()
            obj = event["object"]
            if event["type"] == "DELETED":
                continue
            name = obj["metadata"]["name"]
            canary = (obj["spec"].get("predictor") or {}).get("canaryTrafficPercent")
            if canary != self._canary.get(name):
                self.traffic_changes[name].append((canary, received))
            self._canary[name] = canary
            generation = int(obj["metadata"]["generation"])
            if self._generation.get(name, 0) >= generation:
                continue  # our own status write, or nothing new
            self._generation[name] = generation
            with self._lock:
                self._pending[name] = (obj, received)
                if name not in self._inflight:
                    self._inflight.add(name)
                    self._pool.submit(self._write, name)

    def _write(self, name: str) -> None:
        """Write the status of the newest generation seen; one writer per service at a time, so a status
        never goes back to an older generation."""
        while True:
            with self._lock:
                if name not in self._pending:
                    self._inflight.discard(name)
                    return
                obj, received = self._pending.pop(name)
            try:
                self.custom.patch_namespaced_custom_object_status(
                    *KSERVE[:2], NAMESPACE, KSERVE[2], name, {"status": self._status(obj)}
                )
                written = time.time()
                self.status_lag.append(written - received)
                self.written[name].append((written, obj["spec"]["predictor"].get("canaryTrafficPercent")))
            except Exception as error:  # counted and reported; the next generation retries
                self.errors.append(f"{name}: {error}")

    def _status(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        predictor = dict(obj["spec"].get("predictor") or {})
        canary = predictor.pop("canaryTrafficPercent", None)
        template = json.dumps(predictor, sort_keys=True)
        previous_template, number = self._revisions.get(name, ("", 0))
        if template != previous_template:  # a new Knative revision only when the template changes
            number += 1
            self._revisions[name] = (template, number)
        latest = f"{name}-predictor-{number:05d}"
        if canary is not None and number > 1:
            traffic = [
                {"revisionName": latest, "percent": canary, "latestRevision": True},
                {
                    "revisionName": f"{name}-predictor-{number - 1:05d}",
                    "percent": 100 - canary,
                    "latestRevision": False,
                    "tag": "prev",
                },
            ]
        else:
            traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "observedGeneration": int(obj["metadata"]["generation"]),
            "url": f"http://{name}.{NAMESPACE}.example.com",
            "conditions": [
                {"type": cond, "status": "True", "lastTransitionTime": now}
                for cond in ("IngressReady", "PredictorReady", "Ready")
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": latest,
                    "traffic": traffic,
                }
            },
        }

    def listed(self) -> bool:
        """Whether the watch has listed the objects there were and is watching."""
        return self._watch.listed.is_set()

    def stop(self) -> None:
        self._watch.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


class Rollouts:
    """A watch on modelloop's InferenceServices: each service's phase and the stepStartTime of each step
    of the canary of version 2, and when each service first reached a (phase, stable version)."""

    def __init__(self, watch_api: kubernetes.client.ApiClient) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(watch_api)
        self.step_start: dict[str, dict[int, float]] = defaultdict(dict)
        self.restarted_steps = 0
        self.reached: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        self.last_status: dict[str, dict[str, Any]] = {}
        self.timeline: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.changed = threading.Condition()
        self._watch = ResumableWatch(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "inferenceservices"
        )
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for event in self._watch.events():
            received = time.time()
            obj = event["object"]
            name = obj["metadata"]["name"]
            status = obj.get("status") or {}
            self.last_status[name] = status
            self.timeline[name].append(
                (received, *(status.get(k) for k in ("phase", "reason", "stepIndex", "canaryTraffic")))
            )
            if status.get("canaryVersion") == 2 and status.get("stepStartTime") is not None:
                index = int(status["stepIndex"])
                start = datetime.fromisoformat(status["stepStartTime"].replace("Z", "+00:00")).timestamp()
                known = self.step_start[name].setdefault(index, start)
                self.restarted_steps += known != start
            if status.get("phase") and status.get("stableVersion") is not None:
                key = (str(status["phase"]), int(status["stableVersion"]))
                self.reached[key].setdefault(name, received)
            with self.changed:
                self.changed.notify_all()

    def wait_all(self, phase: str, stable: int, n: int, timeout: float) -> float:
        """Until n services have reached phase on that stable version; the time the last one did."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.reached[(phase, stable)]) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    phases: dict[str, int] = defaultdict(int)
                    for s in self.last_status.values():
                        phases[f"{s.get('phase')}/{s.get('reason')}"] += 1
                    raise TimeoutError(
                        f"{len(self.reached[(phase, stable)])}/{n} {phase} on version {stable} after "
                        f"{timeout:.0f} s; phases now: {dict(phases)}"
                    )
                self.changed.wait(min(left, 1.0))
        return max(self.reached[(phase, stable)].values())

    def listed(self) -> bool:
        """Whether the watch has listed the objects there were and is watching."""
        return self._watch.listed.is_set()

    def stop(self) -> None:
        self._watch.stop()


def model_version(number: int) -> dict[str, Any]:
    """A version with no gates (and no ModelPolicy): Validated as registered."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelVersion",
        "metadata": {"name": f"bench-v{number}"},
        "spec": {
            "modelName": "bench",
            "version": number,
            "artifact": {"uri": f"s3://models/bench/{number}"},
            "framework": {"name": "sklearn"},
            "metrics": {"accuracy": 0.9},
        },
    }


def inference_service(i: int, step_seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": f"svc-{i:03d}"},
        "spec": {
            "model": {"name": "bench"},
            "kserve": {"deploymentMode": "Knative"},
            "rollout": {
                "steps": STEPS,
                "stepInterval": f"{step_seconds:g}s",
                "analysis": {
                    "interval": f"{step_seconds:g}s",
                    "metrics": [{"name": "operator-up", "query": 'sum(up{job="operator"})', "min": 1}],
                },
            },
        },
    }


def decision_latencies(
    stand_in: KServeStandIn, rollouts: Rollouts, step_seconds: float
) -> tuple[list[float], list[tuple[float, float]], list[str]]:
    """For every step transition of the canary of version 2: receive - due; for those to a next step (not
    the promotion) also (next stepStartTime - due, receive - next stepStartTime): when the operator's pass
    decided, and how long the pass took from there to the write; and what could not be matched."""
    latencies: list[float] = []
    split: list[tuple[float, float]] = []
    unmatched: list[str] = []
    weights = [w for w in STEPS if w < 100]
    for name, changes in stand_in.traffic_changes.items():
        # The changes of version 2's rollout: from its first step's weight on.
        starts = [i for i, (w, _) in enumerate(changes) if w == weights[0]]
        if not starts:
            unmatched.append(f"{name}: no canary at {weights[0]}%")
            continue
        rollout = changes[starts[-1] :]
        step_start = rollouts.step_start[name]
        for (weight, _), (after, received) in itertools.pairwise(rollout):
            index = weights.index(weight) if weight in weights else None
            expected = weights[index + 1] if index is not None and index + 1 < len(weights) else None
            if index is None or after != expected:
                unmatched.append(f"{name}: {weight}% then {after}")
                continue
            if index not in step_start:
                unmatched.append(f"{name}: no stepStartTime seen for step {index}")
                continue
            due = step_start[index] + step_seconds
            latencies.append(received - due)
            if index + 1 in step_start:
                split.append((step_start[index + 1] - due, received - step_start[index + 1]))
        if rollout[-1][0] is not None:
            unmatched.append(f"{name}: ends at {rollout[-1][0]}%")
    return latencies, split, unmatched


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument(
        "--step-seconds", type=float, default=2.0, help="stepInterval and analysis interval (default 2)"
    )
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()
    n = args.services

    bin_dir = Path(cluster("bin-dir").strip())
    cluster("up")
    kubeconfig = str(STATE / "kubeconfig")
    # HOME: kubectl's discovery cache goes to the cluster's state, not to ./.kube.
    env = {"KUBECONFIG": kubeconfig, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(STATE)}

    def kubectl(*words: Any, check: bool = True) -> None:
        subprocess.run([bin_dir / "kubectl", *words], env=env, check=check, stdout=subprocess.DEVNULL)

    kubectl("apply", "--server-side", "--force-conflicts", "-f", ROOT / "crds", "-f", KSERVE_CRD)
    # A CRD created a moment ago may have no conditions yet, which kubectl wait takes for an error.
    established = [bin_dir / "kubectl", "wait", "--for=condition=Established", "crd", "--all"]
    wait(lambda: subprocess.run(established, env=env, capture_output=True).returncode == 0, timeout=60)
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=300s")
    kubectl("create", "namespace", NAMESPACE)
    kubernetes.config.load_kube_config(config_file=kubeconfig)
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = WRITERS * 2
    api = kubernetes.client.ApiClient(configuration)
    custom = kubernetes.client.CustomObjectsApi(api)

    metrics_port = free_port()
    prometheus = Prometheus(f"127.0.0.1:{metrics_port}")
    log = (STATE / "rollouts-operator.log").open("wb")
    operator = subprocess.Popen(
        [ROOT / ".venv" / "bin" / "modelloop", "run", "-n", NAMESPACE, "--metrics",
         f"127.0.0.1:{metrics_port}", "--log-format", "plain"],
        env={**env, "MODELLOOP_KSERVE_MODE": "Knative", "MODELLOOP_PROMETHEUS_URL": prometheus.url,
             **EXTRA_ENV},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stand_in: KServeStandIn | None = None
    rollouts: Rollouts | None = None
    try:
        # Not part of any figure: Prometheus has scraped the operator, so the analysis query passes.
        wait(lambda: (prometheus.query('sum(up{job="operator"})') or 0) >= 1, timeout=120, interval=0.5)

        watch_configuration = kubernetes.client.Configuration.get_default_copy()
        stand_in = KServeStandIn(api, kubernetes.client.ApiClient(watch_configuration))
        rollouts = Rollouts(kubernetes.client.ApiClient(watch_configuration))
        # Both watches open before the first create.
        wait(lambda: stand_in.listed() and rollouts.listed(), timeout=60, interval=0.1)

        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions", model_version(1))
        wait(
            lambda: (
                (custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions", "bench-v1")
                 .get("status") or {}).get("phase") == "Validated"
            ),
            timeout=60,
        )  # fmt: skip
        started = time.time()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        NAMESPACE,
                        "inferenceservices",
                        inference_service(i, args.step_seconds),
                    ),
                    range(n),
                )
            )
        stable_seconds = rollouts.wait_all("Stable", 1, n, timeout=600) - started
        time.sleep(3)  # settled: the passes that follow Stable are done

        apiserver = int(next(STATE.glob("kwok/clusters/*/pids/kube-apiserver.pid")).read_text())
        cpu_before = cpu_seconds(operator.pid)
        metrics_before = operator_metrics(metrics_port)
        apiserver_before, bench_before = cpu_seconds(apiserver), time.process_time()
        load_before = os.getloadavg()
        registered = time.time()
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions", model_version(2))
        promoted_seconds = rollouts.wait_all("Promoted", 2, n, timeout=600) - registered
        rollout_cpu = cpu_seconds(operator.pid) - cpu_before
        operator_work = rollout_requests(metrics_before, operator_metrics(metrics_port))
        apiserver_cpu, bench_cpu = (
            cpu_seconds(apiserver) - apiserver_before,
            time.process_time() - bench_before,
        )
        load_after = os.getloadavg()
        time.sleep(1)  # the last removals of canaryTrafficPercent reach the watch

        latencies, split, unmatched = decision_latencies(stand_in, rollouts, args.step_seconds)
        canary_start = [
            changes[0][1] - registered
            for changes in stand_in.traffic_changes.values()
            if changes and changes[0][0] == STEPS[0]
        ]
        operator_log = (STATE / "rollouts-operator.log").read_text(errors="replace")
        ms = [x * 1000 for x in latencies]
        api_calls = sum(
            v for k, v in operator_work.items() if k.startswith("api_") and not k.endswith("_mean_ms")
        )
        row = {
            "services": n,
            "step_seconds": args.step_seconds,
            "decisions": len(latencies),
            "unmatched": len(unmatched),
            "decision_p50_ms": round(statistics.median(ms)) if ms else None,
            "decision_p90_ms": round(percentile(ms, 90)) if ms else None,
            "decision_p99_ms": round(percentile(ms, 99)) if ms else None,
            "decision_max_ms": round(max(ms)) if ms else None,
            "decisions_over_1s": sum(x > 1000 for x in ms),
            # What one step decision costs the API server: the operator's requests (and reconciles) during
            # the rollout, divided by the decisions.
            "api_calls_per_decision": round(api_calls / max(1, len(latencies)), 2),
            "reconciles_per_decision": round(operator_work["reconciles"] / max(1, len(latencies)), 2),
            "due_to_pass_p50_ms": round(statistics.median(d for d, _ in split) * 1000) if split else None,
            "due_to_pass_p99_ms": round(percentile([d for d, _ in split], 99) * 1000) if split else None,
            "pass_to_write_p50_ms": round(statistics.median(w for _, w in split) * 1000) if split else None,
            "pass_to_write_p99_ms": round(percentile([w for _, w in split], 99) * 1000) if split else None,
            "canary_start_p50_ms": round(statistics.median(canary_start) * 1000) if canary_start else None,
            "canary_start_max_ms": round(max(canary_start) * 1000) if canary_start else None,
            "all_stable_seconds": round(stable_seconds, 2),
            "all_promoted_seconds": round(promoted_seconds, 2),
            "operator_peak_rss_mib": round(peak_rss_mib(operator.pid), 1),
            "operator_rollout_cpu_seconds": round(rollout_cpu, 2),
            "operator_cpu_seconds": round(cpu_seconds(operator.pid), 2),
            "rollout_apiserver_cpu_seconds": round(apiserver_cpu, 2),
            **{f"rollout_{k}": v for k, v in operator_work.items()},
            "rollout_bench_cpu_seconds": round(bench_cpu, 2),
            "kserve_stand_in_status_lag_p99_ms": round(percentile(stand_in.status_lag, 99) * 1000),
            "kserve_stand_in_errors": len(stand_in.errors),
            "step_start_rewritten": rollouts.restarted_steps,
            "operator_log_errors": sum(
                "ERROR" in line or "Traceback" in line for line in operator_log.splitlines()
            ),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(row), flush=True)
        timeline = {
            name: {"operator_status": rollouts.timeline[name], "kserve_spec": stand_in.traffic_changes[name],
                   "kserve_status": stand_in.written[name], "step_start": rollouts.step_start[name]}
            for name in sorted(rollouts.timeline)
        }  # fmt: skip
        (STATE / "rollouts-timeline.json").write_text(json.dumps(timeline))
        for line in unmatched[:10] + stand_in.errors[:10]:
            print(json.dumps({"note": line}), flush=True)
    finally:
        for part in (stand_in, rollouts):
            if part is not None:
                part.stop()
        prometheus.stop()
        operator.terminate()
        operator.wait(timeout=30)
        log.close()
        if not args.keep_cluster:
            cluster("down")


if __name__ == "__main__":
    main()
