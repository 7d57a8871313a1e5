#!/usr/bin/env bash
# Load the locally built images into the kind node (no registry needed).
#   TAG=dev k8s/kind/load.sh        # LOAD_CUDA=1 to load the (large) CUDA image too
source "$(dirname "$0")/lib.sh"
need_docker; need_kind
cluster_exists || die "no kind cluster '$CLUSTER' (run k8s/kind/up.sh first)"

images=("$REGISTRY/raykube:$TAG-cpu" "$REGISTRY/raykube:$TAG-operator")
if [[ "${LOAD_CUDA:-0}" == "1" ]]; then images+=("$REGISTRY/raykube:$TAG-cuda"); fi
for ref in "${images[@]}"; do
  docker image inspect "$ref" > /dev/null 2>&1 \
    || die "image $ref not found locally (build it: TAG=$TAG images/build.sh)"
done
if [[ "$REGISTRY/$TAG" != "raykube/dev" ]]; then
  echo "note: k8s/overlays/kind expects raykube/raykube:dev-*; you load $REGISTRY/raykube:$TAG-*" >&2
fi
say "loading ${images[*]} into kind '$CLUSTER' (the CPU image is large: a minute or two)"
kind load docker-image --name "$CLUSTER" "${images[@]}"
