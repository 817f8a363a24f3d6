"""``modelloop-detector``: the drift detector service.

Flags set how windows are judged, which namespace the detector serves (``--namespace``, by default
``MODELLOOP_DETECTOR_NAMESPACE``: one namespace, or every one when empty) and whether its API checks
Kubernetes identities (``--auth``, by default ``MODELLOOP_DETECTOR_AUTH``, else ``none``); the bounds on
what callers may make it hold (:class:`Limits`), the artifact roots (:class:`ArtifactRoots`) and how it
reaches the API server (:class:`AuthSettings`) are environment variables, ``MODELLOOP_DETECTOR_*``, so that
a deployment sets them once for every pod.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import uvicorn

from modelloop_detector.app import DetectorApp
from modelloop_detector.artifacts import ArtifactRoots
from modelloop_detector.auth import AUTH_VARIABLE, Authorizer, AuthSettings, build_authorizer
from modelloop_detector.detectors import DetectorSettings
from modelloop_detector.evaluation import EvaluationLoop
from modelloop_detector.limits import Limits
from modelloop_detector.metrics import DetectorMetrics
from modelloop_detector.service import DriftService, WindowSettings
from modelloop_detector.tenancy import NAMESPACE_VARIABLE, Tenancy
from modelloop_detector.version import DETECTOR_VERSION

logger = logging.getLogger("modelloop_detector")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="modelloop-detector",
        description="Watch KServe's logged inferences for data drift (alibi-detect KS, Chi-square, MMD) "
        "and join ground-truth labels; Prometheus metrics at /metrics.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get(NAMESPACE_VARIABLE, ""),
        help="serve only this namespace: events, labels, registrations and exports that name another are "
        f"refused (403); empty: every namespace, a shared detector (default: {NAMESPACE_VARIABLE})",
    )
    parser.add_argument(
        "--auth",
        default=os.environ.get(AUTH_VARIABLE, "none"),
        help="who may call /v1/: 'kubernetes' (a bearer token the API server authenticates, and allows "
        "on inferenceservices/drift or /feedback) or 'none' (whatever reaches the detector); ingestion, "
        f"/metrics and /healthz stay open (default: {AUTH_VARIABLE}, else none)",
    )
    parser.add_argument("--window-rows", type=_positive_int, default=1000, help="rows a window keeps at most")
    parser.add_argument(
        "--window-seconds",
        type=_positive_float,
        default=600.0,
        help="age after which a row leaves its window",
    )
    parser.add_argument(
        "--evaluate-every-rows",
        type=_positive_int,
        default=100,
        help="judge a window after this many new rows",
    )
    parser.add_argument(
        "--evaluate-every-seconds",
        type=_positive_float,
        default=5.0,
        help="...or after this many seconds, if it changed; MMD is judged at most this often",
    )
    parser.add_argument(
        "--min-verdict-interval",
        type=_positive_float,
        default=1.0,
        help="seconds between two passes of the fast detectors at least, however fast rows arrive",
    )
    parser.add_argument("--p-value", type=_probability, default=0.05, help="the tests' significance level")
    parser.add_argument(
        "--correction",
        choices=["bonferroni", "fdr"],
        default="bonferroni",
        help="multiple-testing correction of the per-feature tests",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where MMD runs: auto (CUDA when torch sees a GPU), cpu or cuda",
    )
    parser.add_argument(
        "--mmd",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("MODELLOOP_DETECTOR_MMD", "").lower() in ("1", "true", "yes"),
        help="give the MMD detector (it loads PyTorch) to services whose registration does not say "
        '("mmd": true|false); default: MODELLOOP_DETECTOR_MMD, else no',
    )
    parser.add_argument(
        "--mmd-permutations", type=_positive_int, default=100, help="permutations of MMD's permutation test"
    )
    parser.add_argument("--min-rows", type=_positive_int, default=50, help="rows a window needs to be judged")
    parser.add_argument(
        "--feedback-window",
        type=_positive_int,
        default=500,
        help="labelled rows that feedback accuracy covers",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return parser


@dataclass
class Detector:
    """A detector process's parts: the service, its metrics, the HTTP app, the evaluation loops and the
    authorizer of its callers (None: no authentication)."""

    service: DriftService
    metrics: DetectorMetrics
    app: DetectorApp
    loops: list[EvaluationLoop]
    authorizer: Authorizer | None = None

    def start(self) -> None:
        """Start the evaluation threads."""
        for loop in self.loops:
            loop.start()

    def stop(self) -> None:
        """Stop the evaluation threads (and the authorizer's)."""
        for loop in self.loops:
            loop.stop()
        if self.authorizer is not None:
            self.authorizer.close()


def build_detector(
    args: argparse.Namespace,
    limits: Limits | None = None,
    roots: ArtifactRoots | None = None,
    tenancy: Tenancy | None = None,
    authorizer: Authorizer | None = None,
) -> Detector:
    """Wire a detector from parsed arguments (and the limits, roots, tenancy and authorizer, else their
    defaults: a detector that serves every namespace, to any caller)."""
    window = WindowSettings(
        window_rows=args.window_rows,
        window_seconds=args.window_seconds,
        evaluate_every_rows=args.evaluate_every_rows,
        evaluate_every_seconds=args.evaluate_every_seconds,
        min_verdict_seconds=args.min_verdict_interval,
        min_rows=args.min_rows,
        feedback_window=args.feedback_window,
    )
    detectors = DetectorSettings(
        p_value=args.p_value,
        correction=args.correction,
        device=args.device,
        mmd_permutations=args.mmd_permutations,
        mmd=args.mmd,
    )
    metrics = DetectorMetrics()
    service = DriftService(
        window,
        detectors,
        on_drop=metrics.count_drop,
        on_refuse=metrics.count_refusal,
        on_ignore=metrics.count_ignored,
        limits=limits,
        roots=roots,
        tenancy=tenancy,
    )
    metrics.watch(service)
    loops = [EvaluationLoop(service, kind, metrics.observe_verdict) for kind in ("fast", "mmd")]
    return Detector(service, metrics, DetectorApp(service, metrics, authorizer), loops, authorizer)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script's entry point; SIGTERM or SIGINT stop it cleanly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        limits, roots = Limits.from_env(os.environ), ArtifactRoots.from_env(os.environ)
        tenancy = Tenancy.parse(args.namespace)
        auth = AuthSettings.parse(args.auth, os.environ)
        authorizer = build_authorizer(auth)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    detector = build_detector(args, limits, roots, tenancy, authorizer)
    detector.start()
    logger.info(
        "modelloop-detector %s listening on %s:%d for %s (window %d rows / %gs; artifact roots %s; "
        "authentication: %s)",
        DETECTOR_VERSION,
        args.host,
        args.port,
        tenancy,
        args.window_rows,
        args.window_seconds,
        roots,
        auth,
    )
    config = uvicorn.Config(
        detector.app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    # uvicorn handles SIGTERM and SIGINT while it runs: it stops accepting, finishes what is in flight,
    # restores the handlers it found and raises the signal again. Handlers that only log make that
    # last step a clean exit (status 0) instead of death by signal.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _log_signal)
    try:
        uvicorn.Server(config).run()
    finally:
        detector.stop()
    logger.info("modelloop-detector stopped")


def _log_signal(number: int, frame: object) -> None:
    logger.info("received %s", signal.Signals(number).name)
