"""The resumable watch of the e2e tests and benches (e2e/watches.py) on the real API server: a wait still
sees every object reach its state when the server ends its watch requests again and again, and when the
version it would resume from is gone (410)."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from e2e.harness import Cluster, Timeout, wait_for
from e2e.watches import ResumableWatch, wait_until_each

OBJECTS = 20
SELECTOR = "watched=yes"  # not the namespace's own kube-root-ca.crt
STAGES = 4


@pytest.fixture
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


def watching(core: client.CoreV1Api, namespace: str, **options: Any) -> ResumableWatch:
    """A resumable watch of the test's ConfigMaps."""
    return ResumableWatch(core.list_namespaced_config_map, namespace, label_selector=SELECTOR, **options)


def config_maps(cluster: Cluster, namespace: str, names: list[str], state: str) -> None:
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": n, "labels": {"watched": "yes"}},
                "data": {"state": state},
            }
            for n in names
        ],
        namespace,
    )


def compact_etcd(cluster: Cluster) -> None:
    """Compact the cluster's etcd up to its current revision (etcd's own JSON gateway, on the port kwokctl
    gave it), so that no earlier resourceVersion can be watched from."""
    [kwok_config] = (cluster.state_dir / "kwok" / "clusters").glob("*/kwok.yaml")
    options = next(d for d in yaml.safe_load_all(kwok_config.read_text()) if d)["options"]
    url = f"http://127.0.0.1:{options['etcdPort']}/v3/kv"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{url}/{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))

    revision = int(post("range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("compaction", {"revision": revision, "physical": True})


def done(obj: dict[str, object]) -> bool:
    return (obj.get("data") or {}).get("state") == "done"  # type: ignore[union-attr]


def test_a_wait_sees_every_object_reach_its_state_though_the_server_ends_each_watch_within_a_second(
    cluster: Cluster, namespace: str, core: client.CoreV1Api
) -> None:
    names = [f"cm-{i:02d}" for i in range(OBJECTS)]
    config_maps(cluster, namespace, names, "new")
    watch = ResumableWatch(
        core.list_namespaced_config_map, namespace, label_selector=SELECTOR, timeout_seconds=1
    )
    delivered: list[tuple[str, str]] = []

    def reached(obj: dict[str, object]) -> bool:
        meta = obj["metadata"]
        delivered.append((meta["name"], meta["resourceVersion"]))  # type: ignore[index]
        return done(obj)

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_until_each, watch, reached, OBJECTS, timeout=90, what="ConfigMaps done")
        wait_for(watch.listed.is_set, timeout=30, what="the first list")
        # Each stage of changes lands on a later watch request than the one before: the server has ended
        # (at its timeoutSeconds of 1) and the watch resumed in between.
        for stage in range(STAGES):
            restarts = watch.restarts
            wait_for(lambda r=restarts: watch.restarts > r, timeout=30, what="the watch to be resumed")  # type: ignore[misc]
            config_maps(cluster, namespace, names[stage::STAGES], "done")
        seen = waiting.result(timeout=120)

    assert sorted(name for _, name in seen) == names
    assert all(done(obj) for obj in seen.values())
    assert watch.restarts >= STAGES
    assert watch.relists == 0, "resumed from its last version, never listed again"
    # Resumed from the last version seen: no version of an object was delivered twice.
    assert len(delivered) == len(set(delivered)), delivered


def test_a_watch_from_a_version_the_server_no_longer_has_lists_again_and_sees_every_object(
    cluster: Cluster, namespace: str, core: client.CoreV1Api
) -> None:
    # Events: the API server keeps no watch cache of them, so a watch from a version etcd has compacted
    # away is answered 410 Gone (a cached kind answers so once its cache has moved past that version).
    names = [f"old-{i}" for i in range(5)]
    cluster.apply([event(namespace, name) for name in names], namespace)
    compact_etcd(cluster)
    watch = ResumableWatch(
        core.list_namespaced_event, namespace, label_selector=SELECTOR, resource_version="1"
    )

    seen = wait_until_each(
        watch, lambda obj: obj.get("reason") == "Done", len(names), timeout=60, what="Events"
    )

    assert sorted(name for _, name in seen) == names
    assert watch.relists == 1
    assert int(watch.resource_version or 0) > 1


def event(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "labels": {"watched": "yes"}},
        "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "namespace": namespace},
        "reason": "Done",
        "message": "The watch test wrote it.",
        "type": "Normal",
    }


def test_a_wait_that_cannot_be_met_fails_at_its_deadline_saying_how_far_it_got(
    cluster: Cluster, namespace: str, core: client.CoreV1Api
) -> None:
    config_maps(cluster, namespace, ["one"], "done")
    config_maps(cluster, namespace, ["two"], "new")
    watch = ResumableWatch(
        core.list_namespaced_config_map, namespace, label_selector=SELECTOR, timeout_seconds=1
    )

    with pytest.raises(Timeout, match=r"2 ConfigMaps done: 1 of the 2 objects seen got there"):
        wait_until_each(watch, done, 2, timeout=3, what="ConfigMaps done")
