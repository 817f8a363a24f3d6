#!/usr/bin/env bash
# Builds Helm from its Go module (helm.sh/helm/v4) and caches it, keyed by version, for the chart's
# tests (e2e/test_helm.py) and for installing charts/modelloop. Idempotent: a binary already in the
# cache is not built again.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.1}"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/helm-${HELM_VERSION}"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

build_helm() {
  have helm && return 0
  # Helm's module has no replace directives, so building it in a module that requires it is building it
  # as released (what `go install helm.sh/helm/v4/cmd/helm@v4.3.1` does), with the downloads done first,
  # unlocked. Its version string is set as Helm's own Makefile sets it (`helm version` reports the release).
  local major="${HELM_VERSION%%.*}" dir="$WORK/helm-$HELM_VERSION"
  wrapper_module "$dir" "$HELM_VERSION" "helm.sh/helm/$major/cmd/helm"
  cpu_lock
  log "building helm $HELM_VERSION (a cold build takes minutes)"
  (cd "$dir" && quiet env CGO_ENABLED=0 go build -trimpath "$TOOL_GCFLAGS" \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.metadata=" \
    -o "$BIN/helm.tmp" "helm.sh/helm/$major/cmd/helm")
  mv "$BIN/helm.tmp" "$BIN/helm"
}

build_helm
log "helm ready in $BIN"
echo "$BIN"
