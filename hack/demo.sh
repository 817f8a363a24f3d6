#!/usr/bin/env bash
# make demo: the local control plane, modelloop's CRDs (and KServe's and Seldon Core's), the operator,
# the quickstart example, `kubectl get modelloop`, then the whole drift loop (e2e/loop.py). The cluster stays up afterwards for exploring;
# `make cluster-down` removes it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SHARED_CRDS="${MODELLOOP_SHARED_DIR:-$ROOT/../shared}/crds"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Local control plane (built from source once, then cached)"
hack/cluster.sh up
eval "$(hack/cluster.sh env 2>/dev/null)"
kubectl get nodes -L nvidia.com/gpu.product -o custom-columns='NAME:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product,TAINTS:.spec.taints[*].key'

step "CRDs: modelloop's, and KServe's and Seldon Core's real ones"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl apply -f manifests/admission/ >/dev/null  # the API server records who registers each ModelVersion
.venv/bin/python hack/third_party_crds.py "$SHARED_CRDS" | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl apply --server-side --force-conflicts -f "$SHARED_CRDS/gateway-api/" >/dev/null  # Standard mode's HTTPRoute
for _ in $(seq 1 60); do  # a CRD just created has no status yet, which `kubectl wait` trips over
  kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get crd -o custom-columns='CRD:.metadata.name,KIND:.spec.names.kind,SHORT:.spec.names.shortNames'

step "The operator (modelloop run), in the background; log in .cluster/operator.log"
MODELLOOP_ARTIFACT_ROOT="file://$ROOT/.cluster/artifacts" .venv/bin/modelloop run --all-namespaces --liveness http://127.0.0.1:18080/healthz --log-format plain \
  >.cluster/operator.log 2>&1 &
OPERATOR=$!
trap 'kill $OPERATOR 2>/dev/null || true; wait $OPERATOR 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:18080/healthz', timeout=1)" 2>/dev/null && break
  kill -0 $OPERATOR 2>/dev/null || { cat .cluster/operator.log; exit 1; }
  sleep 0.5
done

step "kubectl apply -f manifests/examples/quickstart.yaml"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The label asks kwok to leave the training pod running, so that the real trainer can run it below.
.venv/bin/python - <<'PY' | kubectl apply -n demo -f -
import sys, yaml
docs = list(yaml.safe_load_all(open("manifests/examples/quickstart.yaml")))
for doc in docs:
    if doc["kind"] == "TrainingRun":
        doc["metadata"].setdefault("labels", {})["sim.modelloop.dev/outcome"] = "Hold"
    if doc["kind"] == "InferenceService":
        # No KServe controller runs in this demo (the e2e suite runs it): serve the hand-registered
        # iris-v1 and leave promotions to the registry's annotation below.
        doc["spec"]["model"]["version"] = 1
yaml.safe_dump_all(docs, sys.stdout)
PY
for kind in modelversion modelpolicy inferenceservice.modelloop.dev driftpolicy; do
  kubectl wait -n demo --for=jsonpath='{.status.observedGeneration}'=1 "$kind" --all --timeout=60s >/dev/null
done

step "The training Job's pod, placed by the scheduler on a GPU node (2 x NVIDIA-A100-SXM4-80GB)"
kubectl wait -n demo --for=jsonpath='{.status.phase}'=Running trainingrun/iris-rf --timeout=60s >/dev/null
kubectl get pods -n demo -l modelloop.dev/training-run=iris-rf -o wide

step "Running that pod's container for real: modelloop-train with the pod's own command and environment"
.venv/bin/python -m e2e.kubelet demo iris-rf
kubectl get trainingrun -n demo iris-rf
kubectl get modelversions -n demo -l modelloop.dev/training-run=iris-rf \
  -o custom-columns='NAME:.metadata.name,VERSION:.spec.version,ACCURACY:.spec.metrics.accuracy,ARTIFACT:.spec.artifact.uri,DATASET:.spec.lineage.datasetHash'

step "The registry: iris-v2 validated against the run's gates, the ModelPolicy's and the champion iris-v1"
kubectl wait -n demo --for=jsonpath='{.status.validationTime}' modelversion/iris-v2 --timeout=60s >/dev/null
kubectl get modelversions -n demo
kubectl get modelversion -n demo iris-v2 \
  -o jsonpath='{range .status.checks[*]}{.name}{"\t"}{.passed}{"\t"}{.message}{"\n"}{end}'

step "Promote iris-v2 the GitOps way (an annotation); iris-v1 is archived, both keep their history"
if [ "$(kubectl get modelversion -n demo iris-v2 -o jsonpath='{.status.phase}')" = Validated ]; then
  kubectl annotate -n demo modelversion iris-v2 --overwrite \
    modelloop.dev/requested-stage=Champion modelloop.dev/stage-reason="beat iris-v1 in the demo"
  kubectl wait -n demo --for=jsonpath='{.status.stage}'=Champion modelversion/iris-v2 --timeout=60s >/dev/null
else
  echo "iris-v2 was rejected, so it cannot become Champion: $(kubectl get modelversion -n demo iris-v2 -o jsonpath='{.status.message}')"
fi
kubectl get modelversions -n demo -l modelloop.dev/stage=champion
kubectl get modelpolicy -n demo
.venv/bin/modelloop history iris -n demo

step "modelloop lineage iris-v2: ModelVersion ← TrainingRun ← trigger, read from the API server"
.venv/bin/modelloop lineage iris-v2 -n demo

step "An invalid object is refused at admission, naming the field"
kubectl apply -n demo -f - <<'YAML' || true
apiVersion: modelloop.dev/v1alpha1
kind: InferenceService
metadata: {name: bad-rollout}
spec:
  model: {name: iris}
  rollout: {steps: [10, 50, 25]}
YAML

step "kubectl get modelloop -n demo"
kubectl get modelloop -n demo

step "The KServe InferenceService the operator wrote for it (no KServe controller runs in the demo)"
kubectl get inferenceservices.serving.kserve.io -n demo iris \
  -o custom-columns='NAME:.metadata.name,MODE:.metadata.annotations.serving\.kserve\.io/deploymentMode,PREDICTOR:.spec.predictor.name,STORAGE:.spec.predictor.model.storageUri'

step "The training run's events"
kubectl get events -n demo --field-selector involvedObject.name=iris-rf --sort-by=.lastTimestamp \
  -o custom-columns='TYPE:.type,REASON:.reason,MESSAGE:.message'
true

step "The loop closes, with no human: drift -> retrain -> validate on the same data -> canary -> promote"
# The whole loop in its own namespace, with KServe's real controller and agent (the payload logger), the
# drift detector and a real Prometheus; the loop runs an operator of its own for that namespace.
kill $OPERATOR 2>/dev/null || true; wait $OPERATOR 2>/dev/null || true
.venv/bin/python -m e2e.loop --namespace demo-loop

printf '\nThe cluster keeps running: eval "$(hack/cluster.sh env)" to use kubectl; make cluster-down to stop it.\n'
