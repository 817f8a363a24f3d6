"""Status conditions in the Kubernetes API conventions, as pure functions over plain dicts.

Conditions are kept as the dicts that travel to and from the API server; these functions never mutate
their inputs, so a handler can compute the new status and compare it with the old one.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from modelloop.api.meta import MAX_MESSAGE_LENGTH, Condition, ConditionStatus

ConditionValue = Literal["True", "False", "Unknown"]


def utc_now() -> str:
    """The current time as Kubernetes writes it: RFC 3339, UTC, whole seconds."""
    return format_time(datetime.datetime.now(datetime.UTC))


def format_time(moment: datetime.datetime) -> str:
    """``moment`` (UTC) as Kubernetes writes times: RFC 3339, whole seconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime.datetime | None:
    """A time as status writes it (RFC 3339, e.g. ``2026-11-27T12:00:00Z``), or a datetime (naive ones are
    UTC); None for anything else."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def find_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of the given type, or None."""
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    type_: str,
    status: ConditionValue,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Return the conditions with one condition added or replaced.

    ``lastTransitionTime`` moves only when the status changes, as the API conventions ask, so that
    "since when has this been Ready" stays answerable. The order of the other conditions is kept.
    """
    previous = find_condition(conditions, type_)
    transition = now
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = str(previous["lastTransitionTime"])
    updated: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    result: list[dict[str, Any]] = []
    replaced = False
    for condition in conditions or ():
        if condition.get("type") == type_:
            result.append(updated)
            replaced = True
        else:
            result.append(dict(condition))
    if not replaced:
        result.append(updated)
    return result


def with_condition(
    conditions: Sequence[Condition],
    *,
    type_: str,
    status: ConditionValue,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime.datetime,
) -> list[Condition]:
    """``set_condition`` for a typed status: the conditions with one added or replaced, its
    ``lastTransitionTime`` moved (to ``now``, in whole seconds) only when its status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    transition = now.replace(microsecond=0)
    if previous is not None and previous.status == status:
        transition = previous.last_transition_time
    updated = Condition(
        type=type_,
        status=ConditionStatus(status),
        reason=reason,
        message=message[:MAX_MESSAGE_LENGTH],
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    replaced = [updated if c.type == type_ else c for c in conditions]
    return replaced if previous is not None else [*replaced, updated]


def refusal_status(
    previous: Mapping[str, Any], generation: int, phase: str, reason: str, message: str, ready: ConditionValue
) -> dict[str, Any]:
    """The status of an object the operator cannot act on (an invalid spec, a request the API server
    refuses for good): its phase, why, and Ready saying so, for the generation it looked at."""
    return {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "conditions": set_condition(
            previous.get("conditions"),
            type_="Ready",
            status=ready,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=utc_now(),
        ),
    }
