#!/usr/bin/env bash
# Build fluxcel (main.go: Flux's healthCheckExprs evaluation, github.com/fluxcd/pkg/runtime
# pinned in go.mod/go.sum) once per user and link it into build/bin/fluxcel. Like MinIO
# (tests/s3/build.sh) the binary is cached outside the checkout, under
# ${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin/fluxcel-<runtime version>-<source hash>/:
# the hash of main.go, go.mod and go.sum names the build, so an edit builds anew and a
# fresh clone of the same source builds nothing (tests/unit/test_manifests.py checks that
# build/bin/fluxcel is the build of the current source).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
runtime_version=$(sed -n 's|^[[:space:]]*github.com/fluxcd/pkg/runtime \(v[^ ]*\)$|\1|p' "$here/go.mod")
[[ -n "$runtime_version" ]] || { echo "tests/gitops/fluxcel/build.sh: no github.com/fluxcd/pkg/runtime in go.mod" >&2; exit 1; }
source_hash=$(cat "$here/main.go" "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
cache="${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin/fluxcel-${runtime_version}-${source_hash}"
if [[ ! -x "$cache/fluxcel" ]]; then
  command -v go >/dev/null || { echo "tests/gitops/fluxcel/build.sh: building fluxcel needs Go (go.dev/dl) on PATH" >&2; exit 1; }
  echo "building fluxcel (Flux runtime ${runtime_version}) into $cache (once per machine)" >&2
  mkdir -p "$cache"
  start=$(date +%s)
  # go.mod/go.sum pin every dependency; -mod=readonly refuses to drift from them.
  (cd "$here" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -trimpath -ldflags "-s -w" -o "$cache/fluxcel.partial" .)
  mv "$cache/fluxcel.partial" "$cache/fluxcel"
  echo "built fluxcel in $(( $(date +%s) - start )) s" >&2
fi
mkdir -p "$root/build/bin"
ln -sfn "$cache/fluxcel" "$root/build/bin/fluxcel"
