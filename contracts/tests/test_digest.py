"""A model is loaded only when its file is the one registered: the digest check before loading.

A ``model.joblib`` runs code when it is unpickled; the tampered files here would leave a marker behind if
they were ever unpickled, so a test proves the check comes first, not just that loading fails.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import joblib
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression

from modelloop_contracts import ArtifactError, DigestMismatch, load_predictor, write_termination_message
from modelloop_contracts.testing import LeavesMarker
from test_loading import needs_onnxruntime, onnx_folder


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_file_with_the_recorded_digest_loads_and_says_its_digest(iris_artifact: Path) -> None:
    recorded = sha256(iris_artifact / "model.joblib")

    predictor = load_predictor(iris_artifact, recorded)

    assert predictor.digest == recorded
    assert load_predictor(iris_artifact, recorded.upper().replace("SHA256", "sha256")).digest == recorded


def test_a_tampered_model_file_is_refused_naming_both_digests_before_it_is_unpickled(
    iris_artifact: Path, tmp_path: Path
) -> None:
    recorded = sha256(iris_artifact / "model.joblib")
    marker = tmp_path / "unpickled"
    (iris_artifact / "model.joblib").write_bytes(pickle.dumps(LeavesMarker(marker)))
    tampered = sha256(iris_artifact / "model.joblib")

    with pytest.raises(DigestMismatch) as refused:
        load_predictor(iris_artifact, recorded)

    assert (refused.value.expected, refused.value.actual) == (recorded, tampered)
    message = str(refused.value)
    assert f"its digest is {tampered}, but its ModelVersion records {recorded}" in message
    assert not marker.exists()
    # Without a digest to check, the same file is unpickled: what the check above prevented.
    with pytest.raises(ArtifactError):
        load_predictor(iris_artifact)
    assert marker.exists()


def test_another_model_swapped_into_the_folder_is_refused(
    iris_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    recorded = sha256(iris_artifact / "model.joblib")
    rows, target = datasets.load_diabetes(return_X_y=True)
    swapped = tmp_path_factory.mktemp("swapped")
    joblib.dump(LinearRegression().fit(rows, target), swapped / "model.joblib")

    with pytest.raises(DigestMismatch, match=f"ModelVersion records {recorded}"):
        load_predictor(swapped, recorded)


@needs_onnxruntime
def test_an_onnx_model_is_checked_the_same_way(tmp_path: Path) -> None:
    folder = onnx_folder(tmp_path, "iris")
    recorded = sha256(folder / "model.onnx")

    assert load_predictor(folder, recorded).digest == recorded
    with (folder / "model.onnx").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(DigestMismatch) as refused:
        load_predictor(folder, recorded)
    assert refused.value.actual == sha256(folder / "model.onnx") != recorded


@pytest.mark.parametrize(
    ("expected", "says"),
    [
        ("md5:" + "0" * 32, "names no algorithm this server checks"),
        ("sha256", "is malformed: sha256 takes 64 hex digits"),
        ("sha256:abc", "is malformed: sha256 takes 64 hex digits"),
        ("sha256:" + "g" * 64, "is malformed"),
    ],
)
def test_an_expected_digest_that_cannot_be_checked_is_refused_rather_than_ignored(
    iris_artifact: Path, expected: str, says: str
) -> None:
    with pytest.raises(ArtifactError, match=says):
        load_predictor(iris_artifact, expected)


def test_a_sha512_digest_is_checked_too(iris_artifact: Path) -> None:
    payload = (iris_artifact / "model.joblib").read_bytes()
    assert load_predictor(iris_artifact, "sha512:" + hashlib.sha512(payload).hexdigest()).classes
    with pytest.raises(DigestMismatch):
        load_predictor(iris_artifact, "sha512:" + hashlib.sha512(payload + b"x").hexdigest())


def test_the_termination_message_is_written_only_where_the_kubelet_made_its_file(tmp_path: Path) -> None:
    made = tmp_path / "termination-log"
    made.touch()

    write_termination_message("refusing to load", str(made))
    write_termination_message("refusing to load", str(tmp_path / "absent"))

    assert made.read_text() == "refusing to load"
    assert not (tmp_path / "absent").exists()
