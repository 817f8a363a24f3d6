#!/usr/bin/env bash
# Unit-tests modelloop's alerts (manifests/monitoring/alerts.yaml) with promtool: `promtool check rules`,
# then `promtool test rules` on manifests/monitoring/alerts.test.yaml. promtool reads plain rule files, not
# PrometheusRule objects, so the object's spec (its groups) is written to one first, beside a copy of the
# tests. promtool comes with Debian's prometheus package (`make prometheus-bin`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MONITORING="$ROOT/manifests/monitoring"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PROMTOOL="${PROMTOOL:-promtool}"

command -v "$PROMTOOL" >/dev/null || {
  echo "promtool not found: \`make prometheus-bin\` installs Debian's prometheus package, which has it" >&2
  exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" - "$MONITORING/alerts.yaml" "$work/alerts.rules.yaml" <<'PY'
import sys

import yaml

[rule] = list(yaml.safe_load_all(open(sys.argv[1])))
if rule.get("kind") != "PrometheusRule":
    raise SystemExit(f"{sys.argv[1]} is a {rule.get('kind')}, not a PrometheusRule")
with open(sys.argv[2], "w") as out:
    yaml.safe_dump({"groups": rule["spec"]["groups"]}, out, sort_keys=False)
PY
cp "$MONITORING/alerts.test.yaml" "$work/alerts.test.yaml"
"$PROMTOOL" check rules "$work/alerts.rules.yaml"
"$PROMTOOL" test rules "$work/alerts.test.yaml"
