"""What the runtimes' tests share: the real trainer run on real data, and what its PyTorch model predicts.

The model servers' tests serve artifacts that the trainer itself wrote (``modelloop-train`` from the
trainer's environment, ``.venvs/trainer``), so that they test the layout the trainer really writes. Each
helper takes the trainer's console script and skips the test where that environment is not built.

For tests only: it imports pandas and pytest, which no runtime imports to serve, and the package never
imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

PYTORCH_PREDICT = """
import json, sys
import numpy as np
from modelloop_trainer.artifacts import read_model
rows = np.array([[np.nan if value is None else value for value in row] for row in json.load(sys.stdin)])
print(json.dumps(read_model(sys.argv[1]).predict(rows).tolist()))
"""
"""Run by the trainer's Python: the PyTorch model of the folder (URI in argv) predicts the rows on stdin
(JSON, null for a missing value); the predictions go to stdout as JSON."""
TRAINER_TIMEOUT = 300.0


@dataclass(frozen=True)
class TrainedMLP:
    """A TorchMLP that the real trainer trained and exported, and what PyTorch predicts with it."""

    folder: Path
    """The trainer's output folder: model.onnx, model.pt + model.json, reference files, ..."""
    rows: npt.NDArray[np.float64]
    """Rows to ask for: the whole dataset's features, then a few with missing values (NaN)."""
    expected: npt.NDArray[Any]
    """The trainer's PyTorch model's predictions for ``rows`` (model.pt, read back as it reads a champion)."""
    digest: str
    """The digest the trainer reported for the model file a server loads (``model.onnx``)."""


def run_trainer(
    trainer: Path,
    output: Path,
    dataset: str,
    params: dict[str, object],
    *,
    target_column: str | None = None,
    timeout: float = TRAINER_TIMEOUT,
) -> dict[str, Any]:
    """Run ``modelloop-train`` (the console script ``trainer``) on ``dataset`` (its
    ``MODELLOOP_DATASET_URI``) with ``params`` into the folder ``output``, on the CPU; its result (the JSON
    it reports: ``artifactUri``, ``artifactDigest``, ``metrics``...). Skips the test where the trainer's
    environment is not built."""
    if not trainer.is_file():
        pytest.skip(f"the trainer's environment is not built ({trainer}): make trainer-venv")
    result_path = output.with_suffix(".result.json")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELLOOP_")}
    env |= {
        "MODELLOOP_RUN_NAME": output.name,
        "MODELLOOP_MODEL_NAME": output.name,
        "MODELLOOP_PARAMS": json.dumps(params),
        "MODELLOOP_DATASET_URI": dataset,
        "MODELLOOP_OUTPUT_URI": output.as_uri(),
        "MODELLOOP_RESULT_PATH": str(result_path),
        "MODELLOOP_DEVICE": "cpu",
    }
    if target_column is not None:
        env["MODELLOOP_TARGET_COLUMN"] = target_column
    trained = subprocess.run(
        [str(trainer)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert trained.returncode == 0, trained.stderr
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def train_mlp(
    trainer: Path, folder: Path, dataset: str, features: pd.DataFrame, params: dict[str, object]
) -> TrainedMLP:
    """Train a TorchMLP with ``modelloop-train`` into ``folder``, then ask the trainer's PyTorch for its
    predictions on ``features`` and on some of its rows with values missing.

    ``dataset`` is the trainer's ``MODELLOOP_DATASET_URI``, with ``MODELLOOP_TARGET_COLUMN`` ``target``.
    Skips the test where the trainer's environment is not built.
    """
    result = run_trainer(
        trainer, folder, dataset, {"estimator": "TorchMLP", "seed": 0, **params}, target_column="target"
    )
    rows = features.to_numpy(dtype=np.float64)
    missing = rows[::25].copy()
    missing[:, 0] = np.nan
    missing[::2, -1] = np.nan
    rows = np.concatenate([rows, missing])
    predicted = subprocess.run(
        [str(trainer.with_name("python")), "-c", PYTORCH_PREDICT, folder.as_uri()],
        input=json.dumps([[None if np.isnan(value) else value for value in row] for row in rows.tolist()]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return TrainedMLP(folder, rows, np.asarray(json.loads(predicted.stdout)), str(result["artifactDigest"]))


class LeavesMarker:
    """Pickled into a model file, it makes the folder ``marker`` when unpickled: what a tampered pickle
    could run, made harmless, so that a test sees whether a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def train_forest(trainer: Path, output: Path) -> dict[str, Any]:
    """A random forest the real trainer writes into ``output`` (``model.joblib``); its result."""
    params: dict[str, object] = {"estimator": "RandomForestClassifier", "n_estimators": 20, "seed": 1}
    return run_trainer(trainer, output, "sklearn://iris", params)
