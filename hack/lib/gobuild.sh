# Shared by the scripts that build binaries from Go modules into modelloop's cache (source it after
# setting BIN, the versioned folder the binaries go to). Handles --print-dir, takes the one build
# lock (two Go builds never compete for this machine's few cores; `make` and the e2e suite may ask at
# once), and defines: quiet (Go's chatter to a log, its tail shown on failure), log, have.
# shellcheck shell=bash

CACHE_ROOT="${CACHE_ROOT:-${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}}"
WORK="$CACHE_ROOT/build"
if [ "${1:-}" = "--print-dir" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN" "$WORK"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
GOLOG="$WORK/go.log"

quiet() { "$@" >>"$GOLOG" 2>&1 || { tail -n 40 "$GOLOG" >&2; return 1; }; }
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { [ -x "$BIN/$1" ]; }
