#!/usr/bin/env bash
# Install raykube (CRD, operator, RBAC, shared storage) with the kind overlay.
#   k8s/kind/deploy.sh              # OVERLAY=k8s/overlays/gpu for another cluster
source "$(dirname "$0")/lib.sh"
need_kubectl
OVERLAY="${OVERLAY:-k8s/overlays/kind}"

kubectl get crd rayjobs.ray.io > /dev/null 2>&1 \
  || die "KubeRay CRDs not found on $(kubectl config current-context): run k8s/kind/up.sh (or install KubeRay $RAYKUBE_KUBERAY_VERSION)"

say "applying $OVERLAY to $(kubectl config current-context)"
# Server-side apply: no last-applied annotation (the CRD is large), field ownership kept.
kubectl apply --server-side --force-conflicts -k "$OVERLAY"
kubectl wait --for condition=established --timeout=60s crd/trainingruns.raykube.io
say "waiting for the operator"
if ! kubectl -n raykube-system rollout status deployment/raykube-operator --timeout=180s; then
  kubectl -n raykube-system describe pods -l app.kubernetes.io/name=raykube-operator | tail -30 >&2
  kubectl -n raykube-system logs deployment/raykube-operator --tail=50 >&2 || true
  die "the operator did not become ready"
fi
say "raykube is running. Try: kubectl apply -f jobs/quickstart.yaml && kubectl get tr -w"
