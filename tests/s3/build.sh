#!/usr/bin/env bash
# Build the pinned MinIO (tests/s3/versions.env, go.mod) once per user and link it into
# build/bin/minio. The binary is cached outside the checkout, under
# ${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin/minio-<version>/, because CI runs in a fresh
# clone on the same machine: only the first build pays (measured 22 min cold on 2 cores
# shared with other builds, 30 s with a warm Go build cache).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin/minio-${MINIO_VERSION}"
if [[ ! -x "$cache/minio" ]]; then
  command -v go >/dev/null || { echo "tests/s3/build.sh: building MinIO needs Go (go.dev/dl) on PATH" >&2; exit 1; }
  echo "building MinIO ${MINIO_VERSION} into $cache (once per machine, a few minutes)" >&2
  mkdir -p "$cache"
  start=$(date +%s)
  # go.mod/go.sum pin every dependency; -mod=readonly refuses to drift from them.
  (cd "$here" && GOFLAGS=-mod=readonly go build -trimpath -o "$cache/minio.partial" github.com/minio/minio)
  mv "$cache/minio.partial" "$cache/minio"
  echo "built MinIO in $(( $(date +%s) - start )) s" >&2
fi
mkdir -p "$root/build/bin"
ln -sfn "$cache/minio" "$root/build/bin/minio"
