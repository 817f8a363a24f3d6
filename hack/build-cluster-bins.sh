#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules and caches them, keyed by version.
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and kwokctl.
# Idempotent: a binary already in the cache is not built again.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
K8S_DIR="$WORK/k8s-$K8S_VERSION"
ETCD_DIR="$WORK/etcd-$ETCD_VERSION"
KWOK_DIR="$WORK/kwok-$KWOK_VERSION"

# Downloads (unlocked: they overlap other scripts' compiles) ------------------------------------------

resolve_kubernetes() {
  local dir="$K8S_DIR"
  mkdir -p "$dir"
  [ -f "$dir/.resolved" ] && return 0
  log "resolving k8s.io/kubernetes@$K8S_VERSION (its staging modules are replaced by their v0.${K8S_VERSION#v1.} releases)"
  local gomod
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
  local c
  for c in "${K8S_CMDS[@]}"; do
    (cd "$dir" && resolve "k8s.io/kubernetes/cmd/$c@$K8S_VERSION and its dependencies" env GOFLAGS=-mod=mod go get "k8s.io/kubernetes/cmd/$c@$K8S_VERSION")
  done
  touch "$dir/.resolved"
}

resolve_etcd() { wrapper_module "$ETCD_DIR" "$ETCD_VERSION" go.etcd.io/etcd/server/v3; }

resolve_kwok() { wrapper_module "$KWOK_DIR" "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl; }

# Compiles (one at a time, under the build lock) -----------------------------------------------------

build_kubernetes() {
  local missing=() c
  for c in "${K8S_CMDS[@]}"; do have "$c" || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  resolve_kubernetes
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  cpu_lock
  for c in "${missing[@]}"; do
    log "building $c $K8S_VERSION (a cold build takes minutes)"
    (cd "$K8S_DIR" && quiet env CGO_ENABLED=0 go build -trimpath "$PLANE_GCFLAGS" -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

build_etcd() {
  have etcd && return 0
  resolve_etcd
  cpu_lock
  log "building etcd $ETCD_VERSION"
  (cd "$ETCD_DIR" && quiet env CGO_ENABLED=0 go build -trimpath "$PLANE_GCFLAGS" -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kwok() {
  local c
  for c in kwok kwokctl; do
    have "$c" && continue
    resolve_kwok
    cpu_lock
    log "building $c $KWOK_VERSION"
    (cd "$KWOK_DIR" && quiet env CGO_ENABLED=0 go build -trimpath "$PLANE_GCFLAGS" -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$BIN/$c.tmp" "sigs.k8s.io/kwok/cmd/$c")
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

# Every download before the first compile, so that the lock is never held while the proxy is slow.
have etcd || resolve_etcd
{ have kwok && have kwokctl; } || resolve_kwok
for c in "${K8S_CMDS[@]}"; do have "$c" || { resolve_kubernetes; break; }; done
build_etcd
build_kwok
build_kubernetes
log "binaries ready in $BIN"
echo "$BIN"
