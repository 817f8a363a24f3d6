#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules and caches them, keyed by version.
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and kwokctl.
# Idempotent: a binary already in the cache is not built again.
#   hack/build-cluster-bins.sh [--print-dir | --module]
# --module resolves the plane's module only and prints its folder (hack/build-helm.sh builds Helm in it).
set -euo pipefail

# shellcheck source=hack/lib/plane.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/plane.sh"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
K8S_PKGS=("${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}")
KWOK_PKGS=(sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl)
HELM_PKG="helm.sh/helm/${HELM_VERSION%%.*}/cmd/helm"
ETCD_PKG=go.etcd.io/etcd/server/v3
# Kubernetes as released: its staging modules replaced by their releases, nothing else.
K8S_DIR="$WORK/k8s-$K8S_VERSION"
# The plane's module. Go's build cache keys a compiled package on its module's path and version (the
# required one, even when a replace directive swaps the code), its dependencies' keys and the flags, so
# tools built in separate modules share nothing: each compiled the Kubernetes client libraries, gRPC and
# protobuf again. One module requires Kubernetes, kwok, Helm and etcd, and replaces every module that
# Kubernetes uses by the version Kubernetes is released with (its client libraries included: Helm v4.3.1 is
# released with v0.37.1, and builds and passes the chart's tests with v0.36.3). Kubernetes is built from it
# with exactly its released dependencies (checked below, when the module is made), and kwok and Helm with
# the same, so that Go compiles what they share once. etcd builds from a copy that keeps etcd's own modules
# (go.etcd.io/...) at its release, where Kubernetes uses an older etcd client.
PLANE_DIR="$WORK/plane-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
ETCD_DIR="$PLANE_DIR/etcd"
ETCD_OWN=go.etcd.io/

# Downloads (unlocked: they overlap other scripts' compiles) ------------------------------------------

resolve_kubernetes() {
  local dir="$K8S_DIR" gomod c
  [ -f "$dir/.resolved" ] && return 0
  mkdir -p "$dir"
  log "resolving k8s.io/kubernetes@$K8S_VERSION (its staging modules are replaced by their v0.${K8S_VERSION#v1.} releases)"
  (cd "$dir" && resolve "k8s.io/kubernetes@$K8S_VERSION" env GOFLAGS=-mod=mod go mod download "k8s.io/kubernetes@$K8S_VERSION")
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module modelloop.local/k8sbuild"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/src/' "$gomod" | awk -v v="v0.${K8S_VERSION#v1.}" '{print "replace " $1 " => " $1 " " v}'
  } > "$dir/go.mod"
  for c in "${K8S_PKGS[@]}"; do
    (cd "$dir" && resolve "$c@$K8S_VERSION and its dependencies" env GOFLAGS=-mod=mod go get "$c@$K8S_VERSION")
  done
  touch "$dir/.resolved"
}

# build_list DIR: "path version" of every module in DIR's build list, the version after any replace.
build_list() {
  # shellcheck disable=SC2016  # a Go template
  (cd "$1" && GOFLAGS=-mod=mod go list -m -f '{{.Path}} {{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' all)
}

# effective_versions DIR PACKAGE...: "package module@version" of every package PACKAGE... compile from.
effective_versions() {
  local dir="$1"
  shift
  # shellcheck disable=SC2016  # a Go template
  (cd "$dir" && GOFLAGS=-mod=mod go list -deps -f '{{.ImportPath}}{{with .Module}} {{.Path}}@{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}{{end}}' "$@") | sort
}

resolve_plane() {
  local dir="$PLANE_DIR" replaces
  [ -f "$dir/.resolved" ] && return 0
  # build-helm.sh asks for this module too (--module), maybe at the same time.
  exec 7>"$WORK/.plane.lock"
  flock 7
  if [ ! -f "$dir/.resolved" ]; then
    resolve_kubernetes
    rm -rf "$dir" && mkdir -p "$dir"
    sed 's|^module .*|module modelloop.local/planebuild|' "$K8S_DIR/go.mod" > "$dir/go.mod"
    cp "$K8S_DIR/go.sum" "$dir/go.sum"
    log "resolving kwok $KWOK_VERSION, Helm $HELM_VERSION and etcd $ETCD_VERSION on Kubernetes $K8S_VERSION's module graph"
    local pkg
    for pkg in "${KWOK_PKGS[@]/%/@$KWOK_VERSION}" "$HELM_PKG@$HELM_VERSION" "$ETCD_PKG@$ETCD_VERSION"; do
      (cd "$dir" && resolve "$pkg and its dependencies" env GOFLAGS=-mod=mod go get "$pkg")
    done
    replaces=$(python3 - 3< <(build_list "$K8S_DIR") 4< <(build_list "$dir") <<'PY'
import os
def build_list(fd):
    with os.fdopen(fd) as stream:
        return dict(line.split() for line in stream if len(line.split()) == 2)
kubernetes, plane = build_list(3), build_list(4)
for path, version in sorted(plane.items()):
    if path in kubernetes and kubernetes[path] != version:
        print(f"-replace={path}={path}@{kubernetes[path]}")
PY
    )
    log "holding $(echo "$replaces" | wc -l) modules at the versions Kubernetes $K8S_VERSION is released with"
    # shellcheck disable=SC2086  # one -replace=… word each
    (cd "$dir" && go mod edit $replaces)
    (cd "$dir" && resolve "the plane's replacements" env GOFLAGS=-mod=mod go list -deps "${K8S_PKGS[@]}" "${KWOK_PKGS[@]}" "$HELM_PKG" >/dev/null)
    # Kubernetes must compile from exactly what it is released with.
    if ! diff <(effective_versions "$K8S_DIR" "${K8S_PKGS[@]}") <(effective_versions "$dir" "${K8S_PKGS[@]}") >"$WORK/plane.diff"; then
      head -n 20 "$WORK/plane.diff" >&2
      log "the plane's module would build Kubernetes from other versions than its release (above; $WORK/plane.diff)"
      exit 1
    fi
    # etcd: the same module, less the replaces of etcd's own modules.
    mkdir -p "$ETCD_DIR"
    sed 's|^module .*|module modelloop.local/etcdbuild|' "$dir/go.mod" > "$ETCD_DIR/go.mod"
    cp "$dir/go.sum" "$ETCD_DIR/go.sum"
    local drops
    drops=$(echo "$replaces" | sed -n "s|^-replace=\($ETCD_OWN[^=]*\)=.*|-dropreplace=\1|p")
    # shellcheck disable=SC2086  # one -dropreplace=… word each
    [ -z "$drops" ] || (cd "$ETCD_DIR" && go mod edit $drops)
    (cd "$ETCD_DIR" && resolve "$ETCD_PKG@$ETCD_VERSION on the plane's graph" env GOFLAGS=-mod=mod go list -deps "$ETCD_PKG" >/dev/null)
    touch "$dir/.resolved"
  fi
  exec 7>&-
}

if [ "${1:-}" = "--module" ]; then resolve_plane; echo "$PLANE_DIR"; exit 0; fi

# Compiles (one at a time, under the build lock: compile in lib/gobuild.sh) ------------------------------

missing=()
for c in "${K8S_CMDS[@]}" kwok kwokctl etcd; do have "$c" || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  # Every download before the first compile, so that the lock is never held while the proxy is slow.
  resolve_plane
  k8s_missing=()
  for c in "${K8S_CMDS[@]}"; do have "$c" || k8s_missing+=("$c=k8s.io/kubernetes/cmd/$c"); done
  if [ ${#k8s_missing[@]} -gt 0 ]; then
    minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    compile "$PLANE_DIR" "$PLANE_GCFLAGS" "$ld" "${k8s_missing[@]}"
  fi
  { have kwok && have kwokctl; } || compile "$PLANE_DIR" "$PLANE_GCFLAGS" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "kwok=${KWOK_PKGS[0]}" "kwokctl=${KWOK_PKGS[1]}"
  have etcd || compile "$ETCD_DIR" "$PLANE_GCFLAGS" "-s -w" "etcd=$ETCD_PKG"
fi
log "binaries ready in $BIN"
echo "$BIN"
