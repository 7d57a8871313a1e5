#!/usr/bin/env bash
# Build the three images with one tag: $REGISTRY/raykube:$TAG-{cpu,cuda,operator}
# (one repository, a tag per flavour, as raykube.render.RenderConfig names them).
#   TAG=dev images/build.sh            # raykube/raykube:dev-*: what the kind overlay uses
#   REGISTRY=ghcr.io/raykube TAG=0.1.0 PUSH=1 images/build.sh   # the release (k8s/base)
#   IMAGES="cpu operator" TAG=dev images/build.sh   # skip the (large) CUDA image
#   BASE=standin images/build.sh       # no image registry: build on local stand-in bases
#
# BASE=official (the default) builds FROM the Dockerfiles' defaults: rayproject/ray:<ray>-py311-cpu
# and python:3.11.*-slim-bookworm, and torch from download.pytorch.org. BASE=standin (what
# `make images` uses on this project's machines, which reach no registry and only PyPI)
# builds those two bases locally once (images/base/build-standin.sh, cached by version) and
# takes torch from PyPI (TORCH_INDEX, overridable). Docker is installed and started if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY="${REGISTRY:-raykube}"
TAG="${TAG:-dev}"
IMAGES="${IMAGES:-cpu cuda operator}"
PUSH="${PUSH:-0}"
BASE="${BASE:-official}"

images/ensure-docker.sh

VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])' 2>/dev/null || echo 0.0.0)"
REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RAY_VERSION="$(sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)"

base_args=()
case "$BASE" in
  official) ;;
  standin)
    images/base/build-standin.sh
    ray_base="raykube/ray-standin:${RAY_VERSION}-py311-cpu"
    python_base="raykube/python-standin:3.11-bookworm"
    # download.pytorch.org is not reachable where stand-ins are needed; PyPI is. PyPI's
    # torch has no "+cpu" build: its Linux wheels are the CUDA 13.0 build (larger).
    TORCH_INDEX="${TORCH_INDEX:-https://pypi.org/simple}"
    ;;
  *) echo "error: BASE must be official or standin, not $BASE" >&2; exit 2 ;;
esac

# BuildKit needs the buildx plugin with Docker >= 23 clients; without it, the classic
# builder builds these Dockerfiles just the same.
if [[ -z "${DOCKER_BUILDKIT:-}" ]]; then
  if docker buildx version > /dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi

summary=()
for image in $IMAGES; do
  ref="$REGISTRY/raykube:$TAG-$image"
  args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED")
  if [[ "$BASE" == standin ]]; then
    if [[ "$image" == operator ]]; then
      args+=(--build-arg "PYTHON_IMAGE=$python_base")
    else
      args+=(--build-arg "BASE_IMAGE=$ray_base")
    fi
  fi
  if [[ -n "${TORCH_INDEX:-}" && "$image" != operator ]]; then
    # The index's local version: "+cpu"/"+cuNNN" on download.pytorch.org, none on PyPI.
    local_version="${TORCH_LOCAL-}"
    if [[ -z "${TORCH_LOCAL+set}" && "$TORCH_INDEX" == https://download.pytorch.org/whl/* ]]; then
      local_version="+${TORCH_INDEX##*/}"
    fi
    args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX" --build-arg "TORCH_LOCAL=$local_version")
  fi
  echo "==> building $ref (images/$image.Dockerfile, BASE=$BASE)"
  start=$SECONDS
  # --network host: pip in the build reaches the package index the way this host does.
  docker build --network host \
    --file "images/$image.Dockerfile" \
    --tag "$ref" \
    "${args[@]}" \
    .
  size_mb=$(( $(docker image inspect --format '{{.Size}}' "$ref") / 1000000 ))
  summary+=("$ref: built in $((SECONDS - start)) s, ${size_mb} MB")
  if [[ "$PUSH" == "1" ]]; then
    docker push "$ref"
  fi
done
echo "==> built:"
printf '    %s\n' "${summary[@]}"
