"""modelloop's model server against KServe's own plain model server, on the same scikit-learn model.

Run it in the server's environment (make server-venv):

    .venvs/server/bin/python bench/model_server.py [--concurrency 8] [--seconds 10] [--rate 200]

It trains a LogisticRegression on iris (on a named table, as the trainer does), writes the artifact
in the trainer's layout, then starts each server in turn, one worker each: ``modelloop-serve`` (with
its Prometheus metrics on) and a baseline, a plain ``kserve.Model`` that joblib-loads the same file
and predicts what KServe decoded, as KServe's sklearnserver does. For each it measures:

- throughput: single-row V1 predictions from ``--concurrency`` keep-alive connections, as fast as
  they are answered, for ``--seconds`` after a warm-up; req/s and latency p50/p99;
- latency at a fixed rate: ``--rate`` requests per second, open loop (each request is sent at its
  scheduled time, whether or not the earlier ones were answered, and its latency counts from that
  time), for ``--seconds``; p50/p99.

The load generator is this process (asyncio, aiohttp, uvloop where installed), apart from the server.
Other work on the machine moves wall-clock figures a lot, so the servers take turns for ``--rounds``
rounds and each figure is the median over the rounds; the server's own CPU time per request (from
/proc, the cost of a request to the server alone) is printed beside them, and is far steadier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import psutil
from sklearn import datasets
from sklearn.linear_model import LogisticRegression

MODEL_NAME = "iris"
ROW = [5.9, 3.0, 5.1, 1.8]
V1_BODY = b'{"instances": [[' + ", ".join(str(value) for value in ROW).encode() + b"]]}"
# The baseline server, as a user of KServe writes one: KServe's own decoding and encoding helpers.
BASELINE_SERVER = """
import sys
from pathlib import Path

import joblib
import kserve
from kserve.utils.utils import get_predict_input, get_predict_response


class JoblibModel(kserve.Model):
    def __init__(self, name, model_dir):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.ready = False

    def load(self):
        self.model = joblib.load(self.model_dir / "model.joblib")
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        result = self.model.predict(get_predict_input(payload))
        return get_predict_response(payload, result, self.name)


model = JoblibModel(sys.argv[1], sys.argv[2])
model.load()
kserve.ModelServer(http_port=int(sys.argv[3]), workers=1, enable_grpc=False).start([model])
"""


@dataclass(frozen=True)
class Endpoint:
    """Where a server answers: its readiness path, its prediction path, and a one-row request body."""

    ready_path: str
    predict_path: str
    body: bytes


# KServe's V1 protocol, as both KServe servers here answer it.
KSERVE_V1 = Endpoint(f"/v1/models/{MODEL_NAME}", f"/v1/models/{MODEL_NAME}:predict", V1_BODY)


@dataclass(frozen=True)
class Measurement:
    """Answered requests, the seconds they took all together, and each one's latency."""

    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    server_cpu_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests

    def describe(self) -> str:
        errors = f", {self.errors} errors" if self.errors else ""
        return (
            f"{self.per_second:7.1f} req/s, p50 {self.percentile(0.5) * 1000:5.2f} ms, "
            f"p99 {self.percentile(0.99) * 1000:5.2f} ms, "
            f"server CPU {self.cpu_per_request * 1e6:4.0f} us/request "
            f"({self.requests} requests{errors})"
        )


@dataclass
class Results:
    """One server's measurements, one per round."""

    throughput: list[Measurement]
    latency: list[Measurement]

    def median(self, figure: Callable[[Measurement], float], of: str = "throughput") -> float:
        return statistics.median(figure(measurement) for measurement in getattr(self, of))


def argument_parser(description: str | None, rounds: int) -> argparse.ArgumentParser:
    """The load's options, shared with the benchmarks that build on this one."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8, help="connections in the throughput test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second in the latency test")
    parser.add_argument(
        "--rounds", type=int, default=rounds, help="turns each server takes; figures are medians"
    )
    return parser


Runner = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine to completion on a fresh event loop (``asyncio.run``, ``uvloop.run``)."""


def event_loop_runner() -> Runner:
    """uvloop's run where it is installed (as KServe's server runs), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Runner = uvloop.run
    return runner


Server = tuple[str, Callable[[int], list[str]], Endpoint]
"""A server to measure: its name, its command line for a port, and how it is asked."""


def kserve_servers(model_dir: Path) -> list[Server]:
    """modelloop's model server and a plain ``kserve.Model`` (BASELINE_SERVER), on ``model_dir``."""
    serve = str(Path(sys.executable).with_name("modelloop-serve"))
    return [
        (
            "modelloop",
            lambda port: [
                serve,
                f"--model_name={MODEL_NAME}",
                f"--model_dir={model_dir}",
                f"--http_port={port}",
                "--model_version=bench",
            ],
            KSERVE_V1,
        ),
        (
            "kserve",
            lambda port: [sys.executable, "-c", BASELINE_SERVER, MODEL_NAME, str(model_dir), str(port)],
            KSERVE_V1,
        ),
    ]


def run_rounds(
    servers: list[Server],
    folder: Path,
    args: argparse.Namespace,
    run: Runner,
    results: dict[str, Results],
) -> None:
    """Measure each server ``args.rounds`` times, in turns, into ``results[name]``."""
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number} of {args.rounds}")
        # Turn about, so that a change in the machine's load favours no server.
        for name, command, endpoint in servers if round_number % 2 else servers[::-1]:
            bench_server(name, command, folder, args, run, results[name], endpoint)


def write_artifact(folder: Path) -> None:
    features, target = datasets.load_iris(return_X_y=True, as_frame=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(features, target), folder / "model.joblib")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)


async def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f} s")


async def _closed_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, concurrency: int, seconds: float
) -> Measurement:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return Measurement(len(latencies), time.perf_counter() - started, latencies, errors)


async def _open_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, rate: float, seconds: float
) -> Measurement:
    latencies: list[float] = []
    errors = 0

    async def request(scheduled: float) -> None:
        nonlocal errors
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
            await response.read()
            if response.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - scheduled)

    started = time.perf_counter()
    pending = []
    for index in range(int(rate * seconds)):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(request(scheduled)))
    await asyncio.gather(*pending)
    return Measurement(len(latencies), time.perf_counter() - started, latencies, errors)


async def _measure(
    url: str, server: psutil.Process, args: argparse.Namespace, body: bytes = V1_BODY
) -> tuple[Measurement, Measurement]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _closed_loop(session, url, body, args.concurrency, args.warmup)
        throughput = await _with_server_cpu(
            server, _closed_loop(session, url, body, args.concurrency, args.seconds)
        )
        latency = await _with_server_cpu(server, _open_loop(session, url, body, args.rate, args.seconds))
    return throughput, latency


async def _with_server_cpu(server: psutil.Process, measuring: Awaitable[Measurement]) -> Measurement:
    before = _tree_cpu_seconds(server)
    measurement = await measuring
    cpu = _tree_cpu_seconds(server) - before
    return Measurement(
        measurement.requests, measurement.seconds, measurement.latencies, measurement.errors, cpu
    )


def _tree_cpu_seconds(server: psutil.Process) -> float:
    """CPU seconds of the server and its child processes (a gunicorn server answers from a child)."""
    seconds = 0.0
    for process in (server, *server.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds += times.user + times.system
    return seconds


def bench_server(
    name: str,
    command: Callable[[int], list[str]],
    folder: Path,
    args: argparse.Namespace,
    run: Runner,
    results: Results,
    endpoint: Endpoint = KSERVE_V1,
) -> None:
    port = free_port()
    process = _start(command(port), folder / f"{name}.log")
    try:
        base = f"http://127.0.0.1:{port}"
        run(_wait_ready(f"{base}{endpoint.ready_path}", process))
        throughput, latency = run(
            _measure(f"{base}{endpoint.predict_path}", psutil.Process(process.pid), args, endpoint.body)
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"{name:>9}: throughput at {args.concurrency} connections: {throughput.describe()}")
    print(f"{name:>9}: latency at {args.rate:.0f} req/s:{'':10}{latency.describe()}")
    results.throughput.append(throughput)
    results.latency.append(latency)


def main() -> int:
    args = argument_parser(__doc__, rounds=3).parse_args()
    run = event_loop_runner()
    print(
        f"{os.cpu_count()} CPUs; one worker per server; "
        "single-row V1 predictions of a LogisticRegression on iris"
    )
    modelloop, kserve = Results([], []), Results([], [])
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_dir = folder / "model"
        model_dir.mkdir()
        write_artifact(model_dir)
        run_rounds(kserve_servers(model_dir), folder, args, run, {"modelloop": modelloop, "kserve": kserve})
    print(f"medians over {args.rounds} rounds:")
    for name, results in (("modelloop", modelloop), ("kserve", kserve)):
        print(
            f"{name:>9}: {results.median(lambda m: m.per_second):7.1f} req/s "
            f"(server CPU {results.median(lambda m: m.cpu_per_request) * 1e6:4.0f} us/request); "
            f"at {args.rate:.0f} req/s "
            f"p50 {results.median(lambda m: m.percentile(0.5), 'latency') * 1000:5.2f} ms, "
            f"p99 {results.median(lambda m: m.percentile(0.99), 'latency') * 1000:5.2f} ms"
        )
    ratio = modelloop.median(lambda m: m.per_second) / kserve.median(lambda m: m.per_second)
    cpu_ratio = modelloop.median(lambda m: m.cpu_per_request) / kserve.median(lambda m: m.cpu_per_request)
    p99 = modelloop.median(lambda m: m.percentile(0.99), "latency") * 1000
    print(
        f"modelloop vs kserve: {ratio:.2f}x the throughput (target >= 1.0; server CPU per request "
        f"{cpu_ratio:.2f}x), p99 at {args.rate:.0f} req/s {p99:.2f} ms (target <= 10 ms)"
    )
    return 0 if ratio >= 1.0 and p99 <= 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())
