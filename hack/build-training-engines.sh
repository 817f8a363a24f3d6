#!/usr/bin/env bash
# Builds the controllers that run distributed training jobs: Kubeflow Trainer (cmd/trainer-controller-manager),
# JobSet (the module root's main package) and Kueue (cmd/kueue), each from its own Go module, and caches them,
# keyed by their versions, for the e2e suite to run against the local control plane.
# Idempotent: a binary already in the cache is not built again. Prints the folder of the binaries.
set -euo pipefail

TRAINER_VERSION="${TRAINER_VERSION:-v2.2.0}"
JOBSET_VERSION="${JOBSET_VERSION:-v0.11.1}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/training-engines-trainer-${TRAINER_VERSION}-jobset-${JOBSET_VERSION}-kueue-${KUEUE_VERSION}"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

# resolve_module DIR MODULE VERSION PACKAGE: a module in DIR that requires MODULE at VERSION, repeats
# MODULE's own replace directives (a dependency's replace lines do not apply to the module requiring it)
# and has PACKAGE's dependencies downloaded, so that `go build PACKAGE` in DIR needs no network.
resolve_module() {
  local dir="$1" module="$2" version="$3" pkg="$4" gomod replaces
  mkdir -p "$dir"
  [ -f "$dir/.resolved" ] && return 0
  # The proxy serves these exact versions though its list may not name them: ask for each by version.
  log "resolving $module@$version"
  (cd "$dir" && resolve "$module@$version" env GOFLAGS=-mod=mod go mod download "$module@$version")
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  printf 'module modelloop.local/enginebuild\n\ngo 1.26\n\nrequire %s %s\n' "$module" "$version" > "$dir/go.mod"
  replaces=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or ():
    old, new = r["Old"], r["New"]
    if new["Path"].startswith((".", "/")):
        continue  # a path inside the module'"'"'s own repository: nothing a wrapper can point at
    lhs = old["Path"] + ("@" + old["Version"] if old.get("Version") else "")
    rhs = new["Path"] + ("@" + new["Version"] if new.get("Version") else "")
    print(f"-replace={lhs}={rhs}")')
  if [ -n "$replaces" ]; then
    log "repeating $module's replace directives: $(echo "$replaces" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one -replace=… word each
    (cd "$dir" && go mod edit $replaces)
  fi
  (cd "$dir" && resolve "$pkg@$version and its dependencies" env GOFLAGS=-mod=mod go get "$pkg@$version")
  touch "$dir/.resolved"
}

# build_one NAME DIR PACKAGE: compiles PACKAGE in DIR to $BIN/NAME (under the one build lock).
build_one() {
  local name="$1" dir="$2" pkg="$3" start
  have "$name" && return 0
  cpu_lock
  have "$name" && return 0  # built by another instance while this one waited
  start=$(date +%s)
  log "building $name from $pkg (a cold build takes minutes)"
  # Test binaries, compiled without the optimiser and the inliner (-N -l): a cold build of the three takes
  # minutes of both cores (Kueue's most of them), and these controllers only run the e2e suite's few objects.
  (cd "$dir" && quiet env CGO_ENABLED=0 go build -trimpath -gcflags=all="-N -l" -ldflags "-s -w" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  log "built $name in $(($(date +%s) - start))s"
}

TRAINER_DIR="$WORK/trainer-$TRAINER_VERSION"
JOBSET_DIR="$WORK/jobset-$JOBSET_VERSION"
KUEUE_DIR="$WORK/kueue-$KUEUE_VERSION"
TRAINER_PKG=github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager
JOBSET_PKG=sigs.k8s.io/jobset
KUEUE_PKG=sigs.k8s.io/kueue/cmd/kueue

if ! { have trainer-controller-manager && have jobset && have kueue; }; then
  # One instance at a time (`make e2e` starts one in the background, and the tests that need the
  # controllers run this script too): a second waits for the first, then finds the binaries built.
  exec 8>"$CACHE_ROOT/.training-engines.lock"
  if ! flock -n 8; then
    log "waiting for another build of the training engines to finish"
    flock 8
  fi
fi
if ! { have trainer-controller-manager && have jobset && have kueue; }; then
  start=$(date +%s)
  have trainer-controller-manager || resolve_module "$TRAINER_DIR" github.com/kubeflow/trainer/v2 "$TRAINER_VERSION" "$TRAINER_PKG"
  have jobset || resolve_module "$JOBSET_DIR" sigs.k8s.io/jobset "$JOBSET_VERSION" "$JOBSET_PKG"
  have kueue || resolve_module "$KUEUE_DIR" sigs.k8s.io/kueue "$KUEUE_VERSION" "$KUEUE_PKG"
  log "downloads done in $(($(date +%s) - start))s"
  start=$(date +%s)
  build_one jobset "$JOBSET_DIR" "$JOBSET_PKG"
  build_one trainer-controller-manager "$TRAINER_DIR" "$TRAINER_PKG"
  build_one kueue "$KUEUE_DIR" "$KUEUE_PKG"
  log "compiles done in $(($(date +%s) - start))s"
fi
log "training engine binaries ready in $BIN"
echo "$BIN"
