"""``modelloop-train``: train from the ``MODELLOOP_*`` environment and report the result.

Exit status 0 with a Succeeded result, 1 with a Failed one. The result goes to
``MODELLOOP_RESULT_PATH`` (the termination message) and to stdout, as its last line, after
the progress lines (:mod:`modelloop_trainer.progress`); tracebacks and log messages go to
stderr only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from modelloop_contracts import RESULT_FILE

from modelloop_trainer.artifacts import export_onnx, output_file_uri, write_json
from modelloop_trainer.config import DATASET_FORMATS, TrainerConfig, result_path_from_env
from modelloop_trainer.dataset import load_dataset
from modelloop_trainer.distributed import DistributedLaunch, launch_from_env
from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.result import failure_result, termination_message, write_first_message, write_message
from modelloop_trainer.training import train
from modelloop_trainer.version import TRAINER_VERSION

log = logging.getLogger("modelloop_trainer")


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so bad arguments become a Failed result."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="modelloop-train",
        description="Train one model as configured by the MODELLOOP_* environment (see the README).",
    )
    parser.add_argument("--version", action="store_true", help="print the trainer's version and exit")
    parser.add_argument(
        "--dataset-hash",
        metavar="URI",
        help="print the content hash of a dataset (the value for MODELLOOP_DATASET_HASH) and exit",
    )
    parser.add_argument("--dataset-format", choices=DATASET_FORMATS, help="the format for --dataset-hash")
    parser.add_argument(
        "--export-onnx",
        metavar="URI",
        help="write model.onnx beside a TorchMLP's model.pt (URI: the file or its folder) written by an "
        "older trainer, print its URI and digest, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The console entry point; returns the exit status."""
    environment = os.environ if env is None else env
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.captureWarnings(True)
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except _ArgumentError as exc:
        error = TrainerError(FailureReason.INVALID_PARAMETERS, f"modelloop-train: {exc}")
        return _report(failure_result(error), {}, None, result_path_from_env(environment), 1)
    if args.version:
        print(f"modelloop-train {TRAINER_VERSION}")
        return 0
    if args.dataset_hash:
        return _print_dataset_hash(args.dataset_hash, args.dataset_format)
    if args.export_onnx:
        return _export_onnx(args.export_onnx)
    return run(environment)


def run(env: Mapping[str, str]) -> int:
    """Train as ``env`` says, write the result and return the exit status.

    In a distributed launch (torchrun, ``WORLD_SIZE`` > 1) only global rank 0 reports a success; the
    other processes write nothing and return 0. A failure is reported by the process it happened in, its
    message naming the rank (see :func:`_report`).
    """
    config: TrainerConfig | None = None
    details: dict[str, Any] = {}
    try:
        config = TrainerConfig.from_env(env)
        outcome = train(config)
        if not outcome.reports:
            return 0
        result, details, status = outcome.result, outcome.details, 0
    except TrainerError as exc:
        if exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        log.error("%s: %s", exc.reason, exc.message)
        result, status = failure_result(exc), 1
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        error = TrainerError(FailureReason.TRAINING_FAILED, f"unexpected error: {type(exc).__name__}: {exc}")
        result, status = failure_result(error), 1
    result_path = config.result_path if config else result_path_from_env(env)
    launch = config.distributed if config else _launch_or_none(env)
    if launch is not None and status != 0:
        result = {**result, "message": f"{launch.describe()}: {result['message']}", "rank": launch.rank}
    return _report(result, {**_identity(config), **details}, config, result_path, status, launch)


def _launch_or_none(env: Mapping[str, str]) -> DistributedLaunch | None:
    """The launch, for naming the rank in a failure that came before the configuration was read."""
    try:
        return launch_from_env(env)
    except TrainerError:
        return None


def _report(
    result: dict[str, Any],
    details: dict[str, Any],
    config: TrainerConfig | None,
    result_path: str,
    status: int,
    launch: DistributedLaunch | None = None,
) -> int:
    """Keep the full result in the output folder, print the message and write it to ``result_path``.

    In a distributed launch only global rank 0 keeps the full result in the output folder; a failing
    process of any rank prints and writes its own message. The processes of one pod share its termination
    message, so a failure's message is written only where none is yet: the first failure, the one that
    explains the others (peers that lost their connection to it), stays.
    """
    result_uri = None
    if config is not None and (launch is None or launch.is_primary):
        # The whole result, with its details, stays in the output folder; the message may be reduced.
        try:
            result_uri = output_file_uri(config.output_uri, RESULT_FILE)
            write_json(result_uri, {**result, **details})
        except TrainerError as exc:
            log.error("could not keep the full result: %s", exc.message)
            result_uri = None
    message = termination_message(result, result_uri)
    print(message, flush=True)
    try:
        if launch is not None and status != 0:
            write_first_message(result_path, message)
        else:
            write_message(result_path, message)
    except OSError as exc:
        log.error("cannot write the result to %s (MODELLOOP_RESULT_PATH): %s", result_path, exc)
        return 1
    return status


def _identity(config: TrainerConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    identity: dict[str, Any] = {
        "runName": config.run_name,
        "trial": config.trial,
        "modelName": config.model_name,
    }
    return {key: value for key, value in identity.items() if value not in (None, "")}


def _print_dataset_hash(uri: str, dataset_format: str | None) -> int:
    env = {
        "MODELLOOP_DATASET_URI": uri,
        "MODELLOOP_OUTPUT_URI": "unused",
        "MODELLOOP_TARGET_COLUMN": "unused",
    }
    if dataset_format:
        env["MODELLOOP_DATASET_FORMAT"] = dataset_format
    try:
        config = TrainerConfig.from_env(env)
        print(load_dataset(config.dataset_uri, config.dataset_format).content_hash)
    except TrainerError as exc:
        print(f"modelloop-train: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _export_onnx(uri: str) -> int:
    try:
        artifact = export_onnx(uri)
    except TrainerError as exc:
        print(f"modelloop-train: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"modelloop-train: cannot export {uri}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"artifactUri": artifact.uri, "artifactDigest": artifact.digest}))
    return 0
