"""Ingestion throughput and verdict time of modelloop's drift detector.

    .venvs/detector/bin/python bench/detector_ingest.py [--seconds 10] [--connections 16] [--runs 1]
        [--probabilities] [--throughput-only]

1. CloudEvents per second into ``modelloop-detector`` (its window, pairing and evaluation threads
   on, a 500-row reference like the trainer's; and again with its verdicts held off, which shows
   what ingestion alone costs) against a bare ASGI handler that only reads the
   same events, under the same server (uvicorn, uvloop, httptools). Each server is pinned to one
   core; the load generator (raw HTTP/1.1 over asyncio keep-alive connections, events encoded
   beforehand in KServe's binary mode, one row of 20 features each) runs on another core. Beside
   events per second, events per second of the server's own CPU time (user and system, from /proc): on
   a machine where other work competes for the servers' core, that ratio still says what each event
   costs, where events per second also says how much of the core each server got. With
   ``--probabilities``, every response carries a classifier's 3 class probabilities and the version is
   registered with a holdout, so that its window keeps them. ``--runs`` repeats the measurement (the
   three servers one after the other each time) and reports each run's ratios and their spread.
2. The time of a window verdict (a 1,000x20 window against 5,000 reference rows, KS per feature)
   through the service (``DriftService.judge``: window copy, alibi-detect's KSDrift, bookkeeping)
   against alibi-detect's ``KSDrift.predict`` alone on the same arrays.
3. Evidently's data-drift report (``DataDriftPreset``) on the same window and reference, when
   evidently is installed (the dev requirements have it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The detector's source, for a machine where the package is not installed (a GPU machine with the
# wheels beside it); in .venvs/detector it is the same code as the installed (editable) package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes" / "detector" / "src"))

from modelloop_contracts import HOLDOUT_LABEL_COLUMN, HOLDOUT_PREDICTION_COLUMN, holdout_probability_column
from modelloop_detector.artifacts import ArtifactRoots
from modelloop_detector.detectors import DetectorSettings
from modelloop_detector.events import InferenceEvent
from modelloop_detector.service import DriftService, Registration, VersionSpec, WindowSettings

DETECTOR = str(Path(sys.executable).with_name("modelloop-detector"))
FEATURES = 20
CLASSES = 3


async def bare_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Reads the request's body and answers 202, like the detector, and does nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"accepted":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": 202 if scope["path"] == "/" else 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(
        bare_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="off",
        access_log=False, log_level="warning",
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(core: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {core})


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                if b"200" in sock.recv(1024):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def http_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def encoded_events(count: int, seed: int, probabilities: bool = False) -> list[bytes]:
    """``count`` request/response pairs in KServe's binary mode, one row each, as raw HTTP requests;
    with ``probabilities``, each response carries its class probabilities beside its prediction."""
    rng = np.random.default_rng(seed)
    events = []
    for index in range(count):
        event_id = f"bench-{seed}-{index}"
        common = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "http://localhost:9081/",
            "ce-inferenceservicename": "bench",
            "ce-namespace": "ml",
            "ce-component": "predictor",
            "ce-endpoint": "default",
            # What else KServe's agent (pkg/logger/worker.go) sets on every event.
            "ce-time": "2026-11-28T02:00:00.000000Z",
            "ce-recordedtime": "2026-11-28T02:00:00.000100Z",
            "ce-metadata": "{}",
            "content-type": "application/json",
        }
        request = json.dumps({"instances": [np.round(rng.normal(size=FEATURES), 4).tolist()]}).encode()
        answer: dict[str, Any] = {"predictions": [int(rng.integers(CLASSES))]}
        if probabilities:
            answer["probabilities"] = [np.round(rng.dirichlet(np.ones(CLASSES)), 6).tolist()]
        response = json.dumps(answer).encode()
        events.append(
            http_request(
                "POST", "/", {**common, "ce-type": "org.kubeflow.serving.inference.request"}, request
            )
        )
        events.append(
            http_request(
                "POST", "/", {**common, "ce-type": "org.kubeflow.serving.inference.response"}, response
            )
        )
    return events


async def drive(port: int, events: list[bytes], connections: int, seconds: float) -> tuple[int, int]:
    """Send ``events`` round-robin over ``connections`` keep-alive connections for ``seconds``;
    returns (answered, answered with a status other than 2xx)."""
    deadline = time.perf_counter() + seconds
    share = [events[index::connections] for index in range(connections)]
    counts = [0, 0]

    async def connection(mine: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        position = 0
        while time.perf_counter() < deadline:
            writer.write(mine[position % len(mine)])
            position += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            counts[0] += 1
            if not head.startswith(b"HTTP/1.1 2"):
                counts[1] += 1
        writer.close()

    await asyncio.gather(*(connection(mine) for mine in share))
    return counts[0], counts[1]


def write_holdout(path: Path, rng: np.random.Generator) -> str:
    """A classifier's holdout as the trainer writes it (features, label, prediction, probabilities)."""
    frame = pd.DataFrame(rng.normal(size=(500, FEATURES)), columns=[f"f{i}" for i in range(FEATURES)])
    probabilities = rng.dirichlet(np.ones(CLASSES), size=len(frame))
    frame[HOLDOUT_LABEL_COLUMN] = rng.integers(CLASSES, size=len(frame))
    frame[HOLDOUT_PREDICTION_COLUMN] = probabilities.argmax(axis=1)
    for index in range(CLASSES):
        frame[holdout_probability_column(index)] = probabilities[:, index]
    frame.to_csv(path, index=False)
    return path.as_uri()


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(
    args: argparse.Namespace, reference_uri: str, holdout_uri: str | None
) -> dict[str, tuple[float, float]]:
    """Events per second, and per second of the server's CPU time, into the bare handler, the detector,
    and the detector with its verdicts held off."""
    results = {}
    events = encoded_events(args.events, seed=1, probabilities=args.probabilities)
    # The files' folder is the detector's artifact root: it reads references only under its roots.
    env = {**os.environ, "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": reference_uri.rsplit("/", 1)[0]}
    for name in ("bare", "detector", "ingestion"):
        port = free_port()
        if name == "bare":
            command = [sys.executable, __file__, "--serve-bare", str(port)]
        else:
            command = [DETECTOR, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        if name == "ingestion":  # the same detector, its verdicts held off: what ingestion alone costs
            command += ["--min-rows", str(10**9), "--evaluate-every-seconds", str(10**9)]
        process = subprocess.Popen(command, preexec_fn=pin(0), stderr=subprocess.DEVNULL, env=env)
        try:
            wait_healthy(port, process)
            if name != "bare":
                version = {"referenceUri": reference_uri}
                if holdout_uri is not None:
                    version["holdoutUri"] = holdout_uri
                registration = json.dumps({"model": "bench", "versions": {"1": version}})
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(http_request("PUT", "/v1/services/ml/bench", {}, registration.encode()))
                    assert b" 200 " in sock.recv(4096)
            asyncio.run(drive(port, events, args.connections, 1.0))  # warm-up
            used = cpu_seconds(process.pid)
            answered, failed = asyncio.run(drive(port, events, args.connections, args.seconds))
            used = cpu_seconds(process.pid) - used
            if failed:
                raise RuntimeError(f"{name}: {failed} events were not accepted")
            results[name] = (answered / args.seconds, answered / max(used, 1e-9))
        finally:
            process.terminate()
            process.wait(timeout=30)
    return results


def verdict_times(
    reference: np.ndarray, window_rows: np.ndarray, repeats: int, reference_uri: str
) -> dict[str, float]:
    from alibi_detect.cd import KSDrift

    service = DriftService(
        WindowSettings(window_rows=len(window_rows), min_rows=1),
        DetectorSettings(device="cpu", mmd_permutations=10),
        roots=ArtifactRoots([reference_uri.rsplit("/", 1)[0]]),
    )
    service.register("ml", "bench", Registration(model="bench", versions={"1": VersionSpec(reference_uri)}))
    for index, row in enumerate(window_rows.tolist()):
        service.ingest(InferenceEvent("request", str(index), "ml", "bench", "default", {"instances": [row]}))
        service.ingest(InferenceEvent("response", str(index), "ml", "bench", "default", {"predictions": [0]}))
    state = service.service("ml", "bench")
    version = state.versions["1"]
    assert len(version.window) == len(window_rows)
    raw = KSDrift(reference, p_val=0.05, correction="bonferroni")
    window = version.window.snapshot().features

    def judge() -> None:
        service.judge(state, version, "fast")

    def predict() -> None:
        raw.predict(window, drift_type="batch", return_p_val=True, return_distance=True)

    timings: dict[str, list[float]] = {"service": [], "raw": []}
    for _ in range(repeats):  # interleaved, so that both see the same machine
        for name, call in (("service", judge), ("raw", predict)):
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def evidently_time(reference: np.ndarray, window: np.ndarray, repeats: int) -> float | None:
    try:
        from evidently.metric_preset import DataDriftPreset
        from evidently.report import Report
    except ImportError:
        return None
    columns = [f"f{index}" for index in range(reference.shape[1])]
    reference_frame, current = pd.DataFrame(reference, columns=columns), pd.DataFrame(window, columns=columns)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = Report(metrics=[DataDriftPreset()])
        report.run(reference_data=reference_frame, current_data=current)
        report.as_dict()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each server's measured load")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--events", type=int, default=20000, help="distinct request/response pairs cycled")
    parser.add_argument("--repeats", type=int, default=20, help="verdicts timed (median)")
    parser.add_argument("--runs", type=int, default=1, help="throughput measurements (each: the 3 servers)")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="responses carry 3 class probabilities; the version has a holdout, its window keeps them",
    )
    parser.add_argument("--throughput-only", action="store_true", help="skip the verdict timings")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 cores: servers and load generator share one", file=sys.stderr)
    else:
        os.sched_setaffinity(0, {1})  # the load generator; the servers are pinned to core 0

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        columns = [f"f{index}" for index in range(FEATURES)]
        small_uri = Path(folder, "reference-500.csv")
        pd.DataFrame(rng.normal(size=(500, FEATURES)), columns=columns).to_csv(small_uri, index=False)
        holdout = write_holdout(Path(folder, "holdout.csv"), rng) if args.probabilities else None
        runs = []
        for _ in range(args.runs):
            load = os.getloadavg()[0]
            runs.append((throughput(args, small_uri.as_uri(), holdout), load))
        if not args.throughput_only:
            reference = rng.normal(size=(5000, FEATURES))
            large_uri = Path(folder, "reference-5000.csv")
            pd.DataFrame(reference, columns=columns).to_csv(large_uri, index=False)
            reference = pd.read_csv(large_uri).to_numpy()  # exactly what the service reads
            window = rng.normal(size=(1000, FEATURES))
            window[:, 0] += 0.2
            verdicts = verdict_times(reference, window, args.repeats, large_uri.as_uri())
            evidently = evidently_time(reference, window, max(1, args.repeats // 5))

    body = "1-row V1 events" + (", responses with 3 class probabilities" if args.probabilities else "")
    print(f"\nIngestion: {args.connections} keep-alive connections, {body}, each server on one core")
    servers = (
        ("bare", "bare ASGI handler (reads the event only)"),
        ("detector", "modelloop-detector"),
        ("ingestion", "modelloop-detector, verdicts held off"),
    )
    for number, (rates, load) in enumerate(runs, 1):
        if args.runs > 1:
            print(f" run {number} (1-minute load average {load:.2f} at its start)")
        print(f"  {'server':<44}{'events/s':>12}{'relative':>10}{'per CPU-s':>12}{'relative':>10}")
        for name, label in servers:
            (rate, per_cpu), (bare, bare_per_cpu) = rates[name], rates["bare"]
            relative, relative_cpu = rate / bare, per_cpu / bare_per_cpu
            print(f"  {label:<44}{rate:>12,.0f}{relative:>10.2f}{per_cpu:>12,.0f}{relative_cpu:>10.2f}")
    if args.runs > 1:
        for name, label in servers[1:]:
            for index, what in ((0, "events/s"), (1, "events per CPU-second")):
                ratios = sorted(rates[name][index] / rates["bare"][index] for rates, _ in runs)
                print(
                    f"  {label}, {what}: median {statistics.median(ratios):.2f}x of the bare handler "
                    f"(runs {ratios[0]:.2f}..{ratios[-1]:.2f})"
                )
    if args.throughput_only:
        return
    shape = f"{len(window)}x{FEATURES} window vs {len(reference)} reference rows"
    print(f"\nWindow verdict: {shape} (median of {args.repeats})")
    print(f"  {'what':<44}{'ms':>12}{'relative':>10}")
    print(f"  {'alibi-detect KSDrift.predict alone':<44}{verdicts['raw'] * 1000:>12.2f}{1.0:>10.2f}")
    ratio = verdicts["service"] / verdicts["raw"]
    label = "modelloop-detector KS verdict (DriftService)"
    print(f"  {label:<44}{verdicts['service'] * 1000:>12.2f}{ratio:>10.2f}")
    if evidently is None:
        print("  Evidently: not installed")
    else:
        label = "Evidently DataDriftPreset report"
        print(f"  {label:<44}{evidently * 1000:>12.2f}{evidently / verdicts['raw']:>10.2f}")


if __name__ == "__main__":
    main()
