"""Models the real trainer produces for the serving tests, and the ModelVersions that register them."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.kubelet import TRAINER_BIN
from e2e.test_trainingrun import training_run
from modelloop.api import TrainingRunSpec
from modelloop.training.job import render_job
from modelloop.training.result import parse_result


@dataclass(frozen=True)
class Trained:
    """A model the real trainer produced: where it is, and what it measured."""

    uri: str
    metrics: dict[str, float]
    framework: str = "sklearn"


def train(workdir: Path, name: str, dataset: str, seed: int, params: dict[str, Any] | None = None) -> Trained:
    """Train ``name`` with the real trainer (the run's default estimator, or ``params``)."""
    run = training_run(name, workdir / "artifacts", hold=False)
    run["spec"]["dataset"] = {"uri": f"sklearn://{dataset}", "format": "sklearn", "targetColumn": "target"}
    if params is not None:
        run["spec"]["params"] = dict(params)
    run["spec"]["params"]["seed"] = seed
    run["metadata"].update(namespace="training", uid=str(uuid.uuid4()))
    job = render_job(run, TrainingRunSpec.model_validate(run["spec"]), "file:///unused")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container.get("env") or ()}
    result_path = workdir / f"{name}.result"
    env["MODELLOOP_RESULT_PATH"] = str(result_path)
    subprocess.run(
        [*container.get("command", []), *container.get("args", [])],
        env={"PATH": f"{TRAINER_BIN}:/usr/bin:/bin", "HOME": str(workdir), **env},
        cwd=workdir,
        capture_output=True,
        check=True,
        timeout=300,
    )
    result = parse_result(result_path.read_text())
    assert result is not None and result.succeeded and result.artifact_uri, result
    return Trained(result.artifact_uri, dict(result.metrics), result.framework or "sklearn")


def model_version(number: int, model: Trained, name: str = "iris") -> dict[str, Any]:
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": f"{name}-v{number}"},
        "spec": {
            "modelName": name,
            "version": number,
            "artifact": {"uri": model.uri},
            "framework": {"name": model.framework},
            "metrics": model.metrics,
            "validation": {
                "gates": [{"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.8}]
            },
        },
    }
