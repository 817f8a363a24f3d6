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

# resolve_modules DIR (MODULE VERSION PACKAGE)...: a module in DIR that requires each MODULE at VERSION,
# repeats their own replace directives (a dependency's replace lines do not apply to the module requiring
# it) and has each PACKAGE's dependencies downloaded, so that `go build PACKAGE...` in DIR needs no network.
resolve_modules() {
  local dir="$1" module version pkg gomod replaces
  shift
  mkdir -p "$dir"
  [ -f "$dir/.resolved" ] && return 0
  printf 'module modelloop.local/enginebuild\n\ngo 1.26\n' > "$dir/go.mod"
  while [ $# -gt 0 ]; do
    module="$1" version="$2" pkg="$3"
    shift 3
    # The proxy serves these exact versions though its list may not name them: ask for each by version.
    log "resolving $module@$version"
    (cd "$dir" && resolve "$module@$version" env GOFLAGS=-mod=mod go mod download "$module@$version")
    gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
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
  done
  touch "$dir/.resolved"
}

TRAINER_PKG=github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager
JOBSET_PKG=sigs.k8s.io/jobset
KUEUE_PKG=sigs.k8s.io/kueue/cmd/kueue
# Trainer and Kueue build in one module: Kueue requires Trainer's API, both require Kubernetes v0.35 and
# controller-runtime v0.23, and so the one module graph moves Trainer from its own v0.35.2 to Kueue's v0.35.3
# (patch releases) and compiles the client libraries, the largest part of each, once (176 s cold against
# 227 s for two builds).
# JobSet v0.11.1 cannot join that module: it needs controller-runtime v0.22 (v0.23 changed the webhook
# builder it calls). It builds in a module of its own whose build list is Trainer and Kueue's, with only
# controller-runtime held at JobSet's own version (JOBSET_OWN): every other package it compiles (the
# Kubernetes API types and client libraries, gRPC, ...) is then the one Go's build cache already holds
# from Trainer and Kueue, at the same versions and flags. Its requirements move up by patch releases
# (Kubernetes v0.35.0 to v0.35.3), as Trainer's do.
TRAINER_KUEUE_DIR="$WORK/trainer-$TRAINER_VERSION-kueue-$KUEUE_VERSION"
JOBSET_DIR="$WORK/jobset-$JOBSET_VERSION-with-trainer-$TRAINER_VERSION-kueue-$KUEUE_VERSION"
JOBSET_OWN=(sigs.k8s.io/controller-runtime)

# resolve_jobset: JOBSET_DIR's module, from TRAINER_KUEUE_DIR's (resolved first).
resolve_jobset() {
  local dir="$JOBSET_DIR" gomod own version pins=()
  mkdir -p "$dir"
  [ -f "$dir/.resolved" ] && return 0
  log "resolving sigs.k8s.io/jobset@$JOBSET_VERSION on Trainer and Kueue's module graph"
  (cd "$dir" && resolve "sigs.k8s.io/jobset@$JOBSET_VERSION" env GOFLAGS=-mod=mod go mod download "sigs.k8s.io/jobset@$JOBSET_VERSION")
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/jobset@$JOBSET_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  for own in "${JOBSET_OWN[@]}"; do
    version=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"] == sys.argv[1]))' "$own")
    pins+=("-replace=$own=$own@$version")
  done
  cp "$TRAINER_KUEUE_DIR/go.mod" "$TRAINER_KUEUE_DIR/go.sum" "$dir/"
  (cd "$dir" && go mod edit -module modelloop.local/jobsetbuild "${pins[@]}")
  log "holding JobSet's own ${pins[*]#-replace=}"
  (cd "$dir" && resolve "$JOBSET_PKG@$JOBSET_VERSION and its dependencies" env GOFLAGS=-mod=mod go get "$JOBSET_PKG@$JOBSET_VERSION")
  touch "$dir/.resolved"
}

ready() { have trainer-controller-manager && have jobset && have kueue; }

if ! ready; then
  # One instance at a time (`make e2e` starts one in the background, and the tests that need the
  # controllers run this script too): a second waits for the first, then finds the binaries built.
  exec 8>"$CACHE_ROOT/.training-engines.lock"
  if ! flock -n 8; then
    log "waiting for another build of the training engines to finish"
    flock 8
  fi
fi
if ! ready; then
  start=$(date +%s)
  resolve_modules "$TRAINER_KUEUE_DIR" \
    github.com/kubeflow/trainer/v2 "$TRAINER_VERSION" "$TRAINER_PKG" sigs.k8s.io/kueue "$KUEUE_VERSION" "$KUEUE_PKG"
  have jobset || resolve_jobset
  log "downloads done in $(($(date +%s) - start))s"
  start=$(date +%s)
  # Trainer and Kueue first: JobSet's build then finds most of its packages compiled.
  { have trainer-controller-manager && have kueue; } || compile "$TRAINER_KUEUE_DIR" "$TOOL_GCFLAGS" "-s -w" \
    "trainer-controller-manager=$TRAINER_PKG" "kueue=$KUEUE_PKG"
  have jobset || compile "$JOBSET_DIR" "$TOOL_GCFLAGS" "-s -w" "jobset=$JOBSET_PKG"
  log "compiles done in $(($(date +%s) - start))s"
fi
log "training engine binaries ready in $BIN"
echo "$BIN"
