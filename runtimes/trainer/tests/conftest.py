"""Shared set-up: real scikit-learn data, real files in temporary folders, and the trainer run
in-process through :func:`modelloop_trainer.cli.run` with the operator's environment contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn import datasets

from modelloop_trainer.cli import run


@dataclass(frozen=True)
class TrainerRun:
    """One finished run: its exit status, the result it reported, and its output folder."""

    status: int
    result: dict[str, Any]
    output: Path

    def full_result(self) -> dict[str, Any]:
        return json.loads((self.output / "result.json").read_text())


RunTrainer = Callable[..., TrainerRun]


@pytest.fixture
def run_trainer(tmp_path: Path) -> RunTrainer:
    """Run the trainer with the contract's variables; keyword arguments override or add ``MODELLOOP_*``.

    ``params`` is given as a dict and becomes MODELLOOP_PARAMS; ``name`` picks the output folder.
    """

    def trainer(*, params: dict[str, Any] | None = None, name: str = "run", **overrides: str) -> TrainerRun:
        output = tmp_path / "artifacts" / name
        result_path = tmp_path / f"{name}.termination-log"
        env = {
            "MODELLOOP_RUN_NAME": name,
            "MODELLOOP_MODEL_NAME": "model",
            "MODELLOOP_DATASET_URI": "sklearn://iris",
            "MODELLOOP_OUTPUT_URI": output.as_uri(),
            "MODELLOOP_RESULT_PATH": str(result_path),
            "MODELLOOP_PARAMS": json.dumps(params or {}),
        }
        env.update({f"MODELLOOP_{key.upper()}": value for key, value in overrides.items()})
        status = run(env)
        return TrainerRun(status, json.loads(result_path.read_text()), output)

    return trainer


@pytest.fixture
def iris_frame() -> pd.DataFrame:
    """Iris as a table with a string ``species`` target: 150 rows, 4 numeric features."""
    bunch = datasets.load_iris(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    frame["species"] = [str(bunch.target_names[index]) for index in bunch.target]
    return frame


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[pd.DataFrame, str], str]:
    """Write a table as CSV under the test's folder and return its file:// URI."""

    def writer(frame: pd.DataFrame, name: str = "data.csv") -> str:
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return path.as_uri()

    return writer
