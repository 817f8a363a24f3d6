"""A model's history: the stage changes of all its versions on one timeline, and who was Champion when.

Read from the ModelVersions' ``status.history`` (plain dicts, as the API server returns them), so it
covers the versions that still exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelloop.api import ModelStage

Object = Mapping[str, Any]

_DATE = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")


@dataclass(frozen=True)
class StageEntry:
    """One version entering one stage."""

    time: datetime
    version: str
    stage: str
    reason: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, str | None]:
        """The change as a JSON object with fixed keys."""
        return {
            "time": format_time(self.time),
            "version": self.version,
            "stage": self.stage,
            "reason": self.reason,
            "message": self.message,
        }


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (``2026-11-01T00:00:00Z``), or a date (``2026-11-01``) meaning its start in UTC.

    Raises ValueError, saying what is expected, for anything else, including a time without a zone.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: expected RFC 3339, e.g. 2026-11-01T00:00:00Z, "
            "or a date, e.g. 2026-11-01"
        ) from None
    if moment.tzinfo is None:
        if not _DATE.match(text.strip()):
            raise ValueError(f"{text!r} has no time zone: add Z for UTC or an offset such as +02:00")
        moment = moment.replace(tzinfo=UTC)
    return moment


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, with ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def versions_of(objects: Iterable[Object], model: str) -> list[Object]:
    """The ModelVersions of ``model`` (by ``spec.modelName``, as labels are optional), by version number."""
    found = [obj for obj in objects if (obj.get("spec") or {}).get("modelName") == model]
    return sorted(found, key=_order)


def stage_changes(version: Object) -> list[StageEntry]:
    """A version's stage changes, oldest first; entries without a readable time or stage are skipped."""
    name = str((version.get("metadata") or {}).get("name"))
    changes = []
    for entry in (version.get("status") or {}).get("history") or ():
        try:
            moment = _as_utc(datetime.fromisoformat(str(entry["time"])))
            stage = str(entry["stage"])
        except (KeyError, TypeError, ValueError):
            continue
        changes.append(StageEntry(moment, name, stage, entry.get("reason"), entry.get("message")))
    return sorted(changes, key=lambda change: change.time)  # stable: equal times keep their order


def timeline(versions: Iterable[Object]) -> list[StageEntry]:
    """Every stage change of every version, oldest first; at equal times, lower versions first."""
    merged = [change for version in sorted(versions, key=_order) for change in stage_changes(version)]
    return sorted(merged, key=lambda change: change.time)


def champion_at(versions: Iterable[Object], when: datetime) -> StageEntry | None:
    """The change by which the version that was Champion at ``when`` entered that stage, or None.

    A version was Champion then when its latest change at or before ``when`` made it Champion; when
    several were (a hand-made history, or a promotion not yet followed by the archive), the one that
    entered Champion last counts.
    """
    champion: StageEntry | None = None
    for version in sorted(versions, key=_order):
        past = [change for change in stage_changes(version) if change.time <= when]
        if (
            past
            and past[-1].stage == ModelStage.CHAMPION
            and (champion is None or past[-1].time >= champion.time)
        ):
            champion = past[-1]
    return champion


def _as_utc(moment: datetime) -> datetime:
    # The API server writes RFC 3339 with a zone; a naive time from elsewhere is taken as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _order(version: Object) -> tuple[int, str]:
    spec = version.get("spec") or {}
    number = spec.get("version")
    return (number if isinstance(number, int) else 0, str((version.get("metadata") or {}).get("name")))
