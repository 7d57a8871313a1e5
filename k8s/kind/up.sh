#!/usr/bin/env bash
# Create a kind cluster and install the KubeRay operator (Helm chart, pinned version).
#   k8s/kind/up.sh                  # cluster "raykube"; KIND_CLUSTER=... to rename
source "$(dirname "$0")/lib.sh"
need_docker; need_kind; need_helm; need_kubectl

# The shared "RWX" volume of the kind overlay: a host directory mounted into the node,
# writable by the Ray image's user (uid 1000) — and inspectable from your machine.
mkdir -p "$STORAGE_DIR"
chmod 0777 "$STORAGE_DIR"

if cluster_exists; then
  say "kind cluster '$CLUSTER' exists; reusing it"
else
  say "creating kind cluster '$CLUSTER' ($KIND_NODE_IMAGE)"
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s --config - <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: $STORAGE_DIR
        containerPath: /var/local/raykube
YAML
fi
kubectl config use-context "kind-$CLUSTER" > /dev/null

say "installing the KubeRay operator $RAYKUBE_KUBERAY_VERSION (Helm) into $KUBERAY_NAMESPACE"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update > /dev/null
helm repo update kuberay > /dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --version "$RAYKUBE_KUBERAY_VERSION" \
  --namespace "$KUBERAY_NAMESPACE" --create-namespace \
  --wait --timeout 5m
kubectl wait --for condition=established --timeout=60s \
  crd/rayjobs.ray.io crd/rayclusters.ray.io crd/rayservices.ray.io

say "ready: kind-$CLUSTER with KubeRay $RAYKUBE_KUBERAY_VERSION. Next: make images kind-load deploy e2e"
