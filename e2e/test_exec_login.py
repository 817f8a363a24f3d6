"""Logging in as managed clusters do: an exec credential plugin (client.authentication.k8s.io/v1) gives the
operator and the CLI their token. The plugin here is a real program that asks the local API server for a
real ServiceAccount token (TokenRequest, through kubectl create token), as `aws eks get-token` asks AWS;
the identity the API server sees is checked with a SelfSubjectReview."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import ROOT, Cluster, running_operator, user_kubeconfig, wait_for
from modelloop import kube

PLUGIN = """#!{python}
import json, os, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

folder = Path(os.environ["PLUGIN_DIR"])
runs = folder / "runs"
count = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(count))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["apiVersion"] == "client.authentication.k8s.io/v1" and info["spec"]["interactive"] is False
kubectl = [os.environ["KUBECTL"], "--kubeconfig", os.environ["ADMIN_KUBECONFIG"]]
kubectl += ["-n", os.environ["SA_NAMESPACE"]]
bind = []
if os.environ.get("BIND_TO_SECRET"):
    # Bound to a Secret of its own: deleting the Secret revokes the token, as a cloud revokes a session.
    secret = f"login-{{count}}"
    subprocess.run([*kubectl, "create", "secret", "generic", secret], check=True, capture_output=True)
    bind = ["--bound-object-kind", "Secret", "--bound-object-name", secret]
token = subprocess.run(
    [*kubectl, "create", "token", os.environ["SA"], "--duration", "10m", *bind],
    check=True, capture_output=True, text=True,
).stdout.strip()
lifetime = float(os.environ["LIFETIME"])
expires = datetime.fromtimestamp(time.time() + lifetime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({{
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {{"token": token, "expirationTimestamp": expires}},
}}))
"""


def exec_kubeconfig(
    cluster: Cluster, tmp_path: Path, namespace: str, account: str, lifetime: float, bind: bool = False
) -> Path:
    """A kubeconfig whose only credential is the plugin's, for ServiceAccount ``namespace/account``."""
    program = tmp_path / "get-token"
    program.write_text(PLUGIN.format(python=sys.executable))
    program.chmod(0o755)
    env = {
        "PLUGIN_DIR": str(tmp_path),
        "KUBECTL": str(cluster.bin_dir / "kubectl"),
        "ADMIN_KUBECONFIG": str(cluster.kubeconfig),
        "SA_NAMESPACE": namespace,
        "SA": account,
        "LIFETIME": str(lifetime),
        "BIND_TO_SECRET": "1" if bind else "",
    }
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(program),
            "interactiveMode": "Never",
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "installHint": "the test writes it",
        }
    }
    return user_kubeconfig(cluster, user, tmp_path / "kubeconfig")


def plugin_runs(tmp_path: Path) -> int:
    counter = tmp_path / "runs"
    return int(counter.read_text()) if counter.exists() else 0


class Client:
    """The operator's own client, on an event loop of its own, with ``kubeconfig``."""

    def __init__(self, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        self.loop = asyncio.new_event_loop()
        self.client = kube.KubeClient()

    def whoami(self) -> str:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer: dict[str, Any] = self.loop.run_until_complete(
            self.client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=review)
        )
        return str(answer["status"]["userInfo"]["username"])

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def reader(cluster: Cluster, namespace: str) -> str:
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    return f"system:serviceaccount:{namespace}:reader"


def test_the_client_logs_in_through_an_exec_plugin_and_runs_it_again_when_the_token_expires(
    cluster: Cluster, namespace: str, reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plugin says its token expires in 25 s: the client renews it 10 s before, so after ~15 s.
    client = Client(exec_kubeconfig(cluster, tmp_path, namespace, "reader", lifetime=25), monkeypatch)
    try:
        assert plugin_runs(tmp_path) == 0, "nothing runs before a request needs a credential"
        assert client.whoami() == reader
        assert client.whoami() == reader
        assert plugin_runs(tmp_path) == 1, "a token that has not expired is kept"

        identities = []

        def renewed() -> bool:
            identities.append(client.whoami())
            return plugin_runs(tmp_path) == 2

        wait_for(renewed, timeout=45, interval=1, what="the plugin to run again when its token expires")
        assert set(identities) == {reader}, "every request on the way was answered as the ServiceAccount"
    finally:
        client.close()


def test_a_revoked_token_is_refused_once_and_the_request_succeeds_with_a_new_one(
    cluster: Cluster, namespace: str, reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = exec_kubeconfig(cluster, tmp_path, namespace, "reader", lifetime=3600, bind=True)
    client = Client(kubeconfig, monkeypatch)
    try:
        assert client.whoami() == reader
        cluster.kubectl("delete", "secret", "login-1", "-n", namespace)  # revokes the plugin's token

        # Until the API server's authenticator sees the Secret gone, the old token still works; then the
        # first request it refuses (401) runs the plugin again and is sent once more, and succeeds.
        wait_for(
            lambda: client.whoami() == reader and plugin_runs(tmp_path) == 2,
            timeout=30,
            interval=0.5,
            what="a request refused with the revoked token to be answered with a new one",
        )
    finally:
        client.close()


def test_the_operator_logs_in_through_an_exec_plugin_with_its_shipped_rbac(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """kopf's watches and the operator's own writes both use the plugin's ServiceAccount token."""
    cluster.kubectl("create", "namespace", "modelloop-system", check=False)
    cluster.kubectl("apply", "-f", str(ROOT / "manifests" / "operator" / "rbac.yaml"))
    kubeconfig = exec_kubeconfig(cluster, tmp_path, "modelloop-system", "modelloop", lifetime=3600)
    run = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "by-plugin"},
        "spec": {
            "image": "ghcr.io/modelloop/trainer:0.1.0",
            "dataset": {"uri": "sklearn://iris", "format": "sklearn", "targetColumn": "target"},
            "output": {"modelName": "iris"},
        },
    }
    log = tmp_path / "operator.log"
    with running_operator(cluster, namespace, log, kubeconfig=kubeconfig):
        cluster.apply(run, namespace)
        status = wait_for(
            lambda: cluster.get("trainingrun", "by-plugin", namespace).get("status", {}).get("jobName"),
            timeout=60,
            what="the operator to create the run's Job and write its status",
        )
    assert cluster.get("job", status, namespace)["metadata"]["name"] == status
    assert plugin_runs(tmp_path) >= 2, "kopf's login and the operator's client each ran the plugin"
    text = log.read_text()
    assert "Forbidden" not in text and "401" not in text, text[-5000:]
    # The token never reaches the log.
    assert all(part not in text for part in ("eyJ", "Bearer ")), "a token in the operator's log"


def test_kubectl_itself_accepts_the_plugin_the_operator_uses(
    cluster: Cluster, namespace: str, reader: str, tmp_path: Path
) -> None:
    """The same kubeconfig works with kubectl: what the operator supports is what kubectl does."""
    kubeconfig = exec_kubeconfig(cluster, tmp_path, namespace, "reader", lifetime=3600)
    result = cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(result.stdout)["status"]["userInfo"]["username"] == reader
