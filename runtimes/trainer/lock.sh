#!/usr/bin/env bash
# Re-resolve the trainer's lock files from requirements*.in in a throw-away environment.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
pip="$tmp/venv/bin/pip"
"$pip" install -q --disable-pip-version-check -r "$HERE/requirements.in"
"$pip" freeze --exclude-editable | sort -f >"$tmp/runtime"
"$pip" install -q --disable-pip-version-check -c "$tmp/runtime" -r "$HERE/requirements-dev.in"
"$pip" freeze --exclude-editable | sort -f >"$tmp/all"
"$pip" check
{ echo "# Locked run-time dependencies of the trainer image (pip install -r). Regenerate: runtimes/trainer/lock.sh"
  cat "$tmp/runtime"; } >"$HERE/requirements.lock"
{ echo "# Locked test tools of the trainer, on top of requirements.lock. Regenerate: runtimes/trainer/lock.sh"
  grep -vxFf "$tmp/runtime" "$tmp/all"; } >"$HERE/requirements-dev.lock"
