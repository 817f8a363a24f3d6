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


def test_crds_writes_one_file_per_crd_and_their_kustomization(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["crds", "--output-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(p.name for p in (ROOT / "crds").glob("*.yaml")), "Kustomization"]
    )
    assert (tmp_path / "Kustomization").read_text() == (ROOT / "crds" / "Kustomization").read_text()


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


def test_rollout_status_shows_versions_step_traffic_and_the_last_measurements() -> None:
    from modelloop.cli.render import render_rollout

    service = {
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"model": {"name": "iris"}, "rollout": {"steps": [10, 50, 100]}},
        "status": {
            "phase": "Progressing",
            "reason": "StepRunning",
            "stableVersion": 2,
            "canaryVersion": 3,
            "stepIndex": 1,
            "stepStartTime": "2026-11-27T10:00:00.000Z",
            "canaryWeight": 50,
            "canaryTraffic": 10,
            "analysis": {
                "failed": 1,
                "inconclusive": 0,
                "lastPhase": "Failed",
                "measurements": [
                    {"metric": "error-rate", "phase": "Failed", "time": "t", "message": "error-rate: q = 0.2"}
                ],
            },
        },
    }

    shown = render_rollout(service)

    assert "Phase:      Progressing (StepRunning)" in shown
    assert "Stable:     2" in shown and "Canary:     3" in shown
    assert "Step:       2 of 3 (since 2026-11-27T10:00:00.000Z)" in shown
    assert "Traffic:    asked 50%, observed 10%" in shown
    assert "1 failed, 0 inconclusive, last Failed" in shown
    assert "error-rate: q = 0.2" in shown
    assert "Backend:    kserve\n" in shown


def test_rollout_status_shows_a_shadow_phase_and_seldons_state() -> None:
    from modelloop.cli.render import render_rollout

    service = {
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"model": {"name": "iris"}, "backend": "seldon", "rollout": {"steps": [10, 100]}},
        "status": {
            "stableVersion": 1,
            "canaryVersion": 2,
            "shadow": True,
            "canaryWeight": 0,
            "backendState": {"state": "Available", "replicas": 2, "availableReplicas": 2},
        },
    }

    shown = render_rollout(service)

    assert "Step:       shadow, before step 1 of 2" in shown
    assert "Backend:    seldon (Available), 2 of 2 replicas available" in shown


def test_rollout_actions_are_listed_for_the_kubectl_plugin() -> None:
    result = CliRunner().invoke(main, ["rollout", "--help"])

    assert result.exit_code == 0
    for verb in ("status", "promote", "abort", "pause", "resume"):
        assert verb in result.output
