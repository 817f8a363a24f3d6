"""How the operator's client finds its cluster: the pod's service account, else the kubeconfig's current
context, as kubectl would; and what it says when it cannot."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop import kube

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

    config = kube.load_config()

    assert config.server == "https://10.1.2.3:6443"
    assert config.namespace == "ml"
    assert config.bearer_token() == "s3cr3t"
    assert "context dev" in config.source


def test_relative_certificate_files_are_read_beside_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"}
    monkeypatch.setenv("KUBECONFIG", f"{kubeconfig(tmp_path, user)}:/elsewhere/ignored")

    config = kube.load_config()

    assert config.certificate_file == str(tmp_path / "pki" / "admin.crt")
    assert config.key_file == str(tmp_path / "pki" / "admin.key")


def test_inline_certificate_authority_data_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = {"server": "https://k:443", "certificate-authority-data": CA}
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"token": "t"}, cluster)))

    config = kube.load_config()

    assert config.ca_data is not None and "not-a-real-one" in config.ca_data
    assert config.ca_file is None
    with pytest.raises(ssl.SSLError):  # it really is handed to the TLS context
        config.ssl_context()


def test_a_token_file_is_read_at_each_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"tokenFile": str(token)})))
    config = kube.load_config()
    assert config.bearer_token() == "first"

    token.write_text("rotated\n")

    assert config.bearer_token() == "rotated"


@pytest.mark.parametrize("plugin", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "gcp"}}])
def test_a_credential_plugin_is_refused_with_what_to_do_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin: dict[str, Any]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, plugin)))

    with pytest.raises(kube.PreflightError, match=r"credential plugin .* use a context with a token"):
        kube.load_config()


def test_a_missing_kubeconfig_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))

    with pytest.raises(kube.PreflightError, match="no Kubernetes configuration found"):
        kube.load_config()
    assert kube.current_namespace() == "default"


def test_in_a_pod_the_service_account_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "namespace").write_text("modelloop-system")
    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.setattr(kube, "_SERVICE_ACCOUNT", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    config = kube.load_config()

    assert config.server == "https://[fd00::1]:443"
    assert config.namespace == "modelloop-system"
    assert config.bearer_token() == "pod-token"
    assert config.ca_file == str(tmp_path / "ca.crt")
