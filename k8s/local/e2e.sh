#!/usr/bin/env bash
# `make e2e-local`: the mission on this machine, end to end, with figures. A real control
# plane (raykube.testing.control_plane, KubeRay on this machine) and one real node
# (tests/node/node.sh: containerd, kubelet, kube-proxy, CoreDNS), our images loaded into
# the node, raykube installed from k8s/overlays/local, and k8s/local/quickstart.yaml
# applied with kubectl:
#   1 cluster + node up, images loaded        5 gate passes, RayService rolls out, POST
#   2 overlay applied, operator Ready           /predict through <name>-serve-svc answers
#   3 TrainingRun applied                       held-out digits (accuracy printed)
#   4 Ray head + worker pods train; `kubectl  6 faults (PHASES=...6): worker pod deleted
#     get tr` shows epoch/valAccuracy;          mid-training, operator pod deleted, a
#     checkpoints land on the shared volume     second checkpoint promoted while serving
#                                             7 TrainingRun deleted: children gone,
#                                               checkpoints kept
#                                             8 a Tune search (k8s/local/tune.yaml): no
#                                               trial lost, the head sized for them
#                                             9 GitOps: `raykube render` of the quickstart
#                                               (another name) applied at once, no
#                                               operator: the RayService waits for the
#                                               RayJob's training, then serves it;
#                                               one that fails for good fails its
#                                               RayService, naming why
#                                            10 the Ray head pod, then the whole
#                                               RayCluster, deleted under a running
#                                               job: each announced, training goes on,
#                                               every epoch once (k8s/local/losses.sh)
# Each phase prints its wall time and the peak memory, sampled every 2 s, of the node's
# pods (resident memory in the kubelet's kubepods cgroup) and of this machine as a whole
# (MemTotal - MemAvailable: includes whatever else runs here).
# Every wait has a timeout; a failure prints the phase, pod states, the last events and
# logs, tears everything down (KEEP=1 leaves it up) and exits non-zero.
#
#   make e2e-local                        # all phases
#   PHASES="1 2 3 4 5 7" make e2e-local   # a subset (1 and 2 always run; each of 4..6 needs
#                                         # the one before it, 7 needs 4; 8..10 need only 1 2)
#   KEEP=1 PHASES="1 2" make e2e-local    # just the cluster, the node and raykube's operator
#   KEEP=1 make e2e-local                 # leave the cluster up afterwards (make e2e-local-down)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO/src:$REPO/operator${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$REPO/.venv/bin/python}
WORK=$REPO/build/e2e-local
CLUSTER_DIR=$WORK/cluster
export KUBECONFIG=$CLUSTER_DIR/kubeconfig
KUBECTL=$REPO/build/bin/kubectl
NODE_IP=${NODE_IP:-10.243.0.1}
NS=default
NAME=quickstart
JOB=k8s/local/quickstart.yaml
STORAGE=/var/lib/raykube-node/storage   # the hostPath of k8s/overlays/local/storage-pv.yaml
RUN_DIR=$STORAGE/$NS/$NAME
IMAGES="raykube/raykube:dev-operator raykube/raykube:dev-cpu"
PHASES=" ${PHASES:-1 2 3 4 5 6 7 8 9 10} "
want() { [[ $PHASES == *" $1 "* ]]; }
read -ra _shown <<<"$PHASES"; SHOWN="PHASES=\"${_shown[*]}\""
for p in $PHASES; do
  [[ $p =~ ^([1-9]|10)$ ]] || { echo "error: $SHOWN: '$p' is not a phase (1..10)" >&2; exit 2; }
done
for p in 4 5 6; do  # a phase works on what the one before it left
  if want "$p" && ! want $((p - 1)); then
    echo "error: $SHOWN: phase $p needs phase $((p - 1))" >&2; exit 2
  fi
done
if want 7 && ! want 4; then echo "error: $SHOWN: phase 7 needs phase 4 (checkpoints)" >&2; exit 2; fi
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-1800}
KUBEPODS_MEM=/sys/fs/cgroup/memory/kubepods

mkdir -p "$WORK"
SUMMARY=$WORK/summary.txt
: > "$SUMMARY"
k() { "$KUBECTL" "$@"; }
say() { printf '\033[1;36m==> %s\033[0m\n' "$*"; }
note() { echo "    $*"; echo "    $*" >> "$SUMMARY"; }

# ------------------------------------------------------------------ memory sampling
mem_used_mib() { awk '/^MemTotal/ {t=$2} /^MemAvailable/ {a=$2} END {print int((t-a)/1024)}' /proc/meminfo; }
pods_rss_mib() {  # resident memory of every pod (the kubelet's kubepods cgroup, no page cache)
  awk '/^total_rss / {print int($2/1048576)}' "$KUBEPODS_MEM/memory.stat" 2>/dev/null || echo 0
}
sampler() {  # every 2 s: max per phase of the machine's used memory and of the pods' RSS
  while :; do
    local used peak
    used=$(mem_used_mib); peak=$(cat "$WORK/mem-peak" 2>/dev/null || echo 0)
    ((used > peak)) && echo "$used" > "$WORK/mem-peak"
    used=$(pods_rss_mib); peak=$(cat "$WORK/pods-peak" 2>/dev/null || echo 0)
    ((${used:-0} > peak)) && echo "$used" > "$WORK/pods-peak"
    sleep 2
  done
}
echo 0 > "$WORK/mem-peak"; echo 0 > "$WORK/pods-peak"
sampler &
SAMPLER=$!

# ------------------------------------------------------------------------ phases
PHASE=none PHASE_T0=$SECONDS
begin() {
  PHASE=$1; PHASE_T0=$SECONDS
  mem_used_mib > "$WORK/mem-peak"
  pods_rss_mib > "$WORK/pods-peak"
  say "phase $PHASE"
  echo "phase $PHASE" >> "$SUMMARY"
}
end() {
  note "phase $PHASE: $((SECONDS - PHASE_T0)) s wall; peak memory (2 s samples): pods' RSS $(cat "$WORK/pods-peak") MiB, machine $(cat "$WORK/mem-peak") MiB in use"
}

dump() {  # what a failure needs to be understood
  echo "---------------------------------------------------------------- pods" >&2
  k get pods -A -o wide >&2 2>&1 || true
  echo "---------------------------------------------------------------- trainingrun" >&2
  k -n "$NS" get tr "$NAME" -o yaml >&2 2>&1 | sed -n '/^status:/,$p' || true
  k -n "$NS" get rayjobs,rayclusters,rayservices,jobs,svc -o wide >&2 2>&1 || true
  echo "---------------------------------------------------------------- last events" >&2
  k get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 >&2 || true
  echo "---------------------------------------------------------------- operator log" >&2
  k -n raykube-system logs deploy/raykube-operator --tail=40 >&2 2>&1 || true
  echo "---------------------------------------------------------------- kuberay log" >&2
  tail -30 "$CLUSTER_DIR/logs/kuberay-operator.log" >&2 2>/dev/null || true
  local head
  head=$(k -n "$NS" get pods -l "raykube.io/trainingrun=$NAME,ray.io/node-type=head" -o name 2>/dev/null | head -1)
  if [[ -n $head ]]; then
    echo "---------------------------------------------------------------- $head log" >&2
    k -n "$NS" logs "$head" --tail=40 >&2 2>&1 || true
  fi
}
fail() {
  printf '\033[1;31merror: phase %s: %s\033[0m\n' "$PHASE" "$*" >&2
  echo "FAILED in phase $PHASE: $*" >> "$SUMMARY"
  dump
  exit 1
}
# wait_until SECONDS WHAT CMD...: CMD every 3 s until it succeeds, else fail
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" > /dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
    sleep 3
  done
}

teardown() {
  local rc=$?
  kill "$SAMPLER" 2>/dev/null || true
  [[ -n ${LOADER:-} ]] && kill "$LOADER" 2>/dev/null || true
  if [[ ${KEEP:-0} == 1 ]]; then
    say "KEEP=1: left up (export KUBECONFIG=$KUBECONFIG; make e2e-local-down)"
  else
    say "tearing down (node, control plane)"
    tests/node/node.sh down > "$WORK/down.log" 2>&1 || true
    "$PY" -m raykube.testing.control_plane down --dir "$CLUSTER_DIR" >> "$WORK/down.log" 2>&1 || true
  fi
  echo
  say "summary ($SUMMARY)"
  cat "$SUMMARY"
  exit "$rc"
}
trap teardown EXIT
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

tr_field() { k -n "$NS" get tr "$NAME" -o jsonpath="$1" 2>/dev/null; }
tr_row() { k -n "$NS" get tr "$NAME" --no-headers 2>/dev/null | tr -s ' '; }
pods_of() { k -n "$NS" get pods -l "raykube.io/trainingrun=$NAME$1" --no-headers -o custom-columns=N:.metadata.name,P:.status.phase 2>/dev/null; }

# ============================================================ 1: cluster, node, images
begin "1: control plane + real node up, images loaded"
images/ensure-docker.sh
# An image is current when the code it was built from (its revision label) is this
# checkout's: src, pyproject.toml and its Dockerfile, plus operator/ for the operator image
# (README and src/raykube/testing edits do not count: no pod runs them). Stale or missing
# images are rebuilt (`make images`): ~15 min the first time, ~1 min after a source edit.
image_paths() {
  case $1 in
    *operator) echo "src operator pyproject.toml images/operator.Dockerfile" ;;
    *) echo "src pyproject.toml images/cpu.Dockerfile images/base" ;;
  esac
}
image_current() {
  local rev
  rev=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$1" 2>/dev/null) \
    && [[ -n $rev && $rev != unknown ]] \
    && git diff --quiet "$rev" -- $(image_paths "$1") ':(exclude)src/raykube/testing' 2>/dev/null
}
stale=""
for ref in $IMAGES; do
  image_current "$ref" || stale+=" ${ref##*:dev-}"
done
if [[ -n $stale ]]; then
  say "missing or built from other code:$stale: make images IMAGES=\"${stale# }\""
  t=$SECONDS
  make images IMAGES="${stale# }"
  note "make images IMAGES=\"${stale# }\": $((SECONDS - t)) s"
fi
note "images: $(for ref in $IMAGES; do printf '%s (%s) ' "$ref" "$(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')"; done)"
tests/cluster/build-bins.sh
tests/node/build-node-bins.sh
tests/node/node.sh down > /dev/null 2>&1 || true
"$PY" -m raykube.testing.control_plane down --dir "$CLUSTER_DIR" > /dev/null 2>&1 || true
# A fresh cluster every time: etcd's state from a previous run would bring back its objects,
# and the kubernetes Service's endpoint port (the API server gets a new free port per up).
rm -rf "$CLUSTER_DIR"
tests/node/node.sh net-up
t=$SECONDS
"$PY" -m raykube.testing.control_plane up --dir "$CLUSTER_DIR" --node-ip "$NODE_IP" \
  --no-kwok --no-raykube --timeout 180
note "control plane up in $((SECONDS - t)) s (API server on $NODE_IP)"
t=$SECONDS
KUBECONFIG_NODE=$KUBECONFIG IMAGES="$IMAGES" tests/node/node.sh up
note "node Ready with images loaded in $((SECONDS - t)) s"
mkdir -p "$STORAGE" && chown 1000:100 "$STORAGE"
# pods reach the API server: the kubernetes Service has the node address as endpoint
wait_until 60 "the kubernetes Service's endpoints" \
  bash -c "k() { '$KUBECTL' \"\$@\"; }; k get endpointslice -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[0].endpoints[0].addresses[0]}' | grep -qx '$NODE_IP'"
end

# ============================================================ 2: the overlay
begin "2: kubectl apply --server-side -k k8s/overlays/local"
k apply --server-side -k k8s/overlays/local
wait_until 60 "the TrainingRun CRD" k wait --for=condition=Established crd/trainingruns.raykube.io --timeout=5s
k -n raykube-system rollout status deploy/raykube-operator --timeout=300s || fail "the operator did not become Ready"
wait_until 60 "the storage claim to bind" \
  bash -c "'$KUBECTL' -n $NS get pvc raykube-storage -o jsonpath='{.status.phase}' | grep -qx Bound"
k -n raykube-system get pods -o wide
end

# ============================================================ 3: the TrainingRun
if want 3; then
  begin "3: kubectl apply -f $JOB"
  rm -rf "${RUN_DIR:?}"   # a previous e2e's checkpoints would make this a resumed run
  k -n "$NS" apply -f "$JOB"
  wait_until 60 "the RayJob" k -n "$NS" get rayjob "$NAME"
  k -n "$NS" get tr "$NAME"
  end
fi

# ============================================================ 4: training in Ray pods
if want 4; then
  begin "4: KubeRay's Ray pods train (kubectl get tr every 2 s)"
  deadline=$((SECONDS + TRAIN_TIMEOUT))
  last=""
  epochs_seen=()
  while :; do
    row=$(tr_row)
    phase=$(awk '{print $2}' <<<"$row")
    epoch=$(awk '$3 ~ /^[0-9]+$/ {print $3}' <<<"$row")   # the Epoch column of this very row
    if [[ $row != "$last" ]]; then echo "  $(date +%T) $row"; last=$row; fi
    [[ -n $epoch && " ${epochs_seen[*]} " != *" $epoch "* ]] && epochs_seen+=("$epoch")
    case $phase in
      Succeeded|Serving) break ;;
      Failed) fail "the TrainingRun failed" ;;
    esac
    ((SECONDS < deadline)) || fail "training did not finish within ${TRAIN_TIMEOUT}s"
    sleep 2
  done
  note "epochs seen in kubectl get tr: ${epochs_seen[*]}"
  note "best valAccuracy: $(tr_field '{.status.checkpoint.metrics.valAccuracy}') (last epoch's: $(tr_field '{.status.progress.valAccuracy}'))"
  ckpts=$(find "$RUN_DIR" -maxdepth 3 -type d -name 'checkpoint_*' 2>/dev/null | wc -l)
  ((ckpts > 0)) || fail "no checkpoint_* directory under $RUN_DIR (the shared volume)"
  note "checkpoints on the shared volume ($RUN_DIR): $ckpts, best/ $( [[ -d $RUN_DIR/best ]] && echo present || echo missing)"
  end
fi

# ============================================================ 5: gate, RayService, predict
if want 5; then
  begin "5: gate passes, RayService rolls out, POST /predict through $NAME-serve-svc"
  [[ $(tr_field '{.status.conditions[?(@.type=="Promoted")].status}') != False ]] \
    || fail "the gate refused the model: $(tr_field '{.status.conditions[?(@.type=="Promoted")].message}')"
  wait_until 900 "phase Serving" bash -c "'$KUBECTL' -n $NS get tr $NAME -o jsonpath='{.status.phase}' | grep -qx Serving"
  k -n "$NS" wait "trainingrun/$NAME" --for=condition=Ready --timeout=120s
  k -n "$NS" get tr "$NAME"
  svc_ip=$(k -n "$NS" get svc "$NAME-serve-svc" -o jsonpath='{.spec.clusterIP}')
  URL=http://$svc_ip:8000
  wait_until 120 "GET $URL/healthz" curl -fsS -m 5 "$URL/healthz"
  note "serving: $(tr_field '{.status.serving.endpoint}') = Service $NAME-serve-svc $svc_ip:8000 (kube-proxy)"
  out=$("$PY" k8s/local/predict_check.py "$URL" "$JOB" --count 200) || fail "predict: $out"
  note "POST /predict: $out"
  end
fi

# ============================================================ 6: faults
if want 6; then
  source k8s/local/faults.sh
fi

# ============================================================ 7: delete
if want 7; then
  begin "7: kubectl delete trainingrun: children gone, checkpoints kept"
  before=$(find "$RUN_DIR" -maxdepth 3 -type d -name 'checkpoint_*' | wc -l)
  k -n "$NS" delete tr "$NAME" --wait=true --timeout=120s
  children() {
    k -n "$NS" get rayjobs,rayservices,rayclusters,pods,svc,configmaps,serviceaccounts,roles,rolebindings \
      -l "raykube.io/trainingrun=$NAME" -o name 2>/dev/null
  }
  wait_until 120 "KubeRay's submitter Job to be gone" bash -c "! '$KUBECTL' -n $NS get job $NAME"
  wait_until 300 "every child to be gone ($(children | tr '\n' ' '))" bash -c "[[ -z \$('$KUBECTL' -n $NS get rayjobs,rayservices,rayclusters,pods,svc,configmaps,serviceaccounts,roles,rolebindings -l raykube.io/trainingrun=$NAME -o name 2>/dev/null) ]]"
  after=$(find "$RUN_DIR" -maxdepth 3 -type d -name 'checkpoint_*' | wc -l)
  ((after == before && after > 0)) || fail "checkpoints: $before before the delete, $after after"
  note "children gone; checkpoints kept: $after under $RUN_DIR"
  end
fi
# ============================================================ 8: a Tune search
if want 8; then
  TUNE=k8s/local/tune.yaml TUNE_NAME=digits-tune
  begin "8: kubectl apply -f $TUNE: a search's trials on a real node"
  if k -n "$NS" get tr "$NAME" > /dev/null 2>&1; then  # phase 7 not run: free its cores
    k -n "$NS" delete tr "$NAME" --wait=true --timeout=120s
    wait_until 300 "the quickstart's pods to be gone" \
      bash -c "[[ -z \$('$KUBECTL' -n $NS get pods -l raykube.io/trainingrun=$NAME -o name) ]]"
  fi
  rm -rf "${STORAGE:?}/$NS/$TUNE_NAME"
  k -n "$NS" apply -f "$TUNE"
  wait_until 60 "the RayJob" k -n "$NS" get rayjob "$TUNE_NAME"
  head_mem=$(k -n "$NS" get rayjob "$TUNE_NAME" -o jsonpath='{.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources.limits.memory}')
  [[ $head_mem == 2560Mi ]] || fail "the search's head got $head_mem, not the 2560Mi its 2 concurrent trials need"
  tf() { k -n "$NS" get tr "$TUNE_NAME" -o jsonpath="$1" 2>/dev/null; }
  deadline=$((SECONDS + TRAIN_TIMEOUT)) last=""
  while :; do
    row="$(tf '{.status.phase} {.status.trials}')"
    if [[ $row != "$last" ]]; then echo "  $(date +%T) $row"; last=$row; fi
    case $(tf '{.status.phase}') in
      Succeeded) break ;;
      Failed) fail "the search failed: $(tf '{.status.message}')" ;;
    esac
    ((SECONDS < deadline)) || fail "the search did not finish within ${TRAIN_TIMEOUT}s"
    sleep 3
  done
  [[ $(tf '{.status.trials.failed}') == 0 && $(tf '{.status.trials.running}') == 0 \
     && $(( $(tf '{.status.trials.finished}') + $(tf '{.status.trials.stopped}') )) == 4 ]] \
    || fail "trials: $(tf '{.status.trials}') (4 should end, none fail): $(tf '{.status.message}')"
  [[ $(tf '{.status.progress.trial}') == "$(tf '{.status.bestTrial.trialId}')" ]] \
    || fail "kubectl get tr shows trial $(tf '{.status.progress.trial}'), not the best $(tf '{.status.bestTrial.trialId}')"
  note "head $head_mem; trials $(tf '{.status.trials}'); best $(tf '{.status.bestTrial.trialId}') valAccuracy $(tf '{.status.bestTrial.metric}')"
  k -n "$NS" get tr "$TUNE_NAME"
  k -n "$NS" delete tr "$TUNE_NAME" --wait=true --timeout=120s
  end
fi
# ============================================================ 9: GitOps, no operator
if want 9; then
  GITOPS_NAME=gitops-quickstart
  GITOPS=$WORK/$GITOPS_NAME.yaml
  begin "9: raykube render | kubectl apply: the RayService waits for the RayJob beside it"
  if k -n "$NS" get tr "$NAME" > /dev/null 2>&1; then  # phases 7/8 not run: free its cores
    k -n "$NS" delete tr "$NAME" --wait=true --timeout=120s
    wait_until 300 "the quickstart's pods to be gone" \
      bash -c "[[ -z \$('$KUBECTL' -n $NS get pods -l raykube.io/trainingrun=$NAME -o name) ]]"
  fi
  rm -rf "${STORAGE:?}/$NS/$GITOPS_NAME"
  # the quickstart under another name, rendered with its RayService as a GitOps user
  # commits it: one file, applied at once, no TrainingRun and no operator involved
  sed "s/^  name: $NAME\$/  name: $GITOPS_NAME/" "$JOB" > "$WORK/$GITOPS_NAME.job.yaml"
  "$PY" -m raykube render "$WORK/$GITOPS_NAME.job.yaml" -n "$NS" \
    --image raykube/raykube:dev-cpu > "$GITOPS"
  grep -q 'waitForTraining: true' "$GITOPS" || fail "the rendered RayService does not wait for training"
  k apply --server-side -f "$GITOPS"
  gj() { k -n "$NS" get rayjob "$GITOPS_NAME" -o jsonpath="$1" 2>/dev/null; }
  app_status() {  # the serve app's status on the RayService's (pending or active) cluster
    k -n "$NS" get rayservice "$GITOPS_NAME-serve" -o jsonpath='{.status.pendingServiceStatus.applicationStatuses.classifier.status}{.status.activeServiceStatus.applicationStatuses.classifier.status}' 2>/dev/null
  }
  deadline=$((SECONDS + TRAIN_TIMEOUT)) last="" seen_waiting=""
  while :; do
    row="RayJob $(gj '{.status.jobDeploymentStatus}')/$(gj '{.status.jobStatus}'); serve app: $(app_status)"
    if [[ $row != "$last" ]]; then echo "  $(date +%T) $row"; last=$row; fi
    # while the RayJob trains, the serving app must be starting, not failed
    [[ $(app_status) == DEPLOY_FAILED ]] && fail "the serve app failed while training ran: $row"
    [[ $(gj '{.status.jobStatus}') == RUNNING && $(app_status) == DEPLOYING ]] && seen_waiting=1
    case $(gj '{.status.jobStatus}') in
      SUCCEEDED) break ;;
      FAILED|STOPPED) fail "the rendered RayJob ended $(gj '{.status.jobStatus}'): $(gj '{.status.message}')" ;;
    esac
    ((SECONDS < deadline)) || fail "the rendered RayJob did not finish within ${TRAIN_TIMEOUT}s"
    sleep 2
  done
  [[ -n $seen_waiting ]] && note "while the RayJob trained, its RayService's app was DEPLOYING (waiting for best/)" \
    || note "the RayJob finished before the RayService's app was seen DEPLOYING (its pods started late)"
  [[ -f $STORAGE/$NS/$GITOPS_NAME/result.json ]] || fail "no result.json under $STORAGE/$NS/$GITOPS_NAME"
  wait_until 600 "the RayService to be Ready" bash -c \
    "'$KUBECTL' -n $NS get rayservice $GITOPS_NAME-serve -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # what the replica said, in its log file in the serving pod (where Serve keeps it)
  cluster=$(k -n "$NS" get rayservice "$GITOPS_NAME-serve" -o jsonpath='{.status.activeServiceStatus.rayClusterName}')
  pod=$(k -n "$NS" get pods -l "ray.io/cluster=$cluster,ray.io/node-type=worker" -o name | head -1)
  said=$(k -n "$NS" exec "$pod" -c ray-worker -- bash -c 'cat /tmp/ray/session_latest/logs/serve/replica_*.log' \
    | grep -o 'waiting for the training run.*\|the training run in .* has finished.*' || true)
  if [[ -n $seen_waiting ]]; then
    grep -q 'has finished (waited' <<<"$said" || fail "the replica's log in $pod does not say it waited: $said"
  fi
  while read -r line; do
    if [[ -n $line ]]; then note "replica log: $line"; fi
  done <<<"$said"
  svc_ip=$(k -n "$NS" get svc "$GITOPS_NAME-serve-svc" -o jsonpath='{.spec.clusterIP}')
  wait_until 120 "GET http://$svc_ip:8000/healthz" curl -fsS -m 5 "http://$svc_ip:8000/healthz"
  out=$("$PY" k8s/local/predict_check.py "http://$svc_ip:8000" "$WORK/$GITOPS_NAME.job.yaml" --count 200) \
    || fail "predict: $out"
  note "rendered RayService, no operator: POST /predict: $out"
  k delete -f "$GITOPS" --wait=true --timeout=180s

  # A rendered run that fails for good (every attempt fails the same way: no dataset):
  # its RayService's app must end DEPLOY_FAILED naming the run's reason
  # (raykube.run_failure), not wait for ever. Its replicas believe a failure from before
  # they waited after 5 minutes, one that happens while they wait at once.
  FAILING_NAME=gitops-failing
  rm -rf "${STORAGE:?}/$NS/$FAILING_NAME"
  sed -e "s/^  name: $NAME\$/  name: $FAILING_NAME/" \
      -e "s|^    dataset: digits\$|    dataset: image-folder\n    uri: /nonexistent/images|" \
      "$JOB" > "$WORK/$FAILING_NAME.job.yaml"
  "$PY" -m raykube render "$WORK/$FAILING_NAME.job.yaml" -n "$NS" \
    --image raykube/raykube:dev-cpu > "$WORK/$FAILING_NAME.yaml"
  k apply --server-side -f "$WORK/$FAILING_NAME.yaml"
  failing_app() {
    k -n "$NS" get rayservice "$FAILING_NAME-serve" -o jsonpath="{.status.pendingServiceStatus.applicationStatuses.classifier$1}{.status.activeServiceStatus.applicationStatuses.classifier$1}" 2>/dev/null
  }
  wait_until 480 "the failing run's serve app to be DEPLOY_FAILED" \
    bash -c "[[ \$('$KUBECTL' -n $NS get rayservice $FAILING_NAME-serve -o jsonpath='{.status.pendingServiceStatus.applicationStatuses.classifier.status}{.status.activeServiceStatus.applicationStatuses.classifier.status}') == DEPLOY_FAILED ]]"
  why=$(failing_app '.serveDeploymentStatuses.Classifier.message' | grep -o 'TrainingRunFailed: .*' || true)
  [[ $why == *"failed for good"*"image-folder /nonexistent/images: no such folder"*"there is no model to serve"* ]] \
    || fail "the failing run's RayService does not say why: $(failing_app '.serveDeploymentStatuses.Classifier.message')"
  grep -q '"final": true' "$STORAGE/$NS/$FAILING_NAME/failed.json" \
    || fail "no final failure in $STORAGE/$NS/$FAILING_NAME/failed.json"
  note "a rendered run that failed for good: RayJob $(k -n "$NS" get rayjob "$FAILING_NAME" -o jsonpath='{.status.jobDeploymentStatus}, {.status.failed} failed attempt(s)'); RayService: ${why:0:240}"
  k delete -f "$WORK/$FAILING_NAME.yaml" --wait=true --timeout=180s
  end
fi
# ============================================================ 10: head and cluster lost
if want 10; then
  source k8s/local/losses.sh
fi
say "e2e-local passed"
echo "PASSED" >> "$SUMMARY"
