"""``modelloop-serve``: load one modelloop artifact and serve it with KServe's ModelServer.

With an expected digest (``--artifact_digest`` or ``$MODELLOOP_ARTIFACT_DIGEST``, which modelloop's
operator sets from the ModelVersion), a model file with another digest is never loaded: the server exits
with the reason, which it also leaves as the container's termination message. A classifier's answers
carry its class probabilities unless ``--serve_probabilities false`` (or
``$MODELLOOP_SERVE_PROBABILITIES=false``) turns them off.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.logging import KSERVE_TRACE_LOGGER_NAME
from kserve.logging import logger as kserve_logger
from modelloop_contracts import TERMINATION_LOG, ArtifactError, write_termination_message
from modelloop_contracts.loading import SERVE_PROBABILITIES_ENV, serve_probabilities, switch_value

from modelloop_server.metrics import PREDICTION_VALUE_BUCKETS, RequestMetricsMiddleware, ServerMetrics
from modelloop_server.model import ModelloopModel

DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the artifact
VERSION_ENV = "MODELLOOP_MODEL_VERSION"
DIGEST_ENV = "MODELLOOP_ARTIFACT_DIGEST"  # the ModelVersion's artifact.digest, set by modelloop's operator
TERMINATION_LOG_ENV = "MODELLOOP_TERMINATION_LOG"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """modelloop's arguments on top of KServe's own (``--http_port``, ``--workers``, ``--model_name``...)."""
    parser = argparse.ArgumentParser(
        prog="modelloop-serve",
        description="Serve a modelloop artifact (model.joblib or model.onnx) over KServe's "
        "V1 and V2 protocols, with Prometheus metrics at /metrics.",
        # A copy: the defaults set below must not change KServe's own parser.
        parents=[copy.deepcopy(kserve_model_server.parser)],
    )
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="the folder that holds the artifact")
    parser.add_argument(
        "--model_version",
        default=env.get(VERSION_ENV) or "unknown",
        help=f"the version label of the metrics (default: ${VERSION_ENV}, else 'unknown')",
    )
    parser.add_argument(
        "--artifact_digest",
        default=env.get(DIGEST_ENV) or None,
        help="the model file's expected digest, <algorithm>:<hex> (the ModelVersion's artifact.digest): the "
        f"server refuses to load a file with another one (default: ${DIGEST_ENV}, else no check)",
    )
    parser.add_argument(
        "--termination_log",
        default=env.get(TERMINATION_LOG_ENV) or TERMINATION_LOG,
        help="where a failure to load the model is written for Kubernetes to report, if that file exists "
        f"(default: ${TERMINATION_LOG_ENV}, else {TERMINATION_LOG})",
    )
    parser.add_argument(
        "--serve_probabilities",
        type=_switch,
        default=_probabilities_default(parser, env),
        help="answer a classifier's class probabilities beside its predictions: V1's \"probabilities\", V2's "
        f'output "probabilities" (default: ${SERVE_PROBABILITIES_ENV}, else true; false or 0 turns it off)',
    )
    parser.add_argument(
        "--prediction_buckets",
        type=_bucket_bounds,
        default=PREDICTION_VALUE_BUCKETS,
        help="comma-separated upper bounds of a regressor's prediction value histogram "
        "(a negative bound drops the histogram's _sum)",
    )
    # The ClusterServingRuntime declares the HTTP port only; gRPC would listen on a port no one routes to.
    # KServe's per-request latency log lines say what modelloop_server_request_duration_seconds and
    # KServe's own histograms already measure; off by default, they cost three log writes per request.
    parser.set_defaults(enable_grpc=False, enable_latency_logging=False)
    return parser


def _probabilities_default(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> bool:
    try:
        return serve_probabilities(env)
    except ValueError as exc:
        parser.error(str(exc))


def _switch(text: str) -> bool:
    try:
        return switch_value(text, "--serve_probabilities")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bucket_bounds(text: str) -> tuple[float, ...]:
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if list(bounds) != sorted(set(bounds)):
        raise argparse.ArgumentTypeError(f"bounds must increase: {text!r}")
    return bounds


def serve(args: argparse.Namespace) -> None:
    """Load the model (failing fast with the reason) and run the server until it is stopped."""
    metrics = ServerMetrics(args.model_name, args.model_version, prediction_buckets=args.prediction_buckets)
    model = ModelloopModel(
        args.model_name,
        Path(args.model_dir),
        args.model_version,
        metrics,
        args.artifact_digest,
        serve_probabilities=args.serve_probabilities,
    )
    model.load()
    # KServe serves this module-level FastAPI app; the middleware must be on it before it starts.
    kserve_model_server.app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    if not args.enable_latency_logging:
        # KServe's timing middleware logs each request's wall and CPU time to kserve.trace whatever
        # --enable_latency_logging says; the flag turns those lines off too. Set after ModelServer()
        # has configured KServe's logging.
        logging.getLogger(KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    # After ModelServer(), which configures KServe's logging.
    kserve_logger.info(
        "loaded the model in %s: %s, %s",
        args.model_dir,
        model.predictor.digest if model.predictor is not None else "unknown digest",
        "the digest expected" if args.artifact_digest else "no digest was given to check it against",
    )
    # KServe, scikit-learn and the model are some 170,000 objects that live as long as the process; a
    # full garbage collection that walks them all stalls every request in flight for tens of ms.
    # Frozen, they are left out of collections, which then walk only what requests allocate.
    gc.freeze()
    server.start([model])


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
    """The console script's entry point."""
    parser = build_parser(os.environ if env is None else env)
    args = parser.parse_args(argv)
    if args.workers != 1:
        # Each uvicorn worker is a spawned process with its own metrics; /metrics would show one of them.
        parser.error(
            "--workers must be 1: scale the model with replicas, so that /metrics counts every request"
        )
    try:
        serve(args)
    except ArtifactError as exc:
        # The process ends before it listens, so it is never ready; KServe reports the termination message
        # in the InferenceService's modelStatus (ModelLoadFailed).
        message = f"modelloop-serve: {exc}"
        print(message, file=sys.stderr)
        write_termination_message(message, args.termination_log)
        raise SystemExit(2) from None
