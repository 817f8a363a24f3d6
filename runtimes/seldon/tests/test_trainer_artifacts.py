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


def train_iris(output: Path, params: dict[str, object]) -> dict[str, float]:
    """Run the trainer on scikit-learn's iris into ``output``; its measured metrics."""
    run_trainer(TRAINER, output, "sklearn://iris", params, timeout=120)
    metrics: dict[str, float] = json.loads((output / "metrics.json").read_text())
    return metrics


@pytest.mark.parametrize(
    "params",
    [
        {"estimator": "RandomForestClassifier", "n_estimators": 20, "seed": 1},
        {"estimator": "TorchMLP", "task": "classification", "hidden_sizes": [16], "epochs": 30, "seed": 1},
    ],
    ids=["sklearn", "pytorch"],
)
def test_a_trained_iris_model_is_served_as_accurately_as_the_trainer_measured(
    serve: Callable[..., RunningServer], tmp_path: Path, params: dict[str, object]
) -> None:
    measured = train_iris(tmp_path / "model", params)
    server = serve(tmp_path / "model", version=1)
    iris = datasets.load_iris()

    response = server.predict_rows(iris.data.tolist())

    assert response.status_code == 200, response.text
    predictions = response.json()["data"]["ndarray"]
    accuracy = (
        sum(int(label) == int(truth) for label, truth in zip(predictions, iris.target, strict=True)) / 150
    )
    # All of iris holds the training rows too: the served model does at least about as well.
    assert accuracy >= measured["accuracy"] - 0.1
    counted = sum(
        server.value("modelloop_seldon_predictions_total", version="1", **{"class": str(label)})
        for label in (0, 1, 2)
    )
    assert counted == 150
