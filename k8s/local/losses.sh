# Phase 10 of k8s/local/e2e.sh (sourced there; needs only phases 1 and 2): the Ray head
# lost under a running job, then its whole RayCluster, on the real node with KubeRay's
# real controller. Without GCS fault tolerance the job goes with its head each time:
#   a) `kubectl delete pod <head>` -> one Warning event RayHeadLost; KubeRay's new head
#      gets the job again (its submitter, or a RayJob retry on a new cluster) and
#      training goes on from the latest checkpoint (20 epochs past the status's once the
#      old head pod is gone)
#   b) `kubectl delete raycluster` -> one Warning event RayClusterLost (KubeRay recreates
#      the cluster under the same name), and training goes on again
# and then the run succeeds with every epoch once in result.json's history.
LOSS_NAME=losses
LOSS_EPOCHS=${LOSS_EPOCHS:-800}   # ~0.2 s an epoch here: minutes left after both losses

begin "10: the Ray head, then the whole RayCluster, deleted under a running job"
for other in "$NAME" digits-tune; do  # earlier phases' runs: free their cores
  if k -n "$NS" get tr "$other" > /dev/null 2>&1; then
    k -n "$NS" delete tr "$other" --wait=true --timeout=120s
    wait_until 300 "$other's pods to be gone" \
      bash -c "[[ -z \$('$KUBECTL' -n $NS get pods -l raykube.io/trainingrun=$other -o name) ]]"
  fi
done
rm -rf "${STORAGE:?}/$NS/$LOSS_NAME"
sed -e "s/^  name: $NAME\$/  name: $LOSS_NAME/" -e "s/^    epochs: [0-9]*/    epochs: $LOSS_EPOCHS/" \
  -e 's/^    enabled: true/    enabled: false/' "$JOB" > "$WORK/$LOSS_NAME.yaml"
grep -q "epochs: $LOSS_EPOCHS" "$WORK/$LOSS_NAME.yaml" || fail "could not set train.epochs in $WORK/$LOSS_NAME.yaml"
k -n "$NS" apply -f "$WORK/$LOSS_NAME.yaml"
lf() { k -n "$NS" get tr "$LOSS_NAME" -o jsonpath="$1" 2>/dev/null; }
epoch_now() { local e; e=$(lf '{.status.progress.epoch}'); echo "${e:-0}"; }
epoch_past() { (($(epoch_now) > $1)); }
warnings() {  # the run's Warning events of reason $1, one message a line
  k -n "$NS" get events --field-selector "involvedObject.kind=TrainingRun,involvedObject.name=$LOSS_NAME,reason=$1" \
    -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' 2>/dev/null
}
has_warning() { [[ -n $(warnings "$1") ]]; }
cluster_of() { k -n "$NS" get rayjob "$LOSS_NAME" -o jsonpath='{.status.rayClusterName}' 2>/dev/null; }
head_uid() { k -n "$NS" get pods -l "ray.io/cluster=$1,ray.io/node-type=head" -o jsonpath='{.items[0].metadata.uid}' 2>/dev/null; }
pod_gone() { [[ -z $(k get pods -A -o jsonpath="{.items[?(@.metadata.uid==\"$1\")].metadata.name}" 2>/dev/null) ]]; }
# Training went on after a loss: the epoch moved 20 past the one the status held once
# the old head (where the driver that reports runs) was gone. Taken before, it could be
# the old head's, which trains on through its grace period (a RayCluster's pods are
# deleted with the default 30 s).
went_on() {  # $1: the old head's uid
  wait_until 120 "the old head pod to be gone" pod_gone "$1"
  local from; from=$(epoch_now)
  wait_until 600 "training to go on (past epoch $((from + 20)))" epoch_past $((from + 20))
}

# a) the head pod, once the run has checkpoints to resume from
wait_until 600 "$LOSS_NAME to report epoch 50" epoch_past 49
cluster=$(cluster_of)
head=$(k -n "$NS" get pods -l "ray.io/cluster=$cluster,ray.io/node-type=head" -o name | head -1)
[[ -n $head ]] || fail "no head pod of $cluster"
at=$(epoch_now) t=$SECONDS uid=$(head_uid "$cluster")
k -n "$NS" delete "$head" --grace-period=1 --wait=false
wait_until 60 "a RayHeadLost event" has_warning RayHeadLost
went_on "$uid"
note "a) deleted $head at epoch $at (status lags up to 5 s); training went on $((SECONDS - t)) s later; event: $(warnings RayHeadLost | head -1 | cut -c1-300)"

# b) the whole RayCluster the job runs on now
cluster=$(cluster_of)
at=$(epoch_now) t=$SECONDS uid=$(head_uid "$cluster")
[[ -n $uid ]] || fail "no head pod of $cluster"
k -n "$NS" delete raycluster "$cluster" --wait=false
wait_until 60 "a RayClusterLost event" has_warning RayClusterLost
went_on "$uid"
note "b) deleted RayCluster $cluster at epoch $at; training went on $((SECONDS - t)) s later on $(cluster_of); event: $(warnings RayClusterLost | head -1 | cut -c1-300)"
(($(warnings RayHeadLost | grep -c .) == 1)) || fail "RayHeadLost events: $(warnings RayHeadLost)"

# the run ends, every epoch once
deadline=$((SECONDS + TRAIN_TIMEOUT))
until [[ $(lf '{.status.phase}') == Succeeded ]]; do
  [[ $(lf '{.status.phase}') == Failed ]] && fail "the run failed: $(lf '{.status.message}')"
  ((SECONDS < deadline)) || fail "the run did not finish within ${TRAIN_TIMEOUT}s"
  sleep 3
done
hist=$("$PY" -c "import json; h=json.load(open('$STORAGE/$NS/$LOSS_NAME/result.json'))['history']; print(' '.join(str(int(m['epoch'])) for m in h))")
[[ $hist == "$(seq -s ' ' 1 "$LOSS_EPOCHS")" ]] || fail "epochs repeated or missing in the history: $hist"
note "succeeded after $(lf '{.status.attempts}') attempt(s); result.json history: epochs 1..$LOSS_EPOCHS, each once; message: $(lf '{.status.message}' | cut -c1-200)"
k -n "$NS" delete tr "$LOSS_NAME" --wait=true --timeout=120s
end
