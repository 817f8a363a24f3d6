"""The e2e harness: the local control plane, kubectl, and waiting on conditions with timeouts.

Nothing here sleeps and hopes: every wait polls a condition and fails with what it last saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
SHARED_CRDS = Path(os.environ.get("MODELLOOP_SHARED_DIR", ROOT.parent / "shared")) / "crds"

T = TypeVar("T")


class Timeout(AssertionError):
    """A condition did not come true in time."""


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except subprocess.CalledProcessError as error:
            result, last = None, error.stderr
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cluster:
    """A running local control plane and the kubectl that talks to it."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment a user would have: kubectl on PATH, KUBECONFIG set."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the finished process."""
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def get(self, resource: str, name: str | None = None, namespace: str | None = None) -> Any:
        """``kubectl get -o json``, parsed."""
        args = ["get", resource, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], namespace: str) -> None:
        """``kubectl apply`` a manifest given as YAML/JSON text or as objects."""
        text = manifest if isinstance(manifest, str) else json.dumps(_as_list(manifest))
        self.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def _as_list(manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(manifest, Mapping):
        return manifest
    return {"apiVersion": "v1", "kind": "List", "items": list(manifest)}


def cluster_script(*args: str, env: Mapping[str, str]) -> str:
    """Run hack/cluster.sh and return its stdout; its progress goes to the terminal."""
    return subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The status condition of ``type_`` of an object, or None."""
    for cond in obj.get("status", {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None
