#!/usr/bin/env bash
# Re-resolve the lock files of modelloop's Python environments from their *.in files.
#
#   hack/lock.sh [--dry-run] [ENVIRONMENT...]    (no ENVIRONMENT: all of them; make lock runs this)
#
# For each environment, in a throw-away python3.11 virtual environment: install the runtime .in and
# freeze it into the runtime lock; install the dev .in constrained by that lock (so the tools run
# against exactly what is deployed), freeze, pip check; the dev lock is what the tools added.
# The two locks of an environment are replaced together, only when both were resolved.
#
# --dry-run prints what would be done and changes nothing. LOCK_OUT_DIR=dir writes the locks under
# dir/<folder>/ instead of in place (to compare with the committed ones); PYTHON picks the interpreter.
set -euo pipefail

# One line per environment: name, folder (from the repository root), runtime .in, dev .in, and what
# the runtime lock is installed into. Each .in is locked into the same name with .lock.
ENVIRONMENTS=(
  "operator  requirements      operator.in      dev.in               the operator"
  "trainer   runtimes/trainer  requirements.in  requirements-dev.in  the trainer image"
  "server    runtimes/server   requirements.in  requirements-dev.in  the model server image"
  "seldon    runtimes/seldon   requirements.in  requirements-dev.in  the Seldon model server image"
  "detector  runtimes/detector requirements.in  requirements-dev.in  the drift detector image"
)
# pip freeze leaves out setuptools. The environments named here pin it in their runtime lock all the
# same (seldon: seldon-core's gunicorn 20.1 imports pkg_resources, which setuptools 82 removed).
PINS_SETUPTOOLS=(seldon)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
OUT_DIR="${LOCK_OUT_DIR:-$ROOT}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export LC_ALL=C # the locks' order (sort -f) must not depend on the machine's locale

usage() {
  echo "usage: hack/lock.sh [--dry-run] [ENVIRONMENT...]  (no ENVIRONMENT: all of them)"
  echo "environments: $(names)"
}

names() {
  local row all=()
  for row in "${ENVIRONMENTS[@]}"; do all+=("${row%% *}"); done
  echo "${all[*]}"
}

row_of() {
  local row
  for row in "${ENVIRONMENTS[@]}"; do
    if [[ "${row%% *}" == "$1" ]]; then
      printf '%s\n' "$row"
      return
    fi
  done
  echo "hack/lock.sh: no environment named '$1'; there are: $(names)" >&2
  return 1
}

pins_setuptools() {
  [[ " ${PINS_SETUPTOOLS[*]} " == *" $1 "* ]]
}

# freeze NAME PIP: the environment's packages, one name==version a line, sorted
freeze() {
  local name=$1 pip=$2
  if pins_setuptools "$name"; then
    { "$pip" freeze --exclude-editable; "$pip" freeze --all --exclude-editable | grep -i '^setuptools=='; } | sort -f
  else
    "$pip" freeze --exclude-editable | sort -f
  fi
}

# lock NAME FOLDER RUNTIME_IN DEV_IN WHAT
lock() {
  local name=$1 folder=$2 runtime_in=$3 dev_in=$4 what=$5
  local runtime_lock="${runtime_in%.in}.lock" dev_lock="${dev_in%.in}.lock"
  local src="$ROOT/$folder" dest="$OUT_DIR/$folder"
  local work="$TMP/$name" pip="$TMP/$name/venv/bin/pip"
  local runtime_header="# Locked runtime dependencies of $what (pip install -r). Regenerate: make lock"
  local dev_header="# Locked development tools of the $name environment (pip install -r),"
  dev_header+=" on top of $runtime_lock. Regenerate: make lock"

  if ((DRY_RUN)); then
    local freeze_shown="pip freeze --exclude-editable | sort -f"
    if pins_setuptools "$name"; then
      freeze_shown="(pip freeze --exclude-editable; pip freeze --all | grep ^setuptools==) | sort -f"
    fi
    cat <<EOF
$name: lock $folder/$runtime_in and $folder/$dev_in
  $PYTHON -m venv <tmp>/venv
  pip install -r $folder/$runtime_in
$(printf '  %-66s -> <tmp>/runtime' "$freeze_shown")
  pip install -c <tmp>/runtime -r $folder/$dev_in
$(printf '  %-66s -> <tmp>/all' "$freeze_shown")
  pip check
  write ${dest#"$ROOT"/}/$runtime_lock: $runtime_header
        + <tmp>/runtime
  write ${dest#"$ROOT"/}/$dev_lock: $dev_header
        + the lines of <tmp>/all that are not in <tmp>/runtime
EOF
    return
  fi

  echo "$name: locking $folder/$runtime_in and $folder/$dev_in" >&2
  mkdir -p "$work" "$dest"
  "$PYTHON" -m venv "$work/venv"
  "$pip" install -q -r "$src/$runtime_in"
  freeze "$name" "$pip" >"$work/runtime"
  "$pip" install -q -c "$work/runtime" -r "$src/$dev_in"
  freeze "$name" "$pip" >"$work/all"
  "$pip" check
  { echo "$runtime_header"; cat "$work/runtime"; } >"$work/$runtime_lock"
  { echo "$dev_header"; awk 'NR == FNR { locked[$0]; next } !($0 in locked)' \
    "$work/runtime" "$work/all"; } >"$work/$dev_lock"
  mv "$work/$runtime_lock" "$dest/$runtime_lock"
  mv "$work/$dev_lock" "$dest/$dev_lock"
  echo "$name: wrote $dest/$runtime_lock and $dest/$dev_lock" >&2
}

DRY_RUN=0
selected=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "hack/lock.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) selected+=("$arg") ;;
  esac
done
if ((${#selected[@]} == 0)); then
  read -r -a selected <<<"$(names)"
fi

rows=()
for name in "${selected[@]}"; do
  rows+=("$(row_of "$name")")
done

if ! ((DRY_RUN)); then
  command -v "$PYTHON" >/dev/null || { echo "hack/lock.sh: $PYTHON not found (set PYTHON)" >&2; exit 1; }
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

for row in "${rows[@]}"; do
  read -r name folder runtime_in dev_in what <<<"$row"
  lock "$name" "$folder" "$runtime_in" "$dev_in" "$what"
done
