#!/usr/bin/env bash
# Builds Helm from its Go module (helm.sh/helm/v4) and caches it, keyed by version, for the chart's
# tests (e2e/test_helm.py) and for installing charts/modelloop. Idempotent: a binary already in the
# cache is not built again.
set -euo pipefail

# shellcheck source=hack/lib/plane.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/plane.sh"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/helm-${HELM_VERSION}"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

build_helm() {
  have helm && return 0
  # Helm builds in the control plane's module (hack/build-cluster-bins.sh --module): Helm's own code as
  # released, its dependencies at the versions Kubernetes is released with where Kubernetes uses them too
  # (its client libraries v0.36.3, where Helm v4.3.1 is released with v0.37.1), and the plane's flags, so
  # that Go compiles only what the plane's binaries do not already have (or they, what Helm has). Its
  # version string is set as Helm's own Makefile sets it (`helm version` reports the release).
  local major="${HELM_VERSION%%.*}" dir
  dir="$("$(dirname "${BASH_SOURCE[0]}")/build-cluster-bins.sh" --module)"
  cpu_lock
  log "building helm $HELM_VERSION (a cold build takes minutes)"
  (cd "$dir" && quiet env CGO_ENABLED=0 go build -trimpath "$PLANE_GCFLAGS" \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.metadata=" \
    -o "$BIN/helm.tmp" "helm.sh/helm/$major/cmd/helm")
  mv "$BIN/helm.tmp" "$BIN/helm"
}

build_helm
log "helm ready in $BIN"
echo "$BIN"
