"""What KubeRay's real controller does with what raykube writes, on the real control plane.

The operator runs as its ServiceAccount; KubeRay (built from its Go module) acts in this
module's namespace; pods are kwok's (scheduled and Running, no container runs). Where a
test needs an outcome that only a running Ray cluster could produce (a RayJob SUCCEEDED),
it patches the RayJob's status as KubeRay would, and says so.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raykube.spec import load_yaml_documents
from raykube.testing.fixtures import kuberay_kube  # noqa: F401
from raykube.testing.real_kube import RealOperator, bound_claim

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
LABEL = "raykube.io/trainingrun"


@pytest.fixture(scope="module")
def kube(kuberay_kube):  # noqa: F811
    return kuberay_kube


@pytest.fixture(scope="module")
def operator(kube):
    op = RealOperator(kube).start()
    yield op
    op.stop()


@pytest.fixture(autouse=True)
def operator_logs(operator):
    yield
    print(operator.logs()[-6000:])


@pytest.fixture(scope="module")
def kr_train(kube, operator) -> float:
    """The quickstart run the first tests watch, created once per module (by whichever of
    them runs first, so each also runs alone with ``-k``); returns when it was created."""
    created = time.monotonic()
    kube.create(tr_doc("kr-train"))
    return created


def tr_doc(name: str, serve: bool = False) -> dict:
    doc = copy.deepcopy(QUICKSTART)
    doc["metadata"] = {"name": name}
    doc["spec"]["serve"] = {"enabled": serve, "minAccuracy": 0.5}
    return doc


def owned_by(kube, kind: str, label: str) -> list[dict]:
    return kube.list(kind, label_selector=label)


def pods_running(kube, cluster: str) -> list[dict]:
    pods = kube.list("Pod", label_selector=f"ray.io/cluster={cluster}")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]


def test_rayjob_becomes_a_raycluster_with_running_pods(kube, operator, kr_train):
    t0 = kr_train
    job = kube.wait_object("RayJob", "kr-train",
                           where=lambda o: (o.get("status") or {}).get("rayClusterName"))
    cluster = job["status"]["rayClusterName"]
    rc = kube.wait_object("RayCluster", cluster)
    assert rc["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    workers = QUICKSTART["spec"]["scaling"]["workers"]
    pods = kube.wait_for(lambda: len(pods_running(kube, cluster)) == 1 + workers
                         and pods_running(kube, cluster), timeout=60, what="head + worker pods")
    elapsed = time.monotonic() - t0
    assert elapsed < 60, elapsed
    roles = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods)
    assert roles == ["head"] + ["worker"] * workers
    by_role = {p["metadata"]["labels"]["ray.io/node-type"]: p for p in pods}
    head, worker = by_role["head"]["spec"], by_role["worker"]["spec"]
    # only the head (the driver) gets the run's ServiceAccount token and the spec
    assert head["serviceAccountName"] == "kr-train-raykube"
    assert worker.get("automountServiceAccountToken") is False
    assert not any(v.get("configMap") for v in worker.get("volumes") or [])
    # KubeRay's own view: the RayCluster is ready, the job moved past Initializing
    kube.wait_object("RayCluster", cluster, timeout=60,
                     where=lambda o: (o.get("status") or {}).get("state") == "ready")
    tr = kube.wait_object("TrainingRun", "kr-train",
                          where=lambda o: (o.get("status") or {}).get("rayJob") == "kr-train")
    assert tr["status"]["phase"] in ("Pending", "Running")


def test_kuberays_job_submitter_pod_carries_the_runs_labels(kube, operator, kr_train):
    """KubeRay builds its submitter Job from the rendered template: the pod is the run's
    (so a submitter that cannot start is named in the run's message, which the operator
    finds through its pod watch), runs KubeRay's own `ray job submit`, holds no token."""
    kube.wait_object("RayJob", "kr-train", timeout=60, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    (pod,) = kube.wait_for(lambda: kube.list(
        "Pod", label_selector=f"{LABEL}=kr-train,raykube.io/role=submitter"), timeout=60,
        what="the submitter's pod")
    assert pod["metadata"]["labels"]["job-name"] == "kr-train"  # the Kubernetes Job's
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert "ray job submit" in " ".join(c["args"]), c["args"]
    assert {"RAY_DASHBOARD_ADDRESS", "RAY_JOB_SUBMISSION_ID"} <= {e["name"] for e in c["env"]}


def test_the_log_has_no_line_per_watched_event(kube, operator, kr_train):
    """kopf logs ``Handler '...' succeeded.`` at INFO after every handler call. By now
    the RayJob and its pods have changed many times: the watch handlers' lines are DEBUG,
    the create handler's (once per run) stays."""
    from raykube_operator.handlers import WATCH_HANDLERS

    kube.wait_object("RayJob", "kr-train", where=lambda o: (o.get("status") or {}).get(
        "jobDeploymentStatus"))
    log = operator.logs()
    # kopf's wording, as filtered, naming the run as `kopf run` does (it named none: same
    # names in two namespaces could not be told apart)
    assert f"[{kube.namespace}/kr-train] Handler 'on_trainingrun' succeeded." in log, log
    noisy = [line for line in log.splitlines()
             if any(f"Handler {h!r} succeeded." in line for h in WATCH_HANDLERS)]
    assert noisy == [], noisy[:5]


def test_nothing_is_rewritten_back_and_forth(kube, operator, kr_train):
    """Once KubeRay has settled, the operator changes nothing and the head Service has one
    owner (the RayJob's); an operator restart writes nothing either."""
    kube.wait_object("RayJob", "kr-train", where=lambda o: (o.get("status") or {}).get(
        "jobDeploymentStatus") in ("Running", "Initializing"))
    time.sleep(2)
    before = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
              for kind in ("RayJob", "ConfigMap", "ServiceAccount", "Role", "RoleBinding")
              for o in owned_by(kube, kind, f"{LABEL}=kr-train")}
    n = len(operator.calls())
    operator.restart()
    time.sleep(3)
    children = ("rayjobs", "rayservices", "configmaps", "serviceaccounts", "roles",
                "rolebindings")
    writes = [c for c in operator.calls()[n:] if c.plural in children
              and c.verb in ("create", "patch", "update", "delete")]
    assert writes == [], [(c.verb, c.resource, c.name) for c in writes]
    after = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
             for kind in ("ConfigMap", "ServiceAccount", "Role", "RoleBinding")
             for o in owned_by(kube, kind, f"{LABEL}=kr-train")}
    assert after == {k: v for k, v in before.items() if k[0] != "RayJob"}
    # KubeRay's own writes of the RayJob (its finalizer, a full PUT from Go types) are not
    # taken for a hand edit (``drift``)
    edited = [e["message"] for e in kube.list("Event") if e.get("reason") == "ChildEdited"
              and (e.get("involvedObject") or {}).get("name") == "kr-train"]
    assert edited == [], edited
    # no kopf bookkeeping on objects whose schema is KubeRay's
    job = kube.get("RayJob", "kr-train")
    anns = job["metadata"].get("annotations") or {}
    assert not [k for k in anns if "last-handled" in k or "kopf" in k], anns
    # The RayJob's current RayCluster: on kwok no Ray job ever runs, so KubeRay in time
    # fails the attempt and retries it on a new RayCluster (seen in a CI run on a loaded
    # machine: the cluster the status named was gone 50 s later); read the current one.
    def current_cluster():
        name = (kube.get("RayJob", "kr-train").get("status") or {}).get("rayClusterName")
        return kube.get("RayCluster", name) if name else None

    cluster = kube.wait_for(current_cluster, timeout=60, what="the RayJob's RayCluster")
    assert not [k for k in (cluster["metadata"].get("annotations") or {})
                if "last-handled" in k], cluster["metadata"].get("annotations")
    svc = kube.wait_for(lambda: kube.get("Service", "kr-train-head-svc"), timeout=60,
                        what="the head Service")
    assert len(svc["metadata"]["ownerReferences"]) == 1, svc["metadata"]["ownerReferences"]


def test_a_pod_that_cannot_start_is_named_in_the_message(kube, operator):
    """The claim the run mounts does not exist yet (as when the default StorageClass
    cannot provision ReadWriteMany): the scheduler keeps the Ray pods Pending, and the
    TrainingRun says which pod and why instead of "waiting for the Ray cluster" forever.
    Once the claim exists the pods are scheduled and the message goes back to KubeRay's."""
    doc = tr_doc("kr-pending")
    doc["spec"].setdefault("checkpoint", {})["storage"] = {"pvc": {"claimName": "kr-late"}}
    kube.create(doc)

    def message(o: dict) -> str:
        return (o.get("status") or {}).get("message") or ""

    tr = kube.wait_object("TrainingRun", "kr-pending", timeout=60,
                          where=lambda o: "cannot be scheduled" in message(o))
    assert "waiting for the Ray cluster: pod kr-pending-" in message(tr), message(tr)
    assert 'persistentvolumeclaim "kr-late" not found' in message(tr), message(tr)
    running = next(c for c in tr["status"]["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", "PodsPending")
    assert tr["status"]["phase"] == "Pending"
    assert kube.wait_for(lambda: [e for e in kube.list("Event") if e.get("involvedObject", {})
                                  .get("name") == "kr-pending" and "kr-late" in e.get("message", "")],
                         timeout=30, what="an Event naming the claim")

    ns = kube.namespace
    kube.cp.apply_objects(bound_claim(ns, "kr-late", f"kr-late-{ns}"))
    try:
        tr = kube.wait_object("TrainingRun", "kr-pending", timeout=90,
                              where=lambda o: message(o) and "cannot be" not in message(o))
        assert "kr-late" not in message(tr), message(tr)
        running = next(c for c in tr["status"]["conditions"] if c["type"] == "Running")
        assert running["reason"] != "PodsPending", running
    finally:
        kube.delete("TrainingRun", "kr-pending")
        kube.http.delete(f"/api/v1/persistentvolumes/kr-late-{ns}")


def test_a_waiting_pod_is_named_once_across_an_operator_restart(kube, operator):
    """An operator restarted while a pod cannot be scheduled keeps naming it: the wait
    is counted from the pod's own ``PodScheduled`` condition, and the run's pods are read
    when its status names a pod the new process has not yet seen. Before, the first
    reconcile after the restart said "waiting for the Ray cluster" and, the grace period
    later, a second ``PodsPending`` Warning named the same pod."""
    doc = tr_doc("kr-waits")
    doc["spec"]["scaling"]["nodeSelector"] = {"raykube.io/nowhere": "x"}
    kube.create(doc)

    def message() -> str:
        return ((kube.get("TrainingRun", "kr-waits") or {}).get("status") or {}).get(
            "message") or ""

    def warnings() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("involvedObject", {}).get("name")
                == "kr-waits" and e.get("reason") == "PodsPending"]

    try:
        kube.wait_for(lambda: "cannot be scheduled" in message() and warnings(), timeout=90,
                      what="the pod named, in the status and a Warning")
        operator.restart()
        said, until = set(), time.monotonic() + 25  # past the grace period (15 s)
        while time.monotonic() < until:
            said.add(message())
            time.sleep(0.3)
        assert all("cannot be scheduled" in m for m in said), said
        events = warnings()
        assert len(events) == 1 and events[0].get("count", 1) == 1, events
        assert events[0]["source"]["component"] == "raykube-operator", events
    finally:
        kube.delete("TrainingRun", "kr-waits")


def test_an_oom_killed_worker_is_named_with_the_field_to_raise(kube, operator):
    """A worker container killed for memory: the kubelet restarts it in place (KubeRay's
    pods keep restartPolicy Always) and KubeRay's status says nothing. The TrainingRun
    gets one Warning Event naming the pod, its limit and the field that sizes it, and
    its message carries the kill once the job fails. Stand-in: kwok plays the kubelet
    here, so the kill is written into the pod's status the way the kubelet reports one
    (lastState.terminated.reason OOMKilled, restartCount 1)."""
    name = "kr-oom"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name,
                           where=lambda o: (o.get("status") or {}).get("rayClusterName"))
    cluster = job["status"]["rayClusterName"]
    pod = kube.wait_for(lambda: next((p for p in pods_running(kube, cluster)
                                      if p["metadata"]["labels"]["ray.io/node-type"] == "worker"
                                      and p["status"].get("containerStatuses")), None),
                        timeout=60, what="a running worker pod")
    pod_name = pod["metadata"]["name"]
    statuses = copy.deepcopy(pod["status"]["containerStatuses"])
    statuses[0]["restartCount"] = 1
    statuses[0]["lastState"] = {"terminated": {
        "reason": "OOMKilled", "exitCode": 137, "startedAt": "2026-12-01T00:00:00Z",
        "finishedAt": "2026-12-01T00:01:00Z"}}
    kube.patch_status("Pod", pod_name, {"containerStatuses": statuses})

    def oom_events() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("reason") == "OOMKilled"
                and (e.get("involvedObject") or {}).get("name") == name]

    (event,) = kube.wait_for(oom_events, timeout=30, what="an OOMKilled Event")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "TrainingRun"
    container = statuses[0]["name"]
    assert (f"pod {pod_name}: container {container} was OOMKilled at its 2Gi memory limit "
            "(1 restart(s))") in event["message"], event["message"]
    assert "raise spec.scaling.memoryPerWorker" in event["message"], event["message"]
    # another change to the same pod is not another kill
    kube.patch("Pod", pod_name, {"metadata": {"labels": {"raykube-test": "touched"}}})
    time.sleep(2)
    assert len(oom_events()) == 1
    held = kube.get("TrainingRun", name)["status"]["lastIncident"]
    assert held == {"reason": "OOMKilled", "message": event["message"].split(": the run")[0],
                    "rayCluster": cluster, "at": "2026-12-01T00:01:00Z"}, held
    # an operator restarted mid-run lists the pod again, kill included: not a new kill
    operator.restart()
    kube.patch("Pod", pod_name, {"metadata": {"labels": {"raykube-test": "touched-again"}}})
    time.sleep(3)
    assert len(oom_events()) == 1, [e["message"] for e in oom_events()]

    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                                       "failed": 1, "reason": "AppFailed",
                                       "message": "Job entrypoint command failed"})
    tr = kube.wait_object("TrainingRun", name, timeout=30,
                          where=lambda o: (o.get("status") or {}).get("phase") == "Failed")
    assert f"last OOM kill: pod {pod_name}" in tr["status"]["message"], tr["status"]["message"]
    failed = next(c for c in tr["status"]["conditions"] if c["type"] == "Failed")
    assert "OOMKilled at its 2Gi memory limit" in failed["message"], failed
    kube.delete("TrainingRun", name)


def test_a_lost_ray_head_is_named_while_the_job_runs_and_not_at_its_end(kube, operator):
    """The head pod deleted while the job runs on it (on a real node the job is lost with
    it, KubeRay's submitter sends it to the new head and the driver resumes from the
    latest checkpoint; measured in the README): one Warning Event and a note in the
    message, where KubeRay's status shows nothing. A head removed once the job has ended
    is KubeRay's tear-down, not a loss. Stand-in: no Ray runs under kwok, so the job's
    end is written into the RayJob's status as KubeRay writes it."""
    name = "kr-head"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name, timeout=90, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    cluster = job["status"]["rayClusterName"]

    def heads() -> list[dict]:
        return [p for p in pods_running(kube, cluster)
                if p["metadata"]["labels"]["ray.io/node-type"] == "head"]

    (head,) = kube.wait_for(heads, timeout=60, what="the running head pod")
    head_name = head["metadata"]["name"]

    def losses() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("reason") == "RayHeadLost"
                and (e.get("involvedObject") or {}).get("name") == name]

    kube.delete("Pod", head_name)
    (event,) = kube.wait_for(losses, timeout=30, what="a RayHeadLost Event")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "TrainingRun"
    assert f"the Ray head pod {head_name} was deleted at " in event["message"], event
    assert "training resumes from the latest checkpoint" in event["message"], event
    tr = kube.wait_object("TrainingRun", name, timeout=30, where=lambda o: "last Ray head loss"
                          in ((o.get("status") or {}).get("message") or ""))
    assert head_name in tr["status"]["message"], tr["status"]["message"]
    # KubeRay starts a new head; a change to it is no loss
    (new_head,) = kube.wait_for(lambda: [p for p in heads()
                                         if p["metadata"]["name"] != head_name],
                                timeout=60, what="KubeRay's new head pod")
    # an operator restarted mid-run no longer sees the deleted pod: the note stays (the
    # status holds it) through the status syncs that follow its start
    operator.restart()
    kube.patch("Pod", new_head["metadata"]["name"],
               {"metadata": {"labels": {"raykube-test": "touched"}}})
    time.sleep(3)
    tr = kube.get("TrainingRun", name)
    assert f"last Ray head loss: the Ray head pod {head_name} was deleted" in tr["status"][
        "message"], tr["status"]["message"]

    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1})
    kube.wait_object("TrainingRun", name, timeout=30,
                     where=lambda o: (o.get("status") or {}).get("phase") == "Succeeded")
    kube.delete("Pod", new_head["metadata"]["name"])
    kube.wait_for(lambda: kube.get("Pod", new_head["metadata"]["name"]) is None, timeout=60,
                  what="the second head pod gone")
    time.sleep(2)
    assert len(losses()) == 1, [e["message"] for e in losses()]
    tr = kube.get("TrainingRun", name)
    assert "head loss" not in tr["status"]["message"], tr["status"]["message"]
    kube.delete("TrainingRun", name)


def test_a_raycluster_deleted_under_the_job_is_a_cluster_loss(kube, operator):
    """``kubectl delete raycluster`` while the job runs on it: KubeRay recreates the
    cluster at once under the same name, and the job is lost with its head. One Warning
    Event, reason RayClusterLost (not RayHeadLost: the head pod was not all that went),
    saying what follows, and the message notes it; the new cluster's pods are no loss."""
    name = "kr-cluster"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name, timeout=90, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    cluster = job["status"]["rayClusterName"]
    kube.wait_for(lambda: [p for p in pods_running(kube, cluster)
                           if p["metadata"]["labels"]["ray.io/node-type"] == "head"],
                  timeout=60, what="the running head pod")
    old_uid = kube.get("RayCluster", cluster)["metadata"]["uid"]

    def incidents() -> list[dict]:
        return [e for e in kube.list("Event")
                if e.get("reason") in ("RayHeadLost", "RayClusterLost")
                and (e.get("involvedObject") or {}).get("name") == name]

    kube.delete("RayCluster", cluster)
    (event,) = kube.wait_for(incidents, timeout=30, what="a RayClusterLost Event")
    assert event["reason"] == "RayClusterLost" and event["type"] == "Warning", event
    limit = job["spec"]["backoffLimit"]
    assert event["message"].startswith(f"the Ray cluster {cluster} was deleted at "), event
    assert event["message"].endswith(
        "while the job ran on it: KubeRay recreates it, and the job is lost with its head; "
        "KubeRay submits the job again to the new head (or, if its submitter gives up "
        f"first, retries the RayJob on a new Ray cluster: retry 1 of {limit}), and "
        "training resumes from the latest checkpoint"), event["message"]
    held = kube.get("TrainingRun", name)["status"]["lastIncident"]
    assert (held["reason"], held["rayCluster"]) == ("RayClusterLost", cluster), held
    kube.wait_object("TrainingRun", name, timeout=30, where=lambda o: "last Ray cluster loss"
                     in ((o.get("status") or {}).get("message") or ""))
    # KubeRay's new cluster of the same name: its pods' starts are no further incident
    kube.wait_for(lambda: (kube.get("RayCluster", cluster) or {"metadata": {"uid": old_uid}})[
        "metadata"]["uid"] != old_uid, timeout=60, what="KubeRay's new RayCluster")
    kube.wait_for(lambda: pods_running(kube, cluster), timeout=60, what="its pods")
    time.sleep(2)
    assert len(incidents()) == 1, [e["message"] for e in incidents()]
    kube.delete("TrainingRun", name)


def test_a_job_past_its_deadline_is_stopped_not_left_running(kube, operator):
    """KubeRay fails a RayJob past ``activeDeadlineSeconds`` but leaves its Ray job
    running until ``ttlSecondsAfterFinished`` (600 s for an unserved run) deletes the
    cluster: on the real node a run trained, checkpointed and reported epochs for minutes
    after it said Failed (a fault probe). The operator deletes that cluster at once, with
    one DeadlineStop Warning; the RayJob stays Failed (KubeRay neither retries it nor
    makes a new cluster)."""
    name = "kr-deadline"
    doc = tr_doc(name)
    doc["spec"]["activeDeadlineSeconds"] = 15
    kube.create(doc)
    job = kube.wait_object("RayJob", name, timeout=90, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    cluster = job["status"]["rayClusterName"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 600  # KubeRay alone keeps it that long
    tr = kube.wait_condition(name, "Failed", reason="DeadlineExceeded", timeout=60)
    assert "activeDeadlineSeconds" in tr["status"]["message"], tr["status"]
    kube.wait_for(lambda: kube.get("RayCluster", cluster) is None, timeout=60,
                  what=f"RayCluster {cluster} deleted")

    def stops() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("reason") == "DeadlineStop"
                and (e.get("involvedObject") or {}).get("name") == name]

    (event,) = kube.wait_for(stops, timeout=30, what="a DeadlineStop Event")
    assert event["type"] == "Warning" and f"RayCluster {cluster} is deleted" in event["message"]
    time.sleep(3)  # KubeRay's next reconciles (every 3 s): nothing comes back
    assert kube.get("RayCluster", cluster) is None
    assert kube.get("RayJob", name)["status"]["jobDeploymentStatus"] == "Failed"
    assert len(stops()) == 1, [e["message"] for e in stops()]
    kube.delete("TrainingRun", name)


def test_an_edit_that_lets_unschedulable_pods_start_is_applied_at_once(kube, operator):
    """Workers asking for more CPU than any node has keep the RayJob Initializing for
    good; the edit that fixes them waited for a run that never ends (a fault probe on the
    real node). With KubeRay's real controller: the operator suspends the RayJob, KubeRay
    deletes the cluster it was starting, the RayJob resumes with the edit and its new
    cluster's pods run."""
    name = "kr-unsched"
    doc = tr_doc(name)
    doc["spec"]["scaling"]["cpusPerWorker"] = 100  # kwok's node has 64
    kube.create(doc)
    job = kube.wait_object("RayJob", name, timeout=90, where=lambda o: (
        o.get("status") or {}).get("rayClusterName"))
    first = job["status"]["rayClusterName"]
    kube.wait_object("TrainingRun", name, timeout=60, where=lambda o: "cannot be scheduled"
                     in ((o.get("status") or {}).get("message") or ""))
    assert kube.get("RayJob", name)["status"]["jobDeploymentStatus"] == "Initializing"
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"cpusPerWorker": 0.25}}})
    running = kube.wait_object("RayJob", name, timeout=120, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    assert running["metadata"]["uid"] == job["metadata"]["uid"]
    assert not running["spec"].get("suspend")
    cluster = running["status"]["rayClusterName"]
    assert cluster != first, "KubeRay disregards a changed cluster spec of a started RayJob"
    kube.wait_for(lambda: len([p for p in pods_running(kube, cluster)
                               if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]) == 2,
                  timeout=60, what="the new cluster's 2 workers running")
    tr = kube.get("TrainingRun", name)
    applied = next(c for c in tr["status"]["conditions"] if c["type"] == "SpecApplied")
    assert (applied["status"], applied["reason"]) == ("True", "UpdatedWhileSuspended"), applied
    kube.delete("TrainingRun", name)


def test_the_head_is_placed_by_its_own_fields(kube, operator):
    """``scaling.head.nodeSelector`` reaches the head pod KubeRay creates, and only it: a
    selector no node matches keeps the head Pending, named with the head's field (not the
    workers', whose pods are scheduled); the edit to one that matches starts the cluster,
    and KubeRay's job submitter pod takes the head's selector and tolerations."""
    name = "kr-head-place"
    doc = tr_doc(name)
    doc["spec"]["scaling"]["head"] = {"nodeSelector": {"raykube.io/test-pool": "nowhere"}}
    kube.create(doc)

    def message(o: dict) -> str:
        return (o.get("status") or {}).get("message") or ""
    tr = kube.wait_object("TrainingRun", name, timeout=90,
                          where=lambda o: "cannot be scheduled" in message(o))
    assert ("spec.scaling.head.nodeSelector asks for nodes with raykube.io/test-pool=nowhere"
            in message(tr)), message(tr)
    assert "-head" in message(tr), message(tr)
    pods = kube.list("Pod", label_selector=f"{LABEL}={name}")
    heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
    workers = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "worker"]
    assert [p["spec"].get("nodeSelector") for p in heads] == [{"raykube.io/test-pool": "nowhere"}]
    assert workers and all("raykube.io/test-pool" not in (p["spec"].get("nodeSelector") or {})
                           for p in workers)
    toleration = {"key": "raykube.io/test-taint", "operator": "Exists", "effect": "NoSchedule"}
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"head": {
        "nodeSelector": {"raykube.io/test-pool": None, "type": "kwok"},
        "tolerations": [toleration]}}}})
    # before own_as_applied, the suspended RayJob kept the old key: the create owned it
    job = kube.wait_object("RayJob", name, timeout=120, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running")
    head_spec = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head_spec["nodeSelector"] == {"type": "kwok"}
    # KubeRay's job submitter goes where the head goes (it took no placement at all, and
    # sat Pending on a tainted real node where the head and workers ran)
    (submitter,) = kube.wait_for(lambda: kube.list("Pod", label_selector=(
        f"{LABEL}={name},raykube.io/role=submitter")), timeout=60, what="the submitter pod")
    assert submitter["spec"]["nodeSelector"] == {"type": "kwok"}
    assert toleration in submitter["spec"]["tolerations"], submitter["spec"]["tolerations"]
    assert submitter["spec"].get("nodeName"), "scheduled"
    kube.delete("TrainingRun", name)


def nudge(kube, name: str) -> None:
    """Touch the RayJob (an annotation): a watch event, so KubeRay reconciles it at once."""
    kube.patch("RayJob", name, {"metadata": {"annotations": {
        "raykube-test/nudge": str(time.monotonic())}}})


def nudge_until(kube, name: str, done, timeout: float = 150) -> dict:
    """The RayJob once ``done(rayjob)``, touching it every 3 s meanwhile."""
    deadline = time.monotonic() + timeout
    while not done(obj := kube.get("RayJob", name)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"RayJob {name}: {json.dumps(obj.get('status'))[:2000]}")
        nudge(kube, name)
        time.sleep(3)
    return obj


def test_a_failure_no_retry_can_fix_is_not_retried(kube, operator, tmp_path):
    """``raykube train`` (the RayJob's entrypoint, run here on a Ray of its own, as the
    run's ServiceAccount) meets a dataset folder that does not exist: it asks for the
    retries to be cancelled while its attempt still runs; the operator lowers the
    RayJob's backoffLimit; KubeRay's own retry decision then fails the RayJob for good,
    and the TrainingRun says why with the driver's line. A second run that does not ask
    is retried by the same path. Stand-in: kwok runs no Ray, so no Ray job ever reports
    to KubeRay; KubeRay fails such an attempt itself 30 s after its submitter pod has
    finished (kwok finishes it at once): the failure both runs get."""
    names = ("kr-permanent", "kr-retried")
    for name in names:
        kube.create(tr_doc(name))
    jobs = {name: kube.wait_object("RayJob", name, timeout=60, where=lambda o: (
        o.get("status") or {}).get("jobDeploymentStatus") == "Running") for name in names}
    job = jobs["kr-permanent"]
    account = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "serviceAccountName"]
    config = kube.cp.kubeconfig_for(account, kube.namespace, tmp_path / "driver.kubeconfig")
    spec = copy.deepcopy(QUICKSTART)
    spec["metadata"] = {"name": "kr-permanent"}
    spec["spec"]["data"] = {"dataset": "image-folder", "uri": str(tmp_path / "no-such-images")}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBERNETES_SERVICE_HOST", "RAY_ADDRESS")}
    env.update(KUBECONFIG=str(config), RAYKUBE_TRAININGRUN=f"{kube.namespace}/kr-permanent",
               RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(
                   {"metadata": {"job_submission_id": job["status"]["jobId"]}}))
    run_dir = tmp_path / "runs" / "kr-permanent"
    run_dir.mkdir(parents=True)  # an earlier attempt's failure: this one removes it first
    (run_dir / "failed.json").write_text(json.dumps({
        "message": "earlier", "at": "2026-01-01T00:00:00Z", "final": True, "outcome": "x"}))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "raykube", "train", "--spec",
                          str(tmp_path / "spec.yaml"), "--storage", str(tmp_path / "runs")],
                         env=env, capture_output=True, text=True, timeout=120)
    print(f"raykube train exited {out.returncode} after {time.monotonic() - started:.1f} s")
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("raykube train: ")]
    cause = f"image-folder {tmp_path / 'no-such-images'}: no such folder"
    assert out.returncode == 1, out.stderr
    assert lines[0] == ("raykube train: a new attempt: removed the last one's "
                        f"{run_dir}/failed.json"), out.stderr
    lines = lines[1:]
    assert len(lines) == 4 and lines[0] == lines[3] and lines[0].startswith(
        f"raykube train: {cause}"), out.stderr
    assert lines[1] == "raykube train: not retried: a new attempt would fail the same way"
    # for a RayService rendered beside the run (raykube.run_failure): final, with the cause
    assert lines[2] == ("raykube train: the run failed for good (a new attempt would fail "
                        f"the same way): said in {run_dir}/failed.json"), out.stderr
    said = json.loads((run_dir / "failed.json").read_text())
    assert said["final"] is True and said["message"] == lines[0][len("raykube train: "):]
    assert kube.get("RayJob", "kr-permanent")["spec"]["backoffLimit"] == 0
    assert kube.get("RayJob", "kr-retried")["spec"]["backoffLimit"] == 2

    # KubeRay fails each attempt on its next reconcile 30 s after the submitter finished;
    # its reconciles of a RayJob whose dashboard never answers back off exponentially (to
    # minutes), so the RayJobs are touched (an annotation: a watch event, as any edit is)
    # until KubeRay has decided
    jobs = {name: nudge_until(kube, name, lambda o: int(
        (o.get("status") or {}).get("failed") or 0) >= 1) for name in names}
    assert jobs["kr-retried"]["status"]["jobDeploymentStatus"] != "Failed", jobs["kr-retried"]
    tr = kube.wait_object("TrainingRun", "kr-permanent", timeout=30,
                          where=lambda o: (o.get("status") or {}).get("phase") == "Failed")
    failed = next(c for c in tr["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentFailure", failed
    assert tr["status"]["message"] == (
        f"the Ray job failed after 1 attempt(s): {lines[0][len('raykube train: '):]}; not "
        "retried: a new attempt would fail the same way (fix that, then give spec.rerun a "
        "new value to run again)"), tr["status"]["message"]
    assert tr["status"]["permanentFailure"]["retriesCancelled"] is True
    for _ in range(2):  # KubeRay's next reconciles: a retry would begin in them
        nudge(kube, "kr-permanent")
        time.sleep(3)
    st = kube.get("RayJob", "kr-permanent")["status"]
    assert (st["jobDeploymentStatus"], st["failed"]) == ("Failed", 1), st
    assert [e for e in kube.list("Event") if e.get("reason") == "RetriesCancelled"
            and (e.get("involvedObject") or {}).get("name") == "kr-permanent"]

    # the cause fixed outside the spec, the user asks again (a new spec.rerun): a new
    # RayJob (after KubeRay's finalizer let the failed one go), its retries back, the
    # previous run's cancellation and outcome cleared
    old_uid = kube.get("RayJob", "kr-permanent")["metadata"]["uid"]
    kube.patch("TrainingRun", "kr-permanent", {"spec": {"rerun": "after fixing the data"}})
    new = kube.wait_object("RayJob", "kr-permanent", timeout=60,
                           where=lambda o: o["metadata"]["uid"] != old_uid)
    assert new["spec"]["backoffLimit"] == 2
    tr = kube.wait_condition("kr-permanent", "SpecApplied", reason="Rerun")
    assert next(c for c in tr["status"]["conditions"] if c["type"] == "SpecApplied")[
        "message"] == "RayJob rerun for spec.rerun"
    assert "permanentFailure" not in tr["status"] and tr["status"]["phase"] != "Failed", tr
    assert next(c for c in tr["status"]["conditions"] if c["type"] == "Failed")[
        "status"] == "Unknown"  # no outcome yet
    for name in names:
        kube.delete("TrainingRun", name)


def test_a_rerun_waits_for_the_previous_runs_submitter_job(kube, operator):
    """KubeRay takes a Job of the RayJob's name as its submitter whoever owns it: a rerun's
    RayJob created while the previous run's Job was still there "finished" at once with
    that run's outcome (an operator probe: a lost retry, or with maxRetries: 0 a rerun
    failed without running). The previous RayJob is now deleted in the foreground, so it
    goes, and the new one comes, only after its Job. A finalizer holds the Job here,
    standing in for a garbage collector that has not got to it yet."""
    name = "kr-rerun-job"
    kube.create(tr_doc(name))
    job = kube.wait_object("Job", name, timeout=90)  # KubeRay's submitter, once the cluster is up
    kube.patch("Job", name, {"metadata": {"finalizers": ["raykube.io/test-hold"]}})
    old_uid = kube.get("RayJob", name)["metadata"]["uid"]
    # stand-in for Ray finishing the job (no container runs here)
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1})
    kube.wait_object("TrainingRun", name, timeout=30,
                     where=lambda o: (o.get("status") or {}).get("phase") == "Succeeded")
    kube.patch("TrainingRun", name, {"spec": {"rerun": "2"}})
    try:
        kube.wait_object("RayJob", name, timeout=30,
                         where=lambda o: o["metadata"].get("deletionTimestamp"))
        time.sleep(5)  # the Job is still there: so is the previous RayJob
        assert kube.get("RayJob", name)["metadata"]["uid"] == old_uid
    finally:
        kube.patch("Job", name, {"metadata": {"finalizers": None}})
    new = kube.wait_object("RayJob", name, timeout=60,
                           where=lambda o: o["metadata"]["uid"] != old_uid)
    time.sleep(5)  # KubeRay's first reconciles of the new RayJob
    status = kube.get("RayJob", name).get("status") or {}
    assert not status.get("failed") and status.get("jobDeploymentStatus") != "Failed", status
    assert (kube.get("TrainingRun", name)["status"]).get("phase") != "Failed"
    assert new["metadata"]["uid"] != job["metadata"]["ownerReferences"][0]["uid"]
    kube.delete("TrainingRun", name)


def test_a_rayjob_deleted_by_someone_is_made_again_after_its_submitter_job(kube, operator):
    """``kubectl delete rayjob`` while the run is active: the operator makes it again
    (``RayJobRecreated``), but KubeRay takes a Job of the RayJob's name as its submitter
    whoever owns it, and the garbage collector deletes the old one only after its owner
    is gone. The new RayJob is created once that Job has gone. A finalizer holds the Job
    here, standing in for a garbage collector that has not got to it yet."""
    name = "kr-recreate-job"
    kube.create(tr_doc(name))
    kube.wait_object("Job", name, timeout=90)  # KubeRay's submitter, once the cluster is up
    kube.patch("Job", name, {"metadata": {"finalizers": ["raykube.io/test-hold"]}})
    old_uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.delete("RayJob", name)  # in the background, as kubectl does
    try:
        kube.wait_for(lambda: (kube.get("RayJob", name) or {}).get("metadata", {}).get(
            "uid") != old_uid, timeout=60, what="the RayJob gone")
        time.sleep(5)  # the Job is still there: no new RayJob yet
        assert kube.get("RayJob", name) is None, kube.get("RayJob", name)
    finally:
        kube.patch("Job", name, {"metadata": {"finalizers": None}})
    kube.wait_object("RayJob", name, timeout=60, where=lambda o: o["metadata"]["uid"] != old_uid)
    # (the Event: the condition's RayJobRecreated gives way to KubeRay's next state)
    kube.wait_for(lambda: [e for e in kube.list("Event") if e.get("reason") == "RayJobRecreated"
                           and (e.get("involvedObject") or {}).get("name") == name],
                  timeout=30, what="a RayJobRecreated Event")
    time.sleep(5)  # KubeRay's first reconciles of the new RayJob
    status = kube.get("RayJob", name).get("status") or {}
    assert not status.get("failed") and status.get("jobDeploymentStatus") != "Failed", status
    assert kube.get("TrainingRun", name)["status"].get("phase") != "Failed"
    kube.delete("TrainingRun", name)


def test_promotion_becomes_a_rayservice_cluster_and_deletion_removes_everything(kube, operator):
    name = "kr-serving"
    kube.create(tr_doc(name, serve=True))
    job = kube.wait_object("RayJob", name)
    assert job["spec"]["ttlSecondsAfterFinished"] == 0  # serving: free the training cluster
    # stand-in for the driver (its KubernetesReporter) and for Ray finishing the job:
    kube.patch_status("TrainingRun", name, {
        "checkpoint": {"uri": f"/mnt/raykube/{kube.namespace}/{name}/best", "epoch": 3,
                       "metrics": {"valAccuracy": 0.97}}})
    kube.wait_object("RayJob", name, where=lambda o: (o.get("status") or {}).get("startTime"))
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1})
    svc = kube.wait_object("RayService", f"{name}-serve", timeout=30)
    assert svc["spec"]["serveService"]["metadata"]["name"] == f"{name}-serve-svc"
    # KubeRay creates the serving cluster and its pods from what we rendered
    rc = kube.wait_for(lambda: [c for c in kube.list("RayCluster") if any(
        r["kind"] == "RayService" and r["name"] == f"{name}-serve"
        for r in c["metadata"].get("ownerReferences") or [])], timeout=60,
        what="the RayService's RayCluster")[0]
    kube.wait_for(lambda: len(pods_running(kube, rc["metadata"]["name"])) >= 1, timeout=60,
                  what="serving pods")
    tr = kube.wait_condition(name, "Promoted", reason="GatePassed")
    assert tr["status"]["rayService"] == f"{name}-serve"
    # deleting the TrainingRun removes all of it (garbage collector, cascading)
    t0 = time.monotonic()
    kube.delete("TrainingRun", name)

    def leftovers():
        out = []
        for kind in ("RayJob", "RayService", "ConfigMap", "ServiceAccount", "Role",
                     "RoleBinding"):
            out += [(kind, o["metadata"]["name"]) for o in owned_by(kube, kind, f"{LABEL}={name}")]
        out += [("RayCluster", c["metadata"]["name"]) for c in kube.list("RayCluster")
                if c["metadata"]["name"].startswith(name)]
        out += [("Pod", p["metadata"]["name"]) for p in kube.list("Pod")
                if p["metadata"]["name"].startswith(name)]
        return out
    kube.wait_for(lambda: leftovers() == [], timeout=60, interval=0.5, what="no leftovers")
    assert time.monotonic() - t0 < 60


def test_a_serving_pod_that_cannot_be_scheduled_is_named_with_its_field(kube, operator):
    """``serve.cpusPerReplica`` larger than any node: KubeRay's serving cluster keeps its
    replica Pending and says only that the RayService is not ready (a fault probe on the
    real node: ``UpgradeInProgress`` for good). The run names the pod and the field, in
    its message, ``Ready`` and one Warning; the fix takes the wait away."""
    name = "kr-serve-unsched"
    doc = tr_doc(name, serve=True)
    doc["spec"]["serve"]["cpusPerReplica"] = 100  # kwok's node has 64
    kube.create(doc)
    kube.wait_object("RayJob", name, where=lambda o: (o.get("status") or {}).get("startTime"))
    # stand-in for the driver (its KubernetesReporter) and for Ray finishing the job
    kube.patch_status("TrainingRun", name, {
        "checkpoint": {"uri": f"/mnt/raykube/{kube.namespace}/{name}/best", "epoch": 3,
                       "metrics": {"valAccuracy": 0.97}}})
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1})

    def message(o: dict) -> str:
        return (o.get("status") or {}).get("message") or ""

    # (the head may wait a moment for the claim to be bound, in a new namespace)
    tr = kube.wait_object("TrainingRun", name, timeout=90,
                          where=lambda o: "spec.serve.cpusPerReplica" in message(o))
    assert message(tr).startswith(f"a serving pod waits: pod {name}-serve-"), message(tr)
    assert "Insufficient cpu; spec.serve.cpusPerReplica asks 100 CPU per pod" in message(tr)
    ready = next(c for c in tr["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "spec.serve.cpusPerReplica" in ready["message"], ready

    def warnings() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("reason") == "ServePodsPending"
                and (e.get("involvedObject") or {}).get("name") == name
                and "cpusPerReplica" in e["message"]]

    (event,) = kube.wait_for(warnings, timeout=30, what="a ServePodsPending Event")
    assert event["type"] == "Warning" and "spec.serve.cpusPerReplica" in event["message"]
    kube.patch("TrainingRun", name, {"spec": {"serve": {"cpusPerReplica": 0.25}}})
    tr = kube.wait_object("TrainingRun", name, timeout=120, where=lambda o: (
        message(o) and "cannot be scheduled" not in message(o)))
    ready = next(c for c in tr["status"]["conditions"] if c["type"] == "Ready")
    assert "cannot be scheduled" not in ready["message"], ready
    assert len(warnings()) == 1, [e["message"] for e in warnings()]
    kube.delete("TrainingRun", name)


def _render(*files: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "raykube", "render", *map(str, files)],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_gitops_render_applies_and_reapplies_unchanged(kube):
    """``raykube render | kubectl apply --server-side`` without the operator: accepted,
    KubeRay acts on it, and a second apply of the same output changes nothing."""
    files = [REPO / "jobs" / "quickstart.yaml", REPO / "jobs" / "fashion-mnist-mlp.yaml"]
    docs = [d for d in load_yaml_documents(_render(*files)) if d]
    for d in docs:
        d["metadata"]["namespace"] = kube.namespace
    stream = "\n---\n".join(json.dumps(d) for d in docs)
    kube.cp.kubectl_run("apply", "--server-side", "--field-manager=gitops", "-f", "-",
                        input=stream)
    jobs = [d["metadata"]["name"] for d in docs if d["kind"] == "RayJob"]
    assert jobs
    for name in jobs:
        kube.wait_object("RayJob", name, timeout=60,
                         where=lambda o: (o.get("status") or {}).get("rayClusterName"))

    def versions():
        return {(d["kind"], d["metadata"]["name"]):
                kube.get(d["kind"], d["metadata"]["name"])["metadata"]["resourceVersion"]
                for d in docs if d["kind"] != "RayJob"}
    before = versions()
    specs = {n: kube.get("RayJob", n)["metadata"]["generation"] for n in jobs}
    kube.cp.kubectl_run("apply", "--server-side", "--field-manager=gitops", "-f", "-",
                        input=stream)
    assert versions() == before
    assert {n: kube.get("RayJob", n)["metadata"]["generation"] for n in jobs} == specs


def test_plain_kuberay_manifests_are_accepted(kube):
    for path in sorted((REPO / "k8s" / "kuberay").glob("*.yaml")):
        docs = [d for d in load_yaml_documents(path.read_text()) if d]
        for d in docs:
            d["metadata"]["namespace"] = kube.namespace
        out = kube.cp.kubectl_run("apply", "--server-side", "--dry-run=server",
                                  "--field-manager=gitops", "-f", "-",
                                  input="\n---\n".join(json.dumps(d) for d in docs), check=False)
        assert out.returncode == 0, (path.name, out.stderr)
