"""Artifacts written by the real trainer (``modelloop-train`` from .venvs/trainer) are served as trained.

Skipped where the trainer's environment is not built (make trainer-venv builds it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from modelloop_contracts.testing import run_trainer
from sklearn import datasets

from conftest import TRAINER, RunningServer

pytestmark = pytest.mark.skipif(
    not TRAINER.is_file(), reason=f"the trainer's environment is not built ({TRAINER})"
)


def train(tmp_path: Path, name: str, params: dict[str, object]) -> Path:
    output = tmp_path / name
    run_trainer(TRAINER, output, "sklearn://iris", params, timeout=120)
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
