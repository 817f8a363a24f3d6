# Shared by the scripts that build binaries from Go modules into modelloop's cache (source it after
# setting BIN, the versioned folder the binaries go to). Handles --print-dir and defines:
#   resolve  a network step (go get, go mod download, go list): retried when the proxy drops or stalls,
#            saying which module it waits on; it takes no lock, so one script's downloads overlap
#            another's compile (Go's module cache locks itself);
#   cpu_lock the one build lock, taken before compiling: two Go compiles never compete for this
#            machine's few cores (`make setup` runs every script at once; the e2e suite may ask too);
#   quiet (Go's chatter to a log, its tail shown on failure), log, have;
#   TOOL_GCFLAGS the compiler flags of the tools the tests run briefly, PLANE_GCFLAGS the control plane's
#            (below).
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

# Helm, KServe's manager and agent, the training engines and the Argo CD health test run briefly, on the
# tests' few objects: they are compiled without the optimiser and the inliner, which takes 0.70x the time
# cold (Kueue: 154 s against 221 s on two cores). One set of flags for all of them also lets Go's build
# cache, which keys on flags, compile the standard library once for them all. The control plane's binaries
# (etcd, the API server, kwok), busy throughout the suite, keep the optimiser.
# No DWARF either, in any build: every binary is linked with -s -w, which drops it (0.96x the time, Helm cold).
TOOL_GCFLAGS="-gcflags=all=-N -l -dwarf=false"
PLANE_GCFLAGS="-gcflags=all=-dwarf=false"

# `make test` compiles while its checks run, at a lower priority (see the Makefile's test target).
if [ -n "${MODELLOOP_BUILD_NICE:-}" ]; then renice -n "$MODELLOOP_BUILD_NICE" -p $$ >/dev/null; fi

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

# wrapper_module DIR VERSION PACKAGE...: a module in DIR that requires each PACKAGE's module at VERSION,
# resolved (its downloads unlocked, retried), so that `go build PACKAGE` in DIR compiles it as `go install
# PACKAGE@VERSION` would (for a module without replace directives) with nothing left to download.
wrapper_module() {
  local dir="$1" version="$2" pkg
  shift 2
  mkdir -p "$dir"
  [ -f "$dir/.resolved" ] && return 0
  printf 'module modelloop.local/build\n\ngo 1.26\n' > "$dir/go.mod"
  for pkg in "$@"; do
    (cd "$dir" && resolve "$pkg@$version and its dependencies" env GOFLAGS=-mod=mod go get "$pkg@$version")
  done
  touch "$dir/.resolved"
}
