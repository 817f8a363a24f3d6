#!/usr/bin/env bash
# Builds KServe's controller (cmd/manager) and its payload-logging agent (cmd/agent) from KServe's Go
# module and caches them, keyed by version, for the e2e suite to run against the local control plane.
# Idempotent: a binary already in the cache is not built again.
#
# One change to the agent, at link time: its readiness socket. KServe's agent listens on the abstract unix
# socket @/kserve/agent.sock, which is unique within a pod's network namespace; the e2e suite's pods share
# the machine's, so a second agent (another test's, or a canary's beside its stable pod) failed to bind and
# exited. Linked with -X main.unixSocketPath=agent.sock, the socket is a file in the agent's working
# directory, which the stand-in kubelet makes the pod's own folder. Nothing else differs; the cache key
# names the change.
set -euo pipefail

KSERVE_VERSION="${KSERVE_VERSION:-v0.20.0}"
CACHE_ROOT="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}"
BIN="$CACHE_ROOT/bin/kserve-${KSERVE_VERSION}-agent-socket-per-pod"
# shellcheck source=hack/lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"

build_kserve() {
  local cmds=(manager agent) missing=()
  for c in "${cmds[@]}"; do have "$c" || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local dir="$WORK/kserve-$KSERVE_VERSION"
  mkdir -p "$dir"
  if [ ! -f "$dir/.resolved" ]; then
    # The proxy serves this exact version though its list may not name it: ask for it by version.
    log "resolving github.com/kserve/kserve@$KSERVE_VERSION (with KServe's own replace directives)"
    local gomod
    (cd "$dir" && resolve "github.com/kserve/kserve@$KSERVE_VERSION" env GOFLAGS=-mod=mod go mod download "github.com/kserve/kserve@$KSERVE_VERSION")
    gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    printf 'module modelloop.local/kservebuild\n\ngo 1.26\n\nrequire github.com/kserve/kserve %s\n' "$KSERVE_VERSION" > "$dir/go.mod"
    # A dependency's replace directives do not apply to the module that requires it: repeat them.
    local replaces
    replaces=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or ():
    old, new = r["Old"], r["New"]
    lhs = old["Path"] + ("@" + old["Version"] if old.get("Version") else "")
    rhs = new["Path"] + ("@" + new["Version"] if new.get("Version") else "")
    print(f"-replace={lhs}={rhs}")')
    if [ -n "$replaces" ]; then
      # shellcheck disable=SC2086  # one -replace=… word each
      (cd "$dir" && go mod edit $replaces)
    fi
    local c
    for c in "${cmds[@]}"; do
      (cd "$dir" && resolve "github.com/kserve/kserve/cmd/$c@$KSERVE_VERSION and its dependencies (KServe's module graph is large: minutes)" env GOFLAGS=-mod=mod go get "github.com/kserve/kserve/cmd/$c@$KSERVE_VERSION")
    done
    touch "$dir/.resolved"
  fi
  # The downloads above take no lock (they overlap the control plane's compile); the compile does.
  cpu_lock
  for c in "${missing[@]}"; do
    log "building kserve $c $KSERVE_VERSION (a cold build takes minutes)"
    local ld="-s -w"
    [ "$c" = agent ] && ld="$ld -X main.unixSocketPath=agent.sock"
    (cd "$dir" && quiet env CGO_ENABLED=0 go build -trimpath "$TOOL_GCFLAGS" -ldflags "$ld" -o "$BIN/$c.tmp" "github.com/kserve/kserve/cmd/$c")
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

build_kserve
log "kserve binaries ready in $BIN"
echo "$BIN"
