#!/usr/bin/env bash
# `make node-bins`: build what a real (non-kwok) node needs beside the control plane:
#   kubelet, kube-proxy  from k8s.io/kubernetes at the control plane's version
#                        (tests/cluster/versions.env), with the control plane's go.mod pins;
#   pause                the pod sandbox binary, from the same module's build/pause/linux/pause.c
#                        (no registry here: registry.k8s.io/pause cannot be pulled);
#   coredns              the cluster DNS, from github.com/coredns/coredns at $COREDNS_VERSION with
#                        the plugins tests/cluster/coredns/main.go imports (pinned in its go.mod/go.sum);
# into the same per-user cache as tests/cluster/build-bins.sh ($RAYKUBE_CACHE/bin/<name>-<version>/),
# linked into build/bin/. The container runtime (containerd, runc) and the CNI plugins come
# from Debian packages (installed by tests/node/node.sh).
#
# Why a copy of tests/cluster/kubernetes/go.mod: `go build -mod=mod` of kubelet may add
# requirements to go.mod/go.sum; building in a scratch copy keeps the control plane's module
# files untouched while using exactly its pins (and the shared Go build cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../cluster/versions.env
source "$repo/tests/cluster/versions.env"
cache=${RAYKUBE_CACHE:-$HOME/.cache/raykube}/bin
out=$repo/build/bin
mkdir -p "$cache" "$out"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
  ldflags+=" -X $pkg.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

moddir=$repo/build/node/gomod-kubernetes
want=" ${BINS:-kubelet kube-proxy pause coredns} "
for name in kubelet kube-proxy; do
  [[ $want == *" $name "* ]] || continue
  dest=$cache/$name-$KUBERNETES_VERSION/$name
  if [[ ! -x $dest ]]; then
    mkdir -p "$moddir" "$(dirname "$dest")"
    cp "$repo/tests/cluster/kubernetes/go.mod" "$repo/tests/cluster/kubernetes/go.sum" "$moddir/"
    echo "building $name $KUBERNETES_VERSION" >&2
    start=$(date +%s)
    (cd "$moddir" && go build -trimpath -ldflags "$ldflags" -o "$dest.tmp" "k8s.io/kubernetes/cmd/$name")
    mv "$dest.tmp" "$dest"
    echo "built $name in $(( $(date +%s) - start )) s" >&2
  fi
  ln -sfn "$dest" "$out/$name"
done

if [[ $want == *" pause "* ]]; then
  dest=$cache/pause-$KUBERNETES_VERSION/pause
  if [[ ! -x $dest ]]; then
    mkdir -p "$moddir" "$(dirname "$dest")"
    cp "$repo/tests/cluster/kubernetes/go.mod" "$repo/tests/cluster/kubernetes/go.sum" "$moddir/"
    src=$(cd "$moddir" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    # Static, so the sandbox image needs nothing but this file.
    gcc -Os -static -DVERSION="$KUBERNETES_VERSION-raykube" -o "$dest.tmp" "$src"
    strip "$dest.tmp"
    mv "$dest.tmp" "$dest"
  fi
  ln -sfn "$dest" "$out/pause"
fi

if [[ $want == *" coredns "* ]]; then
  dest=$cache/coredns-$COREDNS_VERSION/coredns
  if [[ ! -x $dest ]]; then
    mkdir -p "$(dirname "$dest")"
    echo "building coredns $COREDNS_VERSION" >&2
    start=$(date +%s)
    (cd "$repo/tests/cluster/coredns" && go build -trimpath -ldflags "-s -w" -o "$dest.tmp" .)
    mv "$dest.tmp" "$dest"
    echo "built coredns in $(( $(date +%s) - start )) s" >&2
  fi
  ln -sfn "$dest" "$out/coredns"
fi
