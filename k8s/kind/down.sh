#!/usr/bin/env bash
# Delete the kind cluster. The shared storage directory (checkpoints) is kept:
# rm -rf build/kind-storage to drop it.
source "$(dirname "$0")/lib.sh"
need_kind
if cluster_exists; then
  say "deleting kind cluster '$CLUSTER'"
  kind delete cluster --name "$CLUSTER"
else
  say "no kind cluster '$CLUSTER'; nothing to do"
fi
echo "checkpoints kept in $STORAGE_DIR"
