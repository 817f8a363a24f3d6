"""References are read, and exports written, only under the detector's artifact roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Detector, numeric_rows, write_reference
from modelloop_detector.artifacts import ArtifactRoots
from modelloop_detector.limits import Refused

ROOTS = ArtifactRoots(["s3://models/teams/a", "file:///data/artifacts"])


@pytest.mark.parametrize(
    ("uri", "opened"),
    [
        ("s3://models/teams/a/iris/3/reference.csv", "s3://models/teams/a/iris/3/reference.csv"),
        ("s3://models/teams/a/./iris//reference.csv", "s3://models/teams/a/iris/reference.csv"),
        ("s3://models/teams/a/x/../reference.csv", "s3://models/teams/a/reference.csv"),
        ("file:///data/artifacts/iris/reference.csv", "file:///data/artifacts/iris/reference.csv"),
        ("FILE://localhost/data/artifacts/r.csv", "file:///data/artifacts/r.csv"),
    ],
)
def test_a_uri_under_a_root_is_opened_normalised(uri: str, opened: str) -> None:
    assert ROOTS.check("referenceUri", uri) == opened


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file:///data/artifacts/../../etc/passwd",
        "file:///data/artifacts-other/r.csv",  # a sibling that shares the prefix's text
        "s3://models/teams/a/../b/reference.csv",
        "s3://models/teams/ab/reference.csv",
        "s3://other-bucket/teams/a/reference.csv",
        "/data/artifacts/reference.csv",  # no protocol
        "http://metadata.internal/latest/meta-data",
        "simplecache::s3://models/teams/a/r.csv",
        "file://evil-host/data/artifacts/r.csv",
        "s3://models/teams/a/r.csv?versionId=1",
    ],
)
def test_anything_else_is_refused_with_403(uri: str) -> None:
    with pytest.raises(Refused) as refused:
        ROOTS.check("referenceUri", uri)
    assert refused.value.status == 403
    assert "referenceUri" in str(refused.value)


def test_a_symbolic_link_under_a_root_cannot_lead_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    roots = ArtifactRoots([root.as_uri()])
    with pytest.raises(Refused):
        roots.check("referenceUri", (root / "escape" / "passwd").as_uri())


def test_the_default_root_is_the_operators_artifact_store() -> None:
    roots = ArtifactRoots.from_env({})
    assert roots.check("r", "file:///var/lib/modelloop/artifacts/iris/3/reference.csv")
    with pytest.raises(ValueError, match="names no protocol"):
        ArtifactRoots.from_env({"MODELLOOP_DETECTOR_ARTIFACT_ROOTS": "/data"})


def test_registering_a_file_outside_the_roots_is_403_and_says_nothing_of_its_content(
    detector: Detector, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = Path("/tmp") / f"modelloop-detector-outside-{os.getpid()}.csv"
    outside.write_text("secret_token,other\nhunter2,1\n")
    try:
        for uri in ("file:///etc/passwd", outside.as_uri(), "file:///etc/../etc/passwd"):
            reply = detector.register("roots", {"model": "m", "versions": {"1": {"referenceUri": uri}}})
            assert reply.status_code == 403, reply.text
            text = reply.text
            for secret in ("secret_token", "hunter2", "root:x"):
                assert secret not in text
        assert detector.client.get("/v1/services/ml/roots").status_code == 404  # nothing registered
        refused = {
            labels["reason"]: value
            for labels, value in detector.metrics()["modelloop_detector_refused_total"]
        }
        assert refused["outside_artifact_roots"] >= 3
    finally:
        outside.unlink()


def test_a_reader_error_is_not_returned_to_the_caller(
    detector: Detector, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("unreadable")
    bad = folder / "reference.csv"
    bad.write_bytes(b'a,b\n1,"2\n' + b"secret_value_in_file" * 3)  # an unterminated quote: a parser error
    reply = detector.register("reader", {"model": "m", "versions": {"1": {"referenceUri": bad.as_uri()}}})
    assert reply.status_code == 422
    assert "secret_value_in_file" not in reply.text
    assert "not a CSV table" in reply.json()["errors"]["1"]
    missing = detector.register(
        "reader", {"model": "m", "versions": {"1": {"referenceUri": (folder / "none.csv").as_uri()}}}
    )
    assert missing.status_code == 422 and "no such file" in missing.json()["errors"]["1"]


def test_exports_are_written_only_under_the_roots(detector: Detector, tmp_path: Path) -> None:
    reference = write_reference(tmp_path, numeric_rows(60, seed=1))
    assert (
        detector.register(
            "exports", {"model": "m", "versions": {"1": {"referenceUri": reference}}}
        ).status_code
        == 200
    )
    reply = detector.client.post("/v1/export/ml/exports", json={"uriPrefix": "file:///etc/modelloop"})
    assert reply.status_code == 403 and "uriPrefix" in reply.json()["error"]
    reply = detector.client.post("/v1/export/ml/exports", json={"uriPrefix": "memory://x"})
    assert reply.status_code == 403
