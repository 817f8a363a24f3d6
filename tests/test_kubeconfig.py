"""How the operator's client finds its cluster and logs in: the pod's service account, else the kubeconfig's
current context, as kubectl would (tokens, token files, certificates, exec credential plugins); and what
it says when it cannot. The plugins here are real programs, run as kubectl runs them; their clock is not
(expiry is tested in virtual time)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop import kubeconfig as kc

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot-a-real-one\n-----END CERTIFICATE-----\n").decode()


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dev",
                "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
                "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.1.2.3:6443/"}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


def test_the_current_context_gives_server_namespace_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"token": "s3cr3t"})))

    config = kc.load_config()

    assert config.server == "https://10.1.2.3:6443"
    assert config.namespace == "ml"
    assert config.bearer_token() == "s3cr3t"
    assert "context dev" in config.source


def test_relative_certificate_files_are_read_beside_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"}
    monkeypatch.setenv("KUBECONFIG", f"{kubeconfig(tmp_path, user)}:/elsewhere/ignored")

    config = kc.load_config()

    assert config.certificate_file == str(tmp_path / "pki" / "admin.crt")
    assert config.key_file == str(tmp_path / "pki" / "admin.key")


def test_inline_certificate_authority_data_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = {"server": "https://k:443", "certificate-authority-data": CA}
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"token": "t"}, cluster)))

    config = kc.load_config()

    assert config.ca_data is not None and "not-a-real-one" in config.ca_data
    assert config.ca_file is None
    with pytest.raises(ssl.SSLError):  # it really is handed to the TLS context
        config.ssl_context()


def test_a_token_file_is_read_at_each_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"tokenFile": str(token)})))
    config = kc.load_config()
    assert config.bearer_token() == "first"

    token.write_text("rotated\n")

    assert config.bearer_token() == "rotated"


def test_an_auth_provider_is_refused_with_the_exec_plugin_that_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"auth-provider": {"name": "gcp"}})))

    with pytest.raises(kc.PreflightError, match=r"auth-provider 'gcp'.*gke-gcloud-auth-plugin"):
        kc.load_config()


def test_a_missing_kubeconfig_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))

    with pytest.raises(kc.PreflightError, match="no Kubernetes configuration found"):
        kc.load_config()
    assert kc.current_namespace() == "default"


def test_in_a_pod_the_service_account_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "namespace").write_text("modelloop-system")
    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.setattr(kc, "SERVICE_ACCOUNT", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    config = kc.load_config()

    assert config.server == "https://[fd00::1]:443"
    assert config.namespace == "modelloop-system"
    assert config.bearer_token() == "pod-token"
    assert config.ca_file == str(tmp_path / "ca.crt")


# --- exec credential plugins ----------------------------------------------------------------------------

PLUGIN = """#!{python}
import json, os, sys
from pathlib import Path

folder = Path(sys.argv[0]).parent
runs = folder / "runs"
count = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(count))
(folder / f"info-{{count}}.json").write_text(os.environ["KUBERNETES_EXEC_INFO"])
(folder / f"env-{{count}}").write_text(os.environ.get("PLUGIN_GREETING", ""))
answer = json.loads((folder / "answer.json").read_text())
if answer.get("fail"):
    print(answer["fail"], file=sys.stderr)
    sys.exit(3)
if "token" in answer.get("status", {{}}):
    answer["status"]["token"] += f"-{{count}}"
print(json.dumps(answer))
"""

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"


def plugin_program(folder: Path, answer: dict[str, Any]) -> Path:
    """A credential plugin that answers ``answer`` (its token suffixed with the run's number), and records
    each run's KUBERNETES_EXEC_INFO and environment beside itself."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "plugin"
    program.write_text(PLUGIN.format(python=sys.executable))
    program.chmod(0o755)
    (folder / "answer.json").write_text(json.dumps(answer))
    return program


def credential(status: dict[str, Any], api_version: str = V1) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "ExecCredential", "status": status}


def exec_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any], **entry: Any
) -> kc.ClusterConfig:
    program = plugin_program(tmp_path / "bin", answer)
    exec_entry = {"apiVersion": V1, "command": "./bin/plugin", "interactiveMode": "Never", **entry}
    cluster = {
        "server": "https://10.1.2.3:6443",
        "certificate-authority-data": CA,
        "extensions": [{"name": "client.authentication.k8s.io/exec", "extension": {"audience": "ml"}}],
    }
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"exec": exec_entry}, cluster)))
    config = kc.load_config()
    assert config.exec_plugin is not None and config.exec_plugin.command == str(program)
    return config


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def runs(tmp_path: Path) -> int:
    counter = tmp_path / "bin" / "runs"
    return int(counter.read_text()) if counter.exists() else 0


def test_an_exec_plugin_runs_when_a_credential_is_needed_and_its_token_is_kept_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    answer = credential({"token": "eks", "expirationTimestamp": stamp(clock.now + 900)})
    config = exec_config(tmp_path, monkeypatch, answer)
    credentials = kc.Credentials(config, clock=clock, interactive=False)
    assert runs(tmp_path) == 0, "loading the configuration runs nothing"

    async def scenario() -> list[str | None]:
        tokens = [await credentials.token()]
        clock.now += 900 - kc.EXPIRY_MARGIN_SECONDS - 1
        tokens.append(await credentials.token())  # still valid: no run
        clock.now += 1
        tokens.append(await credentials.token())  # about to expire: renewed before it does
        return tokens

    assert asyncio.run(scenario()) == ["eks-1", "eks-1", "eks-2"]
    assert runs(tmp_path) == 2


def test_callers_that_find_the_credential_stale_together_run_the_plugin_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exec_config(tmp_path, monkeypatch, credential({"token": "t"}))
    credentials = kc.Credentials(config, interactive=False)

    async def many() -> list[str | None]:
        return list(await asyncio.gather(*(credentials.token() for _ in range(20))))

    assert asyncio.run(many()) == ["t-1"] * 20
    assert runs(tmp_path) == 1


def test_a_refused_token_is_renewed_once_however_many_requests_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exec_config(tmp_path, monkeypatch, credential({"token": "t"}))  # no expiry: until refused
    credentials = kc.Credentials(config, interactive=False)

    async def scenario() -> list[str | None]:
        first = await credentials.token()
        assert await credentials.refused(first)
        assert await credentials.refused(first)  # a second request refused with the same token
        second = await credentials.token()
        assert await credentials.refused("t-0")  # an older token refused late forgets nothing
        return [first, second, await credentials.token()]

    assert asyncio.run(scenario()) == ["t-1", "t-2", "t-2"]


def test_the_plugin_gets_the_exec_info_its_env_and_with_provide_cluster_info_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exec_config(
        tmp_path,
        monkeypatch,
        credential({"token": "t"}, V1BETA1),
        apiVersion=V1BETA1,
        interactiveMode=None,  # v1beta1 defaults to IfAvailable
        provideClusterInfo=True,
        env=[{"name": "PLUGIN_GREETING", "value": "hello"}],
        args=["get-token", "--cluster", "ml"],
    )
    assert config.exec_plugin is not None
    assert config.exec_plugin.interactive_mode == "IfAvailable"
    assert config.exec_plugin.args == ("get-token", "--cluster", "ml")

    asyncio.run(kc.Credentials(config, interactive=False).token())

    info = json.loads((tmp_path / "bin" / "info-1.json").read_text())
    assert info["apiVersion"] == V1BETA1 and info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == "https://10.1.2.3:6443"
    assert info["spec"]["cluster"]["certificate-authority-data"] == CA
    assert info["spec"]["cluster"]["config"] == {"audience": "ml"}
    assert (tmp_path / "bin" / "env-1").read_text() == "hello"


def test_without_provide_cluster_info_the_plugin_is_not_told_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exec_config(tmp_path, monkeypatch, credential({"token": "t"}))
    asyncio.run(kc.Credentials(config, interactive=False).token())
    assert "cluster" not in json.loads((tmp_path / "bin" / "info-1.json").read_text())["spec"]


def test_interactive_modes_follow_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = kc.ExecPlugin(command="p")
    assert kc.interactive_session(dataclasses.replace(plugin, interactive_mode="Never"), True) is False
    assert kc.interactive_session(dataclasses.replace(plugin, interactive_mode="IfAvailable"), True) is True
    assert kc.interactive_session(dataclasses.replace(plugin, interactive_mode="IfAvailable"), False) is False
    with pytest.raises(kc.CredentialError, match="needs an interactive terminal"):
        kc.interactive_session(dataclasses.replace(plugin, interactive_mode="Always"), False)

    config = exec_config(tmp_path, monkeypatch, credential({"token": "t"}), interactiveMode="Always")
    with pytest.raises(kc.CredentialError, match="interactiveMode: Always"):
        asyncio.run(kc.Credentials(config, interactive=False).token())
    assert runs(tmp_path) == 0


def test_a_client_certificate_from_the_plugin_is_handed_to_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nnot-a-real-one\n-----END CERTIFICATE-----\n"
    config = exec_config(
        tmp_path, monkeypatch, credential({"clientCertificateData": pem, "clientKeyData": "key"})
    )
    got = asyncio.run(kc.Credentials(config, interactive=False).current())
    assert (got.token, got.certificate, got.key) == (None, pem, "key")
    path = kc.data_file(pem, encoded=False)
    assert Path(path).read_text() == pem and (Path(path).stat().st_mode & 0o077) == 0
    with pytest.raises(ssl.SSLError):  # it really is what the TLS context loads
        kc.ClusterConfig(server="https://k").ssl_context((path, kc.data_file("key", encoded=False)))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1"}, "supported: client.authentication"),
        ({"interactiveMode": None}, "interactiveMode is required"),
        ({"interactiveMode": "Sometimes"}, "'Sometimes' is not one of"),
        ({"command": ""}, "names no command"),
        ({"env": [{"value": "x"}]}, "env entry without a name"),
    ],
)
def test_an_invalid_exec_entry_is_refused_naming_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], message: str
) -> None:
    exec_entry = {"apiVersion": V1, "command": "p", "interactiveMode": "Never", **entry}
    exec_entry = {k: v for k, v in exec_entry.items() if v is not None}
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"exec": exec_entry})))
    with pytest.raises(kc.PreflightError, match=message):
        kc.load_config()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            {"fail": "you are not logged in: run `sso login`"},
            r"failed \(exit code 3\): you are not logged in",
        ),
        (credential({"token": "s3cr3t"}, V1BETA1), "answered in .*v1beta1.* asks for .*v1'"),
        ({"apiVersion": V1, "kind": "Secret", "status": {"token": "s3cr3t"}}, "other than an ExecCredential"),
        (credential({}), "neither a token nor a client certificate"),
        (credential({"clientCertificateData": "c"}), "certificate and no key"),
        (credential({"token": "s3cr3t", "expirationTimestamp": "soon"}), "not a time"),
        (credential({"token": "s3cr3t", "expirationTimestamp": "2001-01-01T00:00:00Z"}), "expired at 2001"),
    ],
)
def test_a_plugin_that_gives_no_usable_credential_is_reported_without_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any], message: str
) -> None:
    config = exec_config(tmp_path, monkeypatch, answer)
    with pytest.raises(kc.CredentialError, match=message) as error:
        asyncio.run(kc.Credentials(config, interactive=False).token())
    assert "s3cr3t" not in str(error.value)  # the secret, not a path that happens to hold "t-1"


def test_a_plugin_that_is_not_installed_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {
        "apiVersion": V1,
        "command": "gke-gcloud-auth-plugin-absent",
        "interactiveMode": "Never",
        "installHint": "Install gke-gcloud-auth-plugin: gcloud components install gke-gcloud-auth-plugin",
    }
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"exec": entry})))
    credentials = kc.Credentials(kc.load_config(), interactive=False)
    with pytest.raises(kc.CredentialError, match=r"cannot be run: .*gcloud components install"):
        asyncio.run(credentials.token())


def test_a_plugin_that_hangs_is_stopped_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "slow"
    program.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    program.chmod(0o755)
    monkeypatch.setattr(kc, "EXEC_SECONDS", 0.5)
    plugin = kc.ExecPlugin(command=str(program), interactive_mode="Never")
    with pytest.raises(kc.CredentialError, match="no credential within"):
        asyncio.run(kc.run_plugin(plugin, kc.exec_info(plugin, False), False))


def test_one_credentials_object_serves_one_event_loop_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI runs each command on an event loop of its own; the plugin's answer outlives each."""
    clock = Clock()
    answer = credential({"token": "t", "expirationTimestamp": stamp(clock.now + 100)})
    credentials = kc.Credentials(exec_config(tmp_path, monkeypatch, answer), clock=clock, interactive=False)

    async def many() -> set[str | None]:
        return set(await asyncio.gather(*(credentials.token() for _ in range(5))))

    assert asyncio.run(many()) == {"t-1"}
    assert asyncio.run(many()) == {"t-1"}  # kept, on another loop
    clock.now += 100
    (tmp_path / "bin" / "answer.json").write_text(
        json.dumps(credential({"token": "t", "expirationTimestamp": stamp(clock.now + 100)}))
    )
    assert asyncio.run(many()) == {"t-2"}  # renewed once, on a third
