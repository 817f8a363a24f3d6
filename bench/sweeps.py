"""Benchmark: many learning sweeps at once, on the local control plane with `modelloop run`.

N TrainingRuns (default 100), each a Bayesian (TPE) sweep of --trials trials (default 100) with
--parallelism 5, over a space of three ranges, objective accuracy (Maximize):

    lr       float, log  [1e-5, 1e-1]
    width    int,   log  [16, 512]
    dropout  float       [0, 0.5]

Training pods are labelled `sim.modelloop.dev/outcome: Hold` (kwok keeps them Running) and the bench
plays the kubelet for them: a watch on the namespace's pods sees each one Running, and a pool of writers
(--writers, 16) patches its status as the kubelet would when the container ends (exit code 0, phase
Succeeded) with the trainer's termination message

    {"status":"Succeeded","metrics":{"accuracy":X},"artifactUri":"file:///tmp/a/<pod>/model.joblib",
     "framework":"sklearn"}

where X is a deterministic function of the trial's params (read from the pod's MODELLOOP_PARAMS, as the
trainer reads them; best near lr 3e-3, width 128, dropout 0.2, 0.98 at best), so the sampler learns from
real values. --trial-seconds holds each pod Running that long first (default 0: as fast as the control
plane and the operator go). The Job controller then completes the Job, the operator records the trial and
suggests the next one, until every sweep registers its best trial and is Succeeded.

For each measurement, a fresh namespace and a fresh operator process (`modelloop run -n NS`, its metrics
on 127.0.0.1); the bench's own API calls go through the operator's client (modelloop.kube, aiohttp) on
one event loop, its watches resumed from the last resourceVersion (re-listed after 410 Gone):

- seconds: from the first create until every run is Succeeded (or Failed), as the bench's watch sees it;
  trials/s over that time; per run, from its create to Succeeded (p50, max);
- the operator's RSS: idle (VmRSS just before the first create), peak (VmHWM, from /proc, at the end),
  end (VmRSS when all are done), also sampled every 0.25 s; its CPU seconds during the measurement and per
  trial Job; its TrainingRun reconciles (count, mean duration, mean queue wait) and API requests by verb,
  from its own /metrics;
- turnaround: from the bench's terminated-status write returning to the run's status recording that trial
  as finished (a single run: its phase Succeeded), p50 and p99: the operator's reaction time per trial;
- the CPU seconds of the API server, of the rest of the control plane (etcd, kube-controller-manager,
  kube-scheduler, kwok) and of the bench itself during the measurement (a 2-core machine is shared);
- for sweeps, whether they learned: the best accuracy per sweep (mean, worst; regret: 0.98 less the mean,
  a little below 0 when the noise lifts the best trials above 0.98), the mean accuracy of the first trials
  (TPE's random start: min(10, trials/5)) against the last fifth, and how many sweeps' status.bestTrial
  is not the trial the bench scored highest (should be 0); duplicate trial pods (should be 0).

Baseline (--baseline, measured first on its own namespace and operator): `runs` (default), the same
number of single (non-sweep) runs, each one Job completed the same way; `jobs`, as many single runs as
the sweeps have trials (the same number of Jobs and pods); `none`.

--background-runs N first creates N held single runs (bench/trainingruns.py's) in the namespace
sweeps-background, lets an operator create their Jobs, and then every measured operator watches that
namespace too: the objects of the trainingruns bench beside the sweeps (N Running pods, never completed).

    .venv/bin/python bench/sweeps.py [--sweeps 100] [--trials 100] [--parallelism 5] [--repeat 1]
        [--baseline runs|jobs|none] [--background-runs 0] [--trial-seconds 0] [--quick] [--keep-cluster]

--quick: 10 sweeps of 20 trials. On a 2-core machine the default size (10,000 trial Jobs) takes about
14 minutes, --trials 50 about 5, --quick half a minute (cluster start included). --repeat N measures N
times (baseline and sweeps alternately, each on a fresh namespace and operator) and reports the median
with its spread. The cluster's state lives in
MODELLOOP_CLUSTER_DIR (default .cluster/bench-sweeps) under MODELLOOP_CLUSTER_NAME (default
modelloop-bench-sweeps), apart from the other benches' and e2e's; it is torn down at the end unless
--keep-cluster. BENCH_OPERATOR_COMMAND and BENCH_OPERATOR_ENV as in bench/trainingruns.py. The operator's
log is left in that folder (sweeps-operator-<namespace>.log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from rollouts import free_port, operator_metrics, percentile
from trainingruns import EXTRA_ENV, OPERATOR_COMMAND, cpu_seconds, peak_rss_mib, training_run

from modelloop import kube
from modelloop.api import GROUP, VERSION
from modelloop.kubeconfig import load_config

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MODELLOOP_CLUSTER_DIR") or ROOT / ".cluster" / "bench-sweeps")
CLUSTER_NAME = os.environ.get("MODELLOOP_CLUSTER_NAME") or "modelloop-bench-sweeps"
HOLD = {"sim.modelloop.dev/outcome": "Hold"}
# The bench completes the pods of runs with this label; other held pods (--background-runs) stay Running.
KUBELET_LABEL = "bench.modelloop.dev/kubelet"
BACKGROUND = "sweeps-background"
WRITERS = 16
FINAL = ("Succeeded", "Failed")
TRIAL_FINAL = ("Succeeded", "Failed", "Pruned")
OPTIMUM = {"lr": 3e-3, "width": 128, "dropout": 0.2}
BEST_ACCURACY = 0.98
MAX_STARTUP_TRIALS = 10  # TPE's random start (modelloop.training.search): min(10, trials // 5)

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The bench's own calls go through the operator's client (its connections open on the bench's loop).
KUBE = kube.KubeClient()


# --- what the runs are and what their trials score (pure) ------------------------------------------------


def space() -> dict[str, dict[str, Any]]:
    return {
        "lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
        "width": {"type": "int", "min": 16, "max": 512, "log": True},
        "dropout": {"type": "float", "min": 0.0, "max": 0.5},
    }


def sweep_run(i: int, trials: int, parallelism: int) -> dict[str, Any]:
    """Sweep i: Bayesian over space(), its own model (so registrations do not contend for one model's
    version numbers) and its own seed (so the sweeps differ)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": f"sweep-{i:04d}", "labels": {**HOLD, KUBELET_LABEL: "complete"}},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "TorchMLP", "epochs": 10, "seed": i},
            "dataset": {"uri": "sklearn://digits", "format": "sklearn", "targetColumn": "target"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "output": {"modelName": f"sweep-{i:04d}"},
            "sweep": {
                "strategy": "Bayesian",
                "maxTrials": trials,
                "parallelism": min(parallelism, trials),
                "space": space(),
                "objective": {"metric": "accuracy", "direction": "Maximize"},
            },
        },
    }


def single_run(i: int) -> dict[str, Any]:
    """The baseline: one training Job, params at the optimum, otherwise like a sweep."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": f"single-{i:05d}", "labels": {**HOLD, KUBELET_LABEL: "complete"}},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "params": {"estimator": "TorchMLP", "epochs": 10, "seed": i, **OPTIMUM},
            "dataset": {"uri": "sklearn://digits", "format": "sklearn", "targetColumn": "target"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "output": {"modelName": f"single-{i:05d}"},
        },
    }


def synthetic_accuracy(params: Mapping[str, Any]) -> float:
    """A deterministic accuracy of the params: a smooth hill (in log lr, log width and dropout) with its
    top, 0.98, at OPTIMUM, and a little deterministic noise (±0.002) from the params' text; within
    [0.05, 0.99]."""
    lr = float(params.get("lr", OPTIMUM["lr"]))
    width = float(params.get("width", OPTIMUM["width"]))
    dropout = float(params.get("dropout", OPTIMUM["dropout"]))
    value = (
        BEST_ACCURACY
        - 0.08 * (math.log10(max(lr, 1e-12)) - math.log10(OPTIMUM["lr"])) ** 2
        - 0.03 * (math.log2(max(width, 1.0)) - math.log2(OPTIMUM["width"])) ** 2
        - 1.0 * (dropout - OPTIMUM["dropout"]) ** 2
    )
    text = json.dumps({k: params.get(k) for k in sorted(OPTIMUM)}, sort_keys=True)
    noise = (int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF - 0.5) * 0.004
    return round(min(0.99, max(0.05, value + noise)), 6)


def trainer_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The trainer container's environment (literal values only, as the operator renders it)."""
    container = pod["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env") or () if "value" in e}


def termination_message(pod_name: str, accuracy: float) -> str:
    return json.dumps(
        {
            "status": "Succeeded",
            "metrics": {"accuracy": accuracy},
            "artifactUri": f"file:///tmp/a/{pod_name}/model.joblib",
            "framework": "sklearn",
        },
        separators=(",", ":"),
    )


def terminated_status(pod: Mapping[str, Any], message: str, finished: str) -> dict[str, Any]:
    """The pod status a kubelet writes when the (single) container exits 0 with ``message`` (as
    e2e/kubelet.py's report_termination), started when kwok started it."""
    container = pod["spec"]["containers"][0]
    running = next(
        (
            (s.get("state") or {}).get("running") or {}
            for s in (pod.get("status") or {}).get("containerStatuses") or ()
            if s.get("name") == container["name"]
        ),
        {},
    )
    return {
        "phase": "Succeeded",
        "conditions": [
            {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished}
            for t in ("Ready", "ContainersReady")
        ],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "message": message,
                        "startedAt": running.get("startedAt") or finished,
                        "finishedAt": finished,
                    }
                },
            }
        ],
    }


def learning(
    scores: Mapping[str, Mapping[int | None, float]], best_reported: Mapping[str, int | None], trials: int
) -> dict[str, Any]:
    """Whether the sweeps learned: from what the bench scored each trial (run: {index: accuracy}) and the
    operator's status.bestTrial per run."""
    startup = max(1, min(MAX_STARTUP_TRIALS, trials // 5))
    last = max(1, trials // 5)
    bests, first_means, last_means, wrong_best = [], [], [], 0
    for run, by_index in scores.items():
        ordered = [by_index[i] for i in sorted(i for i in by_index if i is not None)]
        if not ordered:
            continue
        bests.append(max(ordered))
        first_means.append(statistics.fmean(ordered[:startup]))
        last_means.append(statistics.fmean(ordered[-last:]))
        top = max((i for i in by_index if i is not None), key=lambda i: (by_index[i], -i))
        reported = best_reported.get(run)
        if reported is None or by_index.get(reported) != by_index[top]:
            wrong_best += 1
    if not bests:
        return {}
    return {
        "best_accuracy_mean": round(statistics.fmean(bests), 4),
        "best_accuracy_min": round(min(bests), 4),
        "regret_mean": round(BEST_ACCURACY - statistics.fmean(bests), 4),
        f"first_{startup}_mean": round(statistics.fmean(first_means), 4),
        f"last_{last}_mean": round(statistics.fmean(last_means), 4),
        "best_trial_mismatches": wrong_best,
    }


def operator_work(before: Metrics, after: Metrics, kind: str = "TrainingRun") -> dict[str, Any]:
    """What the operator did meanwhile, from its own metrics: reconciles of ``kind``, their mean duration
    and queue wait, its API requests by verb with their mean latency."""

    def delta(name: str, **labels: str) -> float:
        return sum(
            value - before.get(key, 0.0)
            for key, value in after.items()
            if key[0] == name and labels.items() <= dict(key[1]).items()
        )

    count = delta("modelloop_reconcile_duration_seconds_count", kind=kind)
    waited = delta("modelloop_queue_wait_seconds_count", kind=kind)
    row: dict[str, Any] = {
        "reconciles": round(delta("modelloop_reconciles_total", kind=kind)),
        "reconcile_mean_ms": round(
            1000 * delta("modelloop_reconcile_duration_seconds_sum", kind=kind) / max(1.0, count), 1
        ),
        "queue_wait_mean_ms": round(
            1000 * delta("modelloop_queue_wait_seconds_sum", kind=kind) / max(1.0, waited)
        ),
    }
    for verb in sorted({dict(k[1]).get("verb", "") for k in after if k[0] == "modelloop_api_requests_total"}):
        calls = delta("modelloop_api_request_duration_seconds_count", verb=verb)
        if calls:
            row[f"api_{verb.lower()}"] = round(calls)
            row[f"api_{verb.lower()}_mean_ms"] = round(
                1000 * delta("modelloop_api_request_duration_seconds_sum", verb=verb) / calls, 1
            )
    return row


def median_row(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per key, the median of the rows' values and their min and max (keys missing in a row are skipped)."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = (statistics.median(values), min(values), max(values))
    return out


# --- the cluster ---------------------------------------------------------------------------------------


def cluster(*args: str) -> str:
    env = {**os.environ, "MODELLOOP_CLUSTER_DIR": str(STATE), "MODELLOOP_CLUSTER_NAME": CLUSTER_NAME}
    return subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), *args], env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout


def control_plane_pids() -> dict[str, int]:
    pids = {}
    for pid_file in (STATE / "kwok" / "clusters" / CLUSTER_NAME / "pids").glob("*.pid"):
        try:
            pids[pid_file.stem] = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


def control_plane_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    cpu = {}
    for name, pid in pids.items():
        try:
            cpu[name] = cpu_seconds(pid)
        except OSError:
            continue
    return cpu


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- watches and the stand-in kubelet -------------------------------------------------------------------


class Watches:
    """Watches on the API server with the operator's own configuration (modelloop.kubeconfig.load_config),
    resumed from the last resourceVersion when the server ends them, re-listed (as ADDED events) after
    410 Gone. Handlers run on the event loop and must not block."""

    def __init__(self) -> None:
        self.config = load_config()
        ssl_context = self.config.ssl_context() if self.config.server.startswith("https") else False
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=16),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120),
        )
        self.stopped = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    def start(
        self, path: str, params: Mapping[str, str], handler: Callable[[str, dict[str, Any]], None]
    ) -> asyncio.Event:
        """Watch ``path``; the event returned is set once the first watch request is answered."""
        connected = asyncio.Event()
        self.tasks.append(asyncio.get_running_loop().create_task(self._run(path, params, handler, connected)))
        return connected

    async def _run(
        self,
        path: str,
        params: Mapping[str, str],
        handler: Callable[[str, dict[str, Any]], None],
        connected: asyncio.Event,
    ) -> None:
        resource_version: str | None = None
        headers = {"Accept": "application/json"}
        if token := self.config.bearer_token():
            headers["Authorization"] = f"Bearer {token}"
        while not self.stopped.is_set():
            if resource_version is None and connected.is_set():
                # 410 Gone: list again (every object as ADDED; handlers are idempotent), watch from there.
                listed = await KUBE.request("GET", path, params=dict(params))
                for item in listed.get("items") or ():
                    handler("ADDED", item)
                resource_version = listed["metadata"]["resourceVersion"]
            query = {**params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
            if resource_version is not None:
                query["resourceVersion"] = resource_version
            try:
                async with self.session.get(
                    self.config.server + path, params=query, headers=headers
                ) as response:
                    if response.status == 410:
                        resource_version = None
                        continue
                    response.raise_for_status()
                    connected.set()
                    buffer = bytearray()
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        while (end := buffer.find(b"\n")) >= 0:
                            line = bytes(buffer[:end])
                            del buffer[: end + 1]
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            obj = event.get("object") or {}
                            if event.get("type") == "ERROR":
                                if obj.get("code") == 410:
                                    resource_version = None
                                raise ConnectionResetError(f"watch error: {obj.get('message')}")
                            resource_version = (obj.get("metadata") or {}).get(
                                "resourceVersion"
                            ) or resource_version
                            if event.get("type") != "BOOKMARK":
                                handler(event["type"], obj)
            except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
                if self.stopped.is_set():
                    return
                self.restarts += 1
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        self.stopped.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


class Kubelet:
    """The stand-in kubelet: each labelled pod seen Running is reported terminated (exit 0) with the
    trainer's termination message, by at most ``writers`` writes at once."""

    def __init__(self, namespace: str, writers: int, trial_seconds: float) -> None:
        self.namespace = namespace
        self.trial_seconds = trial_seconds
        self.writes = asyncio.Semaphore(writers)
        self.handled: set[str] = set()
        self.scores: dict[str, dict[int | None, float]] = defaultdict(dict)
        self.reported: dict[tuple[str, int | None], float] = {}
        self.duplicates = 0
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def on_pod(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if type_ == "DELETED" or meta.get("deletionTimestamp") or meta["uid"] in self.handled:
            return
        if (pod.get("status") or {}).get("phase") != "Running":
            return
        self.handled.add(meta["uid"])
        task = asyncio.get_running_loop().create_task(self._report(pod))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _report(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        env = trainer_env(pod)
        run = env.get("MODELLOOP_RUN_NAME", "")
        index = int(env["MODELLOOP_TRIAL"]) if "MODELLOOP_TRIAL" in env else None
        accuracy = synthetic_accuracy(json.loads(env.get("MODELLOOP_PARAMS") or "{}"))
        if index in self.scores[run]:
            self.duplicates += 1
        self.scores[run][index] = accuracy
        if self.trial_seconds > 0:
            await asyncio.sleep(self.trial_seconds)  # the simulated training time
        finished = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"status": terminated_status(pod, termination_message(name, accuracy), finished)}
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}/status"
        for attempt in range(6):
            try:
                async with self.writes:
                    await KUBE.request(
                        "PATCH",
                        path,
                        body=body,
                        content_type="application/strategic-merge-patch+json",
                        parse=False,
                    )
                self.reported[(run, index)] = time.monotonic()
                return
            except kube.ApiException as error:
                if error.status == 404:
                    self.errors.append(f"{name}: gone")
                    return
                problem = kube.api_message(error)
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = kube.api_message(error)
            await asyncio.sleep(0.2 * 2**attempt)
        self.errors.append(f"{name}: {problem}")


class Runs:
    """The TrainingRuns of a namespace as the bench's watch sees them: when each finished, when each trial
    was first recorded as finished, the status's summary."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.finished_at: dict[str, float] = {}
        self.trial_seen: dict[tuple[str, int | None], float] = {}
        self.summary: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.done = asyncio.Event()

    def on_run(self, type_: str, run: dict[str, Any]) -> None:
        if type_ == "DELETED":
            return
        self.events += 1
        now = time.monotonic()
        name = run["metadata"]["name"]
        status = run.get("status") or {}
        for trial in status.get("trials") or ():
            if trial.get("phase") in TRIAL_FINAL:
                self.trial_seen.setdefault((name, int(trial["index"])), now)
        phase = status.get("phase")
        if phase in FINAL:
            self.trial_seen.setdefault((name, None), now)
            self.finished_at.setdefault(name, now)
        self.summary[name] = {
            k: status.get(k)
            for k in (
                "phase",
                "reason",
                "message",
                "bestTrial",
                "trialsStarted",
                "trialsDropped",
                "modelVersion",
            )
        }
        if len(self.finished_at) >= self.expected:
            self.done.set()

    def phases(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for s in self.summary.values():
            counts[f"{s.get('phase')}/{s.get('reason')}"] += 1
        return dict(counts)


# --- one measurement -----------------------------------------------------------------------------------


class Operator:
    """`modelloop run` on some namespaces, its liveness and metrics on free ports of 127.0.0.1."""

    def __init__(self, namespaces: Sequence[str], env: Mapping[str, str], log_name: str) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        self.log = (STATE / log_name).open("wb")
        self.process = subprocess.Popen(
            [*OPERATOR_COMMAND, "run", *(w for ns in namespaces for w in ("-n", ns)),
             "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
             "--metrics", f"127.0.0.1:{self.metrics_port}", "--log-format", "plain"],
            env={**env, **EXTRA_ENV}, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.pid = self.process.pid

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 60) -> None:
        async def healthy() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{self.health_port}/healthz") as response:
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await until(
            healthy, timeout, "the operator's liveness endpoint", check=lambda: self.process.poll() is None
        )

    async def metrics(self) -> Metrics:
        return await asyncio.to_thread(operator_metrics, self.metrics_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def until(
    probe: Callable[[], Awaitable[Any]],
    timeout: float,
    what: str,
    interval: float = 0.2,
    check: Callable[[], bool] | None = None,
) -> Any:
    """Poll ``probe`` until it returns something true, at most ``timeout`` seconds (``check`` false: give
    up at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await probe():
            return result
        if check is not None and not check():
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


async def create_all(objects: Sequence[dict[str, Any]], namespace: str, writers: int) -> None:
    semaphore = asyncio.Semaphore(writers)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/trainingruns"

    async def create(obj: dict[str, Any]) -> None:
        async with semaphore:
            for attempt in range(6):
                try:
                    await KUBE.request("POST", path, body=obj, parse=False)
                    return
                except kube.ApiException as error:
                    if error.status == 409:
                        return
                    if error.status in kube.PERMANENT_STATUSES or attempt == 5:
                        raise
                except (aiohttp.ClientError, TimeoutError):
                    if attempt == 5:
                        raise
                await asyncio.sleep(0.2 * 2**attempt)

    await asyncio.gather(*(create(o) for o in objects))


async def reconciled(operator: Operator, at_least: int) -> bool:
    try:
        metrics = await operator.metrics()
    except OSError:
        return False
    return operator_work({}, metrics)["reconciles"] >= at_least


async def measure(
    kind: str,
    namespace: str,
    objects: list[dict[str, Any]],
    trials_per_run: int,
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    """Run ``objects`` (TrainingRuns) to the end on a fresh operator; the row of figures."""
    n = len(objects)
    jobs = n * trials_per_run
    namespaces = [namespace] + ([BACKGROUND] if args.background_runs else [])
    operator = Operator(namespaces, env, f"sweeps-operator-{namespace}.log")
    watches = Watches()
    kubelet = Kubelet(namespace, args.writers, args.trial_seconds)
    runs = Runs(n)
    samples: list[tuple[float, float]] = []
    sampling = asyncio.Event()

    async def sample() -> None:
        while not sampling.is_set():
            try:
                samples.append((time.monotonic(), vm_rss_mib(operator.pid)))
            except OSError:
                return
            await asyncio.sleep(0.25)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        await operator.ready(watches.session)
        if args.background_runs:
            # Not measured: the operator's first pass over the background runs (they need nothing).
            await until(
                lambda: reconciled(operator, args.background_runs), 300, "the background runs' first pass"
            )
        ns_path = f"/namespaces/{namespace}"
        connected = [
            watches.start(
                f"/api/v1{ns_path}/pods", {"labelSelector": f"{KUBELET_LABEL}=complete"}, kubelet.on_pod
            ),
            watches.start(f"/apis/{GROUP}/{VERSION}{ns_path}/trainingruns", {}, runs.on_run),
        ]
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), 60)
        await asyncio.sleep(2)  # the operator settles after its start (the idle figure)

        pids = control_plane_pids()
        idle_rss, idle_hwm = vm_rss_mib(operator.pid), peak_rss_mib(operator.pid)
        cpu_before, plane_before = cpu_seconds(operator.pid), control_plane_cpu(pids)
        bench_before = time.process_time()
        metrics_before = await operator.metrics()
        start = time.monotonic()
        await create_all(objects, namespace, WRITERS)
        created = time.monotonic() - start
        deadline = start + args.timeout
        next_note = start + 30
        timed_out = False
        while not runs.done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                # The figures so far are still reported, marked incomplete.
                timed_out = True
                note = (
                    f"{kind}: {len(runs.finished_at)}/{n} runs finished, {len(kubelet.reported)}/{jobs} Jobs "
                    f"reported after {args.timeout:.0f} s; phases now: {runs.phases()}"
                )
                print(json.dumps({"timeout": note}), file=sys.stderr, flush=True)
                break
            if operator.process.poll() is not None:
                raise RuntimeError(
                    f"the operator exited ({operator.process.returncode}); see {operator.log.name}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runs.done.wait(), min(left, 5.0))
            if time.monotonic() >= next_note:
                next_note += 30
                note = {
                    "t": round(time.monotonic() - start),
                    "runs_finished": len(runs.finished_at),
                    "jobs_reported": len(kubelet.reported),
                    "rss_mib": round(samples[-1][1], 1) if samples else None,
                    "hwm_mib": round(peak_rss_mib(operator.pid), 1),
                }
                print(json.dumps({"progress": kind, **note}), file=sys.stderr, flush=True)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(operator.pid) - cpu_before
        plane_after = control_plane_cpu(pids)
        bench_cpu = time.process_time() - bench_before
        hwm, end_rss = peak_rss_mib(operator.pid), vm_rss_mib(operator.pid)
        work = operator_work(metrics_before, await operator.metrics())
        log_text = (STATE / f"sweeps-operator-{namespace}.log").read_text(errors="replace")
    finally:
        sampling.set()
        await sampler
        await asyncio.gather(*kubelet.tasks, return_exceptions=True)
        await watches.close()
        await KUBE.close()
        operator.stop()

    durations = [runs.finished_at[name] - start for name in runs.finished_at]
    turnaround = [
        (runs.trial_seen[key] - reported) * 1000
        for key, reported in kubelet.reported.items()
        if key in runs.trial_seen and runs.trial_seen[key] >= reported
    ]
    during = [rss for t, rss in samples if t >= start]
    plane_cpu = {k: plane_after.get(k, v) - v for k, v in plane_before.items()}
    row: dict[str, Any] = {
        "kind": kind,
        "runs": n,
        "trials": trials_per_run if kind == "sweeps" else None,
        "parallelism": args.parallelism if kind == "sweeps" else None,
        "jobs": len(kubelet.reported),
        "complete": not timed_out,
        "runs_finished": len(runs.finished_at),
        "seconds": round(elapsed, 2),
        "creates_seconds": round(created, 2),
        "jobs_per_second": round(len(kubelet.reported) / elapsed, 1),
        "run_p50_seconds": round(statistics.median(durations), 1) if durations else None,
        "run_max_seconds": round(max(durations), 1) if durations else None,
        "succeeded": sum(1 for s in runs.summary.values() if s.get("phase") == "Succeeded"),
        "failed": sum(1 for s in runs.summary.values() if s.get("phase") == "Failed"),
        "registered": sum(1 for s in runs.summary.values() if s.get("modelVersion")),
        "rss_idle_mib": round(idle_rss, 1),
        "hwm_idle_mib": round(idle_hwm, 1),
        "rss_peak_mib": round(hwm, 1),
        "rss_sampled_max_mib": round(max(during), 1) if during else None,
        "rss_end_mib": round(end_rss, 1),
        "rss_growth_kib_per_job": round((hwm - idle_rss) * 1024 / max(1, len(kubelet.reported)), 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_job": round(1000 * cpu / max(1, len(kubelet.reported)), 1),
        "turnaround_p50_ms": round(statistics.median(turnaround)) if turnaround else None,
        "turnaround_p99_ms": round(percentile(turnaround, 99)) if turnaround else None,
        **work,
        "apiserver_cpu_seconds": round(plane_cpu.get("kube-apiserver", 0.0), 2),
        "control_plane_other_cpu_seconds": round(
            sum(v for k, v in plane_cpu.items() if k != "kube-apiserver"), 2
        ),
        "bench_cpu_seconds": round(bench_cpu, 2),
        "run_events_seen": runs.events,
        "watch_restarts": watches.restarts,
        "kubelet_errors": len(kubelet.errors),
        "duplicate_trial_pods": kubelet.duplicates,
        "operator_log_errors": sum("ERROR" in line or "Traceback" in line for line in log_text.splitlines()),
    }
    if kind == "sweeps":
        best = {name: s.get("bestTrial") for name, s in runs.summary.items()}
        row.update(learning(kubelet.scores, best, trials_per_run))
        row["trials_started_total"] = sum(int(s.get("trialsStarted") or 0) for s in runs.summary.values())
    for line in kubelet.errors[:5]:
        print(json.dumps({"note": line}), file=sys.stderr, flush=True)
    failed = [
        f"{k}: {s.get('reason')}: {s.get('message')}"
        for k, s in runs.summary.items()
        if s.get("phase") == "Failed"
    ]
    for line in failed[:5]:
        print(json.dumps({"note": line}), file=sys.stderr, flush=True)
    return row


async def background(count: int, env: dict[str, str]) -> None:
    """N held single runs in BACKGROUND, their Jobs created by an operator that is then stopped once every
    run is Running (its pod started and that written), so that a measured operator finds nothing to do."""
    operator = Operator([BACKGROUND], env, "sweeps-operator-background.log")
    watches = Watches()
    runs = Runs(count)

    def phased(type_: str, run: dict[str, Any]) -> None:
        if type_ != "DELETED" and (run.get("status") or {}).get("phase") == "Running":
            runs.finished_at.setdefault(run["metadata"]["name"], time.monotonic())
            if len(runs.finished_at) >= count:
                runs.done.set()

    try:
        await operator.ready(watches.session)
        connected = watches.start(f"/apis/{GROUP}/{VERSION}/namespaces/{BACKGROUND}/trainingruns", {}, phased)
        await asyncio.wait_for(connected.wait(), 60)
        await create_all([training_run(i) for i in range(count)], BACKGROUND, WRITERS)
        await asyncio.wait_for(runs.done.wait(), 600)
    finally:
        await watches.close()
        await KUBE.close()
        operator.stop()


# --- main ----------------------------------------------------------------------------------------------

TABLE = [
    ("kind", 7, "kind"),
    ("runs", 5, "runs"),
    ("runs_finished", 5, "done"),
    ("trials", 6, "trials"),
    ("jobs", 6, "jobs"),
    ("seconds", 8, "seconds"),
    ("jobs_per_second", 7, "jobs/s"),
    ("rss_idle_mib", 8, "RSS idle"),
    ("rss_peak_mib", 8, "peak"),
    ("rss_end_mib", 8, "end"),
    ("cpu_seconds", 8, "CPU s"),
    ("cpu_ms_per_job", 9, "ms/job"),
    ("reconciles", 10, "reconciles"),
    ("reconcile_mean_ms", 8, "rec ms"),
    ("turnaround_p50_ms", 8, "turn p50"),
    ("turnaround_p99_ms", 8, "turn p99"),
    ("apiserver_cpu_seconds", 9, "apisrv s"),
    ("bench_cpu_seconds", 8, "bench s"),
]


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [" ".join(f"{title:>{width}}" for _, width, title in TABLE)]
    for r in rows:
        lines.append(" ".join(f"{'-' if r.get(k) is None else r.get(k)!s:>{width}}" for k, width, _ in TABLE))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweeps", type=int, default=100)
    parser.add_argument("--trials", type=int, default=100, help="maxTrials of each sweep")
    parser.add_argument("--parallelism", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each (median reported)")
    parser.add_argument("--baseline", choices=["runs", "jobs", "none"], default="runs")
    parser.add_argument("--background-runs", type=int, default=0)
    parser.add_argument("--trial-seconds", type=float, default=0.0, help="how long each trial pod runs")
    parser.add_argument("--writers", type=int, default=WRITERS, help="the stand-in kubelet's writes at once")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one measurement may take")
    parser.add_argument("--quick", action="store_true", help="10 sweeps of 20 trials")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sweeps, args.trials = 10, 20

    bin_dir = Path(cluster("bin-dir").strip())
    cluster("up")
    kubeconfig = str(STATE / "kubeconfig")
    os.environ["KUBECONFIG"] = kubeconfig
    # HOME: kubectl's discovery cache goes to the cluster's state, not to ./.kube.
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(STATE),
    }

    def kubectl(*words: Any, check: bool = True) -> int:
        return subprocess.run(
            [bin_dir / "kubectl", *words],
            env=env,
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ).returncode

    results: list[dict[str, Any]] = []
    try:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", ROOT / "crds")
        deadline = time.monotonic() + 60
        # A CRD created a moment ago may have no conditions yet, which kubectl wait takes for an error.
        while kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=30s", check=False):
            if time.monotonic() > deadline:
                raise TimeoutError("CRDs not Established after 60 s")
            time.sleep(0.5)
        if args.background_runs:
            kubectl("delete", "namespace", BACKGROUND, "--ignore-not-found", "--wait=true", "--timeout=600s")
            kubectl("create", "namespace", BACKGROUND)
            asyncio.run(background(args.background_runs, env))

        plan: list[tuple[str, str, list[dict[str, Any]], int]] = []
        for attempt in range(args.repeat):
            if args.baseline != "none":
                count = args.sweeps if args.baseline == "runs" else args.sweeps * args.trials
                plan.append(("singles", f"singles-{attempt}", [single_run(i) for i in range(count)], 1))
            sweeps = [sweep_run(i, args.trials, args.parallelism) for i in range(args.sweeps)]
            plan.append(("sweeps", f"sweeps-{attempt}", sweeps, args.trials))
        for position, (kind, namespace, objects, trials_per_run) in enumerate(plan):
            kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=600s")
            kubectl("create", "namespace", namespace)
            row = asyncio.run(measure(kind, namespace, objects, trials_per_run, args, env))
            row["background_runs"] = args.background_runs
            results.append(row)
            print(json.dumps(row), flush=True)
            last = position == len(plan) - 1
            # The last namespace goes with the cluster, unless it is kept.
            if (not last or args.keep_cluster) and kubectl(
                "delete", "namespace", namespace, "--wait=true", "--timeout=600s", check=False
            ):
                print(json.dumps({"note": f"namespace {namespace} not gone after 600 s"}), file=sys.stderr)
    finally:
        if not args.keep_cluster:
            cluster("down")

    print()
    print(table(results))
    sweep_rows = [r for r in results if r["kind"] == "sweeps"]
    learned = (
        [k for k in sweep_rows[0] if k.startswith(("best_", "regret", "first_", "last_"))]
        if sweep_rows
        else []
    )
    if learned:
        print()
        print(" ".join(f"{k:>22}" for k in learned))
        for r in sweep_rows:
            print(" ".join(f"{r[k]!s:>22}" for k in learned))
    if args.repeat > 1:
        keys = ["seconds", "jobs_per_second", "rss_idle_mib", "rss_peak_mib", "cpu_seconds", "cpu_ms_per_job"]
        print(f"\n{'kind':>7} " + " ".join(f"{k + ' median [min, max]':>34}" for k in keys))
        for kind in ("singles", "sweeps"):
            rows = [r for r in results if r["kind"] == kind]
            if rows:
                stats = median_row(rows, keys)
                cells = [
                    f"{stats[k][0]:.1f} [{stats[k][1]}, {stats[k][2]}]" if k in stats else "-" for k in keys
                ]
                print(f"{kind:>7} " + " ".join(f"{c:>34}" for c in cells))
    singles = [r for r in results if r["kind"] == "singles"]
    if singles and sweep_rows:
        s, w = (
            statistics.median(r["rss_peak_mib"] for r in singles),
            statistics.median(r["rss_peak_mib"] for r in sweep_rows),
        )
        print(f"\npeak RSS: sweeps {w:.1f} MiB vs singles {s:.1f} MiB ({w - s:+.1f} MiB); target <= 150 MiB")
    if not all(r["complete"] for r in results):
        print("\nINCOMPLETE: a measurement ran out of --timeout; its figures are those at the deadline")
        sys.exit(1)


if __name__ == "__main__":
    main()
