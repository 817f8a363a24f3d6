"""The security posture every modelloop pod ships with, asserted the same way for the chart and kustomize."""

from __future__ import annotations

from typing import Any


def assert_restricted(pod: dict[str, Any], container: dict[str, Any], token: bool = False) -> None:
    """No service-account token (unless ``token``: the pod talks to the API server, as its own account),
    non-root with the runtime's seccomp profile, a read-only root filesystem, no privilege escalation and
    no capabilities."""
    assert pod["automountServiceAccountToken"] is token
    if token:
        assert pod["serviceAccountName"] not in ("", "default")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
