"""The Seldon wrapper against modelloop's KServe model server and KServe's own, on the same artifact.

Run it in the server's environment, with the Seldon one built beside it (make server-venv seldon-venv):

    .venvs/server/bin/python bench/seldon_server.py [--concurrency 8] [--seconds 10] [--rate 200] [--rounds 1]
        [--compare all|servers|probabilities] [--probability-rounds 30] [--probability-seconds 1]

It extends bench/model_server.py and reuses its pieces: the artifact (a LogisticRegression on iris,
in the trainer's layout), its two KServe servers (``modelloop-serve``, and a plain ``kserve.Model``
as a user of KServe writes one), and its load generator and measurements. The third server is
runtimes/seldon's wrapper, ``seldon-core-microservice modelloop_seldon.ModelloopModel`` from
.venvs/seldon, run as its image runs it (one gunicorn worker, no gRPC server) and sent Seldon's
REST protocol. Every request is a single-row prediction; each server has one worker.

Issue 10's target: modelloop's KServe server answers at least 1.3 times the Seldon wrapper's
requests per second (the exit status is 1 when it does not).

The probabilities comparison (``--compare probabilities``, or ``all``) is bench/model_server.py's, for the
Seldon wrapper: the LogisticRegression and the trainer's TorchMLP (``model.onnx``) each served twice at
once, with ``MODELLOOP_SERVE_PROBABILITIES`` true (``meta.tags`` carry ``probabilities``) and false,
both under the same load at the same time for ``--probability-rounds`` rounds; the cost of a request with
probabilities over one without, server CPU and wall time, median and range over the rounds. Target: at
most 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import model_server
from model_server import PROBABILITIES_ENV, PROBABILITIES_TARGET, ROW, Endpoint, ProbabilityPair, Results

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.3
SELDON_BODY = json.dumps({"data": {"ndarray": [ROW]}}).encode()
SELDON_REST = Endpoint("/health/ping", "/api/v1.0/predictions", SELDON_BODY)
# As the Dockerfile of runtimes/seldon sets them.
SELDON_IMAGE_ENV = {
    "GUNICORN_WORKERS": "1",
    "GRPC_WORKERS": "0",
    "INCLUDE_METRICS_IN_CLIENT_RESPONSE": "false",
    "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
}


def _arguments() -> argparse.Namespace:
    parser = model_server.argument_parser(__doc__, rounds=1)
    parser.add_argument(
        "--seldon-venv",
        type=Path,
        default=ROOT / ".venvs" / "seldon",
        help="the Seldon wrapper's environment",
    )
    return parser.parse_args()


def _seldon_command(
    microservice: Path, model_dir: Path, probabilities: bool = True
) -> Callable[[int], list[str]]:
    parameters = [
        {"name": "model_uri", "type": "STRING", "value": str(model_dir)},
        {"name": "model_version", "type": "STRING", "value": "bench"},
    ]
    env = {**SELDON_IMAGE_ENV, PROBABILITIES_ENV: "true" if probabilities else "false"}

    def command(port: int) -> list[str]:
        return [
            "env",
            *(f"{name}={value}" for name, value in env.items()),
            str(microservice),
            "modelloop_seldon.ModelloopModel",
            f"--http-port={port}",
            f"--metrics-port={model_server.free_port()}",
            f"--parameters={json.dumps(parameters)}",
        ]

    return command


def _seldon_probability_pairs(microservice: Path, sklearn_dir: Path, onnx_dir: Path) -> list[ProbabilityPair]:
    """The Seldon wrapper on the LogisticRegression and on the TorchMLP, probabilities on and off."""

    def pair_command(model_dir: Path) -> Callable[[int, bool], list[str]]:
        return lambda port, on: _seldon_command(microservice, model_dir, on)(port)

    def tags_probabilities(answer: Any) -> bool:
        return "probabilities" in answer.get("meta", {}).get("tags", {})

    return [
        ProbabilityPair(
            "sklearn LogisticRegression", pair_command(sklearn_dir), SELDON_REST, tags_probabilities
        ),
        ProbabilityPair("TorchMLP as model.onnx", pair_command(onnx_dir), SELDON_REST, tags_probabilities),
    ]


def _report(results: dict[str, Results], rate: float) -> tuple[float, float]:
    """Print the medians as a table; the ratio of modelloop's to the Seldon wrapper's req/s, and KServe's."""
    print(
        f"{'server':>10} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} | at {rate:.0f} req/s: "
        f"{'p50 ms':>7} {'p99 ms':>7} | server CPU us/request"
    )
    for name, figures in results.items():
        print(
            f"{name:>10} | {figures.median(lambda m: m.per_second):7.1f} "
            f"{figures.median(lambda m: m.percentile(0.5)) * 1000:7.2f} "
            f"{figures.median(lambda m: m.percentile(0.99)) * 1000:7.2f} | {'':>14}"
            f"{figures.median(lambda m: m.percentile(0.5), 'latency') * 1000:7.2f} "
            f"{figures.median(lambda m: m.percentile(0.99), 'latency') * 1000:7.2f} | "
            f"{figures.median(lambda m: m.cpu_per_request) * 1e6:6.0f}"
        )
    seldon = results["seldon"].median(lambda m: m.per_second)
    return (
        results["modelloop"].median(lambda m: m.per_second) / seldon,
        results["kserve"].median(lambda m: m.per_second) / seldon,
    )


def main() -> int:
    args = _arguments()
    microservice = args.seldon_venv / "bin" / "seldon-core-microservice"
    if not microservice.is_file():
        print(f"{microservice} is missing: make seldon-venv", file=sys.stderr)
        return 2
    run = model_server.event_loop_runner()
    print(
        f"{os.cpu_count()} CPUs; one worker per server; single-row predictions; "
        f"{args.concurrency} connections for throughput"
    )
    passed = True
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_dir = folder / "model"
        model_dir.mkdir()
        model_server.write_artifact(model_dir)
        if args.compare in ("all", "servers"):
            passed = _compare_servers(microservice, model_dir, folder, args, run)
        if args.compare in ("all", "probabilities"):
            model_server.write_onnx_artifact(folder / "mlp")
            pairs = _seldon_probability_pairs(microservice, model_dir, folder / "mlp")
            results = model_server.compare_probabilities(pairs, folder, args, run)
            print("the Seldon wrapper:")
            passed = passed and model_server.report_probabilities(results) <= PROBABILITIES_TARGET
    return 0 if passed else 1


def _compare_servers(
    microservice: Path, model_dir: Path, folder: Path, args: argparse.Namespace, run: model_server.Runner
) -> bool:
    """The three servers on the LogisticRegression; whether issue 10's target holds."""
    results = {name: Results([], []) for name in ("modelloop", "kserve", "seldon")}
    servers = [
        *model_server.kserve_servers(model_dir),
        ("seldon", _seldon_command(microservice, model_dir), SELDON_REST),
    ]
    model_server.run_rounds(servers, folder, args, run, results)
    print(f"medians over {args.rounds} round(s):")
    ratio, kserve_ratio = _report(results, args.rate)
    verdict = "holds" if ratio >= TARGET_RATIO else "does NOT hold"
    print(
        f"modelloop's KServe server vs the Seldon wrapper: {ratio:.2f}x the req/s "
        f"(target >= {TARGET_RATIO}: {verdict}); KServe's own vs the Seldon wrapper: {kserve_ratio:.2f}x"
    )
    return ratio >= TARGET_RATIO


if __name__ == "__main__":
    sys.exit(main())
