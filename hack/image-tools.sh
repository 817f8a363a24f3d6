#!/usr/bin/env bash
# Installs, with apt and only what is missing, the tools that build and run modelloop's images without a
# Docker daemon: mmdebstrap (the Debian base), buildah and podman (build, import, save), skopeo (push with
# the digests kept), bubblewrap (hack/run_image.py runs an image's root filesystem). Idempotent: prints
# nothing and changes nothing when every tool is there. Debian or Ubuntu; root, or sudo.
set -euo pipefail

# command -> the Debian package that has it
declare -A PACKAGE=(
  [mmdebstrap]=mmdebstrap
  [buildah]=buildah
  [podman]=podman
  [skopeo]=skopeo
  [bwrap]=bubblewrap
  [setpriv]=util-linux
)

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
for cmd in "${!PACKAGE[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${PACKAGE[$cmd]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

command -v apt-get >/dev/null || {
  echo "missing ${missing[*]} and no apt-get here: install them with your system's package manager" >&2
  exit 1
}
SUDO=$(test "$(id -u)" = 0 || echo sudo)
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null; }

# A mirror that fails for a moment (or package lists too old for it) gets three more tries.
for attempt in 1 2 3 4; do
  log "apt-get install ${missing[*]} (attempt $attempt/4)"
  if install || { $SUDO apt-get update -q >/dev/null && install; }; then
    exit 0
  fi
  [ "$attempt" = 4 ] && break
  log "waiting on the Debian mirror: apt-get failed, retrying in $((attempt * 15))s"
  sleep $((attempt * 15))
done
echo "could not install ${missing[*]} with apt-get" >&2
exit 1
