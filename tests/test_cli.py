"""The `modelloop` command line."""

from pathlib import Path

import yaml
from click.testing import CliRunner

from modelloop import __version__
from modelloop.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_crds_prints_every_committed_crd_as_one_yaml_stream() -> None:
    result = CliRunner().invoke(main, ["crds"])

    assert result.exit_code == 0, result.output
    printed = [doc for doc in yaml.safe_load_all(result.output) if doc]
    committed = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    assert sorted(d["metadata"]["name"] for d in printed) == sorted(d["metadata"]["name"] for d in committed)
    assert sorted(printed, key=lambda d: d["metadata"]["name"]) == sorted(
        committed, key=lambda d: d["metadata"]["name"]
    )


def test_crds_writes_one_file_per_crd(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["crds", "--output-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml")
    )


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_run_refuses_an_unknown_log_format_before_touching_the_cluster() -> None:
    result = CliRunner().invoke(main, ["run", "--log-format", "xml"])
    assert result.exit_code == 2
    assert "--log-format" in result.output


def test_run_without_cluster_configuration_fails_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-kubeconfig"
    result = CliRunner().invoke(
        main, ["run", "-A"], env={"KUBECONFIG": str(missing), "KUBERNETES_SERVICE_HOST": ""}
    )
    assert result.exit_code == 1
    assert "no Kubernetes configuration found" in result.output
