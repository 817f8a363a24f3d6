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
  # Helm's module has no replace directives, so `go install module@version` builds it as released.
  # Its version string is set as Helm's own Makefile sets it (`helm version` reports the release).
  local major="${HELM_VERSION%%.*}"
  # `go install module@version` resolves and builds in one step; the module is fetched, with retries,
  # before the build lock, its dependencies under it.
  resolve "helm.sh/helm/$major@$HELM_VERSION" go mod download "helm.sh/helm/$major@$HELM_VERSION"
  cpu_lock
  log "building helm $HELM_VERSION (a cold build takes minutes)"
  quiet env GOBIN="$BIN/.gobin" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.metadata=" \
    "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
  mv "$BIN/.gobin/helm" "$BIN/helm"
  rmdir "$BIN/.gobin"
}

build_helm
log "helm ready in $BIN"
echo "$BIN"
