"""``modelloop-serve``'s arguments and its failures, as a user meets them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import SERVE
from modelloop_server.cli import build_parser, main


def test_the_version_comes_from_the_flag_then_the_environment_then_unknown() -> None:
    assert build_parser({}).parse_args([]).model_version == "unknown"
    assert build_parser({"MODELLOOP_MODEL_VERSION": "4"}).parse_args([]).model_version == "4"
    assert (
        build_parser({"MODELLOOP_MODEL_VERSION": "4"}).parse_args(["--model_version=5"]).model_version == "5"
    )


def test_the_expected_digest_comes_from_the_flag_then_the_environment_else_none() -> None:
    assert build_parser({}).parse_args([]).artifact_digest is None
    assert build_parser({"MODELLOOP_ARTIFACT_DIGEST": ""}).parse_args([]).artifact_digest is None
    env = {"MODELLOOP_ARTIFACT_DIGEST": "sha256:ab"}
    assert build_parser(env).parse_args([]).artifact_digest == "sha256:ab"
    assert build_parser(env).parse_args(["--artifact_digest=sha256:cd"]).artifact_digest == "sha256:cd"
    assert build_parser({}).parse_args([]).termination_log == "/dev/termination-log"


def test_defaults_suit_kserves_storage_initializer_and_one_worker() -> None:
    args = build_parser({}).parse_args(["--model_name=iris"])

    assert (args.model_name, args.model_dir, args.http_port, args.workers) == ("iris", "/mnt/models", 8080, 1)
    assert args.enable_grpc is False
    assert args.enable_latency_logging is False


def test_probabilities_are_served_unless_the_flag_or_the_environment_turns_them_off() -> None:
    assert build_parser({}).parse_args([]).serve_probabilities is True
    for value in ("false", "0"):
        assert (
            build_parser({"MODELLOOP_SERVE_PROBABILITIES": value}).parse_args([]).serve_probabilities is False
        )
    turned_off = build_parser({"MODELLOOP_SERVE_PROBABILITIES": "0"})
    assert turned_off.parse_args(["--serve_probabilities=true"]).serve_probabilities is True
    assert build_parser({}).parse_args(["--serve_probabilities=False"]).serve_probabilities is False


def test_a_probabilities_switch_that_is_neither_true_nor_false_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser({"MODELLOOP_SERVE_PROBABILITIES": "sometimes"})
    assert "MODELLOOP_SERVE_PROBABILITIES must be true or false" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--serve_probabilities=maybe"])
    assert "--serve_probabilities must be true or false" in capsys.readouterr().err


def test_prediction_buckets_must_increase() -> None:
    assert build_parser({}).parse_args(["--prediction_buckets=1,2.5,10"]).prediction_buckets == (
        1.0,
        2.5,
        10.0,
    )
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--prediction_buckets=10,1"])


def test_more_than_one_worker_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--workers=2"], env={})

    assert exited.value.code == 2
    assert "--workers must be 1" in capsys.readouterr().err


def test_a_folder_without_a_model_fails_fast_with_the_reason(tmp_path: Path) -> None:
    process = subprocess.run(
        [SERVE, "--model_name=iris", f"--model_dir={tmp_path}", "--http_port=0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode == 2
    assert f"modelloop-serve: {tmp_path} holds neither model.joblib nor model.onnx" in process.stderr
