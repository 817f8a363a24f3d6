"""One training run, from configuration to result: load, check, split, fit, evaluate, write.

Every step that a user can make fail raises :class:`TrainerError` with its reason; the CLI
turns that into the failed result.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sklearn
from modelloop_contracts import METRICS_FILE
from sklearn.base import BaseEstimator

# scikit-learn's error for a bad parameter value (since 1.2); it has no public import path.
from sklearn.utils._param_validation import InvalidParameterError

from modelloop_trainer.artifacts import (
    output_file_uri,
    write_holdout,
    write_json,
    write_model,
    write_reference,
)
from modelloop_trainer.champion import evaluate_champion
from modelloop_trainer.checks import CheckInput, failure_message, run_checks
from modelloop_trainer.config import TrainerConfig
from modelloop_trainer.dataset import append_additional, load_dataset
from modelloop_trainer.device import ResolvedDevice, resolve_device
from modelloop_trainer.distributed import DistributedLaunch, process_group, refuse_unless_distributable
from modelloop_trainer.errors import FailureReason, TrainerError
from modelloop_trainer.estimators import (
    EstimatorSpec,
    Task,
    build_estimator,
    estimator_spec,
    resolve_task,
    with_imputer,
)
from modelloop_trainer.evaluation import Split, evaluate, split_dataset
from modelloop_trainer.result import finite_metrics
from modelloop_trainer.stepwise import fit_with_progress
from modelloop_trainer.torch_mlp import torch_version
from modelloop_trainer.version import TRAINER_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOutcome:
    """A successful run: the result for the termination message, its details, and the fitted model.

    ``reports`` is False for a process of a distributed launch other than global rank 0: it trained its
    share and has nothing to write or report (its ``result`` is only ``{"status": "Succeeded"}``).
    """

    result: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    reports: bool = True


def default_code_version() -> str:
    return f"modelloop-trainer {TRAINER_VERSION}"


def train(config: TrainerConfig) -> TrainingOutcome:
    """Run the whole training for ``config``; raises TrainerError on any failure a user can fix.

    In a distributed launch (``config.distributed``) every process runs all of it up to the fit, on all the
    data, inside the launch's process group; after the fit only global rank 0 goes on to evaluate, write
    the artifacts and make the result.
    """
    settings = config.settings
    spec = estimator_spec(settings.estimator)
    launch = config.distributed
    if launch is not None:
        refuse_unless_distributable(spec.name, spec.framework, launch)
    device = resolve_device(config.device, spec.framework)
    # Build once before reading any data, so that a wrong parameter fails at once.
    build_estimator(
        spec, config.estimator_params, task=spec.task or "classification", seed=settings.seed, device=device
    )
    with process_group(launch, device):
        return _train(config, spec, device)


def _train(config: TrainerConfig, spec: EstimatorSpec, device: ResolvedDevice) -> TrainingOutcome:
    settings = config.settings
    launch = config.distributed
    dataset = load_dataset(config.dataset_uri, config.dataset_format)
    log.info(
        "read %d rows x %d columns from %s (%s)", *dataset.frame.shape, dataset.uri, dataset.content_hash
    )
    combined = append_additional(dataset, config.additional_datasets, config.target_column)
    frame = combined.frame
    target = frame[config.target_column] if config.target_column in frame.columns else pd.Series(dtype=object)
    task = resolve_task(spec, config.estimator_params, target)

    checks = run_checks(
        CheckInput(
            frame=frame,
            target_column=config.target_column,
            task=task,
            estimator=spec.name,
            settings=settings,
            # MODELLOOP_DATASET_HASH is the main dataset's; each additional one was checked on its own.
            content_hash=dataset.content_hash,
            expected_hash=config.expected_dataset_hash,
        )
    )
    for check in checks:
        log.info("check %s: %s - %s", check.name, check.status, check.message)
    if any(check.failed for check in checks):
        raise TrainerError(
            FailureReason.DATA_VALIDATION_FAILED,
            failure_message(checks),
            checks=[check.as_dict() for check in checks],
            datasetHash=combined.content_hash,
        )

    split = split_dataset(
        frame, config.target_column, task=task, test_size=settings.test_size, seed=settings.seed
    )
    estimator = build_estimator(spec, config.estimator_params, task=task, seed=settings.seed, device=device)
    if split.x_train.isna().any().any():
        estimator = with_imputer(estimator)
    where = device if launch is None else f"{device}, {launch.describe()}"
    log.info("training %s (%s) on %d rows, %s", spec.name, task, len(split.x_train), where)
    started = time.perf_counter()
    model = _fit(spec, estimator, split, task, launch)
    train_seconds = time.perf_counter() - started
    if launch is not None and not launch.is_primary:
        log.info("%s trained its share in %.2f s; rank 0 reports", launch.describe(), train_seconds)
        return TrainingOutcome(result={"status": "Succeeded"}, model=model, reports=False)
    try:
        quality = evaluate(model, split, task)
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED, f"evaluating {spec.name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    metrics = finite_metrics(
        {
            **quality,
            "n_train": len(split.x_train),
            "n_test": len(split.x_test),
            "train_seconds": train_seconds,
        }
    )
    log.info("metrics: %s", metrics)
    champion = None if config.champion is None else evaluate_champion(config.champion, split, task)

    artifact = write_model(config.output_uri, model)
    metrics_uri = output_file_uri(config.output_uri, METRICS_FILE)
    write_json(metrics_uri, metrics)
    reference = write_reference(
        config.output_uri, split.x_train, model, rows=settings.reference_rows, seed=settings.seed
    )
    held_out_x, held_out_y = split.x_test, split.y_test
    if len(held_out_x) > settings.holdout_rows:
        held_out_x = held_out_x.sample(n=settings.holdout_rows, random_state=settings.seed)
        held_out_y = held_out_y.loc[held_out_x.index]
    holdout_uri = write_holdout(
        config.output_uri, held_out_x, held_out_y, model, classifier=task == "classification"
    )
    result: dict[str, Any] = {
        "status": "Succeeded",
        "metrics": metrics,
        "artifactUri": artifact.uri,
        "artifactDigest": artifact.digest,
        "referenceUri": reference.uri,
        "referencePredictionsUri": reference.predictions_uri,
        "holdoutUri": holdout_uri,
        "datasetHash": combined.content_hash,
        "codeVersion": config.code_version or default_code_version(),
        "framework": spec.framework,
        "frameworkVersion": _framework_version(spec),
        "estimator": spec.name,
        "device": device,
    }
    if config.additional_datasets:
        result["additionalRows"] = combined.additional_rows
    if launch is not None:
        result["distributed"] = launch.summary()
    if champion is not None:
        result["champion"] = champion
    details = {
        "task": task,
        "params": _json_params(model),
        "metricsUri": metrics_uri,
        "checks": [check.as_dict() for check in checks],
    }
    return TrainingOutcome(result=result, details=details, model=model)


def _fit(
    spec: EstimatorSpec, estimator: BaseEstimator, split: Split, task: Task, launch: DistributedLaunch | None
) -> Any:
    """Fit on the training rows, printing progress lines to stdout for an estimator that trains in steps."""
    try:
        return fit_with_progress(estimator, split, task, launch)
    except InvalidParameterError as exc:
        raise TrainerError(FailureReason.INVALID_PARAMETERS, f"{spec.name}: {exc}") from None
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED, f"{spec.name} failed to train: {type(exc).__name__}: {exc}"
        ) from exc


def _framework_version(spec: EstimatorSpec) -> str:
    return torch_version() if spec.framework == "pytorch" else str(sklearn.__version__)


def _json_params(model: Any) -> dict[str, Any]:
    """The estimator's effective parameters, those JSON can carry."""
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    params = estimator.get_params(deep=False)
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in params.items()
        if value is None
        or isinstance(value, str | int | bool | list | tuple)
        or (isinstance(value, float) and math.isfinite(value))
    }
