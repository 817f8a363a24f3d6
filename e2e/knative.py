"""A stand-in for Knative Serving's controller, for KServe's Knative deployment mode in the e2e suite.

Knative Serving itself cannot run here: its controller wants its own webhook, networking layer (Istio or
Kourier), activator and autoscaler, and real pods that answer. What KServe's controller reads of Knative is
only the status of the Knative Service it writes (KServe v0.20.0 copies `latestCreatedRevisionName`,
`latestReadyRevisionName`, `traffic`, `url`, `address` and the Ready, ConfigurationsReady and RoutesReady
conditions into the InferenceService; it never reads Revision, Configuration or Route objects), so this
stand-in plays exactly that part: for each Knative Service whose spec changed it writes the status that
Knative's controller would, once the new revision is ready.

- every change of `spec.template` makes a new revision `<service>-0000N` (N counts from 1), which is
  at once both the latest created and the latest ready one;
- `status.traffic` is `spec.traffic` resolved (`latestRevision: true` names the latest revision; tags and
  percentages kept; a tagged target gets its own URL); no `spec.traffic` means 100 % to the latest;
- a target naming a revision that never existed makes RoutesReady and Ready False, as in Knative.

No Revision objects are created (KServe does not read them) and no pods run.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.harness import Cluster

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
DOMAIN = "example.com"
TRANSIENT = {409, 429, 500, 502, 503, 504}


@dataclass
class Revisions:
    """What the stand-in remembers of one Knative Service (keyed by its uid): its revisions so far and the
    template the latest one was made from."""

    namespace: str
    template: str
    names: list[str] = field(default_factory=list)


class KnativeServing:
    """The stand-in: a thread that polls Knative Services in some namespaces and writes their status."""

    def __init__(self, cluster: Cluster, namespaces: Sequence[str], interval: float = 0.2) -> None:
        self.namespaces = list(namespaces)
        self.interval = interval
        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        self.revisions: dict[str, Revisions] = {}
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knative-stand-in", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; raise what made it fail, if anything did."""
        self._stopping.set()
        self._thread.join(timeout=30)
        self.api.api_client.close()
        if self.error is not None:
            raise AssertionError(f"the Knative stand-in failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self.reconcile_once()
                except ApiException as error:
                    # A busy or restarting API server: the next pass tries again, as a controller would.
                    if error.status not in TRANSIENT:
                        raise
                self._stopping.wait(self.interval)
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def reconcile_once(self) -> None:
        """One pass over every Knative Service in the namespaces."""
        for namespace in self.namespaces:
            services = self.api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            live = {service["metadata"]["uid"] for service in services}
            for service in services:
                self.reconcile(service)
            for uid in [uid for uid, known in self.revisions.items() if known.namespace == namespace]:
                if uid not in live:
                    del self.revisions[uid]

    def reconcile(self, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        status = service.get("status") or {}
        if status.get("observedGeneration") == meta.get("generation"):
            return
        revisions = self.record_revision(service)
        new_status = render_status(service, revisions.names)
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": new_status}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to do
                raise

    def record_revision(self, service: dict[str, Any]) -> Revisions:
        """A new revision when the template changed (or the Service is new); the revisions so far."""
        meta = service["metadata"]
        template = json.dumps(service["spec"].get("template") or {}, sort_keys=True)
        known = self.revisions.get(meta["uid"])
        if known is None or known.template != template:
            names = known.names if known else []
            name = f"{meta['name']}-{len(names) + 1:05d}"
            known = Revisions(namespace=meta["namespace"], template=template, names=[*names, name])
            self.revisions[meta["uid"]] = known
        return known


def render_status(service: dict[str, Any], revisions: Sequence[str]) -> dict[str, Any]:
    """The status Knative's controller writes once the latest of ``revisions`` is ready."""
    meta = service["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    latest = revisions[-1]
    targets = service["spec"].get("traffic") or [{"latestRevision": True, "percent": 100}]
    traffic, missing = [], []
    for target in targets:
        revision = latest if target.get("latestRevision") else target.get("revisionName", "")
        if revision not in revisions:
            missing.append(revision)
        resolved: dict[str, Any] = {
            "revisionName": revision,
            "latestRevision": bool(target.get("latestRevision")),
        }
        if "percent" in target:
            resolved["percent"] = target["percent"]
        if target.get("tag"):
            resolved["tag"] = target["tag"]
            resolved["url"] = f"http://{target['tag']}-{name}.{namespace}.{DOMAIN}"
        traffic.append(resolved)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    routes_ready = not missing
    before = {c["type"]: c for c in (service.get("status") or {}).get("conditions") or ()}

    def cond(type_: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        # As Knative's conditions do: the time changes only when the status does.
        same = before.get(type_, {}).get("status") == status
        found: dict[str, Any] = {
            "type": type_,
            "status": status,
            "lastTransitionTime": before[type_].get("lastTransitionTime", now) if same else now,
        }
        if not ok:
            found |= {
                "reason": "RevisionMissing",
                "message": f"Revision {missing[0]!r} referenced in traffic not found.",
            }
        return found

    return {
        "observedGeneration": meta["generation"],
        "latestCreatedRevisionName": latest,
        "latestReadyRevisionName": latest,
        "traffic": traffic,
        "url": f"http://{name}.{namespace}.{DOMAIN}",
        "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
        "conditions": [
            cond("ConfigurationsReady", True),
            cond("Ready", routes_ready),
            cond("RoutesReady", routes_ready),
        ],
    }


@contextlib.contextmanager
def running_knative(cluster: Cluster, namespaces: Sequence[str]) -> Iterator[KnativeServing]:
    """Run the stand-in for Knative Serving's controller over ``namespaces`` while the block runs."""
    serving = KnativeServing(cluster, namespaces)
    serving.start()
    try:
        yield serving
    finally:
        serving.stop()
