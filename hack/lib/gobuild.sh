# Shared by the scripts that build binaries from Go modules into modelloop's cache (source it after
# setting BIN, the versioned folder the binaries go to). Handles --print-dir and defines:
#   resolve  a network step (go get, go mod download, go list): retried when the proxy drops or stalls,
#            saying which module it waits on; it takes no lock, so one script's downloads overlap
#            another's compile (Go's module cache locks itself);
#   cpu_lock the one build lock, taken before compiling: two Go compiles never compete for this
#            machine's few cores (`make setup` runs every script at once; the e2e suite may ask too);
#   quiet (Go's chatter to a log, its tail shown on failure), log, have;
#   compile  one `go build` of several packages into BIN (below);
#   TOOL_GCFLAGS, PLANE_GCFLAGS: the two sets of compiler flags (below).
# shellcheck shell=bash

CACHE_ROOT="${CACHE_ROOT:-${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}}"
WORK="$CACHE_ROOT/build"
if [ "${1:-}" = "--print-dir" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN" "$WORK"
GOLOG="$WORK/go.$$.log"
trap 'rm -f "$GOLOG"' EXIT
# A dropped connection fails a download outright; a proxy that stalls is cut off after this long (one
# KServe resolution once ran at 6 KB/s for 10 minutes) and asked again.
RESOLVE_ATTEMPTS="${RESOLVE_ATTEMPTS:-4}"
RESOLVE_TIMEOUT="${RESOLVE_TIMEOUT:-1200}"

# Two sets of flags. The control plane (etcd, the API server, kwok), busy throughout the suite, keeps the
# optimiser; so does Helm, though it runs briefly, because it builds in the plane's module (see
# build-cluster-bins.sh) and so finds most of its packages compiled. KServe's manager and agent, the training
# engines and the Argo CD health test, on module graphs of their own (Kubernetes v0.34, v0.35, v0.36.1), are
# compiled without the optimiser and the inliner, which takes 0.70x the time cold (Kueue: 154 s against
# 221 s on two cores); one set of flags for them lets Go's build cache, which keys on flags, compile the
# standard library once for them.
# No DWARF in any build: every binary is linked with -s -w, which drops it (0.96x the time, Helm cold).
TOOL_GCFLAGS="-gcflags=all=-N -l -dwarf=false"
PLANE_GCFLAGS="-gcflags=all=-dwarf=false"

quiet() { "$@" >>"$GOLOG" 2>&1 || { tail -n 40 "$GOLOG" >&2; return 1; }; }
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { [ -x "$BIN/$1" ]; }

# resolve MODULE COMMAND...: runs COMMAND (a Go download step for MODULE) until it succeeds.
resolve() {
  local module="$1" attempt=1
  shift
  while :; do
    if [ "$attempt" -gt 1 ]; then log "asking the Go module proxy again for $module (attempt $attempt of $RESOLVE_ATTEMPTS)"; fi
    if timeout "$RESOLVE_TIMEOUT" "$@" >>"$GOLOG" 2>&1; then return 0; fi
    log "the download of $module failed or stalled past ${RESOLVE_TIMEOUT}s: $(tail -n 1 "$GOLOG")"
    if [ "$attempt" -ge "$RESOLVE_ATTEMPTS" ]; then
      tail -n 40 "$GOLOG" >&2
      log "gave up on $module after $attempt attempts (the Go module proxy: ${GOPROXY:-$(go env GOPROXY)})"
      return 1
    fi
    attempt=$((attempt + 1))
    sleep $((attempt * 5))
  done
}

cpu_lock() {
  [ -n "${_MODELLOOP_CPU_LOCKED:-}" ] && return 0
  exec 9>"$CACHE_ROOT/.build.lock"
  if ! flock -n 9; then
    log "waiting for another Go compile to finish (one at a time)"
    flock 9
  fi
  _MODELLOOP_CPU_LOCKED=1
}

# compile DIR GCFLAGS LDFLAGS NAME=PACKAGE...: compiles each PACKAGE in DIR's module to $BIN/NAME, under the
# one build lock, in one `go build`, so that what they share compiles once and one's link overlaps
# another's compile.
compile() {
  local dir="$1" gcflags="$2" ld="$3" out="$BIN/.partial" start pair pkg file pkgs=() names=()
  shift 3
  for pair in "$@"; do names+=("${pair%%=*}"); pkgs+=("${pair#*=}"); done
  cpu_lock
  start=$(date +%s)
  rm -rf "$out" && mkdir -p "$out"
  log "building ${names[*]} (a cold build takes minutes)"
  (cd "$dir" && quiet env CGO_ENABLED=0 go build -trimpath "$gcflags" -ldflags "$ld" -o "$out/" "${pkgs[@]}")
  for pair in "$@"; do
    # go build names a binary after its package's last path element, or the one before a major version.
    pkg="${pair#*=}" file="${pkg##*/}"
    [[ "$file" =~ ^v[0-9]+$ ]] && { file="${pkg%/*}"; file="${file##*/}"; }
    mv "$out/$file" "$BIN/${pair%%=*}"
  done
  rmdir "$out"
  log "built ${names[*]} in $(($(date +%s) - start))s"
}
