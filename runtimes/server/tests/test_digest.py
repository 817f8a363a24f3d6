"""The server loads only the model file that was registered: artifacts the real trainer wrote, checked
against the digest it reported (what the operator passes as ``$MODELLOOP_ARTIFACT_DIGEST``).

A tampered or swapped file is refused before it is loaded: the process exits without ever listening (so
the predictor never becomes ready), saying which digest it expected and which it found, on stderr and in
the termination message that KServe copies into the InferenceService's status.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from modelloop_contracts.testing import LeavesMarker, train_forest

from conftest import SERVE, TRAINER, RunningServer, TrainedMLP

Serve = Callable[..., RunningServer]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def trained_forest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A random forest the real trainer wrote (``model.joblib``), and its result."""
    output = tmp_path_factory.mktemp("forest") / "iris-rf"
    return output, train_forest(TRAINER, output)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def refused(model_dir: Path, digest: str, termination_log: Path) -> subprocess.CompletedProcess[str]:
    termination_log.touch()  # as the kubelet makes it
    return subprocess.run(
        [SERVE, "--model_name=iris", f"--model_dir={model_dir}", "--http_port=0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "MODELLOOP_ARTIFACT_DIGEST": digest,
            "MODELLOOP_TERMINATION_LOG": str(termination_log),
        },
    )


def test_a_trained_model_with_its_reported_digest_is_served(
    serve: Serve, trained_forest: tuple[Path, dict[str, Any]]
) -> None:
    output, result = trained_forest
    assert result["artifactUri"] == (output / "model.joblib").as_uri()

    server = serve(output, name="iris", env={"MODELLOOP_ARTIFACT_DIGEST": result["artifactDigest"]})

    response = server.v1(ROWS)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2
    assert f"{result['artifactDigest']}, the digest expected" in "".join(server.output)


def test_a_tampered_model_file_is_refused_before_it_is_unpickled_naming_both_digests(
    trained_forest: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    output, result = trained_forest
    folder = copy_of(output, tmp_path / "tampered")
    marker = tmp_path / "unpickled"
    (folder / "model.joblib").write_bytes(pickle.dumps(LeavesMarker(marker)))
    termination_log = tmp_path / "termination-log"

    process = refused(folder, result["artifactDigest"], termination_log)

    assert process.returncode == 2, process.stderr
    expected, found = result["artifactDigest"], sha256(folder / "model.joblib")
    says = f"its digest is {found}, but its ModelVersion records {expected}"
    assert says in process.stderr
    assert says in termination_log.read_text()
    assert termination_log.read_text().startswith(
        f"modelloop-serve: refusing to load {folder / 'model.joblib'}"
    )
    assert "Uvicorn running on" not in process.stderr + process.stdout
    assert not marker.exists()


def test_an_mlp_swapped_for_another_trained_model_is_refused(
    trained_iris_mlp: TrainedMLP, trained_diabetes_mlp: TrainedMLP, tmp_path: Path
) -> None:
    folder = copy_of(trained_iris_mlp.folder, tmp_path / "swapped")
    shutil.copyfile(trained_diabetes_mlp.folder / "model.onnx", folder / "model.onnx")

    process = refused(folder, trained_iris_mlp.digest, tmp_path / "termination-log")

    assert process.returncode == 2
    assert (
        f"its digest is {trained_diabetes_mlp.digest}, but its ModelVersion records {trained_iris_mlp.digest}"
        in process.stderr
    )


def test_the_intact_mlp_is_served_with_its_digest(serve: Serve, trained_iris_mlp: TrainedMLP) -> None:
    server = serve(trained_iris_mlp.folder, f"--artifact_digest={trained_iris_mlp.digest}", name="iris")

    response = server.v1(trained_iris_mlp.rows[:3].tolist())

    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == trained_iris_mlp.expected[:3].tolist()
