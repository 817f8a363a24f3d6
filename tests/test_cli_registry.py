"""`modelloop lineage` and `modelloop history`: arguments, output and errors, with the cluster faked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from modelloop import kube, kubeconfig
from modelloop.cli import main
from modelloop.kubeconfig import current_namespace

NO_CLUSTER = {"KUBERNETES_SERVICE_HOST": ""}

VERSION = {
    "metadata": {"name": "iris-v2", "namespace": "ml"},
    "spec": {
        "modelName": "iris",
        "version": 2,
        "artifact": {"uri": "s3://models/iris/2"},
        "lineage": {
            "trainingRun": "iris-retrain",
            "trigger": {"kind": "DriftPolicy", "name": "iris-drift", "evidence": {"drift": "0.4"}},
        },
    },
    "status": {
        "stage": "Champion",
        "history": [
            {"time": "2026-10-20T11:00:00Z", "stage": "Candidate"},
            {"time": "2026-10-20T12:00:00Z", "stage": "Champion", "reason": "Promoted"},
        ],
    },
}
RUN = {"metadata": {"name": "iris-retrain"}, "spec": {"image": "trainer:2"}, "status": {"phase": "Succeeded"}}


class RecordingClient(kube.KubeClient):
    """The cluster as the CLI's injected client: VERSION and RUN (no DriftPolicy) in namespace ml; records
    every read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    async def get_object(
        self, plural: str, namespace: str, name: str, group_version: str | None = None
    ) -> dict[str, Any] | None:
        self.calls.append((plural, namespace, name))
        stored = {("modelversions", "iris-v2"): VERSION, ("trainingruns", "iris-retrain"): RUN}
        return stored.get((plural, name)) if namespace == "ml" else None

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        self.calls.append((plural, namespace, label_selector))
        return [VERSION] if namespace == "ml" and plural == "modelversions" else []


INJECTED: list[RecordingClient] = []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, str]]]:
    """The reads of the client every command of this test is given (``main(obj=client)``)."""
    client = RecordingClient()
    monkeypatch.setattr(kubeconfig, "current_namespace", lambda: "ml")
    INJECTED.append(client)
    yield client.calls
    INJECTED.remove(client)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    client = INJECTED[-1] if INJECTED else None
    return CliRunner().invoke(main, list(args), env={**NO_CLUSTER, **(env or {})}, obj=client)


def test_help_lists_the_registry_commands_and_their_options() -> None:
    commands = invoke("--help").output
    assert "lineage " in commands and "history " in commands
    lineage_help = invoke("lineage", "--help").output
    history_help = invoke("history", "--help").output
    assert "-n, --namespace" in lineage_help and "[text|json]" in lineage_help
    assert "--at TIME" in history_help and "RFC 3339" in history_help


def test_history_refuses_a_bad_at_before_reading_the_cluster(reads: list[Any]) -> None:
    result = invoke("history", "iris", "--at", "2026-11-01 noon")

    assert result.exit_code == 2
    assert "Invalid value for '--at'" in result.output and "is not a time" in result.output
    assert reads == []


def test_history_refuses_a_time_without_zone() -> None:
    result = invoke("history", "iris", "--at", "2026-11-01T00:00:00")

    assert result.exit_code == 2
    assert "has no time zone" in result.output


def test_an_unknown_output_format_is_refused(reads: list[Any]) -> None:
    result = invoke("lineage", "iris-v2", "-o", "yaml")

    assert result.exit_code == 2 and reads == []


def test_lineage_of_a_missing_version_fails_with_one_line(reads: list[Any]) -> None:
    result = invoke("lineage", "iris-v9", "-n", "ml")

    assert result.exit_code == 1
    assert result.output == "Error: ModelVersion iris-v9 not found in namespace ml\n"


def test_lineage_reads_the_run_and_policy_the_version_names_in_the_default_namespace(
    reads: list[Any],
) -> None:
    result = invoke("lineage", "iris-v2", "-o", "json")

    assert result.exit_code == 0, result.output
    assert reads == [
        ("modelversions", "ml", "iris-v2"),
        ("trainingruns", "ml", "iris-retrain"),
        ("driftpolicies", "ml", "iris-drift"),
    ]
    document = json.loads(result.output)
    assert document["trainingRun"]["phase"] == "Succeeded" and document["trainingRun"]["image"] == "trainer:2"
    assert document["trigger"]["policy"] == {"found": False, "phase": None}


def test_lineage_text_marks_the_deleted_policy(reads: list[Any]) -> None:
    result = invoke("lineage", "iris-v2")

    assert result.exit_code == 0, result.output
    assert "← triggered by DriftPolicy iris-drift  (deleted)" in result.output


def test_history_lists_the_changes_of_the_models_versions(reads: list[Any]) -> None:
    result = invoke("history", "iris", "-o", "json")

    assert result.exit_code == 0, result.output
    assert [(c["version"], c["stage"]) for c in json.loads(result.output)["changes"]] == [
        ("iris-v2", "Candidate"),
        ("iris-v2", "Champion"),
    ]


def test_history_at_answers_the_champion_or_none(reads: list[Any]) -> None:
    later = invoke("history", "iris", "--at", "2026-11-01")
    earlier = invoke("history", "iris", "--at", "2026-10-20T11:59:59Z")
    as_json = invoke("history", "iris", "--at", "2026-11-01", "-o", "json")

    assert later.exit_code == 0 and later.output == "iris-v2  (Champion since 2026-10-20T12:00:00Z)\n"
    assert earlier.exit_code == 0 and earlier.output == "none\n"
    assert json.loads(as_json.output) == {
        "model": "iris",
        "namespace": "ml",
        "at": "2026-11-01T00:00:00Z",
        "champion": "iris-v2",
        "since": "2026-10-20T12:00:00Z",
    }


def test_history_of_a_model_without_versions_fails_with_one_line(reads: list[Any]) -> None:
    result = invoke("history", "wine", "--at", "2026-11-01")

    assert result.exit_code == 1
    assert result.output == "Error: no ModelVersion of model wine in namespace ml\n"


def test_lineage_without_cluster_configuration_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = invoke("lineage", "iris-v2", env={"KUBECONFIG": str(tmp_path / "none")})

    assert result.exit_code == 1
    assert "no Kubernetes configuration found" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("context_namespace", "expected"), [("ml", "ml"), (None, "default")])
def test_the_default_namespace_is_the_kubeconfig_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context_namespace: str | None, expected: str
) -> None:
    context = {"cluster": "c", "user": "u", **({"namespace": context_namespace} if context_namespace else {})}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert current_namespace() == expected
