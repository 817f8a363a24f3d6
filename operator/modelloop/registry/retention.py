"""Retention: which archived versions of a model may go."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from modelloop.api import ModelStage, ModelVersionStatus
from modelloop.naming import LABEL_MANAGED_BY, MANAGED_BY


def versions_to_delete(
    versions: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, ModelVersionStatus],
    keep_archived: int,
    serving: Collection[int],
) -> list[Mapping[str, Any]]:
    """The versions (objects) that retention deletes: Archived ones beyond the newest ``keep_archived``.

    Never deleted, whatever their age: a version that is not Archived (so never a Champion or
    Challenger), one an InferenceService serves or names, the model's highest version (its number is
    what the next registration counts from), and one a user applied by hand (the operator deletes only
    what it created itself). A version without an entry in ``statuses`` (one whose status cannot be
    read) is not known to be Archived, so it stays too.
    """
    live = [v for v in versions if not v["metadata"].get("deletionTimestamp")]
    if not live:
        return []
    highest = max(int(v["spec"]["version"]) for v in live)
    archived = sorted(
        (v for v in live if _stage(statuses, v) == ModelStage.ARCHIVED),
        key=lambda v: int(v["spec"]["version"]),
        reverse=True,
    )
    return [
        v
        for v in archived[keep_archived:]
        if int(v["spec"]["version"]) != highest
        and int(v["spec"]["version"]) not in serving
        and (v["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
    ]


def _stage(statuses: Mapping[str, ModelVersionStatus], version: Mapping[str, Any]) -> ModelStage | None:
    status = statuses.get(version["metadata"]["name"])
    return None if status is None else status.stage
