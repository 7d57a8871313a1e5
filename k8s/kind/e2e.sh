#!/usr/bin/env bash
# End to end on the current kube context: apply the quickstart TrainingRun, wait until it
# is served, call the endpoint with three handwritten digits, print the answer.
#   k8s/kind/e2e.sh                 # TIMEOUT=1800 (seconds) JOB=jobs/quickstart.yaml
source "$(dirname "$0")/lib.sh"
need_kubectl; need curl "install curl"
JOB="${JOB:-jobs/quickstart.yaml}"
NAME="${NAME:-quickstart}"
NS="${NAMESPACE:-default}"
TIMEOUT="${TIMEOUT:-1800}"
PORT="${PORT:-18000}"
EXPECTED="3 7 9" # the labels of k8s/kind/predict-request.json

kubectl get crd trainingruns.raykube.io > /dev/null 2>&1 \
  || die "raykube is not installed on $(kubectl config current-context): run k8s/kind/deploy.sh"

say "applying $JOB (TrainingRun $NS/$NAME) on $(kubectl config current-context)"
kubectl -n "$NS" apply -f "$JOB"

dump() {
  kubectl -n "$NS" get tr "$NAME" -o yaml >&2 || true
  kubectl -n "$NS" get rayjobs,rayclusters,rayservices,pods -l "raykube.io/trainingrun=$NAME" >&2 || true
}

# Follow the phase (and fail fast on Failed rather than waiting for the timeout).
say "training: phase / epoch / val accuracy every 10 s (timeout ${TIMEOUT}s)"
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  phase="$(kubectl -n "$NS" get tr "$NAME" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  progress="$(kubectl -n "$NS" get tr "$NAME" -o jsonpath='{.status.progress.epoch}/{.status.progress.epochs} valAccuracy={.status.progress.valAccuracy}' 2>/dev/null || true)"
  echo "  $(date +%H:%M:%S) phase=${phase:-<none>} epoch=$progress"
  case "$phase" in
    Serving) break ;;
    Failed) dump; die "TrainingRun $NAME failed (conditions above)" ;;
    Succeeded)
      promoted="$(kubectl -n "$NS" get tr "$NAME" -o jsonpath='{.status.conditions[?(@.type=="Promoted")].status}')"
      if [[ "$promoted" == "False" ]]; then dump; die "training succeeded but the model was not promoted (gate)"; fi ;;
  esac
  (( $(date +%s) < deadline )) || { dump; die "timed out after ${TIMEOUT}s"; }
  sleep 10
done
kubectl -n "$NS" wait "trainingrun/$NAME" --for=condition=Ready --timeout=60s

endpoint="$(kubectl -n "$NS" get tr "$NAME" -o jsonpath='{.status.serving.endpoint}')"
svc="${NAME}-serve-svc"
say "served at $endpoint; port-forwarding svc/$svc to localhost:$PORT"
kubectl -n "$NS" port-forward "svc/$svc" "$PORT:8000" > /dev/null 2>&1 &
pf=$!
trap 'kill "$pf" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" > /dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" > /dev/null || die "no answer from $svc on port 8000"

say "GET /metadata"
curl -fsS "http://127.0.0.1:$PORT/metadata"; echo
say "POST /predict (three handwritten digits: $EXPECTED)"
answer="$(curl -fsS -X POST -H 'Content-Type: application/json' \
  --data @k8s/kind/predict-request.json "http://127.0.0.1:$PORT/predict")"
echo "$answer"
got="$(printf '%s' "$answer" | grep -o '"label": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | tr '\n' ' ' | sed 's/ $//')"
say "predicted: $got (expected: $EXPECTED)"
