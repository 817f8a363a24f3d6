"""What the controllers' glue tests share: an API server that records what it is asked (the events a
controller posts are recorded by the ``posted`` fixture in conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelloop import kube
from modelloop.kube import Applied, KubeClient


class RecordingClient(KubeClient):
    """The API server as a controller sees it: every call recorded in order; status writes answered with
    the next resourceVersion (or, while ``conflicts`` lasts, a conflict); ``objects`` answers GETs by
    (plural, namespace, name); every object created is kept in ``created``; ModelVersion names in ``taken``
    are refused as existing; ``refuse`` makes every write fail with that ApiException."""

    def __init__(
        self,
        versions: list[dict[str, Any]] | None = None,
        taken: set[str] | None = None,
        objects: dict[tuple[str, str, str], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []
        self.statuses: list[Mapping[str, Any]] = []
        self.applied: list[Mapping[str, Any]] = []
        self.created: list[Mapping[str, Any]] = []
        self.versions = versions or []
        self.taken = taken or set()
        self.objects = objects or {}
        self.resource_version = 10
        self.conflicts = 0
        self.refuse: kube.ApiException | None = None

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> str:
        self.calls.append(("patch_status", name))
        if self.conflicts:
            self.conflicts -= 1
            raise kube.Conflict("the object has been modified", (namespace, name))
        if self.refuse is not None:
            raise self.refuse
        self.statuses.append(status)
        self.resource_version += 1
        return str(self.resource_version)

    async def patch_labels(
        self, plural: str, namespace: str, name: str, labels: Mapping[str, str], resource_version: str | None
    ) -> str:
        self.calls.append(("patch_labels", name))
        self.resource_version += 1
        return str(self.resource_version)

    async def delete_object(
        self, plural: str, namespace: str, name: str, uid: str, resource_version: str
    ) -> bool:
        self.calls.append(("delete", plural, name))
        return True

    async def get_object(
        self, plural: str, namespace: str, name: str, group_version: str | None = None
    ) -> dict[str, Any] | None:
        self.calls.append(("get", plural, name))
        return self.objects.get((plural, namespace, name))

    async def server_side_apply(
        self, plural: str, manifest: Mapping[str, Any], *, force: bool = False
    ) -> Applied:
        self.calls.append(("apply", plural, manifest["metadata"]["name"]))
        if self.refuse is not None:
            raise self.refuse
        self.applied.append(manifest)
        self.resource_version += 1
        meta = {**manifest["metadata"], "generation": 1, "resourceVersion": str(self.resource_version)}
        return Applied({**manifest, "metadata": meta})

    async def delete_job(self, namespace: str, name: str) -> bool:
        self.calls.append(("delete_job", name))
        return True

    async def create_job(self, manifest: Mapping[str, Any]) -> bool:
        self.calls.append(("create_job", manifest["metadata"]["name"]))
        return True

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", plural))
        return list(self.versions)

    async def create_object(self, plural: str, manifest: Mapping[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        self.calls.append(("create", name))
        if self.refuse is not None:
            raise self.refuse
        self.created.append(manifest)
        return name not in self.taken
