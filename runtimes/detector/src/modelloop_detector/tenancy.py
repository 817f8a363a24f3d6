"""Which namespace a detector serves: its own only (a detector per namespace), or every one (shared).

A detector runs in the namespace of the models it watches, as KServe deploys its detectors: set to that
namespace (``--namespace``, ``MODELLOOP_DETECTOR_NAMESPACE``), it refuses (HTTP 403, counted as
``reason="namespace"``) every event, label, registration, status read and export that names another
namespace (a path's before its body is parsed) and keeps nothing of it, so that another team can
neither feed its windows nor read or change what it was told. Unset, one shared detector serves every
namespace, for clusters with a single team. Which pods can reach the detector at all is its
NetworkPolicy's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelloop_detector.limits import DNS_LABEL, RefusalReason, Refused

NAMESPACE_VARIABLE = "MODELLOOP_DETECTOR_NAMESPACE"
# A namespace is a DNS label: at most 63 characters.
MAX_NAMESPACE_LENGTH = 63


@dataclass(frozen=True)
class Tenancy:
    """The namespace a detector serves; ``""``: every namespace (a shared detector)."""

    namespace: str = ""

    @classmethod
    def parse(cls, text: str) -> Tenancy:
        """The setting's value (surrounding blanks ignored), or ValueError naming the setting."""
        namespace = text.strip()
        if namespace and (len(namespace) > MAX_NAMESPACE_LENGTH or not DNS_LABEL.fullmatch(namespace)):
            raise ValueError(
                f"{NAMESPACE_VARIABLE} (--namespace) must be a namespace's name (a DNS label: lower-case "
                f"letters, digits and '-', at most {MAX_NAMESPACE_LENGTH} characters) or empty for every "
                f"namespace, not {_short(namespace)}"
            )
        return cls(namespace)

    def check(self, namespace: str) -> None:
        """Refuse (403) a request for a namespace this detector does not serve."""
        if self.namespace and namespace != self.namespace:
            raise Refused(
                RefusalReason.NAMESPACE,
                f"this detector serves namespace {self.namespace!r} only ({NAMESPACE_VARIABLE}), not "
                f"{_short(namespace)}: use the detector in that namespace",
                403,
            )

    def __str__(self) -> str:
        return f"namespace {self.namespace}" if self.namespace else "every namespace"


def _short(value: str) -> str:
    """A caller's namespace as a message quotes it: never longer than a namespace can be."""
    if len(value) > MAX_NAMESPACE_LENGTH:
        return f"a name of {len(value)} characters"
    return repr(value)
