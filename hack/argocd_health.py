"""Generate manifests/argocd/argocd-cm-health.yaml from argocd/resource_customizations, or check it.

    python hack/argocd_health.py           # write the argocd-cm patch
    python hack/argocd_health.py --check   # exit 1 when the committed patch differs from what the Lua makes

The health checks live in Argo CD's own layout, ``<group>/<Kind>/health.lua`` (tested by Argo CD's code:
hack/test-argocd-health.sh). Argo CD takes a user's health check from its argocd-cm ConfigMap, one key per
kind, ``resource.customizations.health.<group>_<Kind>``; the generated file is that ConfigMap's patch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUSTOMIZATIONS = ROOT / "argocd" / "resource_customizations"
OUTPUT = ROOT / "manifests" / "argocd" / "argocd-cm-health.yaml"
HEALTH_KEY = "resource.customizations.health.{group}_{kind}"

HEADER = """\
# Generated from argocd/resource_customizations by hack/argocd_health.py; do not edit.
# modelloop's health checks for Argo CD, as a patch of Argo CD's argocd-cm ConfigMap:
#
#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-health.yaml
#
# or list it under `patches:` of the kustomization that installs Argo CD. See manifests/argocd/README.md.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def health_checks(root: Path = CUSTOMIZATIONS) -> dict[str, str]:
    """Each health.lua under ``root`` (``<group>/<Kind>/health.lua``) by its argocd-cm key, sorted."""
    checks = {}
    for script in sorted(root.glob("*/*/health.lua")):
        kind = script.parent
        checks[HEALTH_KEY.format(group=kind.parent.name, kind=kind.name)] = script.read_text()
    return checks


def block_scalar(text: str) -> str:
    """``text`` as a YAML literal block under a key at two spaces, kept byte for byte."""
    if not text.endswith("\n") or text.endswith("\n\n"):
        raise ValueError("a health.lua must end with exactly one newline")
    if any(line != line.rstrip() or "\t" in line for line in text.splitlines()):
        raise ValueError("a health.lua must have no trailing spaces and no tabs (YAML would not keep them)")
    lines = [f"    {line}" if line else "" for line in text.splitlines()]
    return "|\n" + "\n".join(lines) + "\n"


def render(checks: dict[str, str]) -> str:
    """The argocd-cm patch holding ``checks``."""
    if not checks:
        raise ValueError(f"no health checks under {CUSTOMIZATIONS}")
    return HEADER + "".join(f"  {key}: {block_scalar(script)}" for key, script in checks.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed file is stale")
    args = parser.parse_args(argv)
    wanted = render(health_checks())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != wanted:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python hack/argocd_health.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
