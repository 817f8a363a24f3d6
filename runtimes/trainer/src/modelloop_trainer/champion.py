"""The current champion, evaluated on this run's held-out rows.

A new model's metrics and the champion's own recorded metrics come from different held-out data; the
registry can only tell which model is better when both are measured on the same rows. So the trainer
loads the champion's artifact and evaluates it exactly as it evaluated the new model. A champion that
cannot be loaded or evaluated does not fail the run: the result says why, and the registry falls back to
the champion's recorded metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from modelloop_trainer.artifacts import read_model
from modelloop_trainer.config import ChampionModel
from modelloop_trainer.estimators import Task
from modelloop_trainer.evaluation import Split, evaluate
from modelloop_trainer.result import finite_metrics

log = logging.getLogger(__name__)

_ERROR_LENGTH = 512


class ChampionMismatch(Exception):
    """The champion cannot take this run's rows (other features)."""


def evaluate_champion(champion: ChampionModel, split: Split, task: Task) -> dict[str, Any]:
    """Champion on the rows ``split`` holds out: ``{"version", "metrics"}`` or ``{"version", "error"}``."""
    try:
        model = read_model(champion.uri)
    except Exception as exc:
        return _failed(champion, f"cannot load {champion.uri}: {type(exc).__name__}: {exc}")
    try:
        held_out = Split(split.x_train, _features_for(model, split.x_test), split.y_train, split.y_test)
        metrics = finite_metrics(evaluate(model, held_out, task))
    except ChampionMismatch as exc:
        return _failed(champion, str(exc))
    except Exception as exc:
        return _failed(champion, f"evaluating it failed: {type(exc).__name__}: {exc}")
    log.info("champion %s on the same held-out rows: %s", champion.version, metrics)
    return {"version": champion.version, "metrics": metrics}


def _features_for(model: Any, features: pd.DataFrame) -> pd.DataFrame:
    """``features`` in the column order the champion was trained with, where it recorded one."""
    names = _feature_names(model)
    columns = [str(column) for column in features.columns]
    if names is not None:
        missing = [name for name in names if name not in columns]
        extra = [column for column in columns if column not in names]
        if missing or extra:
            raise ChampionMismatch(
                f"it was trained on other features (it lacks {extra}, this run lacks {missing})"
            )
        return features.set_axis(columns, axis=1)[names]
    expected = getattr(model, "n_features_in_", None)
    if expected is not None and int(expected) != len(columns):
        raise ChampionMismatch(f"it expects {int(expected)} features, this run's data has {len(columns)}")
    return features


def _feature_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = getattr(model, "feature_names_", None)  # TorchMLP
    return None if names is None else [str(name) for name in names]


def _failed(champion: ChampionModel, message: str) -> dict[str, Any]:
    log.warning("champion %s not evaluated: %s", champion.version, message)
    if len(message) > _ERROR_LENGTH:
        message = message[: _ERROR_LENGTH - 1] + "…"
    return {"version": champion.version, "error": message}
