"""The harness's reads (``Cluster.get``, e2e/apireader.py) against kubectl's on the real API server: the
same objects in the same shape, the same resource for every kind of name, kubectl's words for a refusal,
and kubectl itself wherever the reader cannot be exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from e2e.apireader import ApiReader, Unsupported, reader_for
from e2e.harness import Cluster, KubectlError, user_kubeconfig


def kubectl_get(cluster: Cluster, *args: str) -> object:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def kubectl_path(cluster: Cluster, resource: str, namespace: str) -> str:
    """The path kubectl reads for ``kubectl get RESOURCE -n NAMESPACE`` (from its own request log)."""
    log = cluster.kubectl("get", resource, "-n", namespace, "-o", "name", "-v=6").stderr
    paths = re.findall(r'"GET" url="https://[^/]+(/api[^"?]*)', log) or re.findall(
        r"GET https://[^/]+(/api[^ ?]*)", log
    )
    assert paths, log
    return paths[-1]


@pytest.fixture
def reader(cluster: Cluster) -> ApiReader:
    found = reader_for(cluster.kubeconfig)
    assert found is not None, "the e2e cluster's kubeconfig (a client certificate) must be read directly"
    return found


def test_objects_and_lists_read_as_kubectl_prints_them(
    cluster: Cluster, namespace: str, reader: ApiReader
) -> None:
    for name, tier in (("a", "front"), ("b", "back"), ("c", "front")):
        cluster.kubectl("create", "configmap", name, "-n", namespace, f"--from-literal=tier={tier}")
        cluster.kubectl("label", "configmap", name, "-n", namespace, f"tier={tier}")

    assert reader.get("configmap", "a", namespace) == kubectl_get(cluster, "configmap", "a", "-n", namespace)
    listed = reader.get("cm", namespace=namespace, selector="tier=front")
    assert listed == kubectl_get(cluster, "cm", "-n", namespace, "-l", "tier=front")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["a", "c"]
    assert {(item["apiVersion"], item["kind"]) for item in listed["items"]} == {("v1", "ConfigMap")}
    # Cluster-scoped, by short name: the namespace is not used.
    crd = "trainingruns.modelloop.dev"
    assert reader.get("crd", crd, namespace) == kubectl_get(cluster, "crd", crd)
    # Through Cluster.get as every test reads.
    assert cluster.get("configmaps", "b", namespace)["data"] == {"tier": "back"}


@pytest.mark.parametrize(
    "resource",
    [
        "pods",
        "po",
        "pod",
        "Pod",
        "events",
        "jobs.batch",
        "deploy.v1.apps",
        "trainingrun",
        "tr",
        "TrainingRun",
        "inferenceservice.modelloop.dev",
        "inferenceservices.serving.kserve.io",
        "inferenceservice",
        "isvc",
        "mlisvc",
        "seldondeployments",
        "leases",
    ],
)
def test_every_kind_of_name_reads_the_resource_kubectl_reads(
    cluster: Cluster, namespace: str, reader: ApiReader, resource: str
) -> None:
    assert reader.resolve(resource).path(namespace) == kubectl_path(cluster, resource, namespace)


def test_a_refusal_reads_in_kubectls_words(cluster: Cluster, namespace: str) -> None:
    missing = cluster.kubectl("get", "trainingrun", "nope", "-n", namespace, "-o", "json", check=False)
    assert missing.returncode != 0
    with pytest.raises(KubectlError) as raised:
        cluster.get("trainingrun", "nope", namespace)
    assert missing.stderr.strip() in str(raised.value)
    assert 'Error from server (NotFound): trainingruns.modelloop.dev "nope" not found' in str(raised.value)


def test_what_the_reader_cannot_answer_goes_to_kubectl(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    reader = reader_for(cluster.kubeconfig)
    assert reader is not None
    with pytest.raises(Unsupported):
        reader.resolve("nosuchthings")
    # kubectl answers, in its words.
    with pytest.raises(KubectlError, match='the server doesn\'t have a resource type "nosuchthings"'):
        cluster.get("nosuchthings", namespace=namespace)
    # An exec credential plugin: only kubectl runs it.
    plugin = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "false"}}
    assert reader_for(user_kubeconfig(cluster, plugin, tmp_path / "exec.kubeconfig")) is None
