"""A storm of faults over the whole loop (drift → retrain → validate → canary → promote), and the invariants
that must hold however the faults fall.

The loop is e2e/loop.py's, with every real part it has (the API server, KServe's controller and agent, the
model server, the detector, Prometheus, the trainer). While it runs, a seeded schedule injects, each after
a random pause once the system is back from the previous one:

- SIGKILLs of the operator's active replica, which is started again at once, as a Deployment's ReplicaSet
  would; two replicas run with kopf peering (the active one and a standby of lower priority, a 5 s peering
  lifetime), and each kill waits for a replica to be active again before the next;
- a SIGKILL of the active replica and then of the standby as it takes over (during the handover);
- a SIGKILL of kube-apiserver, started again with its own command line (kwok's binary runtime);
- Prometheus stopped for longer than a rollout step (every query fails meanwhile);
- the drift detector stopped and started again (its windows start empty);
- a training pod that fails once (the run's Job retries it: ``backoffLimit: 1``).

A recorder watches every modelloop object and the canary's HTTPRoute through the API server (resuming
from its last resourceVersion after a closed watch or a restarted server, so it sees every write), and
:func:`violations` checks the history against the invariants. The schedule's seed and each fault's time
are printed, so that a failure can be replayed (``MODELLOOP_CHAOS_SEED``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from e2e.harness import Cluster, start_operator, stop_process, wait_for
from e2e.kubelet import report_termination, run_pod, running_held_pods
from e2e.loop import POLICY, SERVICE, Loop, TrainingKubelet
from e2e.test_peering import install_peering
from modelloop.api import GROUP, KINDS

log = logging.getLogger(__name__)

FAULT_KINDS = (
    "kill-operator",
    "kill-in-handover",
    "restart-apiserver",
    "prometheus-down",
    "restart-detector",
)
PEERING = "modelloop"
PEERING_LIFETIME_SECONDS = 5
ACTIVE = "active: no peer of higher priority"
"""What the operator logs when its peering gate lets it act (operator/modelloop/machinery/peering.py)."""
ROUTE = f"{SERVICE}-traffic"
ROUTE_GROUP, ROUTE_VERSION, ROUTE_PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
PROMETHEUS_DOWN_SECONDS = 10.0  # longer than a step of e2e/loop.py's rollout (4 s) and two analyses


@dataclass(frozen=True)
class Fault:
    kind: str
    pause: float
    """Seconds to wait, once the previous fault is over, before this one."""


def schedule(seed: int, kills: int) -> list[Fault]:
    """``kills`` operator SIGKILLs, each 0.3 to 2.5 s after the operator is back (it lives about as long
    as it takes to start), and one of every other fault, placed at random among the first two fifths of
    them, so that they fall while the loop runs rather than on a loop at rest."""
    rng = random.Random(seed)
    faults = [Fault("kill-operator", round(rng.uniform(0.3, 2.5), 2)) for _ in range(kills)]
    early = max(1, (2 * kills) // 5)
    for kind in FAULT_KINDS[1:]:
        faults.insert(rng.randrange(early + 1), Fault(kind, round(rng.uniform(0.3, 2.5), 2)))
    return faults


@dataclass
class Injected:
    kind: str
    started: float
    ended: float
    detail: str = ""


class Operator:
    """Two replicas of `modelloop run` for the loop's namespace with kopf peering: the active one (priority
    200, the loop's metrics address) and a standby (100), each killed and started again on demand."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.log_path = loop.workdir / "operator.log"
        self.standby_log = loop.workdir / "standby.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.standby: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.standby_starts = 0

    def start(self) -> None:
        """Start the replicas that are not running, and wait until one of them is active."""
        if self.starts == 0:
            install_peering(self.loop.cluster, self.loop.namespace)
        before = _actives(self.log_path) + _actives(self.standby_log)
        if self.standby is None or self.standby.poll() is not None:
            # Not scraped: the metrics address is the active replica's.
            self.standby = self._start(self.standby_log, 100, metrics=False)
            self.standby_starts += 1
        self.process = self._start(self.log_path, 200, metrics=True)
        self.starts += 1
        # A replica started again waits for its dead predecessor's peering entry to expire.
        wait_for(
            lambda: _actives(self.log_path) + _actives(self.standby_log) > before,
            timeout=PEERING_LIFETIME_SECONDS * 6,
            what="a replica to be active",
        )

    def _start(self, log: Path, priority: int, metrics: bool) -> subprocess.Popen[bytes]:
        args = self.loop.operator_args if metrics else ()
        return start_operator(
            self.loop.cluster,
            self.loop.namespace,
            log,
            extra_args=(*args, "--peering", PEERING, "--priority", str(priority)),
            env={**self.loop.operator_env, "MODELLOOP_PEERING_LIFETIME": str(PEERING_LIFETIME_SECONDS)},
            timeout=120,
        )

    def kill(self) -> str:
        """SIGKILL the active replica and start it again."""
        assert self.process is not None
        detail = _kill(self.process)
        self.start()
        return detail

    def kill_in_handover(self) -> str:
        """SIGKILL the active replica, then the standby at the moment it takes over; start both again."""
        assert self.process is not None and self.standby is not None
        before = _actives(self.standby_log)
        leader = _kill(self.process)
        wait_for(
            lambda: _actives(self.standby_log) > before,
            timeout=PEERING_LIFETIME_SECONDS * 6,
            what="the standby to take over",
        )
        standby = _kill(self.standby)
        self.start()
        return f"active {leader}, then the standby as it took over: {standby}"

    def stop(self) -> None:
        for process in (self.process, self.standby):
            if process is not None:
                stop_process(process)


def _kill(process: subprocess.Popen[bytes]) -> str:
    pid, alive = process.pid, process.poll() is None
    process.send_signal(signal.SIGKILL)
    code = process.wait()
    return f"pid {pid} ({'running' if alive else 'had exited'}, ended {code})"


def _actives(log: Path) -> int:
    """How many times the replica writing ``log`` became active."""
    return log.read_text(errors="replace").count(ACTIVE) if log.exists() else 0


def restart_apiserver(cluster: Cluster) -> str:
    """SIGKILL kube-apiserver and start it again with its own command line, working folder and log, as
    kwok's binary runtime started it; its pid file is updated so that the cluster's teardown stops it."""
    [pid_file] = list((cluster.state_dir / "kwok" / "clusters").glob("*/pids/kube-apiserver.pid"))
    pid = int(pid_file.read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="kube-apiserver to exit")
    log_file = pid_file.parent.parent / "logs" / "kube-apiserver.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [a.decode() for a in argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(str(process.pid))
    wait_for(
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        timeout=120,
        what="kube-apiserver ready again",
    )
    return f"pid {pid} → {process.pid}"


class FailingOnceTrainingKubelet(TrainingKubelet):
    """The loop's training kubelet, except that the first pod of the first retraining run fails (exit 1)
    without running: its Job retries it (``backoffLimit: 1``), and the retry runs the real trainer."""

    failed: str | None = None

    def sync(self) -> None:
        for pod in running_held_pods(self.cluster, self.namespace):
            name = pod["metadata"]["name"]
            if self.failed is None and not name.startswith("iris-initial"):
                report_termination(self.cluster, pod, 1, "chaos: this pod fails once")
                self.failed = name
                self.ran.append((name, time.monotonic(), time.monotonic(), 1))
                continue
            started = time.monotonic()
            execution = run_pod(self.cluster, pod, self.workdir)
            self.ran.append((execution.pod, started, time.monotonic(), execution.exit_code))


class Storm(threading.Thread):
    """Injects ``faults`` in order, each ``pause`` seconds after the previous one is over."""

    def __init__(self, loop: Loop, operator: Operator, faults: list[Fault], origin: float) -> None:
        super().__init__(name="chaos-storm", daemon=True)
        self.loop, self.operator, self.faults, self.origin = loop, operator, faults, origin
        self.injected: list[Injected] = []
        self.error: BaseException | None = None
        self.trace = ""
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            for fault in self.faults:
                if self.stopping.wait(fault.pause):
                    return
                started = time.monotonic()
                detail = self._inject(fault.kind)
                done = Injected(fault.kind, started - self.origin, time.monotonic() - self.origin, detail)
                self.injected.append(done)
                print(
                    f"[chaos] {done.started:7.2f}s-{done.ended:7.2f}s {done.kind}: {done.detail}", flush=True
                )
        except BaseException as error:  # reported by the test, with where it came from
            self.error = error
            self.trace = traceback.format_exc()

    def _inject(self, kind: str) -> str:
        if kind == "kill-operator":
            return self.operator.kill()
        if kind == "kill-in-handover":
            return self.operator.kill_in_handover()
        if kind == "restart-apiserver":
            return restart_apiserver(self.loop.cluster)
        if kind == "prometheus-down":
            self.loop.prometheus.stop()
            self.stopping.wait(PROMETHEUS_DOWN_SECONDS)
            self.loop.prometheus.start()
            return f"down for {PROMETHEUS_DOWN_SECONDS:.0f}s"
        if kind == "restart-detector":
            self.loop.detector.stop()
            self.loop.detector.start()
            return "stopped and started (empty windows)"
        raise ValueError(kind)


@dataclass
class Seen:
    """One object as a watch delivered it."""

    at: float
    kind: str
    event: str
    obj: dict[str, Any]


@dataclass
class Recorder:
    """Every write to the namespace's modelloop objects and to the canary's HTTPRoute, in order per kind,
    from watches that resume after a closed watch or a restarted API server (and list again after 410)."""

    cluster: Cluster
    namespace: str
    origin: float
    seen: list[Seen] = field(default_factory=list)
    relists: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Recorder:
        api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(str(self.cluster.kubeconfig)))
        sources = [(info.kind, GROUP, "v1alpha1", info.plural) for info in KINDS]
        sources.append(("HTTPRoute", ROUTE_GROUP, ROUTE_VERSION, ROUTE_PLURAL))
        for kind, group, version, plural in sources:
            thread = threading.Thread(
                target=self._watch,
                args=(api, kind, group, version, plural),
                name=f"record-{plural}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def of(self, kind: str, name: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s for s in self.seen if s.kind == kind and (name is None or s.obj["metadata"]["name"] == name)
            ]

    def _watch(self, api: k8s.CustomObjectsApi, kind: str, group: str, version: str, plural: str) -> None:
        version_seen: str | None = None
        while not self._stopping.is_set():
            try:
                if version_seen is None:
                    listing = api.list_namespaced_custom_object(group, version, self.namespace, plural)
                    version_seen = listing["metadata"]["resourceVersion"]
                    for obj in listing["items"]:
                        self._record(kind, "LISTED", obj)
                stream = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                    api.list_namespaced_custom_object,
                    group,
                    version,
                    self.namespace,
                    plural,
                    resource_version=version_seen,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:
                            version_seen = None
                            with self._lock:
                                self.relists += 1
                        break
                    version_seen = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(kind, event["type"], obj)
                    if self._stopping.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    version_seen = None
                    with self._lock:
                        self.relists += 1
                self._stopping.wait(0.2)
            except Exception:  # the API server restarting: connection refused, reset, timed out
                self._stopping.wait(0.2)

    def _record(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(Seen(time.monotonic() - self.origin, kind, event, obj))


def _status_models() -> Mapping[str, type[pydantic.BaseModel]]:
    return {info.kind: info.status_model for info in KINDS}


def violations(recorder: Recorder, loop: Loop) -> list[str]:
    """Every invariant the history breaks, as a sentence; empty when the loop kept them all."""
    found: list[str] = []
    models = _status_models()
    # Every status the operator wrote validates against its model.
    for s in recorder.seen:
        if s.kind in models and s.event != "DELETED":
            try:
                models[s.kind].model_validate(s.obj.get("status") or {})
            except pydantic.ValidationError as error:
                found.append(
                    f"{s.at:.2f}s {s.kind} {s.obj['metadata']['name']}: a status its model refuses: {error}"
                )
    # Traffic weights are valid at every observed write of the route.
    for s in recorder.of("HTTPRoute", ROUTE):
        for rule in s.obj.get("spec", {}).get("rules") or ():
            weights = [int(ref.get("weight", 1)) for ref in rule.get("backendRefs") or ()]
            if any(w < 0 for w in weights) or (weights and sum(weights) != 100):
                found.append(f"{s.at:.2f}s the route's weights are {weights}")
    found += _rollout_violations(recorder.of("InferenceService", SERVICE))
    # Exactly one TrainingRun per confirmed breach, one ModelVersion per successful run.
    runs = _latest_by_uid(recorder.of("TrainingRun"))
    retrainings = [
        r for r in runs.values() if (r["metadata"].get("labels") or {}).get("modelloop.dev/drift-policy")
    ]
    policies = [s.obj for s in recorder.of("DriftPolicy", POLICY)]
    triggered = len((policies[-1].get("status") or {}).get("retrainings") or []) if policies else 0
    if len(retrainings) != 1 or triggered != 1:
        found.append(
            f"{len(retrainings)} retraining runs were created for {triggered} confirmed breaches (1 each)"
        )
    succeeded = {uid for uid, r in runs.items() if (r.get("status") or {}).get("phase") == "Succeeded"}
    versions = _latest_by_uid(recorder.of("ModelVersion"))
    if len(versions) != len(succeeded):
        found.append(f"{len(versions)} ModelVersions for {len(succeeded)} successful runs")
    # Nothing is left in a phase that never resolves.
    for uid, r in runs.items():
        if uid not in succeeded:
            found.append(f"TrainingRun {r['metadata']['name']} ended {(r.get('status') or {}).get('phase')}")
    for v in versions.values():
        if (v.get("status") or {}).get("phase") not in ("Validated", "Rejected"):
            found.append(f"ModelVersion {v['metadata']['name']} ended {(v.get('status') or {}).get('phase')}")
    services = recorder.of("InferenceService", SERVICE)
    last = (services[-1].obj.get("status") or {}) if services else {}
    if last.get("phase") not in ("Promoted", "Stable") or last.get("stableVersion") != 2:
        found.append(
            f"the InferenceService ended {last.get('phase')} serving version {last.get('stableVersion')}"
        )
    return found


def unexplained_unroutable(unroutable: list[tuple[float, str, bool]], origin: float) -> list[str]:
    """The requests that found no serving pod (``unroutable``: monotonic time, backend, whether it had not
    answered yet), less those the stand-ins explain: a new version's first moments (kwok reports its pod
    ready before the stand-in kubelet's server answers; a kubelet reports readiness from the probe). What is
    left means the champion was not served. A request the stand-in gateway routes by the weights before a
    route change (it re-reads the route every second, as a real gateway applies a change some time after it)
    still finds its version: a version that loses its traffic keeps its predictor for the scale-down delay."""
    return [
        f"{moment - origin:.2f}s a request for {backend} found no serving pod"
        for moment, backend, not_up_yet in unroutable
        if not not_up_yet
    ]


def _latest_by_uid(seen: list[Seen]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for s in seen:
        latest[s.obj["metadata"]["uid"]] = s.obj
    return latest


def _rollout_violations(seen: list[Seen]) -> list[str]:
    """No promotion, and no step up, without the analysis passing: the write that gives the canary more
    traffic (or promotes it) carries the measurement that allowed it, which passed; no measurement of the
    rollout failed (failureLimit 0); the canary's weight never goes down without a rollback."""
    found: list[str] = []
    previous: dict[str, Any] = {}
    for s in seen:
        status = s.obj.get("status") or {}
        analysis = status.get("analysis") or {}
        stepped_up = (
            status.get("phase") == "Progressing"
            and previous.get("canaryVersion") == status.get("canaryVersion")
            and (status.get("canaryWeight") or 0) > (previous.get("canaryWeight") or 0)
            and previous.get("canaryWeight") is not None
        )
        promoted = status.get("phase") == "Promoted" and previous.get("phase") != "Promoted"
        if (stepped_up or promoted) and previous.get("canaryVersion") is not None:
            measurements = sorted(analysis.get("measurements") or [], key=lambda m: m["time"])
            what = "promoted" if promoted else f"stepped up to {status.get('canaryWeight')}%"
            if not measurements or measurements[-1]["phase"] != "Passed":
                found.append(f"{s.at:.2f}s {what} after the measurement {measurements[-1:]} (not Passed)")
            if analysis.get("failed"):
                found.append(f"{s.at:.2f}s {what} with {analysis['failed']} failed measurements")
        if status.get("phase") == "RolledBack":
            found.append(f"{s.at:.2f}s rolled back: {status.get('message')}")
        previous = status
    return found


def seed_and_kills(default_kills: int, default_seed: int) -> tuple[int, int]:
    """The schedule's seed (MODELLOOP_CHAOS_SEED, else ``default_seed``) and the number of operator
    SIGKILLs (MODELLOOP_CHAOS_KILLS, else ``default_kills``)."""
    seed = int(os.environ.get("MODELLOOP_CHAOS_SEED") or default_seed)
    kills = int(os.environ.get("MODELLOOP_CHAOS_KILLS") or default_kills)
    return seed, kills


def chaos_template(template: dict[str, Any]) -> dict[str, Any]:
    """A retraining template whose Job retries a failed pod once."""
    return {**template, "backoffLimit": 1}


def summary(seed: int, injected: list[Injected], timings: Mapping[str, float] | None) -> str:
    lines = [f"chaos seed {seed} (replay: MODELLOOP_CHAOS_SEED={seed})"]
    lines += [f"  {i.started:7.2f}s-{i.ended:7.2f}s {i.kind}: {i.detail}" for i in injected]
    if timings:
        lines += [f"  {phase}: {seconds:.1f}s" for phase, seconds in timings.items()]
    return "\n".join(lines)


def dump(recorder: Recorder, path: Path) -> None:
    """The recorded history, for a failing run's report."""
    with path.open("w") as out:
        for s in recorder.seen:
            out.write(
                json.dumps({"at": round(s.at, 3), "kind": s.kind, "event": s.event, "obj": s.obj}) + "\n"
            )
