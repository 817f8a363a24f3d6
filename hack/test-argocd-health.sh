#!/usr/bin/env bash
# Tests modelloop's Argo CD health checks (argocd/resource_customizations) with Argo CD's own code: the Go
# test in argocd/healthtest imports Argo CD's Lua health package (github.com/argoproj/argo-cd/v3/util/lua,
# at the version its go.mod requires) and runs every case of every health_test.yaml as Argo CD's
# TestLuaHealthScript does, then once more through the argocd-cm patch (manifests/argocd/argocd-cm-health.yaml)
# as a running Argo CD reads it; and it reads the example Application with Argo CD's own types and diffs a
# ModelVersion through its ignoreDifferences.
#
#   hack/test-argocd-health.sh [go test flags]    e.g. -v -run 'TestLuaHealthScript/.*/InferenceService'
#
# The first run downloads Argo CD's dependencies and builds them (minutes; Go's own caches, shared with the
# other Go builds, with the same flags); later runs take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
# No binary is kept (gobuild.sh's "bin" folder stays empty).
BIN="$CACHE_ROOT/go"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

command -v go >/dev/null || { echo "hack/test-argocd-health.sh: needs Go (1.26.3 or newer)" >&2; exit 1; }
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0
cd "$ROOT/argocd/healthtest"

# The modules the test builds from, fetched first so that Go's download chatter goes to the log.
# No lock for the downloads: they overlap other scripts' compiles.
resolve "github.com/argoproj/argo-cd/v3 and the health test's dependencies" go list -deps -test -f '{{with .Error}}{{.}}{{end}}' .
cpu_lock
ARGOCD_VERSION=$(go list -m -f '{{.Version}}' github.com/argoproj/argo-cd/v3)
log "testing the health checks with Argo CD $ARGOCD_VERSION's util/lua (a cold build takes minutes)"
# -count=1: Go caches a test's result keyed on the files it read, but only on files inside its module; the
# health checks, the CRDs and the argocd-cm patch are outside. The build itself stays cached.
# -vet=off: before a test, go test vets its package, and to do so analyses every package it imports (about
# 1,500 runs of vet over Argo CD's graph, 33 s of CPU cold, a sixth of this test's cold cost) for a file of
# ours whose worth is what it asserts; the other Go code here is other projects' released modules.
go test -count=1 -vet=off -trimpath "$TOOL_GCFLAGS" "$@" .
