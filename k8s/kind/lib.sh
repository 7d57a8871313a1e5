# Shared by the k8s/kind/*.sh scripts (sourced, not run).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
# Versions and default images: one place (also the operator's ConfigMap).
# shellcheck source=../base/config.env
source "$REPO_ROOT/k8s/base/config.env"

CLUSTER="${KIND_CLUSTER:-raykube}"
# kind's node image, pinned (Kubernetes 1.33; use the digest from kind's release notes to
# pin harder). Override with KIND_NODE_IMAGE.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
KUBERAY_NAMESPACE="${KUBERAY_NAMESPACE:-kuberay-system}"
REGISTRY="${REGISTRY:-raykube}"
TAG="${TAG:-dev}"
STORAGE_DIR="${RAYKUBE_KIND_STORAGE:-$REPO_ROOT/build/kind-storage}"

say() { printf '\033[1;36m==> %s\033[0m\n' "$*"; }
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }

need() {
  local tool="$1" hint="$2"
  command -v "$tool" > /dev/null 2>&1 || die "'$tool' is not installed: $hint"
}
need_docker() {
  need docker "https://docs.docker.com/get-docker/"
  docker info > /dev/null 2>&1 || die "docker is installed but its daemon is not reachable (is Docker running?)"
}
need_kind() { need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.29+)"; }
need_helm() { need helm "https://helm.sh/docs/intro/install/ (v3.12+)"; }
need_kubectl() { need kubectl "https://kubernetes.io/docs/tasks/tools/ (v1.27+, includes kustomize)"; }

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; }
