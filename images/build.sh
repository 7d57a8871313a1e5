#!/usr/bin/env bash
# Build the three images with one tag: $REGISTRY/raykube:$TAG-{cpu,cuda,operator}
# (one repository, a tag per flavour, as raykube.render.RenderConfig names them).
#   TAG=dev images/build.sh            # raykube/raykube:dev-*: what the kind overlay uses
#   REGISTRY=ghcr.io/raykube TAG=0.1.0 PUSH=1 images/build.sh   # the release (k8s/base)
#   IMAGES="cpu operator" TAG=dev images/build.sh   # skip the (large) CUDA image
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY="${REGISTRY:-raykube}"
TAG="${TAG:-dev}"
IMAGES="${IMAGES:-cpu cuda operator}"
PUSH="${PUSH:-0}"

if ! command -v docker > /dev/null 2>&1; then
  echo "error: docker is not installed (needed to build images): https://docs.docker.com/get-docker/" >&2
  exit 1
fi
if ! docker info > /dev/null 2>&1; then
  echo "error: docker is installed but its daemon is not reachable (is Docker running?)" >&2
  exit 1
fi

VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])' 2>/dev/null || echo 0.0.0)"
REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

for image in $IMAGES; do
  ref="$REGISTRY/raykube:$TAG-$image"
  echo "==> building $ref (images/$image.Dockerfile)"
  DOCKER_BUILDKIT=1 docker build \
    --file "images/$image.Dockerfile" \
    --tag "$ref" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" \
    --build-arg "CREATED=$CREATED" \
    .
  if [[ "$PUSH" == "1" ]]; then
    docker push "$ref"
  fi
done
echo "==> built: $(for i in $IMAGES; do printf '%s ' "$REGISTRY/raykube:$TAG-$i"; done)"
