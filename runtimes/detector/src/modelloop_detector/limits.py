"""What a caller may make the detector hold: every size that comes from a request is bounded here.

One detector serves a whole namespace's services (or, shared, every namespace's), and anything that can
reach it can post events to it; which namespaces it serves is :mod:`~modelloop_detector.tenancy`'s, who
may call the rest of its API :mod:`~modelloop_detector.auth`'s. Each bound
is a setting (an environment variable, default in :class:`Limits`), and what exceeds one is refused with
a 4xx that names the field, and counted in ``modelloop_detector_refused_total{reason}``
(:class:`RefusalReason`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

MiB = 1024 * 1024


class RefusalReason(StrEnum):
    """Why a request was refused: the ``reason`` label of the refused-requests counter."""

    BODY_TOO_LARGE = "body_too_large"
    TOO_MANY_SERVICES = "too_many_services"
    TOO_MANY_VERSIONS = "too_many_versions"
    TOO_MANY_FEATURES = "too_many_features"
    INVALID_NAME = "invalid_name"
    ID_TOO_LONG = "id_too_long"
    INVALID_LABEL = "invalid_label"
    OUTSIDE_ARTIFACT_ROOTS = "outside_artifact_roots"
    REFERENCE_TOO_LARGE = "reference_too_large"
    NAMESPACE = "namespace"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    AUTH_UNAVAILABLE = "auth_unavailable"


class Refused(ValueError):
    """A request the detector will not take: HTTP ``status`` with a message naming the field (and
    ``headers`` for the answer, such as a 401's ``WWW-Authenticate``)."""

    def __init__(
        self,
        reason: RefusalReason,
        message: str,
        status: int = 400,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Limits:
    """The bounds, with their defaults; :meth:`from_env` reads ``MODELLOOP_DETECTOR_<NAME>``."""

    max_body_bytes: int = 4 * MiB
    """An HTTP request body (CloudEvent, registration, labels, export)."""
    max_services: int = 200
    """Registered services in one detector."""
    max_versions: int = 8
    """Versions of one service (the operator registers two: stable and canary)."""
    max_features: int = 256
    """Feature columns of a reference (each one a Prometheus series per detector)."""
    max_reference_bytes: int = 64 * MiB
    """A reference or predictions file."""
    max_pending_halves: int = 10_000
    """Requests and responses waiting for their other half, across services."""
    max_pending_bytes: int = 64 * MiB
    """Their bodies' bytes, across services."""
    max_id_length: int = 256
    """A CloudEvent id, and a label's row id."""
    max_label_length: int = 256
    """A label's value, as text."""
    max_name_length: int = 63
    """A namespace, service or version name (Kubernetes' DNS label)."""
    max_model_length: int = 253
    """A model's name."""
    max_feature_name_length: int = 128
    """A feature (column) name."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """The limits, each from ``MODELLOOP_DETECTOR_<FIELD IN UPPER CASE>`` where set."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            name = f"MODELLOOP_DETECTOR_{item.name.upper()}"
            text = env.get(name)
            if text is None or text == "":
                continue
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {text!r}") from None
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
            values[item.name] = value
        return cls(**values)


# Kubernetes' DNS-1123 label: what a namespace and an InferenceService's name are.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A model or version name: the operator's names, and version numbers.
NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# A feature name: CSV headers such as "sepal length (cm)"; no quotes, backslashes or control characters.
FEATURE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 _.,:;()\[\]/%+#&-]*")


def check_name(field: str, value: str, pattern: re.Pattern[str], max_length: int) -> None:
    """Refuse a name (a Prometheus label value) that is too long or has characters ``pattern`` does
    not allow; the message names ``field`` but does not repeat a long value."""
    if len(value) > max_length:
        raise Refused(
            RefusalReason.INVALID_NAME, f"{field} is {len(value)} characters long; at most {max_length}"
        )
    if not pattern.fullmatch(value):
        raise Refused(
            RefusalReason.INVALID_NAME,
            f"{field} {value!r} has characters that are not allowed (allowed: {_allowed(pattern)})",
        )


def _allowed(pattern: re.Pattern[str]) -> str:
    if pattern is DNS_LABEL:
        return "lower-case letters, digits and '-', starting and ending with a letter or digit"
    if pattern is NAME:
        return "letters, digits, '.', '_' and '-', starting and ending with a letter or digit"
    return "letters, digits, spaces and _.,:;()[]/%+#&-, starting with a letter, digit or '_'"
