"""The drift detector's API checks Kubernetes identities with the real API server (``--auth kubernetes``):
the detector's own ServiceAccount, bound to ``system:auth-delegator``, asks the API server (TokenReview,
SubjectAccessReview) about each caller's ServiceAccount token, and modelloop's RBAC decides: an editor of a
namespace (Kubernetes' ``edit``, with modelloop's aggregated rules) posts labels and reads drift state there
and nowhere else, a viewer only reads, and only the operator's ClusterRole registers references. Ingestion,
which KServe's payload logger cannot authenticate, stays open; an API server that cannot be reached is a
503, never a pass."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import harness
from e2e.harness import ROOT, Cluster, free_port, wait_for
from e2e.loop import DETECTOR_BIN
from e2e.serving import answers_ok, file_tail, terminate_process

USER_ROLES = ROOT / "manifests" / "operator" / "user-roles.yaml"
OPERATOR_RBAC = ROOT / "manifests" / "operator" / "rbac.yaml"
GROUP = "modelloop.dev"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")

pytestmark = pytest.mark.skipif(
    not (DETECTOR_BIN / "modelloop-detector").exists(), reason="the detector's environment is not built"
)


def shipped_role(path: Path, name: str) -> dict[str, Any]:
    """A ClusterRole as the manifests ship it (the detector's subresources included)."""
    [role] = [
        doc
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == name
    ]
    return dict(role)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class RunningDetector:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Answer:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return Answer(answer.status, dict(answer.headers), json.loads(answer.read() or b"null"))
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), json.loads(error.read() or b"null"))

    def ingest(self, namespace: str, service: str, event_id: str) -> int:
        """One request CloudEvent as KServe's payload logger posts it: no credentials."""
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": f"http://localhost:9081/{service}",
            "ce-type": "org.kubeflow.serving.inference.request",
            "ce-inferenceservicename": service,
            "ce-namespace": namespace,
            "ce-component": "predictor",
            "ce-endpoint": "default",
            "content-type": "application/json",
        }
        body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
        request = urllib.request.Request(f"{self.url}/", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)

    def refused(self) -> dict[str, float]:
        """``modelloop_detector_refused_total`` by reason."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("modelloop_detector_refused_total{"):
                labels, value = line.rsplit(" ", 1)
                counts[labels.split('reason="')[1].split('"')[0]] = float(value)
        return counts


def start_detector(workdir: Path, name: str, env: dict[str, str]) -> RunningDetector:
    """``modelloop-detector --auth kubernetes`` as its pod would run it, shared (every namespace), so that
    what keeps a caller out of another namespace is its RBAC alone."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(DETECTOR_BIN / "modelloop-detector"),
                *("--host", "127.0.0.1", "--port", str(port), "--auth", "kubernetes", "--no-mmd"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "CUDA_VISIBLE_DEVICES": "",
                "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": workdir.as_uri(),
                **env,
            },
        )
    url = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: process.poll() is not None or answers_ok(f"{url}/healthz"),
        timeout=120,
        what=f"the drift detector ({name})",
    )
    assert process.poll() is None, f"the detector exited:\n{file_tail(log)}"
    return RunningDetector(process, url, log)


@dataclass
class Setup:
    team_a: str
    team_b: str
    editor: str
    viewer: str
    operator: str
    operator_api: str
    """The operator's token for the API server, not for the detectors' audience."""
    detector: RunningDetector
    unreachable: RunningDetector


AUDIENCE = "modelloop-detector"


def create_token(cluster: Cluster, account: str, namespace: str, audience: str | None = AUDIENCE) -> str:
    """A token of the ServiceAccount: for the detectors' audience, or (None) the API server's own."""
    return harness.create_token(cluster, account, namespace, audience)


def aggregated_into(cluster: Cluster, role: str, resource: str) -> bool:
    rules = cluster.get("clusterrole", role).get("rules") or []
    return any(resource in (rule.get("resources") or []) for rule in rules)


def modelloop_aggregated(cluster: Cluster, role: str) -> bool:
    rules = cluster.get("clusterrole", role).get("rules") or []
    return any(GROUP in (rule.get("apiGroups") or []) for rule in rules)


def other_modelloop_roles(cluster: Cluster, label: str) -> bool:
    """Whether a ClusterRole other than this test's folds modelloop's rules into a user-facing role."""
    for role in cluster.get("clusterrole", selector=f"{label}=true")["items"]:
        rules = role.get("rules") or []
        if any(GROUP in (rule.get("apiGroups") or []) for rule in rules):
            return True
    return False


@pytest.fixture(scope="module")
def setup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:6]
    team_a, team_b, ops = f"team-a-{suffix}", f"team-b-{suffix}", f"ops-{suffix}"
    workdir = tmp_path_factory.mktemp("detector-auth")
    roles = [
        shipped_role(USER_ROLES, "modelloop-view"),
        shipped_role(USER_ROLES, "modelloop-edit"),
        shipped_role(OPERATOR_RBAC, "modelloop-operator"),
    ]
    for role in roles:  # this test's copies: whatever else installed the shipped ones is left alone
        role["metadata"]["name"] = f"{role['metadata']['name']}-{suffix}"
    operator_role = roles[2]["metadata"]["name"]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": roles})
    bindings = [f"detector-auth-{suffix}", f"operator-{suffix}"]
    try:
        for namespace in (team_a, team_b, ops):
            cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("apply", "-f", "-", input=listing)
        for account, namespace in (("detector", team_a), ("editor", team_a), ("viewer", team_a)):
            cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
        cluster.kubectl("create", "serviceaccount", "modelloop", "-n", ops)
        cluster.kubectl(
            "create", "clusterrolebinding", bindings[0], "--clusterrole=system:auth-delegator",
            f"--serviceaccount={team_a}:detector",
        )  # fmt: skip
        cluster.kubectl(
            "create", "clusterrolebinding", bindings[1], f"--clusterrole={operator_role}",
            f"--serviceaccount={ops}:modelloop",
        )  # fmt: skip
        cluster.kubectl("create", "rolebinding", "editor", "--clusterrole=edit",
                        f"--serviceaccount={team_a}:editor", "-n", team_a)  # fmt: skip
        cluster.kubectl("create", "rolebinding", "viewer", "--clusterrole=view",
                        f"--serviceaccount={team_a}:viewer", "-n", team_a)  # fmt: skip
        for role, resource in (("edit", "inferenceservices/feedback"), ("view", "inferenceservices/drift")):
            wait_for(
                lambda r=role, s=resource: aggregated_into(cluster, r, s),
                timeout=30,
                what=f"{resource} in the {role} ClusterRole (kube-controller-manager's aggregation)",
            )

        # How the detector reaches the API server: the harness's, with its CA and the detector's own token.
        ca_file = workdir / "ca.crt"
        api_server = harness.api_server_access(cluster, ca_file)
        token_file = workdir / "detector-token"
        token_file.write_text(create_token(cluster, "detector", team_a, audience=None))
        kube = {
            "MODELLOOP_DETECTOR_KUBE_URL": api_server,
            "MODELLOOP_DETECTOR_KUBE_TOKEN_FILE": str(token_file),
            "MODELLOOP_DETECTOR_KUBE_CA_FILE": str(ca_file),
            "MODELLOOP_DETECTOR_AUDIENCE": AUDIENCE,
        }
        detector = start_detector(workdir, "detector", kube)
        # The same detector's settings, but an API server that is not there (a closed port).
        closed = {**kube, "MODELLOOP_DETECTOR_KUBE_URL": f"https://127.0.0.1:{free_port()}"}
        unreachable = start_detector(workdir, "unreachable", closed)
        reference = workdir / "reference.csv"
        reference.write_text(
            ",".join(FEATURES)
            + "\n"
            + "".join(f"{5 + i % 7 / 10},{3 + i % 5 / 10},{1 + i % 9 / 10},{i % 3 / 10}\n" for i in range(60))
        )
        try:
            yield Setup(
                team_a,
                team_b,
                editor=create_token(cluster, "editor", team_a),
                viewer=create_token(cluster, "viewer", team_a),
                operator=create_token(cluster, "modelloop", ops),
                operator_api=create_token(cluster, "modelloop", ops, audience=None),
                detector=detector,
                unreachable=unreachable,
            )
        finally:
            for running in (detector, unreachable):
                terminate_process(running.process, timeout=10)
            print(f"\n--- detector log ---\n{file_tail(detector.log, 5000)}")
    finally:
        for binding in bindings:
            cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=listing, check=False)
        for namespace in (team_a, team_b, ops):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        # Leave view, edit and admin as this test found them (another test checks them bare).
        for role in ("view", "edit", "admin"):
            if not other_modelloop_roles(cluster, f"rbac.authorization.k8s.io/aggregate-to-{role}"):
                wait_for(
                    lambda r=role: not modelloop_aggregated(cluster, r),
                    timeout=30,
                    what=f"{role} without modelloop's rules",
                )


def registration(setup: Setup) -> dict[str, Any]:
    reference = setup.detector.log.parent / "reference.csv"
    return {"model": "iris", "versions": {"1": {"referenceUri": reference.as_uri()}}}


def test_without_a_usable_token_the_api_is_401_and_ingestion_stays_open(setup: Setup) -> None:
    detector = setup.detector
    before = detector.refused()
    missing = detector.call("GET", f"/v1/services/{setup.team_a}/iris")
    assert missing.status == 401, missing.body
    assert missing.headers.get("www-authenticate") == "Bearer"
    bogus = detector.call("POST", f"/v1/feedback/{setup.team_a}/iris", "not-a-token", {"labels": []})
    assert bogus.status == 401, bogus.body
    assert bogus.headers.get("www-authenticate") == "Bearer"
    assert "not-a-token" not in json.dumps(bogus.body)
    # KServe's payload logger sends no credentials: its events are taken as before.
    assert detector.ingest(setup.team_a, "iris", f"e-{uuid.uuid4().hex[:6]}") == 202
    # The operator's own API token is not for the detectors' audience: refused, though valid elsewhere.
    api_token = detector.call("PUT", f"/v1/services/{setup.team_a}/iris", setup.operator_api, {})
    assert api_token.status == 401, api_token.body
    after = detector.refused()
    assert after["unauthenticated"] == before["unauthenticated"] + 3
    assert answers_ok(f"{detector.url}/healthz")


def test_only_the_operator_registers_and_an_editor_labels_and_reads_in_its_namespace_only(
    setup: Setup,
) -> None:
    detector, team_a, team_b = setup.detector, setup.team_a, setup.team_b
    service = f"/v1/services/{team_a}/iris"
    before = detector.refused()

    registered = detector.call("PUT", service, setup.operator, registration(setup))
    assert registered.status == 200, registered.body
    assert registered.body["versions"]["1"]["referenceRows"] == 60

    labels = {"labels": [{"id": "r-1", "label": 1}]}
    posted = detector.call("POST", f"/v1/feedback/{team_a}/iris", setup.editor, labels)
    assert posted.status == 200, posted.body
    assert posted.body == {"joined": 0, "pending": 1}
    state = detector.call("GET", service, setup.editor)
    assert state.status == 200, state.body
    assert state.body["pendingLabels"] == 1 and list(state.body["versions"]) == ["1"]

    refusals = [
        # An editor's namespace ends where its RoleBinding does.
        ("POST", f"/v1/feedback/{team_b}/iris", setup.editor, labels, "create inferenceservices/feedback"),
        ("GET", f"/v1/services/{team_b}/iris", setup.editor, None, "get inferenceservices/drift"),
        # References and exports are the operator's.
        ("PUT", service, setup.editor, registration(setup), "update inferenceservices/drift"),
        ("DELETE", service, setup.editor, None, "update inferenceservices/drift"),
        ("POST", f"/v1/export/{team_a}/iris", setup.editor, {"uriPrefix": "file:///x"}, "update"),
        # A viewer reads only; the operator does not label.
        ("POST", f"/v1/feedback/{team_a}/iris", setup.viewer, labels, "create inferenceservices/feedback"),
        ("POST", f"/v1/feedback/{team_a}/iris", setup.operator, labels, "create inferenceservices/feedback"),
    ]
    for method, path, token, body, verb in refusals:
        answer = detector.call(method, path, token, body)
        assert answer.status == 403, (method, path, answer.body)
        assert verb in answer.body["error"] and GROUP in answer.body["error"], answer.body
        assert token not in answer.body["error"]
    viewed = detector.call("GET", service, setup.viewer)
    assert viewed.status == 200, viewed.body

    after = detector.refused()
    assert after["forbidden"] == before["forbidden"] + len(refusals)
    assert after["namespace"] == before["namespace"]
    # Nothing the refused calls sent was kept.
    assert detector.call("GET", service, setup.operator).body["pendingLabels"] == 1

    deleted = detector.call("DELETE", service, setup.operator)
    assert deleted.status == 200, deleted.body


def test_an_api_server_that_cannot_be_reached_is_503_never_a_pass(setup: Setup) -> None:
    unreachable = setup.unreachable
    before = unreachable.refused()
    answer = unreachable.call("GET", f"/v1/services/{setup.team_a}/iris", setup.editor)
    assert answer.status == 503, answer.body
    assert "try again" in answer.body["error"]
    assert unreachable.refused()["auth_unavailable"] == before["auth_unavailable"] + 1
    assert unreachable.ingest(setup.team_a, "iris", f"e-{uuid.uuid4().hex[:6]}") == 202
    # The detector says why in its log, and never logs a token.
    log = unreachable.log.read_text()
    assert "cannot check a caller's token" in log
    assert setup.editor not in log and setup.editor not in setup.detector.log.read_text()
