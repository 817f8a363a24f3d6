"""The Seldon server loads only the model file that was registered: artifacts the real trainer wrote,
checked against the digest it reported (what the operator passes as ``$MODELLOOP_ARTIFACT_DIGEST``).

A tampered or swapped file is refused before it is loaded: the worker fails to boot and the server exits
(its pod never becomes ready), saying which digest it expected and which it found, in its log and in the
container's termination message.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from modelloop_contracts.testing import LeavesMarker, train_forest

from conftest import TRAINER, RunningServer, TrainedMLP, start_server, stop_server
from modelloop_seldon import ArtifactError, ModelloopModel

Serve = Callable[..., RunningServer]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def trained_forest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A random forest the real trainer wrote (``model.joblib``), and its result."""
    output = tmp_path_factory.mktemp("forest") / "iris-rf"
    return output, train_forest(TRAINER, output)


@pytest.fixture
def no_digest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELLOOP_ARTIFACT_DIGEST", raising=False)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def tampered_copy(folder: Path, target: Path, marker: Path) -> Path:
    """``folder`` copied to ``target``, its model.joblib replaced by a pickle that leaves ``marker``."""
    shutil.copytree(folder, target)
    (target / "model.joblib").write_bytes(pickle.dumps(LeavesMarker(marker)))
    return target


@pytest.mark.usefixtures("no_digest_env")
def test_the_expected_digest_is_the_parameter_then_the_environment_then_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ModelloopModel("/models").expected_digest is None
    monkeypatch.setenv("MODELLOOP_ARTIFACT_DIGEST", "sha256:ab")
    assert ModelloopModel("/models").expected_digest == "sha256:ab"
    assert ModelloopModel("/models", artifact_digest="sha256:cd").expected_digest == "sha256:cd"


@pytest.mark.usefixtures("no_digest_env")
def test_a_trained_model_with_its_reported_digest_loads_and_answers(
    trained_forest: tuple[Path, dict[str, Any]],
) -> None:
    output, result = trained_forest
    model = ModelloopModel(str(output), 1, result["artifactDigest"])

    model.load()

    assert model.predictor is not None and model.predictor.digest == result["artifactDigest"]
    assert len(model.predict_raw({"data": {"ndarray": ROWS}})["data"]["ndarray"]) == 2


@pytest.mark.usefixtures("no_digest_env")
def test_a_tampered_model_file_is_refused_in_process_before_it_is_unpickled(
    trained_forest: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    output, result = trained_forest
    marker = tmp_path / "unpickled"
    folder = tampered_copy(output, tmp_path / "tampered", marker)

    with pytest.raises(ArtifactError) as refused:
        ModelloopModel(str(folder), 1, result["artifactDigest"]).load()

    assert (
        f"its digest is {sha256(folder / 'model.joblib')}, but its ModelVersion records "
        f"{result['artifactDigest']}" in str(refused.value)
    )
    assert not marker.exists()


def test_the_server_refuses_a_tampered_file_exits_and_leaves_its_reason_as_termination_message(
    trained_forest: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    output, result = trained_forest
    marker = tmp_path / "unpickled"
    folder = tampered_copy(output, tmp_path / "tampered", marker)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # as the kubelet makes it
    env = {
        "MODELLOOP_ARTIFACT_DIGEST": result["artifactDigest"],
        "MODELLOOP_TERMINATION_LOG": str(termination_log),
    }

    server = start_server(tmp_path, folder, env=env, wait=False)
    try:
        returncode = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_server(server)
        raise

    assert returncode == 3  # gunicorn's status for a worker that failed to boot
    found, expected = sha256(folder / "model.joblib"), result["artifactDigest"]
    says = f"its digest is {found}, but its ModelVersion records {expected}"
    assert says in server.output()
    assert termination_log.read_text().startswith(
        f"modelloop_seldon: refusing to load {folder / 'model.joblib'}"
    )
    assert says in termination_log.read_text()
    assert not marker.exists()


def test_the_server_refuses_an_mlp_swapped_for_another_trained_model(
    trained_iris_mlp: TrainedMLP, trained_diabetes_mlp: TrainedMLP, tmp_path: Path
) -> None:
    folder = tmp_path / "swapped"
    shutil.copytree(trained_iris_mlp.folder, folder)
    shutil.copyfile(trained_diabetes_mlp.folder / "model.onnx", folder / "model.onnx")

    server = start_server(
        tmp_path, folder, version=1, env={"MODELLOOP_ARTIFACT_DIGEST": trained_iris_mlp.digest}, wait=False
    )
    try:
        returncode = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_server(server)
        raise

    assert returncode == 3
    assert (
        f"its digest is {trained_diabetes_mlp.digest}, but its ModelVersion records {trained_iris_mlp.digest}"
        in server.output()
    )


def test_the_server_serves_the_intact_mlp_with_its_digest(serve: Serve, trained_iris_mlp: TrainedMLP) -> None:
    server = serve(
        trained_iris_mlp.folder, version=1, env={"MODELLOOP_ARTIFACT_DIGEST": trained_iris_mlp.digest}
    )

    response = server.predict_rows(trained_iris_mlp.rows[:3].tolist())

    assert response.status_code == 200, response.text
    assert response.json()["data"]["ndarray"] == trained_iris_mlp.expected[:3].tolist()
