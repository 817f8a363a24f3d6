"""The words status and events share across kinds: the Ready condition, the reasons every kind can give
(an invalid spec or status, a request refused for good), an event, and a validation error told as a user
writes the fields. Each kind's own reasons live with its logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic

READY = "Ready"
INVALID_SPEC = "InvalidSpec"
# The status the operator finds cannot be read (edited by hand, or written by another version).
INVALID_STATUS = "InvalidStatus"
# A request the API server refuses whatever the number of retries (a 400, 403, 422, or a kind not served).
API_REFUSED = "ApiRequestRefused"


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the object."""

    type: str
    reason: str
    message: str


def describe_validation_error(error: pydantic.ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field as a user writes it (``spec.resources.gpus: ...``)."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(f"[{p}]" if isinstance(p, int) else str(p) for p in problem["loc"])])
        lines.append(f"{path.replace('.[', '[')}: {problem['msg']}")
    return "; ".join(lines)
