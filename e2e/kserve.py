"""KServe's real controller (`cmd/manager`, built from KServe's Go module by hack/build-kserve.sh) against
the e2e control plane, with its admission webhooks registered by URL as a real install registers them.

What it needs is installed first: the CRDs the manager watches (KServe's own beyond the top-level ones,
Knative Serving's and the Gateway API's), the namespaces `kserve` and `knative-serving`, KServe's
ConfigMap `inferenceservice-config`, Knative's `config-autoscaler` and the shared ClusterServingRuntimes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.harness import ROOT, SHARED_CRDS, Cluster, wait_for

SHARED = SHARED_CRDS.parent
KSERVE_NAMESPACE = "kserve"
NAMESPACES = (KSERVE_NAMESPACE, "knative-serving")
# Subfolders of ../shared/crds whose CRDs the manager watches or reads (the top level is the suite's).
CRD_FOLDERS = ("kserve-controller", "knative", "gateway-api")
# KServe's webhook paths at v0.20.0 (config/webhook/manifests.yaml; registered in cmd/manager/main.go).
ISVC_DEFAULTER_PATH = "/mutate-serving-kserve-io-v1beta1-inferenceservice"
ISVC_VALIDATOR_PATH = "/validate-serving-kserve-io-v1beta1-inferenceservice"
POD_MUTATOR_PATH = "/mutate-pods"


@dataclass
class KServe:
    """A running KServe manager: where it logs, where KServe's agent binary is, and how to stop it."""

    manager_log: Path
    agent_binary: Path
    webhook_port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM, then kill if it has not gone within 30 seconds."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def kserve_bin_dir() -> Path:
    """KServe's binaries, built once (cached) by hack/build-kserve.sh; a build takes minutes."""
    script = str(ROOT / "hack" / "build-kserve.sh")
    bin_dir = Path(
        subprocess.run([script, "--print-dir"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    )
    if not all((bin_dir / name).is_file() for name in ("manager", "agent")):
        subprocess.run([script], stdout=subprocess.DEVNULL, check=True)
    return bin_dir


@contextlib.contextmanager
def running_kserve(cluster: Cluster, workdir: Path) -> Iterator[KServe]:
    """Install what KServe's manager needs, start it, register its webhooks by URL, and yield it.

    On exit the webhook configurations go first (so a stopped manager never blocks pod creation), then
    the manager; its log stays in ``workdir``."""
    bin_dir = kserve_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    install_prerequisites(cluster)
    # controller-runtime reads its serving certificate from $TMPDIR/k8s-webhook-server/serving-certs.
    tmpdir = workdir / "tmp"
    cert_dir = tmpdir / "k8s-webhook-server" / "serving-certs"
    ca_pem = make_serving_certificate(cert_dir)
    ports = free_ports(3)
    webhook_port, metrics_port, probe_port = ports
    log_path = workdir / "kserve-manager.log"
    command = [
        str(bin_dir / "manager"),
        f"--webhook-port={webhook_port}",
        f"--metrics-addr=127.0.0.1:{metrics_port}",
        f"--health-probe-addr=127.0.0.1:{probe_port}",
        "--leader-elect=false",
    ]
    env = {**cluster.env, "POD_NAMESPACE": KSERVE_NAMESPACE, "TMPDIR": str(tmpdir)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    kserve = KServe(
        manager_log=log_path, agent_binary=bin_dir / "agent", webhook_port=webhook_port, process=process
    )
    suffix = uuid.uuid4().hex[:8]
    webhook_name = f"modelloop-e2e-{suffix}.serving.kserve.io"
    try:
        wait_for(
            lambda: process.poll() is not None or answers_tls(webhook_port, cert_dir / "tls.crt"),
            timeout=90,
            what="KServe's webhook server to answer TLS",
        )
        assert process.poll() is None, f"KServe's manager exited early:\n{log_path.read_text()[-5000:]}"
        for manifest in webhook_configurations(webhook_name, webhook_port, ca_pem):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        # The API server picks new webhook configurations up asynchronously: wait until both act.
        wait_for(
            lambda: webhooks_act(cluster), timeout=30, what="KServe's webhooks to act on InferenceServices"
        )
        yield kserve
    finally:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.kubectl("delete", kind, webhook_name, "--ignore-not-found", check=False)
        kserve.stop()
        sys.stdout.write(f"\n--- KServe manager log ({log_path}), tail ---\n{log_path.read_text()[-5000:]}\n")


def install_prerequisites(cluster: Cluster) -> None:
    """The CRDs, namespaces, configuration and ClusterServingRuntimes KServe's manager reads."""
    cluster.install_crds(*(SHARED_CRDS / folder for folder in CRD_FOLDERS), what="KServe's CRDs")
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}} for name in NAMESPACES
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": namespaces})
    )
    configuration = [
        SHARED / "kserve" / "inferenceservice-config.yaml",
        SHARED / "knative" / "config-autoscaler.yaml",
        SHARED / "kserve" / "runtimes",
    ]
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", *(a for p in configuration for a in ("-f", str(p)))
    )


def webhooks_act(cluster: Cluster) -> bool:
    """Whether the defaulter and the validator act, seen in server-side dry runs: the defaulter rewrites the
    legacy mode name RawDeployment, the validator refuses a canary list in Knative mode."""

    def dry_run(mode: str, **spec: Any) -> subprocess.CompletedProcess[str]:
        isvc = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "probe", "annotations": {"serving.kserve.io/deploymentMode": mode}},
            "spec": {"predictor": {"model": {"name": "", "modelFormat": {"name": "sklearn"}}}, **spec},
        }
        return cluster.kubectl(
            *("create", "--dry-run=server", "-n", KSERVE_NAMESPACE, "-o", "json", "-f", "-"),
            input=json.dumps(isvc),
            check=False,
        )

    defaulted = dry_run("RawDeployment")
    if defaulted.returncode != 0:
        return False
    if (
        json.loads(defaulted.stdout)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        != "Standard"
    ):
        return False
    canary = {"predictor": {"name": "c", "model": {"name": "", "modelFormat": {"name": "sklearn"}}}}
    refused = dry_run("Knative", canary=[{**canary, "trafficPercent": 10}])
    return refused.returncode != 0 and "canary is only supported" in refused.stderr


def make_serving_certificate(cert_dir: Path) -> str:
    """A self-signed certificate for 127.0.0.1 as tls.crt/tls.key in ``cert_dir``; return it as PEM (it is
    its own CA, the webhooks' caBundle)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(cert_dir / "tls.key"), "-out", str(cert_dir / "tls.crt")),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        capture_output=True,
        check=True,
    )
    return (cert_dir / "tls.crt").read_text()


def answers_tls(port: int, ca_file: Path) -> bool:
    """Whether a TLS handshake with 127.0.0.1:port succeeds, verifying the server against ``ca_file``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1"),
        ):
            return True
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held together while picked, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def webhook_configurations(name: str, port: int, ca_pem: str) -> list[dict[str, Any]]:
    """KServe's InferenceService defaulter and validator and its pod mutator, as in KServe v0.20.0's
    config/webhook/manifests.yaml (rules, selectors, failure policy), but reached by URL."""
    ca_bundle = base64.b64encode(ca_pem.encode()).decode()

    def client(path: str) -> dict[str, str]:
        return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}

    isvc_rules = [
        {
            "apiGroups": ["serving.kserve.io"],
            "apiVersions": ["v1beta1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["inferenceservices"],
        }
    ]
    common = {"failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1beta1"]}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inferenceservice.kserve-webhook-server.defaulter",
                "clientConfig": client(ISVC_DEFAULTER_PATH),
                "rules": isvc_rules,
                **common,
            },
            {
                "name": "inferenceservice.kserve-webhook-server.pod-mutator",
                "clientConfig": client(POD_MUTATOR_PATH),
                "reinvocationPolicy": "IfNeeded",
                "namespaceSelector": {
                    "matchExpressions": [{"key": "control-plane", "operator": "DoesNotExist"}]
                },
                "objectSelector": {
                    "matchExpressions": [{"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}]
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                **common,
            },
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inferenceservice.kserve-webhook-server.validator",
                "clientConfig": client(ISVC_VALIDATOR_PATH),
                "rules": isvc_rules,
                **common,
            }
        ],
    }
    return [mutating, validating]
