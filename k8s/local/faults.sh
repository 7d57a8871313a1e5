# Phase 6 of k8s/local/e2e.sh (sourced there, after phase 5 served the first model):
# a second training of the same TrainingRun (train.epochs raised: a finished run whose
# training fields change starts a new RayJob that resumes from the latest checkpoint),
# with faults while it runs, and the RayService kept answering throughout:
#   b) the operator pod deleted mid-run (the new RayJob's Ray cluster starting) -> no
#      duplicate children, status catches up (the run is followed to the end)
#   a) a Ray worker pod deleted mid-training (an epoch of this run reported) -> the run
#      completes, no epoch trained twice (result.json's history), the driver's log says
#      how Ray Train recovered
#   c) the second run's best checkpoint promoted -> the RayService serves it, and no
#      request sent during all of phase 6 failed
# ~0.3 s an epoch here: enough epochs that the worker is deleted well before the end
EPOCHS2=${EPOCHS2:-100}

begin "6: faults during a second training, the model served throughout"
first_ckpt=$(tr_field '{.status.serving.checkpoint}')
[[ -n $first_ckpt ]] || first_ckpt=$(k -n "$NS" get rayservice "$NAME-serve" -o jsonpath='{.spec.serveConfigV2}' | grep -o 'checkpoint: .*' | head -1)
note "serving before: $first_ckpt"
old_job_uid=$(k -n "$NS" get rayjob "$NAME" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
first_epochs=$(tr_field '{.spec.train.epochs}')

# requests, one at a time, for the whole phase (stopped by the stop file)
rm -f "$WORK/loop.stop"
"$PY" k8s/local/predict_check.py "$URL" "$JOB" --loop 3600 --stop-file "$WORK/loop.stop" \
  > "$WORK/loop.out" 2> "$WORK/loop.err" &
LOADER=$!

k -n "$NS" patch tr "$NAME" --type merge -p "{\"spec\":{\"train\":{\"epochs\":$EPOCHS2}}}"
new_job() {
  local uid
  uid=$(k -n "$NS" get rayjob "$NAME" -o jsonpath='{.metadata.uid}' 2>/dev/null) && [[ -n $uid && $uid != "$old_job_uid" ]]
}
wait_until 300 "the second RayJob" new_job

# b) the operator pod, while the new run is active (its Ray cluster is starting)
op=$(k -n raykube-system get pods -l app.kubernetes.io/name=raykube-operator -o jsonpath='{.items[0].metadata.name}')
k -n raykube-system delete pod "$op" --wait=false
note "b) deleted operator pod $op while RayJob $NAME is $(k -n "$NS" get rayjob "$NAME" -o jsonpath='{.status.jobDeploymentStatus}')"
k -n raykube-system rollout status deploy/raykube-operator --timeout=300s || fail "the operator did not come back"

# a) a worker pod, once this run has reported an epoch beyond the first run's
epoch_gt() { local e; e=$(tr_field '{.status.progress.epoch}'); [[ -n $e ]] && ((e > $1)); }
wait_until 1200 "the second run to report an epoch after $first_epochs" epoch_gt "$first_epochs"
rc=$(k -n "$NS" get rayjob "$NAME" -o jsonpath='{.status.rayClusterName}')
# The pod that runs a Ray Train worker process: with fractional cpusPerWorker a worker pod
# advertises 1 Ray CPU, and Ray may place both Train workers in one pod (the other then
# runs none, and deleting it would prove nothing).
worker=""
for pod in $(k -n "$NS" get pods -l "ray.io/cluster=$rc,ray.io/node-type=worker" -o name); do
  n=$(k -n "$NS" exec "$pod" -c ray-worker -- pgrep -fc RayTrainWorker 2>/dev/null || true)
  if [[ ${n:-0} -gt 0 ]]; then worker=${pod#pod/}; trainers=$n; break; fi
done
[[ -n $worker ]] || fail "no worker pod of $rc runs a RayTrainWorker"
at=$(tr_field '{.status.progress.epoch}')
# a 1 s grace period: KubeRay's Ray container takes the default 30 s to stop, longer than
# what is left of this training (~0.2 s an epoch)
k -n "$NS" delete pod "$worker" --grace-period=1 --wait=false
note "a) deleted worker pod $worker (running $trainers Ray Train worker process(es); grace period 1 s); the status then said epoch $at/$EPOCHS2 (it lags: the driver reports at most every 5 s)"

# the run completes and the new checkpoint is promoted and served
deadline=$((SECONDS + TRAIN_TIMEOUT))
last=""
while :; do
  row=$(tr_row)
  if [[ $row != "$last" ]]; then echo "  $(date +%T) $row"; last=$row; fi
  phase=$(tr_field '{.status.phase}')
  ckpt=$(tr_field '{.status.serving.checkpoint}')
  [[ $phase == Failed ]] && fail "the TrainingRun failed"
  [[ $phase == Serving && -n $ckpt && $ckpt != "$first_ckpt" ]] && break
  ((SECONDS < deadline)) || fail "the second run was not served within ${TRAIN_TIMEOUT}s"
  sleep 3
done
note "c) promoted and served: $ckpt"
# the served answers come from the new checkpoint before the load stops
wait_until 300 "answers from the new checkpoint" bash -c "curl -fsS -m 10 -X POST -H 'Content-Type: application/json' \
  -d '{\"instances\": [[$(printf '0,%.0s' $(seq 1 63))0]]}' $URL/predict | grep -q '$(basename "$ckpt")'"
sleep 5
touch "$WORK/loop.stop"
wait "$LOADER" && loop_ok=1 || loop_ok=0
LOADER=""
note "requests during phase 6: $(cat "$WORK/loop.out")"
((loop_ok)) || fail "requests failed while serving: $(tail -5 "$WORK/loop.err")"

# no duplicate children (the operator came back and re-read everything)
n_jobs=$(k -n "$NS" get rayjobs -l "raykube.io/trainingrun=$NAME" -o name | wc -l)
n_svcs=$(k -n "$NS" get rayservices -l "raykube.io/trainingrun=$NAME" -o name | wc -l)
n_cms=$(k -n "$NS" get configmaps -l "raykube.io/trainingrun=$NAME" -o name | wc -l)
note "children after the operator restart: $n_jobs RayJob, $n_svcs RayService, $n_cms ConfigMap"
((n_jobs == 1 && n_svcs == 1 && n_cms == 1)) || fail "duplicate children"

# no epoch trained twice: the run's history (result.json) has each epoch once, 1..EPOCHS2
hist=$("$PY" -c "import json,sys; h=json.load(open('$RUN_DIR/result.json'))['history']; print(' '.join(str(int(m['epoch'])) for m in h))")
[[ $hist == "$(seq -s ' ' 1 "$EPOCHS2")" ]] || fail "epochs repeated or missing in the history: $hist"
note "result.json history: epochs 1..$EPOCHS2, each once"
# how the driver saw the worker's loss (KubeRay's submitter follows the job's log)
submitter=$(k -n "$NS" get pods -l "job-name=$NAME" --sort-by=.metadata.creationTimestamp -o name 2>/dev/null | tail -1)
if [[ -n $submitter ]]; then
  k -n "$NS" logs "$submitter" > "$WORK/train2.log" 2>&1 || true
  note "driver log ($WORK/train2.log):"
  { grep -E "continuing from the checkpoint|worker failure|WorkerHealthCheck|restarting the|retry [0-9]+ of" "$WORK/train2.log" \
      || echo "(no worker failure reported)"; } | head -6 | cut -c1-160 | sed 's/^/      /' | tee -a "$SUMMARY"
  line=$(grep -n "worker failure" "$WORK/train2.log" | head -1 | cut -d: -f1)
  if [[ -n $line ]]; then
    note "$(awk -v l="$line" 'NR < l && /^epoch/ {e = $2} NR > l && /^epoch/ && !f {print "last epoch finished before the failure: " e "; the restarted workers began with epoch " $2; f = 1}' "$WORK/train2.log")"
  fi
  dups=$(grep "^epoch" "$WORK/train2.log" | awk '{print $2}' | uniq -d | tr '\n' ' ')
  [[ -z $dups ]] || fail "epochs logged twice by the driver: $dups"
  note "epoch lines in the driver log: $(grep -c "^epoch" "$WORK/train2.log"), none repeated"
fi
end
