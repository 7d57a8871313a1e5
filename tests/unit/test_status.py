"""raykube_operator.status: KubeRay status -> conditions/phase, gate, serving (pure)."""

from __future__ import annotations

import pytest

from raykube_operator import status as st

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"


def job(**status):
    # KubeRay suspends a RayJob whose spec says so; one Suspended without it is resuming
    spec = {"suspend": True} if status.get("jobDeploymentStatus") in (
        "Suspending", "Suspended") else {}
    return {"metadata": {"name": "r"}, "spec": spec, "status": status}


def apply(seq):
    cur: dict = {}
    for i, s in enumerate(seq):
        cur = {**cur, **st.status_from_rayjob(job(**s), cur, now=f"2025-01-01T00:00:0{i}Z",
                                              generation=1)}
        cur = {k: v for k, v in cur.items() if v is not None}
    return cur


@pytest.mark.parametrize("status,phase,running_reason", [
    ({}, "Pending", "Created"),
    ({"jobDeploymentStatus": "Initializing"}, "Pending", "Initializing"),
    ({"jobDeploymentStatus": "Waiting"}, "Pending", "Waiting"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "Running", "JobPending"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "Running", "JobRunning"),
    ({"jobDeploymentStatus": "Retrying", "failed": 1}, "Running", "Retrying"),
    ({"jobDeploymentStatus": "Suspending"}, "Suspended", "Suspended"),
    ({"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED"}, "Suspended", "Suspended"),
    ({"jobDeploymentStatus": "Suspended", "resume": True}, "Pending", "Resuming"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "Succeeded", "Completed"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "Failed", "Completed"),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}, "Failed", "Completed"),
    ({"jobDeploymentStatus": "ValidationFailed"}, "Failed", "Completed"),
    ({"jobDeploymentStatus": "SomethingNew"}, "Pending", "SomethingNew"),
])
def test_phase_and_running_condition(status, phase, running_reason):
    rayjob = job(**{k: v for k, v in status.items() if k != "resume"})
    if status.get("resume"):
        rayjob["spec"] = {}  # spec.suspend set back to false, KubeRay not there yet
    out = st.status_from_rayjob(rayjob, {}, now=T0, generation=3)
    assert out["phase"] == phase
    running = st.get_condition(out["conditions"], "Running")
    assert running["reason"] == running_reason and running["observedGeneration"] == 3


def test_failure_reason_and_message_come_from_kuberay():
    out = st.status_from_rayjob(job(jobDeploymentStatus="Failed", jobStatus="FAILED", failed=3,
                                    reason="DeadlineExceeded", message="took too long"),
                                {}, now=T0, generation=1)
    failed = st.get_condition(out["conditions"], "Failed")
    assert failed["status"] == "True" and failed["reason"] == "DeadlineExceeded"
    assert "3 attempt" in failed["message"] and "took too long" in failed["message"]
    assert st.get_condition(out["conditions"], "Succeeded")["status"] == "False"
    assert out["attempts"] == 3 and out["completionTime"] == T0


def test_a_search_that_lost_trials_says_so_when_it_succeeds():
    """status.trials (the driver's) with failed trials: the Succeeded message and
    condition say how many of the search's trials the best was chosen without."""
    done = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1}
    cur = {"trials": {"total": 4, "running": 0, "finished": 1, "stopped": 1, "failed": 2}}
    out = st.status_from_rayjob(job(**done), cur, now=T0, generation=1)
    assert out["phase"] == "Succeeded"
    assert out["message"] == ("the Ray job succeeded; 2 of 4 trial(s) failed; the best is "
                              "the best checkpoint any trial saved, theirs included (the "
                              "errors: the driver's log, or trials[].error in the search's "
                              "result.json)")
    assert st.get_condition(out["conditions"], "Succeeded")["message"] == out["message"]
    # none failed, or a plain training run: the message is the job's
    for trials in ({**cur["trials"], "failed": 0}, None):
        out = st.status_from_rayjob(job(**done), {"trials": trials}, now=T0, generation=1)
        assert out["message"] == "the Ray job succeeded"
    # while the search runs, failures are in status.trials, not in the message
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    assert "trial" not in st.status_from_rayjob(job(**running), cur, now=T0,
                                                generation=1)["message"]


def test_full_lifecycle_attempts_times():
    cur = apply([
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": T0, "jobId": "j"},
        {"jobDeploymentStatus": "Retrying", "failed": 1, "startTime": T0},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "failed": 1},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "failed": 1, "succeeded": 1,
         "endTime": T1},
    ])
    assert cur["phase"] == "Succeeded" and cur["attempts"] == 2
    assert cur["startTime"] == T0 and cur["completionTime"] == T1 and cur["jobId"] == "j"
    running = st.get_condition(cur["conditions"], "Running")
    # True since step 1, False at step 4 (Complete): transition time of step 4
    assert running["status"] == "False" and running["lastTransitionTime"] == "2025-01-01T00:00:04Z"


def test_transition_time_kept_when_only_reason_changes():
    c = st.set_condition([], "Running", True, "JobPending", now=T0)
    c = st.set_condition(c, "Running", True, "JobRunning", "msg", now=T1)
    assert c[0]["lastTransitionTime"] == T0 and c[0]["reason"] == "JobRunning"
    c = st.set_condition(c, "Running", False, "Completed", now=T1)
    assert c[0]["lastTransitionTime"] == T1


def test_conditions_sorted_and_phase_priorities():
    c = st.set_condition([], "Ready", True, "ServeReady", now=T0)
    c = st.set_condition(c, "Validated", True, "SpecValid", now=T0)
    c = st.set_condition(c, "Succeeded", True, "JobSucceeded", now=T0)
    assert [x["type"] for x in c] == ["Validated", "Succeeded", "Ready"]
    assert st.phase_of(c) == "Serving"
    assert st.phase_of([]) == "Pending"


def test_invalid_spec_fails_only_runs_that_never_started():
    """A spec that never validated: Failed. An invalid *edit* of a started run: the phase
    keeps following its RayJob (training goes on); Validated=False carries the message."""
    never = st.set_condition([], "Validated", False, "InvalidSpec", now=T0)
    assert st.phase_of(never) == "Failed"
    running = st.set_condition([], "Running", True, "JobRunning", now=T0)
    assert st.phase_of(st.set_condition(running, "Validated", False, "InvalidSpec", now=T1)) == "Running"
    serving = st.set_condition(st.set_condition([], "Succeeded", True, "JobSucceeded", now=T0),
                               "Ready", True, "ServeReady", now=T0)
    assert st.phase_of(st.set_condition(serving, "Validated", False, "InvalidSpec", now=T1)) == "Serving"
    failed = st.set_condition([], "Failed", True, "AppFailed", now=T0)
    assert st.phase_of(st.set_condition(failed, "Validated", False, "InvalidSpec", now=T1)) == "Failed"


def test_rerun_clears_completion_and_outcome():
    done = apply([{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1}])
    out = st.status_from_rayjob(job(jobDeploymentStatus="Running", jobStatus="RUNNING"), done,
                                now=T1, generation=2)
    assert out["completionTime"] is None and out["phase"] == "Running"
    assert st.get_condition(out["conditions"], "Succeeded")["status"] == "Unknown"


@pytest.mark.parametrize("serve,ckpt,promote,reason,words", [
    ({"enabled": False}, {"uri": "u", "metrics": {"valAccuracy": 1.0}}, False, "ServeDisabled", []),
    ({"enabled": True, "minAccuracy": 0.9}, None, False, "NoCheckpoint", ["checkpoint"]),
    ({"enabled": True, "minAccuracy": 0.9}, {"uri": "u", "metrics": {}}, False, "GateNotMet",
     ["no valAccuracy", "0.9"]),
    ({"enabled": True, "minAccuracy": 0.9}, {"uri": "u", "metrics": {"valAccuracy": 0.85}},
     False, "GateNotMet", ["0.8500", "0.9", "minAccuracy"]),
    ({"enabled": True, "minAccuracy": 0.9}, {"uri": "u", "metrics": {"valAccuracy": 0.9}},
     True, "GatePassed", ["0.9000", "u"]),
    ({"enabled": True}, {"uri": "u", "metrics": {"valAccuracy": 0.1}}, True, "GatePassed", []),
    # one lucky validation example is no evidence for a gate (validationFraction 1e-9)
    ({"enabled": True, "minAccuracy": 0.9}, {"uri": "u", "metrics": {
        "valAccuracy": 1.0, "valExamples": 1.0}}, False, "GateNotMet",
     ["1.0000 on 1 validation example:", "at least 10", "not promoted"]),
    ({"enabled": True, "minAccuracy": 0.9}, {"uri": "u", "metrics": {
        "valAccuracy": 1.0, "valExamples": 10.0}}, True, "GatePassed", ["1.0000"]),
    ({"enabled": True}, {"uri": "u", "metrics": {"valAccuracy": 1.0, "valExamples": 1.0}},
     True, "GatePassed", []),  # no gate declared: nothing to judge
])
def test_gate(serve, ckpt, promote, reason, words):
    d = st.gate(serve, ckpt)
    assert (d.promote, d.reason) == (promote, reason)
    for w in words:
        assert w in d.message


RUNNING_APP = {"applicationStatuses": {"classifier": {"status": "RUNNING"}}}
READY = {"type": "Ready", "status": "True", "reason": "RunningServeDeployments"}
UPGRADING = {"type": "UpgradeInProgress", "status": "True"}


@pytest.mark.parametrize("status,ready,reason", [
    ({}, False, "Deploying"),
    ({"serviceStatus": "Running", "activeServiceStatus": RUNNING_APP}, True, "ServeReady"),
    ({"conditions": [READY], "activeServiceStatus": RUNNING_APP}, True, "ServeReady"),
    # KubeRay's Ready only means the serve Service has endpoints: the app must be RUNNING
    ({"conditions": [READY]}, False, "ServeApplicationDeploying"),
    ({"conditions": [READY], "activeServiceStatus": {"applicationStatuses": {
        "classifier": {"status": "DEPLOYING"}}}}, False, "ServeApplicationDeploying"),
    ({"conditions": [{**READY, "status": "False"}], "activeServiceStatus": {
        "applicationStatuses": {"classifier": {
            "status": "DEPLOY_FAILED", "message": "cannot read checkpoint s3://bkt/x"}}}},
     False, "ServeApplicationFailed"),
    ({"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]},
     False, "Initializing"),
    # an upgrade while the previous config serves: still serving
    ({"conditions": [READY, UPGRADING], "activeServiceStatus": RUNNING_APP}, True,
     "UpgradeInProgress"),
    ({"conditions": [{**READY, "status": "False"}, UPGRADING]}, False, "UpgradeInProgress"),
    # KubeRay v1.6.2 while a new serving cluster comes up: the active cluster's
    # applicationStatuses are left out, its endpoints still answer
    ({"conditions": [READY, UPGRADING], "activeServiceStatus": {
        "rayClusterName": "x-serve-plcmr"}}, True, "UpgradeInProgress"),
    ({"conditions": [READY, UPGRADING], "activeServiceStatus": {"applicationStatuses": {
        "classifier": {"status": "DEPLOY_FAILED"}}}}, False, "UpgradeInProgress"),
])
def test_rayservice_ready(status, ready, reason):
    assert st.rayservice_ready({"status": status})[:2] == (ready, reason)


def test_failed_application_message_is_surfaced():
    ready, reason, msg = st.rayservice_ready({"status": {"activeServiceStatus": {
        "applicationStatuses": {"classifier": {"status": "DEPLOY_FAILED", "message": "boom",
                                               "serveDeploymentStatuses": {"Classifier": {
                                                   "message": "cannot read checkpoint"}}}}}}})
    assert (ready, reason) == (False, "ServeApplicationFailed")
    assert "boom" in msg and "cannot read checkpoint" in msg


def test_upgrade_keeps_the_previous_checkpoint_serving():
    svc = {"metadata": {"name": "r"}, "status": {"conditions": [READY, UPGRADING],
                                                  "activeServiceStatus": RUNNING_APP}}
    old = {"serving": {"endpoint": "e", "checkpoint": "c1", "since": T0}}
    out = st.serving_from_rayservice(svc, old, endpoint="e", checkpoint="c2", now=T1, generation=1)
    assert out["phase"] == "Serving" and out["serving"]["checkpoint"] == "c1"


def test_an_in_place_serve_config_rollout_keeps_serving():
    """Seen on a real node (``make e2e-local``, a promotion while serving): KubeRay applies
    the new serveConfigV2 to the running cluster, Serve's application is DEPLOYING while
    it replaces the replicas, and the old ones answer meanwhile. The status said "not
    ready" and phase Pending for ~18 s; it now keeps serving the previous checkpoint."""
    deploying = {"metadata": {"name": "r"}, "status": {"conditions": [READY],
                 "activeServiceStatus": {"applicationStatuses": {
                     "classifier": {"status": "DEPLOYING"}}}}}
    running = {"metadata": {"name": "r"}, "status": {"conditions": [READY],
                                                      "activeServiceStatus": RUNNING_APP}}
    first = st.serving_from_rayservice(running, {}, endpoint="e", checkpoint="c1", now=T0,
                                       generation=1)
    during = st.serving_from_rayservice(deploying, first, endpoint="e", checkpoint="c2",
                                        now=T1, generation=1)
    ready = st.get_condition(during["conditions"], st.READY)
    assert during["phase"] == "Serving" and during["serving"] == first["serving"]
    assert (ready["status"], ready["reason"]) == ("True", "ServeConfigUpdating")
    assert "the running replicas answer" in ready["message"]
    after = st.serving_from_rayservice(running, {**first, **during}, endpoint="e",
                                       checkpoint="c2", now=T1, generation=1)
    assert after["serving"]["checkpoint"] == "c2"
    assert st.get_condition(after["conditions"], st.READY)["reason"] == "ServeReady"
    # the RayService just updated: KubeRay has not read its new spec, the status is the
    # old config's (RUNNING): the new checkpoint is not served yet
    unread = {"metadata": {"name": "r", "generation": 3}, "status": {
        **running["status"], "observedGeneration": 2}}
    early = st.serving_from_rayservice(unread, first, endpoint="e", checkpoint="c2", now=T1,
                                       generation=1)
    assert early["serving"]["checkpoint"] == "c1" and early["phase"] == "Serving"
    assert st.get_condition(early["conditions"], st.READY)["message"].startswith("rolling out")
    read = {"metadata": {"name": "r", "generation": 3}, "status": {
        **running["status"], "observedGeneration": 3}}
    assert st.serving_from_rayservice(read, first, endpoint="e", checkpoint="c2", now=T1,
                                      generation=1)["serving"]["checkpoint"] == "c2"
    # a first deployment has nothing serving yet: not ready
    new = st.serving_from_rayservice(deploying, {}, endpoint="e", checkpoint="c1", now=T0,
                                     generation=1)
    assert new["phase"] != "Serving" and "serving" not in new


def test_serving_since_kept_for_same_checkpoint():
    svc = {"metadata": {"name": "r"}, "status": {"serviceStatus": "Running",
                                                  "activeServiceStatus": RUNNING_APP}}
    a = st.serving_from_rayservice(svc, {}, endpoint="e", checkpoint="c1", now=T0, generation=1)
    assert a["phase"] == "Serving" and a["serving"] == {"endpoint": "e", "checkpoint": "c1",
                                                        "since": T0}
    b = st.serving_from_rayservice(svc, a, endpoint="e", checkpoint="c1", now=T1, generation=1)
    assert b["serving"]["since"] == T0
    c = st.serving_from_rayservice(svc, a, endpoint="e", checkpoint="c2", now=T1, generation=1)
    assert c["serving"]["since"] == T1


def test_a_kuberay_retry_does_not_flicker():
    """Retrying -> "" -> Initializing -> Running (KubeRay replacing the Ray cluster) is one
    retry: phase Running and attempts 2 throughout, never back to Pending/1."""
    cur: dict = {}
    seen = []
    for dep in ("Running", "Retrying", "", "Initializing", "Running"):
        failed = 0 if not seen else 1
        rayjob = {"metadata": {"name": "j"}, "status": {
            "jobDeploymentStatus": dep, "jobStatus": "RUNNING" if dep == "Running" else "",
            "failed": failed}}
        cur = {**cur, **st.status_from_rayjob(rayjob, cur, now=T0, generation=1)}
        seen.append((cur["phase"], cur.get("attempts")))
    assert seen == [("Running", 1)] + [("Running", 2)] * 4, seen


def test_a_resumed_suspend_is_not_announced_as_a_retry():
    """A run that failed once, retried, then was suspended and resumed: KubeRay's failed
    count (1) is the earlier attempt's. Its cluster starting again read as "retrying:
    attempt 1 failed" (a second Retrying Event, with no cause); it is a resume. A failure
    seen only through its aftermath (Initializing with a higher count, the Retrying state
    missed between two watch events) is still a retry."""
    def rayjob(dep, failed, job="", suspend=False):
        return {"metadata": {"name": "j"}, "spec": {"suspend": suspend},
                "status": {"jobDeploymentStatus": dep, "jobStatus": job, "failed": failed}}
    cur: dict = {}
    events = []
    for obj in (rayjob("Running", 0, "RUNNING"), rayjob("Retrying", 1),
                rayjob("Running", 1, "RUNNING"), rayjob("Suspending", 1, suspend=True),
                rayjob("Suspended", 1, "STOPPED", suspend=True),
                rayjob("Suspended", 1, "STOPPED"), rayjob("", 1), rayjob("Initializing", 1),
                rayjob("Running", 1, "RUNNING")):
        patch = st.status_from_rayjob(obj, cur, now=T0, generation=1)
        if (ev := st.phase_event(cur, patch)) is not None:
            events.append((ev[1], ev[2]))
        cur = {**cur, **patch}
    assert events[-3:] == [("Pending", "resuming"), ("Pending", "waiting for the Ray cluster"),
                           ("JobRunning", "training is running")], events
    assert [e for e in events if e[0] == "Retrying"] == [
        ("Retrying", "retrying: attempt 1 failed")], events
    assert cur["attempts"] == 2
    # a new failure behind the count: a retry, whatever state it is first seen in
    missed = st.status_from_rayjob(rayjob("Initializing", 2), cur, now=T1, generation=1)
    running = st.get_condition(missed["conditions"], st.RUNNING)
    assert running["reason"] == "Retrying" and missed["attempts"] == 3


UNSCHEDULABLE = {"metadata": {"name": "r-head-abc"}, "status": {
    "phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: persistentvolumeclaim \"shared\" not found.\n "
                   "preemption: 0/1 nodes are available"}]}}


@pytest.mark.parametrize("pod,words", [
    (UNSCHEDULABLE, "pod r-head-abc cannot be scheduled: 0/1 nodes are available: "
                    "persistentvolumeclaim \"shared\" not found; spec.checkpoint.storage.pvc."
                    "claimName names the claim (when unset, the operator's default)"),
    ({"metadata": {"name": "w"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "ray-worker", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\""}}}]}},
     "pod w: container ray-worker ImagePullBackOff: Back-off pulling image \"x:1\""),
    # waiting that resolves by waiting, a running pod, a pod being deleted: nothing to say
    ({"metadata": {"name": "w"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}, None),
    ({"metadata": {"name": "w"}, "status": {"phase": "Running"}}, None),
    ({**UNSCHEDULABLE, "metadata": {"name": "x", "deletionTimestamp": T0}}, None),
])
def test_pod_problem(pod, words):
    assert st.pod_problem(pod) == words


def _unschedulable(verdict: str, role: str = "workers", cpu: str = "8", **pod_spec: object) -> dict:
    head = role == "head"
    return {"metadata": {"name": "p", "labels": {
        "raykube.io/role": role, "ray.io/node-type": "head" if head else "worker"}},
        "spec": {"containers": [{"resources": {
            "requests": {"cpu": cpu, "memory": "3Gi"}, "limits": {"nvidia.com/gpu": "1"}}}],
            **pod_spec},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": verdict}]}}


BESIDE_CPU = ", beside the head's spec.scaling.head.cpus and the node's other pods"
BESIDE_MEMORY = ", beside the head's spec.scaling.head.memory and the node's other pods"
CPU_SHORT = ("0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, "
             "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")


@pytest.mark.parametrize("pod,tail", [
    # the real node's verdict for cpusPerWorker: 8 (the probe): the field, not the
    # scheduler's account of preemption
    (_unschedulable(CPU_SHORT), "1 Insufficient cpu; spec.scaling.cpusPerWorker asks 8 CPU per pod"
     + BESIDE_CPU),
    (_unschedulable(CPU_SHORT, role="head"), "1 Insufficient cpu; spec.scaling.head.cpus asks 8 CPU per pod"),
    # the spec's own unit: 0.5, not Kubernetes' 500m
    (_unschedulable(CPU_SHORT, role="head", cpu="500m"),
     "1 Insufficient cpu; spec.scaling.head.cpus asks 0.5 CPU per pod"),
    (_unschedulable(CPU_SHORT, role="serve"),
     "1 Insufficient cpu; spec.serve.cpusPerReplica asks 8 CPU per pod" + BESIDE_CPU),
    (_unschedulable("0/2 nodes are available: 1 Insufficient memory, 1 Insufficient "
                    "nvidia.com/gpu."),
     "1 Insufficient memory, 1 Insufficient nvidia.com/gpu; spec.scaling.memoryPerWorker asks "
     "3Gi of memory per pod" + BESIDE_MEMORY + "; spec.scaling.gpusPerWorker asks 1 GPU per pod"),
    (_unschedulable("0/1 nodes are available: 1 Insufficient memory.", role="serve"),
     "1 Insufficient memory; spec.serve.memoryPerReplica asks 3Gi of memory per pod" + BESIDE_MEMORY),
    (_unschedulable("0/2 nodes are available: 2 node(s) didn't match Pod's node "
                    "affinity/selector.", nodeSelector={"disk": "ssd"}),
     "2 node(s) didn't match Pod's node affinity/selector; spec.scaling.nodeSelector asks "
     "for nodes with disk=ssd"),
    # a taint of the user's: the tolerations; kind's control plane and a node's own state
    # (not-ready) are not the pod's to tolerate, and beside a shortfall they are noise
    (_unschedulable("0/2 nodes are available: 1 node(s) had untolerated taint {gpu: true}, 1 "
                    "node(s) had untolerated taint {node.kubernetes.io/not-ready: }."),
     "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }; "
     "spec.scaling.tolerations does not tolerate the taint gpu"),
    (_unschedulable("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated "
                    "taint {node-role.kubernetes.io/control-plane: }."),
     "{node-role.kubernetes.io/control-plane: }; spec.scaling.cpusPerWorker asks 8 CPU per pod"
     + BESIDE_CPU),
    # kube-scheduler 1.36 names no taint (the real node): the field, and where to look
    (_unschedulable("0/1 nodes are available: 1 node(s) had untolerated taint(s). preemption: "
                    "0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
     "1 node(s) had untolerated taint(s); spec.scaling.tolerations lists the taints the pods "
     "tolerate (kubectl describe nodes shows the nodes' taints)"),
    # the head's placement is its own, not the workers' (the real node)
    (_unschedulable("0/1 nodes are available: 1 node(s) had untolerated taint(s).", role="head"),
     "1 node(s) had untolerated taint(s); spec.scaling.head.tolerations lists the taints the "
     "pods tolerate (kubectl describe nodes shows the nodes' taints)"),
    (_unschedulable("0/2 nodes are available: 2 node(s) didn't match Pod's node "
                    "affinity/selector.", role="head", nodeSelector={"pool": "cpu"}),
     "2 node(s) didn't match Pod's node affinity/selector; spec.scaling.head.nodeSelector "
     "asks for nodes with pool=cpu"),
    # and repeats a claim's verdict (the real node)
    (_unschedulable('0/1 nodes are available: persistentvolumeclaim "c" not found. not found. '
                    "preemption: 0/1 nodes are available"),
     'persistentvolumeclaim "c" not found; spec.checkpoint.storage.pvc.claimName names the '
     "claim (when unset, the operator's default)"),
    (_unschedulable("0/1 nodes are available: 1 node(s) had untolerated taint "
                    "{node.kubernetes.io/not-ready: }."),
     "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."),
    # KubeRay's submitter is sized by KubeRay, not by a field of ours
    (_unschedulable(CPU_SHORT, role="submitter"), "1 Insufficient cpu."),
    # but placed with the head: not the workers' tolerations (the real node, a tainted
    # node, blamed spec.scaling.tolerations when the submitter took no placement at all)
    (_unschedulable("0/1 nodes are available: 1 node(s) had untolerated taint(s).",
                    role="submitter"),
     "1 node(s) had untolerated taint(s); spec.scaling.head.tolerations lists the taints the "
     "pods tolerate (kubectl describe nodes shows the nodes' taints)"),
    (_unschedulable("0/2 nodes are available: 2 node(s) didn't match Pod's node "
                    "affinity/selector.", role="submitter", nodeSelector={"pool": "cpu"}),
     "2 node(s) didn't match Pod's node affinity/selector; spec.scaling.head.nodeSelector "
     "asks for nodes with pool=cpu"),
])
def test_an_unschedulable_pod_names_the_field_that_sizes_or_places_it(pod, tail):
    problem = st.pod_problem(pod)
    assert problem is not None and problem.endswith(tail), problem
    assert "preemption" not in problem


def test_pod_problems_name_what_the_run_waits_for_until_it_runs():
    problem = st.pod_problem(UNSCHEDULABLE)
    waiting = st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), {}, now=T0,
                                    generation=1, pod_problems=["pod z: ...", problem])
    assert waiting["phase"] == "Pending"
    assert waiting["message"] == f"waiting for the Ray cluster: {problem} (and 1 more pod(s))"
    running = st.get_condition(waiting["conditions"], st.RUNNING)
    assert (running["reason"], running["message"]) == ("PodsPending", waiting["message"])
    # a Warning, as the scheduler's own FailedScheduling (it was Normal, reason Pending)
    assert st.phase_event({}, waiting) == ("Warning", "PodsPending", waiting["message"])
    # no problem left: back to KubeRay's own words
    cleared = st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), waiting, now=T1,
                                    generation=1, pod_problems=[])
    assert cleared["message"] == "waiting for the Ray cluster"
    assert st.get_condition(cleared["conditions"], st.RUNNING)["reason"] == "Initializing"
    # a finished or running job is not described by a stale pod
    for s in ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
              {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}):
        out = st.status_from_rayjob(job(**s), {}, now=T0, generation=1, pod_problems=[problem])
        assert problem not in out["message"]


def oom_pod(when: str = "lastState", limit: str | None = "4Gi", restarts: int = 1) -> dict:
    container = {"name": "ray-worker", "resources": {"limits": {"memory": limit}} if limit else {}}
    return {"metadata": {"name": "w-1", "uid": "u-1"}, "spec": {"containers": [container]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "ray-worker", "restartCount": restarts, "state": {"running": {}},
                when: {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                      "finishedAt": "2026-12-01T00:01:00Z"}}}]}}


def test_pod_oom_names_the_pod_container_and_limit():
    inc = st.pod_oom(oom_pod(), now=NOW)
    assert inc.message == ("pod w-1: container ray-worker was OOMKilled at its 4Gi memory "
                           "limit (1 restart(s))")
    assert (inc.reason, inc.at) == ("OOMKilled", "2026-12-01T00:01:00Z")  # the kubelet's time
    assert st.pod_oom(oom_pod(when="state", restarts=0), now=NOW).message == (
        "pod w-1: container ray-worker was OOMKilled at its 4Gi memory limit")
    assert st.pod_oom(oom_pod(limit=None), now=NOW).message.endswith(
        "was OOMKilled (1 restart(s))")
    assert st.pod_oom(oom_pod(restarts=2), now=NOW).key != inc.key  # the next kill is new
    healthy = oom_pod()
    healthy["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] = "Error"
    assert st.pod_oom(healthy, now=NOW) is None and st.pod_oom({}, now=NOW) is None


@pytest.mark.parametrize("role,node_type,field", [
    ("workers", "worker", "spec.scaling.memoryPerWorker"),
    ("head", "head", "spec.scaling.head.memory"),  # the training cluster's or the serving one's
    ("serve", "worker", "spec.serve.memoryPerReplica"),
])
def test_oom_field_is_the_one_that_sizes_the_pod(role, node_type, field):
    """From the labels a Ray pod really has: KubeRay's (no ray.io/originated-from-crd on
    pods, only on the RayCluster) and the rendered template's."""
    from raykube.render import RenderConfig, render_rayservice, render_training
    from raykube.spec import parse_spec

    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"}, "serve": {"enabled": True}}, name="r")
    cluster = (render_rayservice(run, RenderConfig(), "/c")["spec"]["rayClusterConfig"]
               if role == "serve" else
               next(o for o in render_training(run, RenderConfig()) if o["kind"] == "RayJob")
               ["spec"]["rayClusterSpec"])
    group = cluster["headGroupSpec"] if role == "head" else cluster["workerGroupSpecs"][0]
    labels = {**group["template"]["metadata"]["labels"], "ray.io/node-type": node_type,
              "ray.io/cluster": "r-abc", "ray.io/is-ray-node": "yes"}
    assert st.oom_field(labels) == field


@pytest.mark.parametrize("status,shown", [
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "failed": 1}, True),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, True),
    ({"jobDeploymentStatus": "Retrying", "failed": 1}, True),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1}, False),
    ({"jobDeploymentStatus": "Initializing"}, False),
])
def test_the_last_oom_kill_is_in_the_message_while_it_matters(status, shown):
    last = {"lastIncident": {"reason": "OOMKilled", "message": "pod w-1: x", "rayCluster": "c",
                             "at": "2026-12-01T00:00:00Z"}}
    out = st.status_from_rayjob({"metadata": {"name": "r"},
                                 "status": {**status, "rayClusterName": "c"}}, last,
                                now="2026-12-01T00:00:00Z", generation=1)
    assert ("last OOM kill: pod w-1: x" in out["message"]) is shown
    failed = st.get_condition(out["conditions"], st.FAILED)
    if status.get("jobStatus") == "FAILED":
        assert "last OOM kill: pod w-1: x" in failed["message"]


def test_a_failed_jobs_message_leads_with_the_drivers_line():
    """KubeRay quotes the job log's last lines; with raykube train's summary among them
    that line is the message (Ray's OOM advice, seen on a real node, is left out)."""
    log_tail = ("Job entrypoint command failed with exit code 1, last available logs "
                "(truncated to 20,000 chars):\nTo see more information about memory usage on "
                "this node, use `ray logs raylet.out -ip 10.244.0.42`\nTop 10 memory users:\n"
                "raykube train: training failed: OutOfMemoryError: Ray's memory monitor "
                "killed 1 worker(s): the node had 0.96GB in use of its 1.00GB limit\n"
                "Refer to the documentation on how to address the out of memory issue")
    state = st.job_state({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                          "failed": 1, "reason": "AppFailed", "message": log_tail})
    assert state.message == (
        "the Ray job failed after 1 attempt(s): raykube train: training failed: "
        "OutOfMemoryError: Ray's memory monitor killed 1 worker(s): the node had 0.96GB in "
        "use of its 1.00GB limit (the job's last log lines: kubectl describe rayjob)")
    plain = st.job_state({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                          "message": "Job entrypoint command failed with exit code 1"})
    assert plain.message.endswith(": Job entrypoint command failed with exit code 1")


def test_a_head_killed_by_rays_memory_monitor_is_one_line_naming_the_fields():
    """KubeRay's message, verbatim, of a RayJob on make e2e-local's real node whose 1Gi head
    pod went over Ray's memory-monitor threshold: Ray killed the Train controller and the
    job supervisor, so the driver never wrote its own line, and the message was Ray's
    whole page (3,851 characters: statistics, a process table, advice)."""
    from pathlib import Path

    page = (Path(__file__).parent / "data" / "rayjob-message-head-oom.txt").read_text()
    state = st.job_state({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                          "failed": 3, "reason": "AppFailed", "message": page})
    assert "\n" not in state.message and len(state.message) < 500, state.message
    assert state.message.startswith(
        "the Ray job failed after 3 attempt(s): OutOfMemoryError: Ray's memory monitor "
        "killed 2 worker(s) (TrainController, JobSupervisor): the node had 0.97GB in use "
        "of its 1.00GB limit; give its pods more memory: spec.scaling.head.memory"), state.message
    assert "spec.scaling.memoryPerWorker" in state.message


def _head(**status) -> dict:
    return {"metadata": {"name": "r-abc-head-x1", "uid": "u1",
                         "labels": {"ray.io/node-type": "head", "ray.io/cluster": "r-abc"}},
            "status": {"phase": "Running", **status}}


NOW = "2026-12-02T17:19:34Z"


def test_a_head_deleted_failed_or_restarted_is_a_head_loss():
    assert st.head_loss(_head(), deleted=False, now=NOW) is None
    assert st.head_loss(_head(), deleted=True, now=NOW) == st.Incident(
        "u1/deleted", "RayHeadLost", f"the Ray head pod r-abc-head-x1 was deleted at {NOW}", NOW)
    terminating = _head()
    # the API server sets deletionTimestamp to the request's time plus the grace period
    terminating["metadata"].update(deletionTimestamp="2026-12-02T17:20:04Z",
                                   deletionGracePeriodSeconds=30)
    inc = st.head_loss(terminating, deleted=False, now=NOW)
    assert (inc.key, inc.at) == ("u1/deleted", "2026-12-02T17:19:34Z")
    assert inc.message.endswith("was deleted at 2026-12-02T17:19:34Z")
    evicted = _head(phase="Failed", reason="Evicted", message="The node was low on memory.",
                    conditions=[{"type": "Ready", "lastTransitionTime": "2026-12-02T17:10:00Z"}])
    inc = st.head_loss(evicted, deleted=False, now=NOW)
    assert inc.message == ("the Ray head pod r-abc-head-x1 failed at 2026-12-02T17:10:00Z "
                           "(Evicted The node was low on memory.)")
    assert inc.at == "2026-12-02T17:10:00Z"  # the pod's time, the same on every look
    restarted = _head(containerStatuses=[{"name": "ray-head", "restartCount": 2, "lastState": {
        "terminated": {"reason": "Error", "exitCode": 1, "finishedAt": "2026-12-02T17:00:00Z"}}}])
    assert st.head_loss(restarted, deleted=False, now=NOW) == st.Incident(
        "u1/ray-head/2", "RayHeadLost", "the Ray head pod r-abc-head-x1: container ray-head "
        "restarted at 2026-12-02T17:00:00Z (Error, exit code 1)", "2026-12-02T17:00:00Z")


def test_not_a_head_loss_for_workers_or_oom_kills():
    """(A serving cluster's head is no RayJob's: ``running_on`` tells them apart.)"""
    worker = _head()
    worker["metadata"]["labels"]["ray.io/node-type"] = "worker"
    assert st.head_loss(worker, deleted=True, now=NOW) is None
    oom = _head(containerStatuses=[{"name": "ray-head", "restartCount": 1, "lastState": {
        "terminated": {"reason": "OOMKilled", "exitCode": 137}}}])
    assert st.head_loss(oom, deleted=False, now=NOW) is None  # pod_oom's Warning names it


def test_a_head_deleted_with_its_raycluster_is_a_cluster_loss():
    """``kubectl delete raycluster``: the head pod goes with its cluster, which KubeRay
    recreates at once under the same name (only the uid tells); the head's deletion
    alone is a head loss."""
    pod = _head()
    pod["metadata"]["ownerReferences"] = [{"kind": "RayCluster", "name": "r-abc", "uid": "c1"}]
    loss = st.head_loss(pod, deleted=True, now=NOW)
    same = {"metadata": {"name": "r-abc", "uid": "c1"}}
    assert st.cluster_loss(loss, pod, same) is loss  # the cluster is still there
    gone = st.Incident("u1/deleted/cluster", "RayClusterLost",
                       f"the Ray cluster r-abc was deleted at {NOW}", NOW)
    assert st.cluster_loss(loss, pod, None) == gone
    assert st.cluster_loss(loss, pod, {"metadata": {"name": "r-abc", "uid": "c2"}}) == gone
    deleting = {"metadata": {"name": "r-abc", "uid": "c1", "deletionTimestamp": NOW}}
    assert st.cluster_loss(loss, pod, deleting) == gone  # a foreground deletion
    restarted = st.head_loss(_head(containerStatuses=[{
        "name": "ray-head", "restartCount": 1, "lastState": {"terminated": {"reason": "Error"}}}]),
        deleted=False, now=NOW)
    assert st.cluster_loss(restarted, pod, None) is restarted  # not a deletion
    assert st.incident_note(st.incident_status(gone, "r-abc"), "r-abc") == (
        f"last Ray cluster loss: the Ray cluster r-abc was deleted at {NOW}")


def test_after_a_head_loss_the_job_is_resubmitted_or_retried_as_the_budget_allows():
    assert st.head_loss_outcome({"spec": {"backoffLimit": 2}, "status": {"failed": 1}}) == (
        "KubeRay submits the job again to the new head (or, if its submitter gives up "
        "first, retries the RayJob on a new Ray cluster: retry 2 of 2), and training "
        "resumes from the latest checkpoint")
    assert st.head_loss_outcome({"spec": {"backoffLimit": 2}, "status": {"failed": 2}}) == (
        "KubeRay submits the job again to the new head, and training resumes from the "
        "latest checkpoint (if its submitter gives up first, the run fails: no RayJob "
        "retry is left, spec.failure.maxRetries: 2)")
    assert "maxRetries: 0" in st.head_loss_outcome({"spec": {}})


def test_a_job_lost_with_its_head_is_said_in_words_when_retried_or_failed():
    lost = {"failed": 1, "message": "Submitter completed but Ray job not found in RayCluster."}
    words = ("the job was lost with its Ray head, and KubeRay's job submitter gave up before "
             "the new head was up (KubeRay: Submitter completed but Ray job not found in "
             "RayCluster.)")
    assert st.job_state({**lost, "jobDeploymentStatus": "Retrying"}).message == (
        f"retrying: attempt 1 failed: {words}")
    failed = st.job_state({**lost, "jobDeploymentStatus": "Failed", "jobStatus": "",
                           "reason": "AppFailed"})
    assert (failed.outcome, failed.message) == (
        "Failed", f"the Ray job failed after 1 attempt(s): {words}")
    assert st.kuberay_explained("Job entrypoint command failed") is None


@pytest.mark.parametrize("job,running", [
    ({"status": {"rayClusterName": "c", "jobDeploymentStatus": "Running"}}, True),
    ({"status": {"rayClusterName": "other", "jobDeploymentStatus": "Running"}}, False),
    ({"status": {"rayClusterName": "c", "jobDeploymentStatus": "Complete"}}, False),
    ({"status": {"rayClusterName": "c", "jobDeploymentStatus": "Retrying"}}, False),
    ({"metadata": {"deletionTimestamp": NOW},
      "status": {"rayClusterName": "c", "jobDeploymentStatus": "Running"}}, False),
    (None, False),
])
def test_a_head_is_lost_only_while_its_job_runs_on_it(job, running):
    assert st.running_on(job, "c") is running


def test_the_last_head_loss_is_in_the_message_while_the_job_runs():
    out = st.status_from_rayjob(
        {"metadata": {"name": "r"}, "status": {"jobDeploymentStatus": "Running",
                                               "jobStatus": "RUNNING"}},
        {"lastIncident": {"reason": "RayHeadLost", "message": "the Ray head pod p was deleted",
                          "rayCluster": "c", "at": NOW}}, now=NOW, generation=1)
    assert "head loss" not in out["message"]  # the RayJob names no cluster: not this one
    job = {"metadata": {"name": "r"}, "status": {"jobDeploymentStatus": "Running",
                                                 "jobStatus": "RUNNING", "rayClusterName": "c"}}
    cur = {"lastIncident": {"reason": "RayHeadLost", "message": "the Ray head pod p was deleted",
                            "rayCluster": "c", "at": NOW}}
    out = st.status_from_rayjob(job, cur, now=NOW, generation=1)
    assert out["message"].endswith("(last Ray head loss: the Ray head pod p was deleted)")
    retried = {**job, "status": {**job["status"], "rayClusterName": "c2"}}  # a new cluster
    assert "head loss" not in st.status_from_rayjob(retried, cur, now=NOW, generation=1)["message"]


def test_an_incident_is_new_only_after_the_one_the_status_holds():
    """An operator (re)starting sees every pod again: a kill or restart from before,
    which the status already holds or which came before it, is not announced again."""
    inc = st.head_loss(_head(containerStatuses=[{"name": "ray-head", "restartCount": 1,
                                                 "lastState": {"terminated": {
                                                     "reason": "Error", "exitCode": 1,
                                                     "finishedAt": "2026-12-02T17:00:00Z"}}}]),
                       deleted=False, now=NOW)
    assert st.incident_is_new(inc, None) and st.incident_is_new(inc, {})
    held = st.incident_status(inc, "c")
    assert held == {"reason": "RayHeadLost", "message": inc.message, "rayCluster": "c",
                    "at": "2026-12-02T17:00:00Z"}
    assert not st.incident_is_new(inc, held)  # the same one
    later = {**held, "at": "2026-12-02T17:05:00Z", "message": "pod w: OOMKilled"}
    assert not st.incident_is_new(inc, later)  # an older one, announced before the later
    assert st.incident_is_new(st.pod_oom(oom_pod(), now=NOW), {**held, "at": "2026-11-30T00:00:00Z"})
    same_second = {**held, "message": "pod w-2: container ray-worker was OOMKilled"}
    assert st.incident_is_new(inc, same_second)  # two at once: each is announced
    assert st.incident_is_new(inc, {**held, "at": "not a time"})


def test_a_submitter_pod_that_cannot_start_is_named_while_the_job_is_not_submitted():
    """KubeRay's job submitter Pending on a full node (seen on the real node: "0/1 nodes
    are available: 1 Insufficient cpu") while KubeRay reports the job deployment Running:
    the run is Pending, and says which pod waits and why."""
    pod = {"metadata": {"name": "r-zt642", "labels": {"raykube.io/trainingrun": "r",
                                                      "raykube.io/role": "submitter"}},
           "status": {"phase": "Pending", "conditions": [{
               "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": "0/1 nodes are available: 1 Insufficient cpu."}]}}
    problem = st.pod_problem(pod)
    assert problem == ("pod r-zt642 (KubeRay's job submitter) cannot be scheduled: "
                       "0/1 nodes are available: 1 Insufficient cpu.")
    out = st.status_from_rayjob(
        {"metadata": {"name": "r"}, "status": {"jobDeploymentStatus": "Running",
                                               "rayClusterName": "r-abc"}},
        None, now=NOW, generation=1, pod_problems=[problem])
    assert out["message"] == f"the Ray cluster is up; the job is not submitted yet: {problem}"
    running = st.get_condition(out["conditions"], st.RUNNING)
    assert (running["status"], running["reason"]) == ("False", "PodsPending")
    assert out["phase"] == "Pending"


KUBERAY_RETRY_MESSAGE = (  # a RayJob's message as it went to Retrying on the real node
    "Job entrypoint command failed with exit code 1, last available logs (truncated to "
    "20,000 chars):\n2026-12-02 09:55:35,913\tINFO job_manager.py:581 -- Runtime env is "
    "setting up.\nRunning entrypoint for job nofolder-kf8fv: raykube train --spec "
    "/etc/raykube/trainingrun.yaml\n2026-12-02 09:55:38,204\tINFO worker.py:2029 -- Connected "
    "to Ray cluster. View the dashboard at \x1b[1m\x1b[32mhttp://10.244.0.57:8265 "
    "\x1b[39m\x1b[22m\nraykube train: image-folder /mnt/raykube/default/no-such-images: "
    "cannot list it ([Errno 2] No such file or directory)\n")


def test_a_retry_says_why_the_attempt_failed_until_the_next_one_runs():
    """KubeRay writes the failed attempt's log tail as it goes to Retrying and clears it
    seconds later: the run says the driver's line throughout the retry, in one line."""
    why = ("raykube train: image-folder /mnt/raykube/default/no-such-images: cannot list it "
           "([Errno 2] No such file or directory)")
    cur: dict = {}
    seen = []
    for dep, job, msg in (("Running", "RUNNING", ""), ("Retrying", "FAILED", KUBERAY_RETRY_MESSAGE),
                          ("Retrying", "", ""), ("", "", ""), ("Initializing", "", ""),
                          ("Running", "RUNNING", "")):
        rayjob = {"metadata": {"name": "j"}, "status": {
            "jobDeploymentStatus": dep, "jobStatus": job, "message": msg,
            "failed": 0 if not seen else 1}}
        cur = {**cur, **st.status_from_rayjob(rayjob, cur, now=T0, generation=1)}
        seen.append(cur["message"])
        running = st.get_condition(cur["conditions"], st.RUNNING)
        if 0 < len(seen) - 1 < 5:
            assert running["message"] == (f"attempt 1 failed: {why}; KubeRay is starting a new "
                                          "Ray cluster that resumes from the latest checkpoint")
    assert seen == ["training is running"] + [f"retrying: attempt 1 failed: {why}"] * 4 + [
        "training is running"], seen


@pytest.mark.parametrize("message,cause", [
    ("", None),
    ("Job entrypoint command failed with exit code 1, last available logs:\nTraceback ...\n"
     "  File x\nRuntimeError: \x1b[31mboom\x1b[0m\n\n", "RuntimeError: boom"),
    ("x" * 400, "x" * 299 + "…"),
])
def test_retry_cause_is_one_line(message, cause):
    assert st.retry_cause(message) == cause


def rayjob(dep: str, *, failed: int = 0, job_id: str = "r-abc", limit: int | None = 2) -> dict:
    spec = {} if limit is None else {"backoffLimit": limit}
    return {"metadata": {"name": "r"}, "spec": spec,
            "status": {"jobDeploymentStatus": dep, "failed": failed, "jobId": job_id}}


@pytest.mark.parametrize("obj,report,answer", [
    # the running attempt is the first: KubeRay's check (failed < backoffLimit + 1, the
    # failure counted) then lets it be the last
    (rayjob("Running"), {"jobId": "r-abc"}, (0, True)),
    (rayjob("Running", failed=1), {"jobId": "r-abc"}, (1, True)),
    (rayjob("Initializing"), {}, (0, True)),  # no job id reported: the running attempt
    (rayjob("Running", failed=2), {"jobId": "r-abc"}, (None, True)),  # already the last
    (rayjob("Running", limit=None), {}, (None, True)),  # no backoffLimit: never retried
    (rayjob("Running"), {"jobId": "r-old"}, (None, False)),  # another attempt's report
    (rayjob("Retrying", failed=1), {"jobId": "r-abc"}, (None, False)),  # KubeRay saw it fail
    (rayjob("Failed", failed=1), {}, (None, False)),
    (None, {}, (None, False)),  # no RayJob
])
def test_retry_cancellation(obj, report, answer):
    assert st.retry_cancellation(obj, report) == answer


def test_a_failure_no_retry_can_fix_says_so_with_the_drivers_line():
    cur = {"permanentFailure": {"message": "image-folder /mnt/x: cannot list it",
                                "retriesCancelled": True}}
    out = st.status_from_rayjob(
        job(jobDeploymentStatus="Failed", jobStatus="", failed=1, reason="AppFailed",
            message="The RayJob submitter finished at ... but the ray job did not reach"),
        cur, now=T0, generation=1)
    failed = st.get_condition(out["conditions"], st.FAILED)
    assert (out["phase"], failed["reason"]) == ("Failed", "PermanentFailure")
    assert out["message"] == failed["message"] == (
        "the Ray job failed after 1 attempt(s): image-folder /mnt/x: cannot list it; not "
        "retried: a new attempt would fail the same way (fix that, then give spec.rerun a new "
        "value to run again)")
    # a report KubeRay did not honour (too late) changes nothing
    cur["permanentFailure"]["retriesCancelled"] = False
    out = st.status_from_rayjob(job(jobDeploymentStatus="Failed", failed=3, reason="AppFailed",
                                    message="boom"), cur, now=T0, generation=1)
    assert st.get_condition(out["conditions"], st.FAILED)["reason"] == "AppFailed"


def test_the_outcome_conditions_that_are_false_say_why():
    """``Failed=False`` on success carried reason JobSucceeded and an empty message (and
    ``Succeeded=False`` on failure the same): each now says what it stands for."""
    ok = apply([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1}])
    failed = st.get_condition(ok["conditions"], st.FAILED)
    assert (failed["status"], failed["reason"], failed["message"]) == (
        "False", "JobSucceeded", "the Ray job succeeded")
    bad = apply([{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "failed": 1,
                  "reason": "AppFailed"}])
    succeeded = st.get_condition(bad["conditions"], st.SUCCEEDED)
    assert (succeeded["status"], succeeded["reason"]) == ("False", "AppFailed")
    assert "failed" in succeeded["message"] and "Failed condition" in succeeded["message"]
    again = {**bad, **st.status_from_rayjob(job(jobDeploymentStatus="Running", jobStatus="RUNNING"),
                                            bad, now=T1, generation=2)}
    assert all(st.get_condition(again["conditions"], t)["message"]
               == "no outcome yet: training is running" for t in (st.SUCCEEDED, st.FAILED))
    # undecided is Unknown (metav1), not False: `kubectl wait --for=condition=Failed=False`
    # must not read a run that has not ended as one that did not fail
    assert all(st.get_condition(again["conditions"], t)["status"] == "Unknown"
               for t in (st.SUCCEEDED, st.FAILED))


def test_attempts_never_go_backwards_within_a_run():
    """KubeRay counts only finished attempts while a RayJob is suspended, and a RayJob
    deleted and made again (RayJobRecreated) starts from 0: ``status.attempts`` read
    3 -> 2 and 2 -> 1. The attempts made stay made; a rerun clears the field first."""
    cur = apply([
        {"jobDeploymentStatus": "Retrying", "failed": 2},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "failed": 2},
    ])
    assert cur["attempts"] == 3
    suspended = {**cur, **st.status_from_rayjob(
        job(jobDeploymentStatus="Suspended", jobStatus="STOPPED", failed=2), cur, now=T1,
        generation=1)}
    assert suspended["attempts"] == 3
    recreated = st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), suspended,
                                      now=T1, generation=1)
    assert recreated["attempts"] == 3
    rerun = {k: v for k, v in suspended.items() if k != "attempts"}  # the rerun's patch
    assert st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), rerun, now=T1,
                                 generation=2)["attempts"] == 1


@pytest.mark.parametrize("end", [
    {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1},
    {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "failed": 1},
])
def test_a_change_made_while_running_stays_pending_past_the_runs_end(end):
    """The run's end is what the pending edit waits for: the mapped status keeps it (the
    handler then starts the new run, and a restarted operator reads it there)."""
    running = apply([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}])
    pending = st.set_condition(running["conditions"], st.SPEC_APPLIED, False,
                               st.SPEC_CHANGE_PENDING,
                               st.spec_change_pending("spec.train.epochs, spec.image"),
                               now=T0, generation=2)
    cur = {**running, "conditions": pending}
    for rayjob, t in [(job(jobDeploymentStatus="Running", jobStatus="RUNNING", failed=0), T0),
                      (job(**end), T1)]:
        out = st.status_from_rayjob(rayjob, cur, now=t, generation=2)
        assert st.edit_pending(out)
        applied = st.get_condition(out["conditions"], st.SPEC_APPLIED)
        assert st.pending_fields(applied) == ["spec.train.epochs", "spec.image"]
    # an older operator's words for the same
    legacy = st.set_condition(running["conditions"], st.SPEC_APPLIED, False,
                              st.SPEC_CHANGE_IGNORED, "spec.train.epochs changed while the "
                              "RayJob is running: not applied to this run", now=T0,
                              generation=2)
    assert st.edit_pending({"conditions": legacy})
    assert st.pending_fields(st.get_condition(legacy, st.SPEC_APPLIED)) == ["spec.train.epochs"]
    assert not st.edit_pending(running) and st.pending_fields(None) == []


def test_the_fields_a_waiting_rerun_is_for_are_read_back_from_its_status():
    """A rerun that waits for the previous RayJob to go keeps its fields only in its
    ``SpecApplied`` message: the operator that starts it (maybe a restarted one) names
    them from there. A pending edit's are read too; other reasons name none."""
    waiting = {"type": st.SPEC_APPLIED, "status": "False", "reason": st.RERUN_WAITING,
               "message": st.rerun_waiting("spec.rerun, spec.train.lr",
                                           "after the run finished", "tr-abc")}
    assert st.named_fields(waiting) == ["spec.rerun", "spec.train.lr"]
    assert st.pending_fields(waiting) == []  # no edit pending: the rerun is due now
    pending = {**waiting, "reason": st.SPEC_CHANGE_PENDING,
               "message": st.spec_change_pending("spec.image")}
    assert st.named_fields(pending) == st.pending_fields(pending) == ["spec.image"]
    assert st.named_fields({**waiting, "reason": "Rerun"}) == []
    assert st.named_fields({**waiting, "message": "RayJob deleted"}) == []
    assert st.named_fields(None) == []


def test_a_rerun_under_a_live_rayservice_is_announced_as_the_runs_news():
    """Seen on a real node: a rerun while the previous checkpoint served posted "Serving:
    waiting for the Ray cluster", "Serving: training is running", "Serving: the Ray job
    succeeded" (the phase stays Serving). The Events name the run's state instead."""
    serving = st.set_condition(None, st.READY, True, "ServeReady", "", now=T0, generation=2)
    cur: dict = {"conditions": serving, "phase": "Serving"}
    seen = []
    for status in ({"jobDeploymentStatus": "Initializing"},
                   {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                   {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1},
                   ):
        patch = st.status_from_rayjob(job(**status), cur, now=T1, generation=2)
        assert patch["phase"] == "Serving"
        seen.append(st.phase_event(cur, patch)[:2])
        cur = {**cur, **patch}
    assert seen == [("Normal", "Initializing"), ("Normal", "JobRunning"),
                    ("Normal", "Succeeded")], seen


def test_a_retry_is_announced_once_with_its_cause():
    """Seen on the real control plane: a Retrying Event with the failed attempt's cause,
    one naming a pod that could not be scheduled, then "retrying: attempt 1 failed" with
    nothing more (KubeRay had cleared its message, and the pod message had replaced the
    one that held the cause). The Events follow ``phase_event``, as the handler posts
    them."""
    cause = "RuntimeError: boom"
    kuberay = "Job entrypoint command failed with exit code 1, last available logs:\n" + cause
    problem = "pod r-head cannot be scheduled: 0/1 nodes are available"
    steps = [({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, []),
             ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1,
               "message": kuberay}, []),
             ({"jobDeploymentStatus": "Retrying", "failed": 1}, []),
             ({"jobDeploymentStatus": "Initializing", "failed": 1}, [problem]),
             # the scheduler's next verdict, with the node tainted for a moment (CI)
             ({"jobDeploymentStatus": "Initializing", "failed": 1},
              [problem + ", 1 node(s) had untolerated taint(s)"]),
             ({"jobDeploymentStatus": "Initializing", "failed": 1}, []),
             ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "failed": 1}, [])]
    cur: dict = {}
    events = []
    for i, (status, problems) in enumerate(steps):
        patch = st.status_from_rayjob(job(**status), cur, now=f"2025-01-01T00:00:0{i}Z",
                                      generation=1, pod_problems=problems)
        event = st.phase_event(cur, patch)
        if event:
            events.append(event)
        cur = {k: v for k, v in {**cur, **patch}.items() if v is not None}
    assert [(reason, message) for _type, reason, message in events] == [
        ("JobRunning", "training is running"),
        ("Retrying", f"retrying: attempt 1 failed: {cause}"),
        ("PodsPending", f"waiting for the Ray cluster: {problem}"),  # the README's reason
        ("JobRunning", "training is running")], events


def test_a_pod_that_still_waits_for_the_same_thing_is_not_announced_again():
    """kubelet flips ErrImagePull and ImagePullBackOff as it backs off, and the scheduler
    rewrites its verdict; the status message follows, the Events do not repeat. Another
    wait, or another pod, is announced."""
    def waiting(reason: str, pod: str = "r-head") -> str:
        return f"pod {pod}: container ray-head {reason}: pull access denied"
    steps = [waiting("ErrImagePull"), waiting("ImagePullBackOff"), waiting("ErrImagePull"),
             "pod r-head cannot be scheduled: 0/1 nodes are available",
             "pod r-head cannot be scheduled: 0/1 nodes are available: 1 node(s) had "
             "untolerated taint(s)",
             # the claim made, then too little CPU: another wait (it kept the claim's
             # Warning); a taint beside it is the scheduler's rewrite again
             'pod r-head cannot be scheduled: persistentvolumeclaim "x" not found',
             "pod r-head cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu",
             "pod r-head cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu, "
             "1 node(s) had untolerated taint(s)",
             # a node not ready for a moment: the verdict names its taint alone
             "pod r-head cannot be scheduled: 0/1 nodes are available: 1 node(s) had "
             "untolerated taint {node.kubernetes.io/not-ready: }",
             "pod r-head cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu",
             waiting("ErrImagePull", pod="r-worker"),
             waiting("CreateContainerConfigError", pod="r-worker")]
    cur: dict = {}
    events, messages = [], []
    for i, problem in enumerate(steps):
        patch = st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), cur,
                                      now=f"2025-01-01T00:00:0{i}Z", generation=1,
                                      pod_problems=[problem])
        messages.append(patch["message"])
        if event := st.phase_event(cur, patch):
            events.append(event[2])
        cur = {k: v for k, v in {**cur, **patch}.items() if v is not None}
    assert messages == [f"waiting for the Ray cluster: {p}" for p in steps]
    assert events == [f"waiting for the Ray cluster: {steps[i]}" for i in (0, 3, 6, 10, 11)], \
        events


def test_a_rayjob_created_suspended_is_suspended_before_kuberay_says_so():
    """Its status is empty until KubeRay's first reconcile: that was 'waiting for the Ray
    cluster' (phase Pending, and a Pending Event) for a run that asked not to start."""
    created = job()
    created["spec"] = {"suspend": True}
    out = st.status_from_rayjob(created, {}, now=T0, generation=1)
    assert out["phase"] == "Suspended"
    assert st.get_condition(out["conditions"], "Running")["reason"] == "Suspended"
    created["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    # being suspended: still running until KubeRay has stopped it
    assert st.status_from_rayjob(created, {}, now=T0, generation=1)["phase"] == "Running"


def test_a_pod_problem_that_clears_and_comes_back_is_not_an_event_each_time():
    """On the real node a pod's "Insufficient cpu" and the plain "waiting for the Ray
    cluster" alternated: three Pending Events in 2 s. The plain wait after a named one
    says nothing new; the named one is said once per change, as before."""
    problem = "pod r-head cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
    cur: dict = {}
    events = []
    for i, problems in enumerate(([problem], [], [problem], [])):
        patch = st.status_from_rayjob(job(jobDeploymentStatus="Initializing"), cur,
                                      now=f"2025-01-01T00:00:0{i}Z", generation=1,
                                      pod_problems=problems)
        if event := st.phase_event(cur, patch):
            events.append(event[2])
        cur = {k: v for k, v in {**cur, **patch}.items() if v is not None}
    assert events == [f"waiting for the Ray cluster: {problem}"] * 2, events


def test_serving_is_the_news_and_shows_the_served_accuracy():
    """While it served, MESSAGE said "the Ray job succeeded" (the RayJob's mapping wrote it
    again at each RayJob event), and VAL-ACC was the last epoch's (0.9666 shown while
    0.9889 was served, on real pods). Serving's line is now the message until there is
    news, and ``serving.valAccuracy`` is the served checkpoint's."""
    done = job(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    cur = st.status_from_rayjob(done, {}, now=T0, generation=1)
    assert cur["message"] == "the Ray job succeeded"
    svc = {"metadata": {"name": "r"}, "status": {"serviceStatus": "Running",
                                                  "activeServiceStatus": RUNNING_APP}}
    out = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                     generation=1, val_accuracy=0.98888888)
    cur = {**cur, **out}
    assert cur["phase"] == "Serving" and cur["message"] == "serving c1 at e"
    assert cur["serving"]["valAccuracy"] == 0.9889
    # KubeRay moves the finished RayJob again (its cluster deleted): no news
    assert st.status_from_rayjob(done, cur, now=T1, generation=1)["message"] == "serving c1 at e"
    # nor is a serve edit's new generation (it brought "the Ray job succeeded" back while
    # the checkpoint served, on the real node)
    assert st.status_from_rayjob(done, cur, now=T1, generation=2)["message"] == "serving c1 at e"
    # the same checkpoint's RayService moving is no news either; a new one is
    again = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                       generation=1)
    assert "message" not in again and "valAccuracy" not in again["serving"]
    assert st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c2", now=T1,
                                      generation=1)["message"] == "serving c2 at e"
    # a rerun is news: the RayJob's mapping says so again
    rerun = st.status_from_rayjob(job(jobDeploymentStatus="Running", jobStatus="RUNNING"), cur,
                                  now=T1, generation=2)
    assert rerun["message"] != "serving c1 at e"


def test_an_outage_of_what_served_clears_serving_and_says_so():
    """KubeRay's Ready=False (ZeroServeEndpoints: every serving pod gone) after the model
    served: the SERVING column and the message still advertised the endpoint, through a
    later rerun and its failure (an operator audit). Now ``serving`` is cleared and the
    message says it is not served, and why; the next Ready brings both back."""
    done = job(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    cur = st.status_from_rayjob(done, {}, now=T0, generation=1)
    svc = {"metadata": {"name": "r"}, "status": {"serviceStatus": "Running",
                                                  "activeServiceStatus": RUNNING_APP}}
    cur = {**cur, **st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1",
                                                now=T1, generation=1)}
    assert cur["phase"] == "Serving" and cur["serving"]["endpoint"] == "e"
    down = {"metadata": {"name": "r"}, "status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "ZeroServeEndpoints",
        "message": "Number of serve endpoints dropped to 0"}], "activeServiceStatus": RUNNING_APP}}
    out = st.serving_from_rayservice(down, cur, endpoint="e", checkpoint="c1", now=T1,
                                     generation=1)
    assert out["serving"] is None and out["phase"] == "Succeeded"
    assert out["message"] == ("not serving: the RayService is not ready: ZeroServeEndpoints: "
                              "Number of serve endpoints dropped to 0"), out["message"]
    cur = {**cur, **out}
    # still down: nothing new; a finished RayJob's event keeps the outage as the message
    assert "message" not in st.serving_from_rayservice(down, cur, endpoint="e", checkpoint="c1",
                                                       now=T1, generation=1)
    assert st.status_from_rayjob(done, cur, now=T1, generation=1)["message"] == out["message"]
    back = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                      generation=1)
    assert back["serving"]["endpoint"] == "e" and back["message"] == "serving c1 at e"


def test_a_serving_pod_that_cannot_run_is_named_until_it_runs():
    """KubeRay says only that the RayService is not ready (or ``UpgradeInProgress`` while
    the previous config serves) when the serving cluster's pods cannot be scheduled: the
    ``Ready`` message names the pod and one Warning says it; before anything serves the
    run's message does too, and it leaves once the pod runs."""
    problem = st.pod_problem(_unschedulable(CPU_SHORT, role="serve"))
    done = job(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    cur = st.status_from_rayjob(done, {}, now=T0, generation=1)
    svc = {"metadata": {"name": "r"}, "status": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}],
        "pendingServiceStatus": {"rayClusterName": "r-serve-abc"}}}
    assert st.serving_clusters(svc) == {"r-serve-abc"}
    out = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                     generation=1, pod_problems=[problem])
    assert out["message"] == f"{st.SERVE_WAITS}: {problem}"
    assert "spec.serve.cpusPerReplica asks 8 CPU per pod" in out["message"]
    ready = st.get_condition(out["conditions"], st.READY)
    assert ready["status"] == "False" and ready["message"].endswith(out["message"])
    assert st.serve_wait_event(cur, out) == ("Warning", "ServePodsPending", out["message"])
    cur = {**cur, **out}
    # the same wait seen again (KubeRay's next status): no second Warning
    again = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                       generation=1, pod_problems=[problem])
    assert st.serve_wait_event(cur, again) is None
    # the pod runs: the wait leaves the message and the condition
    cleared = st.serving_from_rayservice(svc, cur, endpoint="e", checkpoint="c1", now=T1,
                                         generation=1, pod_problems=[])
    assert cleared["message"] == "waiting for the RayService to become ready"
    assert st.SERVE_WAITS not in st.get_condition(cleared["conditions"], st.READY)["message"]
    assert st.serve_wait_event(cur, cleared) is None
    # an upgrade whose new cluster cannot start: the previous config keeps serving, and
    # the run's message (serving's) is left as it is
    serving = {**cur, **st.serving_from_rayservice(
        {"metadata": {"name": "r"}, "status": {"serviceStatus": "Running",
                                                "activeServiceStatus": RUNNING_APP}},
        cur, endpoint="e", checkpoint="c1", now=T1, generation=1)}
    upgrading = {"metadata": {"name": "r"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"},
                       {"type": "UpgradeInProgress", "status": "True", "message": "upgrading"}],
        "activeServiceStatus": RUNNING_APP, "pendingServiceStatus": {"rayClusterName": "new"}}}
    up = st.serving_from_rayservice(upgrading, serving, endpoint="e", checkpoint="c1", now=T1,
                                    generation=2, pod_problems=[problem])
    assert up["phase"] == "Serving" and "message" not in up
    ready = st.get_condition(up["conditions"], st.READY)
    assert ready["reason"] == "UpgradeInProgress" and problem in ready["message"], ready
    assert st.serve_wait_event(serving, up)[1] == "ServePodsPending"


@pytest.mark.parametrize("status,spec,expected", [
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "jobStatus": "RUNNING",
      "rayClusterName": "c"}, {}, "c"),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "rayClusterName": "c"},
     {}, "c"),  # failed while Initializing: the job may have been submitted all the same
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "jobStatus": "SUCCEEDED",
      "rayClusterName": "c"}, {}, None),  # ended by itself
    ({"jobDeploymentStatus": "Failed", "reason": "AppFailed", "jobStatus": "FAILED",
      "rayClusterName": "c"}, {}, None),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "c"}, {}, None),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "jobStatus": "RUNNING",
      "rayClusterName": "c"}, {"clusterSelector": {"x": "y"}}, None),  # not the RayJob's
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, {}, None),
])
def test_a_cluster_left_running_past_the_deadline(status, spec, expected):
    assert st.cluster_left_running({"spec": spec, "status": status}) == expected


def test_a_worker_failure_is_one_warning_each_and_none_when_cleared():
    """``status.workerFailures`` lives for one attempt (the next attempt's driver clears
    it): the Event is what records a worker killed mid-run (a fault probe on the real node
    saw none)."""
    first = {"count": 1, "last": "worker failure (rank 1: ...); restarting", "at": T0}
    assert st.worker_failure_event(None, first) == ("Warning", "WorkerFailure", first["last"])
    assert st.worker_failure_event(first, dict(first)) is None  # the same one again
    second = {**first, "count": 2, "at": T1}
    assert st.worker_failure_event(first, second)[1] == "WorkerFailure"
    assert st.worker_failure_event(second, None) is None  # a new attempt starts at zero
    assert st.worker_failure_event(None, {"count": 1}) is None  # nothing to say


def test_the_operators_suspend_for_an_edit_is_not_announced_again_as_suspended():
    """The SpecChangeBeforeStart Event says the RayJob is suspended for the edit; a
    Suspended Event with the same words followed it (on the real node)."""
    msg = st.spec_change_before_start("spec.scaling.cpusPerWorker")
    conds = st.set_condition([], st.SPEC_APPLIED, False, st.SPEC_CHANGE_BEFORE_START, msg,
                             now=T0, generation=2)
    cur = {"conditions": conds, "phase": "Pending", "message": msg}
    suspended = job(jobDeploymentStatus="Suspended")
    suspended["spec"] = {"suspend": True}
    patch = st.status_from_rayjob(suspended, cur, now=T1, generation=2)
    assert patch["phase"] == "Suspended" and patch["message"] == msg
    assert st.phase_event(cur, patch) is None
    # the user's own suspend is announced as before
    user = {"conditions": st.set_condition([], st.SPEC_APPLIED, True, "SuspendUpdated",
                                           "RayJob suspended", now=T0, generation=2),
            "phase": "Running"}
    assert st.phase_event(user, st.status_from_rayjob(suspended, user, now=T1,
                                                      generation=2))[1] == "Suspended"


def test_a_success_that_trained_nothing_says_so():
    """Only the driver's "nothing to train" note joins the success message; a resume's
    note does not."""
    done = job(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    note = "/mnt/r already has 100 epochs (asked for 12): nothing to train"
    out = st.status_from_rayjob(done, {"lastNote": {"message": note}}, now=T0, generation=1)
    assert out["message"] == f"the Ray job succeeded: {note}"
    assert st.get_condition(out["conditions"], st.SUCCEEDED)["message"] == out["message"]
    resumed = st.status_from_rayjob(done, {"lastNote": {"message": "resumed from epoch 4"}},
                                    now=T0, generation=1)
    assert resumed["message"] == "the Ray job succeeded"
