#!/usr/bin/env bash
# The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from their
# Go modules, cached) and kwok simulating nodes, started by kwokctl's binary runtime on 127.0.0.1.
#
#   hack/cluster.sh up      build once (cached), start, add the simulated nodes, wait until Ready
#   hack/cluster.sh down    stop and remove the cluster's state
#   hack/cluster.sh env     print `export` lines (PATH with kubectl, KUBECONFIG)
#   hack/cluster.sh bin-dir print the folder of the built binaries (building them if needed)
#
# State, logs and the kubeconfig live in .cluster/ (ignored); never in ~/.kube or ~/.kwok.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MODELLOOP_CLUSTER_DIR:-$ROOT/.cluster}"
NAME="${MODELLOOP_CLUSTER_NAME:-modelloop}"
export KUBECONFIG="$STATE/kubeconfig"
export KWOK_WORKDIR="$STATE/kwok"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bins() { "$ROOT/hack/build-cluster-bins.sh" | tail -n 1; }

running() {
  [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1
}

up() {
  local bin start
  bin="$(bins)"
  export PATH="$bin:$PATH"
  if running; then
    log "already running ($KUBECONFIG)"
    return 0
  fi
  # A cluster whose processes died (a reboot, a killed session) leaves state behind: start afresh.
  [ -d "$KWOK_WORKDIR/clusters/$NAME" ] && down
  mkdir -p "$STATE"
  start=$(date +%s.%N)
  log "starting kube-apiserver, etcd, kube-controller-manager, kube-scheduler and kwok"
  kwokctl create cluster --name "$NAME" \
    --config "$ROOT/hack/kwok/kwokctl.yaml" \
    --kubeconfig "$KUBECONFIG" \
    --etcd-binary "$bin/etcd" \
    --kube-apiserver-binary "$bin/kube-apiserver" \
    --kube-controller-manager-binary "$bin/kube-controller-manager" \
    --kube-scheduler-binary "$bin/kube-scheduler" \
    --kwok-controller-binary "$bin/kwok" \
    --wait 120s >"$STATE/kwokctl-create.log" 2>&1 || { cat "$STATE/kwokctl-create.log" >&2; return 1; }
  kubectl apply -f "$ROOT/hack/kwok/nodes.yaml" >/dev/null
  kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
  log "ready in $(python3 -c "import time; print(f'{time.time() - $start:.1f}')")s: $(kubectl get nodes --no-headers | wc -l) nodes; KUBECONFIG=$KUBECONFIG"
}

down() {
  local bin
  bin="$("$ROOT/hack/build-cluster-bins.sh" --print-dir)"  # never build just to tear down
  export PATH="$bin:$PATH"
  if [ -d "$KWOK_WORKDIR/clusters/$NAME" ] && [ -x "$bin/kwokctl" ]; then
    kwokctl delete cluster --name "$NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$KWOK_WORKDIR" "$KUBECONFIG"
  log "stopped"
}

env_lines() {
  printf 'export PATH=%q:$PATH\nexport KUBECONFIG=%q\n' "$(bins)" "$KUBECONFIG"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  bin-dir) bins ;;
  *) echo "usage: $0 up|down|env|bin-dir" >&2; exit 2 ;;
esac
