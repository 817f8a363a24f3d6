#!/usr/bin/env bash
# Builds modelloop's images without a Docker daemon (buildah and podman, as root, with the native overlay
# driver) and writes each one as an OCI archive under .images/, ready to push with its digest unchanged.
#
#   hack/images.sh [--values FILE] [--kustomize DIR] [--registry PREFIX] [--tag TAG] [--push] [--no-build]
#                  [IMAGE...]
#
#   IMAGE          operator trainer server seldon detector (none: all five)
#   --values FILE  write a Helm values file for charts/modelloop that pins the images by digest
#   --kustomize D  write D/kustomization.yaml, a kustomize Component that pins the images by digest (add
#                  it to a kustomization's components, beside manifests/base or an overlay)
#   --registry P   the images are named P/<image>:<tag> (default ghcr.io/modelloop)
#   --tag TAG      their tag (default: the chart's appVersion)
#   --push         copy each archive to its name, digests kept (skopeo; log in first; PUSH_FLAGS: more flags)
#   --no-build     take the archives in .images/ as they are (push or pin what was tested, not a rebuild)
#
# The base: BASE when set (e.g. BASE=python:3.11-slim where Docker Hub is reachable), else a Debian
# bookworm root filesystem with Debian's Python 3.11 made by mmdebstrap, imported as
# localhost/modelloop-base:<hash>, and cached in ~/.cache/modelloop/images by the hash of its recipe.
# An image is built again only when its inputs change: its Dockerfile, the files it copies, the base and
# this script's recipe; otherwise its archive is kept and said so. Builds see the host's pip configuration
# and CA certificates (a private index, a proxy, a TLS-inspecting CA), which no image keeps. A failed
# download (apt, pip) is retried; what a build waits on is printed while it runs.
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${MODELLOOP_IMAGES_DIR:-$ROOT/.images}"
CACHE="${MODELLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelloop}/images"
ALL=(operator trainer server seldon detector)
REGISTRY=ghcr.io/modelloop
TAG="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/modelloop/Chart.yaml")"
# The Debian base: Debian's Python 3.11 and venv, the CA certificates, and what the runtimes' wheels load
# at run time but do not bundle (OpenMP for scikit-learn and onnxruntime). No compilers, and no tests (the
# standard library's test package goes, as the python image removes its own).
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_PACKAGES=(python3 python3-venv ca-certificates libgomp1)
# Build errors worth another try: the network, not the build.
TRANSIENT='ConnectionError|ConnectTimeout|Read ?timed out|ReadTimeout|Connection (reset|refused|aborted)|Temporary failure in name resolution|Max retries exceeded|IncompleteRead|ProtocolError|HTTP error 50[234]|50[234] (Service|Bad Gateway|Gateway)|Failed to fetch|Hash Sum mismatch|Could not connect|Unable to connect|TLS handshake timeout|i/o timeout'

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '4,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

dockerfile_of() {
  case "$1" in
    operator) echo operator/Dockerfile ;;
    trainer | server | seldon | detector) echo "runtimes/$1/Dockerfile" ;;
    *) return 1 ;;
  esac
}

# Run "$@" with its output in LOG, printing every 30 s what it waits on (the log's last step, download
# or install), and retry it (after 15 s, then 60 s) when it failed on the network.
run_logged() {
  local what="$1" log_file="$2" attempt pid started elapsed report line
  shift 2
  for attempt in 1 2 3; do
    started=$(date +%s)
    report=30
    "$@" >"$log_file" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      elapsed=$(($(date +%s) - started))
      if [ "$elapsed" -ge "$report" ]; then
        report=$((report + 30))
        line=$(grep -E '^(STEP|\[[0-9]/[0-9]\] STEP|Collecting|Downloading|Installing|Building|Successfully|COMMIT|Copying|Writing|I: )' "$log_file" | tail -n 1 || true)
        [ "${#line}" -le 140 ] || line="${line:0:137}..."
        log "$what: ${elapsed}s, waiting on: ${line:-(starting)}"
      fi
    done
    if wait "$pid"; then
      return 0
    fi
    if [ "$attempt" -lt 3 ] && grep -Eq "$TRANSIENT" "$log_file"; then
      log "$what failed on the network ($(grep -Eo "$TRANSIENT" "$log_file" | tail -n 1)); retrying in $((attempt == 1 ? 15 : 60))s"
      sleep $((attempt == 1 ? 15 : 60))
      continue
    fi
    tail -n 40 "$log_file" >&2
    die "$what failed (attempt $attempt; the whole log: $log_file)"
  done
}

# --- the base ------------------------------------------------------------------------------------------

# shellcheck disable=SC2016 # the customize hook's $1 is mmdebstrap's, not ours
make_base_rootfs() { # $1: the tarball to write
  mmdebstrap --variant=minbase --format=tar --components=main --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Retries "5"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/usr/lib/python3*/test' \
    "$DEBIAN_SUITE" "$1" \
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main"
}

import_base() { # $1: the tarball, $2: the image's name
  podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$1" "$2" >/dev/null
}

# Print the base image's name: BASE (pulled if missing), or the Debian base, made once per recipe.
base_image() {
  if [ -n "${BASE:-}" ]; then
    local base="$BASE" first="${BASE%%/*}"
    # A short name is Docker Hub's, as for docker (podman refuses to guess without a search registry).
    if [ "$first" = "$BASE" ] || { [[ "$first" != *.* ]] && [[ "$first" != *:* ]] && [ "$first" != localhost ]; }; then
      base="docker.io/$([ "$first" = "$BASE" ] && echo library/)$BASE"
    fi
    podman image exists "$base" || run_logged "podman pull $base" "$OUT/base.log" podman pull "$base"
    echo "$base"
    return
  fi
  local key name tarball started
  key=$({ declare -f make_base_rootfs import_base; printf '%s\n' "${BASE_PACKAGES[@]}" \
    "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR"; } | sha256sum | cut -c1-16)
  name="localhost/modelloop-base:$key"
  tarball="$CACHE/base-$key.tar"
  if podman image exists "$name"; then
    log "base: $name (cached)"
  else
    if [ ! -f "$tarball" ]; then
      log "base: mmdebstrap $DEBIAN_SUITE (${BASE_PACKAGES[*]}) from $DEBIAN_MIRROR"
      started=$(date +%s)
      mkdir -p "$CACHE"
      run_logged "mmdebstrap $DEBIAN_SUITE" "$OUT/base.log" make_base_rootfs "$tarball.partial"
      mv "$tarball.partial" "$tarball"
      log "base: root filesystem made in $(($(date +%s) - started))s ($tarball)"
    fi
    import_base "$tarball" "$name"
    log "base: imported as $name"
    # One base per recipe: an older one goes (with its tarball).
    podman images --format '{{.Repository}}:{{.Tag}}' localhost/modelloop-base | grep -vxF "$name" \
      | xargs -r podman rmi >/dev/null 2>&1 || true
    find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$key.tar" -delete
  fi
  echo "$name"
}

# --- one image -----------------------------------------------------------------------------------------

# The hash of what an image is made of: the recipe below, the base, the Dockerfile and .dockerignore,
# and every file its COPY lines take from the repository (as .dockerignore leaves them).
inputs_hash() { # $1: image, $2: base image ID
  local dockerfile sources
  dockerfile="$(dockerfile_of "$1")"
  mapfile -t sources < <(awk '$1 == "COPY" && $2 !~ /^--from/ { for (i = 2; i < NF; i++) print $i }' "$ROOT/$dockerfile")
  {
    declare -f build_image
    echo "$1 $2"
    cd "$ROOT"
    find "$dockerfile" .dockerignore "${sources[@]}" -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' ! -path '*/tests/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}

build_image() { # $1: image, $2: base image name
  local name="$1" base="$2" ref="$REGISTRY/$1:$TAG" mounts=() started
  # The host's pip configuration and CA certificates, for the build's RUN steps only.
  [ -f /etc/pip.conf ] && mounts+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
  [ -d /etc/ssl/certs ] && mounts+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
  started=$(date +%s)
  rm -f "$OUT/$name.oci.tar" "$OUT/$name.oci.tar.partial"
  log "$name: buildah bud -f $(dockerfile_of "$name") --build-arg BASE=$base (log: ${OUT#"$ROOT"/}/$name.log)"
  # Committed straight into the archive (compressed), never into podman's storage: a PyTorch image then
  # needs its size once or twice on disk while it builds, not four times.
  run_logged "$name: build" "$OUT/$name.log" \
    buildah bud --isolation=chroot --network=host --layers=false --pull=missing --disable-compression=false \
    "${mounts[@]}" --build-arg "BASE=$base" -f "$(dockerfile_of "$name")" \
    -t "oci-archive:$OUT/$name.oci.tar.partial:$ref" "$ROOT"
  mv "$OUT/$name.oci.tar.partial" "$OUT/$name.oci.tar"
  echo $(($(date +%s) - started)) >"$OUT/$name.seconds"
}

# The digest a registry gives the archive's manifest when the archive is pushed as it is, and the size of
# the image's layers once unpacked.
describe_archive() { # $1: the archive; writes $2.digest and $2.size
  python3 - "$1" "$2" <<'PY'
import gzip, json, sys, tarfile

with tarfile.open(sys.argv[1]) as archive:
    def blob(digest):
        return archive.extractfile("blobs/" + digest.replace(":", "/"))
    descriptor = json.load(archive.extractfile("index.json"))["manifests"][0]
    unpacked = 0
    for layer in json.load(blob(descriptor["digest"]))["layers"]:
        with blob(layer["digest"]) as raw:
            stream = gzip.open(raw) if layer["mediaType"].endswith("gzip") else raw
            while chunk := stream.read(1 << 20):
                unpacked += len(chunk)
open(sys.argv[2] + ".digest", "w").write(descriptor["digest"] + "\n")
open(sys.argv[2] + ".size", "w").write(f"{unpacked}\n")
PY
}

mib() { echo "$((($1 + 524288) / 1048576)) MiB"; }

# --- the Helm values and the push --------------------------------------------------------------------

write_values() { # $1: the file; the images' names, digests in $OUT
  local file="$1" image
  declare -A pinned=()
  for image in "${IMAGES[@]}"; do pinned[$image]="$(cat "$OUT/$image.digest")"; done
  {
    echo "# Helm values for charts/modelloop that pin modelloop's images by digest: written by hack/images.sh"
    echo "# on $(date -u +%Y-%m-%dT%H:%M:%SZ) from the OCI archives in .images/. A registry keeps these digests when"
    echo "# the archives are pushed as they are (hack/images.sh --push, or skopeo copy --preserve-digests)."
    echo "#   helm install modelloop charts/modelloop -n modelloop-system --create-namespace -f $(basename "$file")"
    if [ -n "${pinned[operator]:-}" ]; then
      printf 'image:\n  repository: %s\n  digest: "%s"\n' "$REGISTRY/operator" "${pinned[operator]}"
    fi
    if [ -n "${pinned[server]:-}" ]; then
      printf 'servingRuntime:\n  image:\n    repository: %s\n    digest: "%s"\n' "$REGISTRY/server" "${pinned[server]}"
    fi
    if [ -n "${pinned[detector]:-}" ]; then
      printf 'detector:\n  image:\n    repository: %s\n    digest: "%s"\n' "$REGISTRY/detector" "${pinned[detector]}"
    fi
    if [ -n "${pinned[trainer]:-}${pinned[seldon]:-}" ]; then
      echo "# Images that no chart value names:"
    fi
    if [ -n "${pinned[trainer]:-}" ]; then
      echo "# - the trainer: a TrainingRun's spec.image (and a DriftPolicy's retraining template's):"
      echo "#     $REGISTRY/trainer@${pinned[trainer]}"
    fi
    if [ -n "${pinned[seldon]:-}" ]; then
      echo "# - the Seldon server: seldon-config's predictor_servers (MODELLOOP_SERVER), or an InferenceService's"
      echo "#   spec.seldon.image:  $REGISTRY/seldon@${pinned[seldon]}"
    fi
  } >"$file.partial"
  mv "$file.partial" "$file"
  log "values: $file"
}

write_kustomize() { # $1: the folder; the images' names, digests in $OUT
  local dir="$1" image
  mkdir -p "$dir"
  {
    echo "# A kustomize Component that pins modelloop's images by digest: written by hack/images.sh on"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) from the OCI archives in .images/. Add it to your kustomization:"
    echo "#   resources: [<modelloop>/manifests/base]      # or an overlay, and manifests/detector"
    echo "#   components: [<this folder>]"
    echo "apiVersion: kustomize.config.k8s.io/v1alpha1"
    echo "kind: Component"
    echo "images:"
    for image in "${IMAGES[@]}"; do
      printf -- '- name: ghcr.io/modelloop/%s\n  newName: %s\n  digest: "%s"\n' \
        "$image" "$REGISTRY/$image" "$(cat "$OUT/$image.digest")"
    done
  } >"$dir/kustomization.yaml.partial"
  mv "$dir/kustomization.yaml.partial" "$dir/kustomization.yaml"
  log "kustomize component: $dir/kustomization.yaml"
}

push_image() { # $1: image
  local ref="$REGISTRY/$1:$TAG"
  local flags=()
  read -r -a flags <<<"${PUSH_FLAGS:-}"
  run_logged "$1: push to $ref" "$OUT/$1.push.log" \
    skopeo copy --preserve-digests "${flags[@]}" "oci-archive:$OUT/$1.oci.tar" "docker://$ref"
  log "$1: pushed $ref@$(cat "$OUT/$1.digest")"
}

# --- main ----------------------------------------------------------------------------------------------

VALUES=""
KUSTOMIZE=""
PUSH=""
NO_BUILD=""
IMAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --values) VALUES="${2:?--values needs a file}"; shift 2 ;;
    --kustomize) KUSTOMIZE="${2:?--kustomize needs a folder}"; shift 2 ;;
    --registry) REGISTRY="${2:?--registry needs a prefix}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a tag}"; shift 2 ;;
    --push) PUSH=1; shift ;;
    --no-build) NO_BUILD=1; shift ;;
    -h | --help) usage ;;
    -*) log "unknown option $1"; usage ;;
    *) dockerfile_of "$1" >/dev/null || die "unknown image $1 (one of: ${ALL[*]})"; IMAGES+=("$1"); shift ;;
  esac
done
[ "${#IMAGES[@]}" -gt 0 ] || IMAGES=("${ALL[@]}")
[ -n "$NO_BUILD" ] || [ "$(id -u)" = 0 ] \
  || die "building images needs root (buildah and podman with the native overlay driver): run it with sudo"

"$ROOT/hack/image-tools.sh"
mkdir -p "$OUT" "$CACHE"
cd "$ROOT"
# One build at a time (make and the e2e suite may ask at once).
exec 9>"$OUT/.lock"
flock -n 9 || { log "waiting on another hack/images.sh (it holds $OUT/.lock)"; flock 9; }
started_all=$(date +%s)

if [ -n "$NO_BUILD" ]; then
  for image in "${IMAGES[@]}"; do
    if [ ! -f "$OUT/$image.oci.tar" ] || [ ! -f "$OUT/$image.digest" ]; then
      die "$image is not built: hack/images.sh $image"
    fi
  done
  BASE_NAME="(not checked: --no-build)"
else
  BASE_NAME="$(base_image)"
  BASE_ID="$(podman image inspect --format '{{.Id}}' "$BASE_NAME")"
  for image in "${IMAGES[@]}"; do
    inputs="$(inputs_hash "$image" "$BASE_ID")"
    if [ -f "$OUT/$image.oci.tar" ] && [ -f "$OUT/$image.digest" ] && [ "$(cat "$OUT/$image.inputs" 2>/dev/null)" = "$inputs" ]; then
      log "$image: cached, its inputs are unchanged (${inputs:0:12})"
      continue
    fi
    case "$image" in trainer | detector) need=16 ;; *) need=3 ;; esac
    available=$(df --output=avail -B1 "$OUT" | tail -n 1)
    [ "$available" -gt $((need * 1024 * 1024 * 1024)) ] \
      || log "$image: only $(mib "$available") free on the disk of $OUT; building it takes about $need GiB"
    rm -f "$OUT/$image.inputs"
    build_image "$image" "$BASE_NAME"
    describe_archive "$OUT/$image.oci.tar" "$OUT/$image"
    echo "$inputs" >"$OUT/$image.inputs"
    log "$image: built in $(cat "$OUT/$image.seconds")s"
  done
fi

[ -z "$PUSH" ] || for image in "${IMAGES[@]}"; do push_image "$image"; done
[ -z "$VALUES" ] || write_values "$VALUES"
[ -z "$KUSTOMIZE" ] || write_kustomize "$KUSTOMIZE"

log "done in $(($(date +%s) - started_all))s; base $BASE_NAME"
printf '%-9s %-40s %-72s %11s %11s\n' IMAGE NAME DIGEST ARCHIVE UNPACKED
for image in "${IMAGES[@]}"; do
  printf '%-9s %-40s %-72s %11s %11s\n' "$image" "$REGISTRY/$image:$TAG" "$(cat "$OUT/$image.digest")" \
    "$(mib "$(stat -c %s "$OUT/$image.oci.tar")")" "$(mib "$(cat "$OUT/$image.size")")"
done
