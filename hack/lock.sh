#!/usr/bin/env bash
# Re-resolve requirements/*.lock from requirements/*.in in a throw-away environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
pip="$tmp/venv/bin/pip"
"$pip" install -q --disable-pip-version-check -r "$ROOT/requirements/operator.in"
"$pip" freeze --exclude-editable | sort -f >"$tmp/operator"
"$pip" install -q --disable-pip-version-check -r "$ROOT/requirements/dev.in"
"$pip" freeze --exclude-editable | sort -f >"$tmp/all"
{ echo "# Locked runtime dependencies of the operator (pip install -r). Regenerate: make lock"; cat "$tmp/operator"; } \
  >"$ROOT/requirements/operator.lock"
{ echo "# Locked test and lint tools (pip install -r), on top of operator.lock. Regenerate: make lock"
  comm -13 "$tmp/operator" "$tmp/all"; } >"$ROOT/requirements/dev.lock"
