"""Review of a custom resource's spec against its API model: the foundation's reconcile, kept pure.

Every controller starts the same way: the spec the API server admitted is checked once more against the
Python model (it may be stricter than the CRD's schema, or the installed CRD may be older than the
operator), and status says what the operator made of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from modelloop.conditions import ConditionValue, find_condition, set_condition

READY = "Ready"
INVALID_SPEC = "InvalidSpec"
# The status the operator finds cannot be read (edited by hand, or written by another version).
INVALID_STATUS = "InvalidStatus"
# A request the API server refuses whatever the number of retries (a 400, 403, 422, or a kind not served).
API_REFUSED = "ApiRequestRefused"


@dataclass(frozen=True)
class ReviewOutcome:
    """What status says about an accepted spec until the kind's own logic takes over."""

    phase: str
    ready: ConditionValue
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the object."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Review:
    """The status fields to patch, and the event that reports a transition (None when nothing changed)."""

    status: dict[str, Any]
    event: Event | None


def describe_validation_error(error: pydantic.ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field as a user writes it (``spec.resources.gpus: ...``)."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(f"[{p}]" if isinstance(p, int) else str(p) for p in problem["loc"])])
        lines.append(f"{path.replace('.[', '[')}: {problem['msg']}")
    return "; ".join(lines)


def review_spec(
    model: type[pydantic.BaseModel],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    generation: int,
    accepted: ReviewOutcome,
    now: str,
) -> Review:
    """Validate ``spec`` with ``model`` and compute the status that reports it.

    A valid spec keeps the phase the kind's logic already set, or takes ``accepted.phase`` when there is
    none. An invalid one keeps the phase too (nothing the user made is touched) and turns ``Ready`` False
    with reason ``InvalidSpec`` and a message that names every offending field.
    """
    try:
        model.model_validate(dict(spec))
    except pydantic.ValidationError as error:
        verdict = ReviewOutcome(
            phase=str(status.get("phase") or accepted.phase),
            ready="False",
            reason=INVALID_SPEC,
            message=describe_validation_error(error),
        )
        event_type = "Warning"
    else:
        verdict = ReviewOutcome(
            phase=str(status.get("phase") or accepted.phase),
            ready=accepted.ready,
            reason=accepted.reason,
            message=accepted.message,
        )
        event_type = "Normal"

    conditions = set_condition(
        status.get("conditions"),
        type_=READY,
        status=verdict.ready,
        reason=verdict.reason,
        message=verdict.message,
        observed_generation=generation,
        now=now,
    )
    previous = find_condition(status.get("conditions"), READY)
    transitioned = (
        previous is None
        or previous.get("status") != verdict.ready
        or previous.get("reason") != verdict.reason
        or status.get("phase") != verdict.phase
    )
    return Review(
        status={"phase": verdict.phase, "observedGeneration": generation, "conditions": conditions},
        event=Event(event_type, verdict.reason, verdict.message) if transitioned else None,
    )
