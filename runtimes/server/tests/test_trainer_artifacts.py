"""Artifacts written by the real trainer (``modelloop-train`` from .venvs/trainer) are served as trained.

Skipped where the trainer's environment is not built (make trainer-venv builds it).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sklearn import datasets

from conftest import RunningServer

TRAINER = Path(__file__).resolve().parents[3] / ".venvs" / "trainer" / "bin" / "modelloop-train"

pytestmark = pytest.mark.skipif(
    not TRAINER.is_file(), reason=f"the trainer's environment is not built ({TRAINER})"
)


def train(tmp_path: Path, name: str, params: dict[str, object]) -> Path:
    output = tmp_path / name
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELLOOP_")}
    env.update(
        MODELLOOP_RUN_NAME=name,
        MODELLOOP_MODEL_NAME="iris",
        MODELLOOP_PARAMS=json.dumps(params),
        MODELLOOP_DATASET_URI="sklearn://iris",
        MODELLOOP_OUTPUT_URI=output.as_uri(),
        MODELLOOP_RESULT_PATH=str(tmp_path / f"{name}.result.json"),
        MODELLOOP_DEVICE="cpu",
    )
    process = subprocess.run(
        [str(TRAINER)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert process.returncode == 0, process.stderr
    return output


@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("RandomForestClassifier", {"n_estimators": 20}),
        ("TorchMLP", {"hidden_sizes": [16], "epochs": 30, "task": "classification"}),
    ],
)
def test_a_trained_iris_model_is_served_as_accurately_as_the_trainer_measured(
    serve: Callable[..., RunningServer], tmp_path: Path, estimator: str, params: dict[str, object]
) -> None:
    output = train(tmp_path, estimator.lower(), {"estimator": estimator, "seed": 1, **params})
    accuracy = json.loads((output / "metrics.json").read_text())["accuracy"]
    server = serve(output, name="iris")
    bunch = datasets.load_iris()

    response = server.v1(bunch.data.tolist())

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    served_accuracy = sum(int(p) == int(t) for p, t in zip(predictions, bunch.target, strict=True)) / len(
        predictions
    )
    # The whole of iris includes the training rows, so the served model does at least about as well.
    assert served_accuracy >= accuracy - 0.1
    counted = sum(
        server.sample(
            "modelloop_server_predictions_total", model="iris", version="unknown", **{"class": str(label)}
        )
        for label in (0, 1, 2)
    )
    assert counted == len(predictions)
