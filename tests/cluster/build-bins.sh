#!/usr/bin/env bash
# `make cluster-bins`: build the local control plane's binaries from Go modules, pinned in
# versions.env and the go.mod/go.sum beside this script, into a per-user cache keyed by
# version (CI runs in a fresh clone on the same machine: a second run builds nothing), and
# link them into build/bin/.
#
#   RAYKUBE_CACHE   cache root (default ~/.cache/raykube); binaries land in $RAYKUBE_CACHE/bin/<name>-<version>/
#   BINS            which binaries (default: all of them)
#
# Nothing is downloaded except Go modules from the module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin
out=$repo/build/bin
mkdir -p "$cache" "$out"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
  k8s_ldflags+=" -X $pkg.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

# name  module-dir  package  version  ldflags
targets=(
  "etcd|kubernetes|go.etcd.io/etcd/server/v3|$ETCD_VERSION|-s -w"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$KUBERNETES_VERSION|$k8s_ldflags"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$KUBERNETES_VERSION|$k8s_ldflags"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$KUBERNETES_VERSION|$k8s_ldflags"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|$KUBERNETES_VERSION|$k8s_ldflags"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|$KWOK_VERSION|-s -w"
  "kuberay-operator|kuberay|github.com/ray-project/kuberay/ray-operator|$KUBERAY_VERSION|-s -w"
)

want=" ${BINS:-etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kuberay-operator} "
for t in "${targets[@]}"; do
  IFS='|' read -r name dir pkg version ldflags <<<"$t"
  [[ $want == *" $name "* ]] || continue
  dest=$cache/$name-$version/$name
  if [[ ! -x $dest ]]; then
    echo "building $name $version ($pkg)" >&2
    start=$(date +%s)
    mkdir -p "$(dirname "$dest")"
    (cd "$here/$dir" && go build -trimpath -ldflags "$ldflags" -o "$dest.tmp" "$pkg")
    mv "$dest.tmp" "$dest"
    echo "built $name in $(( $(date +%s) - start )) s" >&2
  fi
  ln -sfn "$dest" "$out/$name"
done

# Data files that come from the same module versions as the binaries.
data=$cache/data-kwok-$KWOK_VERSION
if [[ ! -f $data/stages.yaml ]]; then
  kwok_dir=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$data"
  # kwokctl's defaults: nodes become Ready and keep a lease, pods go straight to Running/Ready.
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$kwok_dir/kustomize/stage/$f"; echo "---"
  done >"$data/stages.yaml.tmp"
  mv "$data/stages.yaml.tmp" "$data/stages.yaml"
fi
ln -sfn "$data/stages.yaml" "$out/kwok-stages.yaml"

crds=$cache/data-kuberay-$KUBERAY_VERSION
if [[ ! -d $crds ]]; then
  kuberay_dir=$(cd "$here/kuberay" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)
  mkdir -p "$crds.tmp"
  cp "$kuberay_dir"/config/crd/bases/ray.io_*.yaml "$crds.tmp/"
  mv "$crds.tmp" "$crds"
fi
ln -sfn "$crds" "$repo/build/kuberay-crds-$KUBERAY_VERSION"
