"""modelloop's model server against KServe's own plain model server, on the same scikit-learn model; and
modelloop's server with a classifier's probabilities in its answers against the same server without them.

Run it in the server's environment (make server-venv):

    .venvs/server/bin/python bench/model_server.py [--concurrency 8] [--seconds 10] [--rate 200]
        [--compare all|servers|probabilities] [--probability-rounds 30] [--probability-seconds 1]

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

The probabilities comparison (``--compare probabilities``, or ``all``) serves each of two classifiers
twice at once, with ``MODELLOOP_SERVE_PROBABILITIES`` true and false: the LogisticRegression above and
the trainer's TorchMLP as ``model.onnx`` (the contracts' test fixture, an iris classifier the trainer
exported). The two servers of a model are measured together, ``--probability-rounds`` times (30): in
each round both get single-row V1 requests at the same time, each from ``--concurrency`` connections,
for a quarter of ``--probability-seconds`` (1) then ``--probability-seconds``, which server's connections
open first flipping every round, so that other work on the machine weighs on both alike (measured in
turns on a busy machine, the Seldon wrapper against itself gave rounds from 0.94 to 1.49); many short
rounds make a steadier median than a few long ones. Per round it takes the cost of a request with
probabilities over one without: server CPU per request (on / off) and wall time per request (off's req/s
/ on's); it prints the median, the quartiles and the range of those ratios.
Target: at most 1.05, a request with probabilities costing at most 5% more.
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

ROOT = Path(__file__).resolve().parents[1]
ONNX_FIXTURE = ROOT / "contracts" / "tests" / "fixtures" / "iris.onnx"
"""The trainer's TorchMLP on iris, exported to ONNX (contracts/tests/fixtures/make_onnx_fixtures.py)."""
PROBABILITIES_ENV = "MODELLOOP_SERVE_PROBABILITIES"
PROBABILITIES_TARGET = 1.05
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
    parser.add_argument(
        "--compare",
        choices=("all", "servers", "probabilities"),
        default="all",
        help="the servers against each other, probabilities on against off, or both",
    )
    parser.add_argument(
        "--probability-rounds",
        type=int,
        default=30,
        help="rounds of a model's two servers (probabilities on, off) under load together; a ratio per round",
    )
    parser.add_argument(
        "--probability-seconds", type=float, default=1.0, help="length of each of those rounds"
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


def write_onnx_artifact(folder: Path) -> None:
    """The trainer's TorchMLP on iris, as the servers load it: ``model.onnx`` alone."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(ONNX_FIXTURE.read_bytes())


@dataclass(frozen=True)
class ProbabilityPair:
    """One model, served with probabilities on and off: ``command(port, on)`` starts a server."""

    name: str
    command: Callable[[int, bool], list[str]]
    endpoint: Endpoint
    answers_probabilities: Callable[[Any], bool]
    """Whether a decoded answer carries probabilities: checked once per server before it is measured."""


def modelloop_command(model_dir: Path) -> Callable[[int, bool], list[str]]:
    """``modelloop-serve`` on ``model_dir``, with ``$MODELLOOP_SERVE_PROBABILITIES`` true or false."""
    serve = str(Path(sys.executable).with_name("modelloop-serve"))

    def command(port: int, on: bool) -> list[str]:
        return [
            "env",
            f"{PROBABILITIES_ENV}={'true' if on else 'false'}",
            serve,
            f"--model_name={MODEL_NAME}",
            f"--model_dir={model_dir}",
            f"--http_port={port}",
            "--model_version=bench",
        ]

    return command


def kserve_probability_pairs(sklearn_dir: Path, onnx_dir: Path) -> list[ProbabilityPair]:
    """modelloop's KServe server on the LogisticRegression and on the TorchMLP."""

    def v1_has_probabilities(answer: Any) -> bool:
        return "probabilities" in answer

    return [
        ProbabilityPair(
            "sklearn LogisticRegression", modelloop_command(sklearn_dir), KSERVE_V1, v1_has_probabilities
        ),
        ProbabilityPair(
            "TorchMLP as model.onnx", modelloop_command(onnx_dir), KSERVE_V1, v1_has_probabilities
        ),
    ]


@dataclass
class PairResults:
    """A model's measurements with probabilities on and off, one of each per round."""

    name: str
    on: list[Measurement]
    off: list[Measurement]

    def cpu_ratios(self) -> list[float]:
        return [a.cpu_per_request / b.cpu_per_request for a, b in zip(self.on, self.off, strict=True)]

    def wall_ratios(self) -> list[float]:
        return [b.per_second / a.per_second for a, b in zip(self.on, self.off, strict=True)]


def compare_probabilities(
    pairs: list[ProbabilityPair], folder: Path, args: argparse.Namespace, run: Runner
) -> list[PairResults]:
    """Measure each pair's two servers at once, ``args.probability_rounds`` times."""
    results = []
    for pair in pairs:
        figures = PairResults(pair.name, [], [])
        ports = {True: free_port(), False: free_port()}
        processes = {
            on: _start(pair.command(ports[on], on), folder / f"probabilities-{on}-{ports[on]}.log")
            for on in (True, False)
        }
        try:
            for on, process in processes.items():
                base = f"http://127.0.0.1:{ports[on]}"
                run(_wait_ready(f"{base}{pair.endpoint.ready_path}", process))
                answer = run(_answer(f"{base}{pair.endpoint.predict_path}", pair.endpoint.body))
                if pair.answers_probabilities(answer) != on:
                    raise RuntimeError(
                        f"{pair.name}: probabilities {'on' if on else 'off'} answered {answer}"
                    )
            urls = {on: f"http://127.0.0.1:{ports[on]}{pair.endpoint.predict_path}" for on in ports}
            servers = {on: psutil.Process(process.pid) for on, process in processes.items()}
            for round_number in range(args.probability_rounds):
                # Which server's connections open first flips every round.
                first = round_number % 2 == 0
                measured = run(_paired_throughput(urls, servers, args, pair.endpoint.body, first))
                for on in (True, False):
                    (figures.on if on else figures.off).append(measured[on])
                    print(
                        f"{pair.name:>28} probabilities {'on ' if on else 'off'}: {measured[on].describe()}"
                    )
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(timeout=30)
        results.append(figures)
    return results


def report_probabilities(results: list[PairResults]) -> float:
    """Print each model's cost ratios, on over off (median and range over the rounds); the largest median."""
    print(
        "probabilities on vs off, the cost of a single-row request "
        f"(on / off; target <= {PROBABILITIES_TARGET}):"
    )
    worst = 0.0
    for figures in results:
        cpu, wall = figures.cpu_ratios(), figures.wall_ratios()
        print(
            f"{figures.name:>28}: server CPU {_spread(cpu)}; wall {_spread(wall)}; "
            f"CPU/request on {statistics.median(m.cpu_per_request for m in figures.on) * 1e6:.0f} us, "
            f"off {statistics.median(m.cpu_per_request for m in figures.off) * 1e6:.0f} us"
        )
        worst = max(worst, statistics.median(cpu))
    return worst


def _spread(ratios: list[float]) -> str:
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return (
        f"{statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)"
    )


async def _answer(url: str, body: bytes) -> Any:
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        response.raise_for_status()
        return await response.json(content_type=None)


async def _paired_throughput(
    urls: dict[bool, str],
    servers: dict[bool, psutil.Process],
    args: argparse.Namespace,
    body: bytes,
    first: bool,
) -> dict[bool, Measurement]:
    """Both servers under the same load at the same time, each from ``args.concurrency`` connections;
    ``first``'s connections open first."""
    order = (first, not first)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        def load(on: bool, seconds: float) -> Coroutine[Any, Any, Measurement]:
            return _closed_loop(session, urls[on], body, args.concurrency, seconds)

        await asyncio.gather(*(load(on, args.probability_seconds / 4) for on in order))
        measured = await asyncio.gather(
            *(_with_server_cpu(servers[on], load(on, args.probability_seconds)) for on in order)
        )
    return dict(zip(order, measured, strict=True))


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
    print(f"{os.cpu_count()} CPUs; one worker per server; single-row V1 predictions")
    passed = True
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_dir = folder / "model"
        model_dir.mkdir()
        write_artifact(model_dir)
        if args.compare in ("all", "servers"):
            passed = compare_servers(model_dir, folder, args, run)
        if args.compare in ("all", "probabilities"):
            write_onnx_artifact(folder / "mlp")
            worst = report_probabilities(
                compare_probabilities(kserve_probability_pairs(model_dir, folder / "mlp"), folder, args, run)
            )
            passed = passed and worst <= PROBABILITIES_TARGET
    return 0 if passed else 1


def compare_servers(model_dir: Path, folder: Path, args: argparse.Namespace, run: Runner) -> bool:
    """modelloop's server against KServe's plain one on the LogisticRegression; whether the targets hold."""
    modelloop, kserve = Results([], []), Results([], [])
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
    return ratio >= 1.0 and p99 <= 10.0


if __name__ == "__main__":
    sys.exit(main())
