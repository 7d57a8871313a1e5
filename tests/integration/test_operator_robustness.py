"""Attacks on the real operator (``python -m raykube_operator``) on the real control plane.

An operator killed (SIGKILL) at each stage of a run, KubeRay moving while the operator is
down, races with the driver's progress reporter, spec edits after the fact, and children
deleted behind the operator's back. KubeRay does not act in this module's namespace:
where a test needs KubeRay's outcome it patches the RayJob/RayService status as KubeRay
would (``run_job``, ``succeed``, ``ready``). Malformed objects that no CRD would let
through are in test_operator_faults.py (emulator).
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from k8s_schemas import validate_strict
from operator_helpers import CHILD_KINDS as BASE_KINDS
from operator_helpers import children as _children
from operator_helpers import cond, events, good_spec, status_is_valid, tr_doc
from raykube.k8s_reporter import KubernetesReporter
from raykube.spec import parse_spec
from raykube.testing.fixtures import kube, operator, operator_logs  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "k8s" / "base" / "crd.yaml"
CHILD_KINDS = (*BASE_KINDS, "RayService")

pytestmark = pytest.mark.usefixtures("operator", "operator_logs")


def children(kube, name, namespace="default"):
    return _children(kube, name, namespace, CHILD_KINDS)


def run_job(kube, name, namespace="default"):
    kube.wait_object("RayJob", name, namespace)
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                      namespace)
    return kube.wait_condition(name, "Running", reason="JobRunning", namespace=namespace)


def succeed(kube, name, namespace="default"):
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1}, namespace)


def checkpoint(kube, name, acc, namespace="default"):
    """What the driver's KubernetesReporter writes at the end of training."""
    kube.patch_status("TrainingRun", name, {
        "progress": {"epoch": 3, "epochs": 3, "trainLoss": 0.2, "valLoss": 0.3,
                     "valAccuracy": acc, "updatedAt": "2025-01-01T00:00:00Z"},
        "checkpoint": {"uri": f"/mnt/raykube/{namespace}/{name}/ckpt", "epoch": 3,
                       "metrics": {"valAccuracy": acc}}}, namespace)


def promoted(kube, name, **kw):
    """A serving run trained, its checkpoint reported and promoted: its RayService."""
    kube.create(tr_doc(name, serve=True, **kw))
    run_job(kube, name)
    checkpoint(kube, name, 0.95)
    succeed(kube, name)
    return kube.wait_object("RayService", f"{name}-serve")


def printer_columns(tr: dict) -> dict:
    """``kubectl get tr`` as the CRD's additionalPrinterColumns would show it."""
    crd = yaml.safe_load(CRD.read_text())
    out = {}
    for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        value = tr
        for part in col["jsonPath"].lstrip(".").split("."):
            value = (value or {}).get(part)
        ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "string": lambda v: isinstance(v, str), "date": lambda v: isinstance(v, str)}
        assert value is None or ok[col["type"]](value), (col, value)
        out[col["name"]] = value
    return out


def ready(kube, name, namespace="default"):
    kube.patch_status("RayService", f"{name}-serve", {"conditions": [
        {"type": "Ready", "status": "True", "reason": "RunningServeDeployments", "message": "",
         "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "activeServiceStatus": {"applicationStatuses": {"classifier": {"status": "RUNNING"}}}},
        namespace)


# --------------------------------------------------------------- operator killed
def test_killed_after_create_before_rayjob(kube, operator):
    operator.kill()
    kube.create(tr_doc("k-early"))
    operator.start()
    kube.wait_object("RayJob", "k-early")
    tr = kube.wait_condition("k-early", "SpecApplied", reason="Created")
    assert tr["status"]["phase"] == "Pending" and tr["status"]["rayJob"] == "k-early"
    time.sleep(0.5)
    creates = [c for c in kube.operator_calls() if c.verb in ("create", "patch") and (
        ((c.data or {}).get("metadata") or {}).get("labels") or {}).get(
            "raykube.io/trainingrun") == "k-early"]  # create, or server-side apply (patch)
    assert sorted(c.plural for c in creates) == sorted(
        ["configmaps", "serviceaccounts", "roles", "rolebindings", "rayjobs"]), creates


def test_killed_after_the_children_before_the_status(kube, operator):
    """SIGKILLed after it created the children, before its status patch and its Created
    Event: the restarted operator found everything in place and said
    ``SpecApplied=True/UpToDate`` ("RayJob unchanged"), with no Created Event ever. The
    state is made here as the kill leaves it: the run's status and Events removed while
    the operator is down (kopf's annotations stay: a resume, not a create)."""
    name = "k-mid"
    kube.create(tr_doc(name))
    kube.wait_condition(name, "SpecApplied", reason="Created")
    job = kube.get("RayJob", name)["metadata"]["uid"]
    operator.kill()
    kube.patch_status("TrainingRun", name, None)
    for event in events(kube, name):
        kube.delete("Event", event["metadata"]["name"])
    assert kube.get("TrainingRun", name).get("status") is None
    operator.start()
    tr = kube.wait_condition(name, "SpecApplied", reason="Created")
    assert cond(tr, "Running")["reason"] == "Created" and tr["status"]["rayJob"] == name
    assert kube.get("RayJob", name)["metadata"]["uid"] == job
    kube.wait_for(lambda: [e["reason"] for e in events(kube, name)] == ["Created"],
                  what="one Created Event")
    time.sleep(1)
    assert [e["reason"] for e in events(kube, name)] == ["Created"]


def test_killed_while_running_picks_up_success_and_promotes(kube, operator):
    name = "k-run"
    kube.create(tr_doc(name, serve=True))
    run_job(kube, name)
    checkpoint(kube, name, 0.95)
    time.sleep(0.5)
    operator.kill()
    succeed(kube, name)  # KubeRay finishes while the operator is down
    operator.start()
    tr = kube.wait_condition(name, "Succeeded")
    assert tr["status"]["phase"] in ("Succeeded", "Serving")
    kube.wait_object("RayService", f"{name}-serve")
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    # (c) RayService becomes Ready while the operator is down
    operator.kill()
    ready(kube, name)
    operator.start()
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    assert tr["status"]["serving"]["endpoint"] == f"http://{name}-serve-svc.{kube.namespace}:8000"
    assert status_is_valid(tr) == []
    assert validate_strict(tr) == []  # the whole stored object, kopf's annotations included
    cols = printer_columns(tr)
    assert cols["Phase"] == "Serving" and cols["Epoch"] == 3 and cols["Val-Acc"] == 0.95
    assert cols["Serving"] == f"http://{name}-serve-svc.{kube.namespace}:8000" and cols["Age"]
    assert cols["Served-Acc"] == 0.95  # the promoted checkpoint's, from the RayService
    assert cols["Message"] == (f"serving /mnt/raykube/default/{name}/ckpt at "
                               f"{cols['Serving']}"), cols  # it said "the Ray job succeeded"
    assert [o["kind"] for o in children(kube, name)].count("RayService") == 1
    assert [o["kind"] for o in children(kube, name)].count("RayJob") == 1


def test_deleted_while_operator_down(kube, operator):
    name = "k-del"
    kube.create(tr_doc(name))
    run_job(kube, name)
    operator.kill()
    kube.delete("TrainingRun", name)
    for obj in children(kube, name):  # what the garbage collector does
        kube.delete(obj["kind"], obj["metadata"]["name"])
    operator.start()
    kube.create(tr_doc("k-del-after"))
    kube.wait_object("RayJob", "k-del-after")
    time.sleep(0.5)
    assert kube.get("TrainingRun", name) is None and children(kube, name) == []


def test_rerun_removed_while_operator_down_asks_for_nothing(kube, operator):
    """A GitOps tool pruned ``spec.rerun`` while the operator was down: on restart there
    is no diff at hand, only a moved generation, and the finished run trained once more.
    The RayJob now records the rerun value it ran with (an annotation): a removed value
    asks for nothing, a new one (also set while the operator was down) reruns."""
    name = "k-rerun-down"
    kube.create(tr_doc(name))
    run_job(kube, name)
    succeed(kube, name)
    kube.wait_condition(name, "Succeeded")
    uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"rerun": "1"}})
    job = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != uid)
    assert job["metadata"]["annotations"]["raykube.io/rerun"] == "1"
    run_job(kube, name)
    succeed(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Succeeded"
                     and o["status"].get("observedGeneration") == o["metadata"]["generation"])
    operator.kill()
    kube.patch("TrainingRun", name, {"spec": {"rerun": None}})
    operator.start()
    seen = kube.wait_condition(name, "SpecApplied", reason="Finished")  # not "Rerun" again
    assert cond(seen, "SpecApplied")["observedGeneration"] == seen["metadata"]["generation"]
    time.sleep(2)  # a rerun would have deleted the RayJob by now
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    assert kube.get("TrainingRun", name)["status"]["phase"] == "Succeeded"
    # the value the last run ran with is still no request; a new one, set while the
    # operator was down, is
    operator.kill()
    kube.patch("TrainingRun", name, {"spec": {"rerun": "1"}})
    operator.start()
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
        "observedGeneration") == o["metadata"]["generation"])
    time.sleep(2)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    operator.kill()
    kube.patch("TrainingRun", name, {"spec": {"rerun": "2"}})
    operator.start()
    new = kube.wait_object("RayJob", name,
                           where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])
    assert new["metadata"]["annotations"]["raykube.io/rerun"] == "2"
    kube.wait_condition(name, "SpecApplied", reason="Rerun")


# ------------------------------------------------------------------------ races
def test_reporter_and_operator_do_not_clobber_each_other(kube, monkeypatch):
    name = "race"
    kube.create(tr_doc(name))
    run_job(kube, name)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    rep = KubernetesReporter(kube.namespace, name, min_interval=0)
    rep.on_start(parse_spec(good_spec(), name=name))
    stop = threading.Event()

    def driver():
        epoch = 0
        while not stop.is_set():
            epoch += 1
            rep.on_epoch({"epoch": epoch, "valAccuracy": 0.5 + epoch / 1000, "valLoss": 0.1},
                         f"/c/{epoch}", None)
    t = threading.Thread(target=driver)
    t.start()
    try:
        for i in range(6):  # status flapping quickly
            dep = ("Running", "Retrying")[i % 2]
            kube.patch_status("RayJob", name, {"jobDeploymentStatus": dep, "jobStatus": "RUNNING",
                                               "failed": i // 2})
            time.sleep(0.05)
        kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running",
                                           "jobStatus": "RUNNING", "failed": 3})
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    rep.on_end({})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("attempts") == 4)
    st = tr["status"]
    assert cond(tr, "Running")["reason"] == "JobRunning"
    assert {c["type"] for c in st["conditions"]} >= {"Validated", "SpecApplied", "Running"}
    assert st["progress"]["epoch"] >= 1 and st["checkpoint"]["uri"].startswith("/c/")
    assert status_is_valid(tr) == []
    assert rep.failures == 0


def test_same_name_in_two_namespaces(kube):
    other = kube.other_namespace
    a = kube.create(tr_doc("twin", "default"))
    b = kube.create(tr_doc("twin", other))
    ja = kube.wait_object("RayJob", "twin", "default")
    jb = kube.wait_object("RayJob", "twin", other)
    assert ja["metadata"]["ownerReferences"][0]["uid"] == a["metadata"]["uid"]
    assert jb["metadata"]["ownerReferences"][0]["uid"] == b["metadata"]["uid"]
    kube.patch_status("RayJob", "twin", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"},
                      other)
    kube.wait_condition("twin", "Failed", namespace=other)
    kube.patch_status("RayJob", "twin", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    tr = kube.wait_condition("twin", "Running", reason="JobRunning")
    assert tr["status"]["phase"] == "Running"
    assert kube.get("TrainingRun", "twin", other)["status"]["phase"] == "Failed"


# ------------------------------------------------------------------- spec edits
def test_lowering_min_accuracy_after_success_promotes(kube):
    name = "gate-edit"
    kube.create(tr_doc(name, serve=True, min_accuracy=0.99))
    run_job(kube, name)
    checkpoint(kube, name, 0.95)
    succeed(kube, name)
    kube.wait_condition(name, "Promoted", "False", reason="GateNotMet")
    job_uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.9}}})
    kube.wait_object("RayService", f"{name}-serve")
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    assert kube.get("RayJob", name)["metadata"]["uid"] == job_uid  # no retraining
    # raising the bar again does not take the live model down, and says so
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.99}}})
    tr = kube.wait_condition(name, "Promoted", "False", reason="GateNotMet")
    assert "keeps serving" in cond(tr, "Promoted")["message"]
    assert kube.get("RayService", f"{name}-serve") is not None
    # lowered again: promoted again over the RayService that kept serving, and an Event
    # says so (describe ended with the GateNotMet Warning, the RayService being unchanged)
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.9}}})
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    promoted = kube.wait_for(lambda: len(events_of(kube, name, "Promoted")) == 2
                             and events_of(kube, name, "Promoted"), what="a Promoted Event")
    assert [e["message"].split(":")[0] for e in promoted if "kept" in e["message"]] == [
        f"RayService {name}-serve kept"], promoted
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.99}}})
    kube.wait_condition(name, "Promoted", "False", reason="GateNotMet")
    kube.patch("TrainingRun", name, {"spec": {"serve": {"enabled": False}}})
    kube.wait_for(lambda: kube.get("RayService", f"{name}-serve") is None, what="RayService deleted")
    tr = kube.wait_condition(name, "Promoted", "False", reason="ServeDisabled")
    assert tr["status"]["phase"] == "Succeeded" and status_is_valid(tr) == []
    # the phase left Serving: an Event says why (there was none)
    assert [e["message"] for e in kube.wait_for(lambda: events_of(kube, name, "ServeDisabled"),
                                                what="a ServeDisabled Event")] == [
        f"spec.serve.enabled is false: RayService {name}-serve deleted"]
    kube.patch("TrainingRun", name, {"spec": {"serve": {"enabled": True, "minAccuracy": 0.5}}})
    kube.wait_object("RayService", f"{name}-serve")  # re-enabled: promoted again, still no retraining
    assert kube.get("RayJob", name)["metadata"]["uid"] == job_uid


def events_of(kube, name: str, reason: str) -> list[dict]:
    """The run's Events with ``reason``, oldest first (kopf sets eventTime, in µs)."""
    return sorted((e for e in events(kube, name) if e.get("reason") == reason),
                  key=lambda e: e.get("eventTime") or e["metadata"]["creationTimestamp"])


def test_serving_turned_off_says_so_while_kuberays_finalizer_holds_the_rayservice(kube):
    """KubeRay's finalizer keeps a deleted RayService a moment, and its status changes
    meanwhile: following it brought back ``status.rayService`` and a Ready condition, so
    the DELETED event then read as someone else's deletion (a ``RayServiceDeleted``
    Warning). A finalizer of the test's stands in for KubeRay's, which does not act in
    this module's namespace."""
    name = "serve-off"
    kube.create(tr_doc(name, serve=True, min_accuracy=0.5))
    run_job(kube, name)
    checkpoint(kube, name, 0.95)
    succeed(kube, name)
    svc = f"{name}-serve"
    kube.wait_object("RayService", svc)
    ready(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    kube.patch("RayService", svc, {"metadata": {"finalizers": ["test.raykube.io/hold"]}})
    kube.patch("TrainingRun", name, {"spec": {"serve": {"enabled": False}}})
    kube.wait_object("RayService", svc, where=lambda o: o["metadata"].get("deletionTimestamp"))
    ready(kube, name)  # the status moves while it is held, as KubeRay's does
    time.sleep(1.5)
    kube.patch("RayService", svc, {"metadata": {"finalizers": None}})
    kube.wait_gone("RayService", svc)
    time.sleep(1.5)
    tr = kube.wait_condition(name, "Promoted", "False", reason="ServeDisabled")
    assert "rayService" not in tr["status"] and cond(tr, "Ready") is None, tr["status"]
    assert tr["status"]["phase"] == "Succeeded" and status_is_valid(tr) == []
    # it said "serving <checkpoint> at <url>" with nothing served (an operator probe)
    assert tr["status"]["message"] == f"spec.serve.enabled is false: RayService {svc} " \
        "deleted", tr["status"]["message"]
    warned = [e for e in kube.list("Event") if e.get("involvedObject", {}).get("name") == name
              and e.get("reason") == "RayServiceDeleted"]
    assert warned == [], warned


def test_label_edit_changes_no_child(kube):
    name = "labels"
    kube.create(tr_doc(name))
    run_job(kube, name)
    before = {o["kind"]: o["metadata"]["resourceVersion"] for o in children(kube, name)}
    kube.patch("TrainingRun", name, {"metadata": {"labels": {"team": "x"}}})
    time.sleep(1.0)
    after = {o["kind"]: o["metadata"]["resourceVersion"] for o in children(kube, name)}
    assert after == before


HOLD = "test.raykube.io/hold"
"""A finalizer of the tests', standing in for KubeRay's (which holds a RayJob or a
RayService until it has stopped its Ray cluster; KubeRay does not act in this module)."""


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]


def test_a_rerun_waits_for_the_previous_rayjob_without_an_error(kube, operator):
    """A training edit after the run finished replaces its RayJob, which KubeRay's
    finalizer keeps a while. The operator logged ``409 Terminating`` at ERROR at every
    rerun (kopf's retry), and the status said ``SpecApplied=True/Finished`` at the new
    generation meanwhile. It now says that it waits, at the new generation, and starts
    the new run when the old RayJob is gone."""
    name = "rerun-wait"
    kube.create(tr_doc(name))
    run_job(kube, name)
    succeed(kube, name)
    kube.wait_condition(name, "Succeeded")
    old = kube.patch("RayJob", name, {"metadata": {"finalizers": [HOLD]}})["metadata"]["uid"]
    logged = len(operator.logs())
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 4}}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"].get("deletionTimestamp"))
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="WaitingForPreviousRayJob")
    gen = tr["metadata"]["generation"]
    applied = cond(tr, "SpecApplied")
    assert applied["observedGeneration"] == gen and tr["status"]["observedGeneration"] == gen
    assert applied["message"].startswith("spec.train.epochs changed after the run finished: "
                                         f"the new run starts once RayJob {name}"), applied
    assert tr["status"]["message"] == applied["message"]
    assert cond(tr, "Succeeded")["status"] == "True"  # the previous run's outcome, so far
    # KubeRay moves the RayJob it is deleting: not the run's any more, not followed
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    time.sleep(2)  # kopf retried a failed handler within 0.5 s here (RAYKUBE_RETRY_DELAY)
    tr = kube.get("TrainingRun", name)
    assert cond(tr, "SpecApplied")["reason"] == "WaitingForPreviousRayJob", tr["status"]
    assert cond(tr, "Succeeded")["status"] == "True", tr["status"]
    assert kube.get("RayJob", name)["metadata"]["uid"] == old
    kube.patch("RayJob", name, {"metadata": {"finalizers": None}})  # KubeRay is done
    job = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old)
    assert not job["metadata"].get("deletionTimestamp")
    tr = kube.wait_condition(name, "SpecApplied", reason="Rerun")
    assert cond(tr, "Running")["reason"] == "Rerun" and tr["status"]["phase"] == "Pending"
    assert cond(tr, "Succeeded")["status"] == "Unknown" and cond(tr, "Succeeded")["message"]
    assert all(c["observedGeneration"] == gen for c in tr["status"]["conditions"]
               if c["type"] in ("Validated", "SpecApplied", "Running")), tr["status"]
    assert status_is_valid(tr) == []
    kube.wait_for(lambda: len(events_of(kube, name, "Rerun")) == 1, what="one Rerun Event")
    log = operator.logs()[logged:]
    assert error_lines(log) == [], error_lines(log)
    assert "waiting for the previous RayJob" in log


def test_a_retry_is_announced_once_with_its_cause(kube):
    """A Retrying Event with the failed attempt's cause, one naming a Ray pod that cannot
    be scheduled, and then none: once the pod was gone, "retrying: attempt 1 failed"
    came as a third Event with nothing in it (KubeRay had cleared its message)."""
    name = "retry-once"
    kube.create(tr_doc(name))
    run_job(kube, name)
    kube.patch_status("RayJob", name, {
        "jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1,
        "rayClusterName": f"{name}-a",
        "message": "Job entrypoint command failed with exit code 1, last available logs:\n"
                   "raykube train: the data is gone"})
    kube.wait_condition(name, "Running", reason="Retrying")
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Initializing", "jobStatus": "",
                                       "message": "", "rayClusterName": f"{name}-b"})
    pod = f"{name}-b-head"
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {
        "raykube.io/trainingrun": name, "ray.io/cluster": f"{name}-b", "ray.io/node-type": "head"}},
        "spec": {"nodeSelector": {"raykube.io/no-such-node": "x"},
                 "containers": [{"name": "ray-head", "image": "ray"}]}})
    kube.wait_object("TrainingRun", name, timeout=60, where=lambda o: "cannot be scheduled"
                     in (o["status"].get("message") or ""))  # after the grace period
    kube.delete("Pod", pod)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("message") == (
        "retrying: attempt 1 failed"))
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    kube.wait_for(lambda: events_of(kube, name, "JobRunning")[1:], what="the next attempt's Event")
    said = [e["message"] for e in events_of(kube, name, "Retrying")]
    assert said == ["retrying: attempt 1 failed: raykube train: the data is gone"], said
    # the pod's wait is a PodsPending Warning, as the README names it, retry or not
    (pending,) = [e["message"] for e in events_of(kube, name, "PodsPending")]
    assert pending.startswith(f"waiting for the Ray cluster: pod {pod} cannot be scheduled")


def test_a_pod_pending_for_a_moment_is_no_news(kube):
    """A Ray pod that cannot be scheduled is named once it has been so for the grace
    period (15 s): on the real node every serving run's first replica waited ~20 s for
    the CPU of the training cluster being deleted, and was a Warning each time. One that
    is scheduled (here: deleted) within the grace period is not named at all; one that
    stays is, once, with a Warning."""
    name = "pending-moment"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Initializing",
                                       "rayClusterName": f"{name}-c"})
    kube.wait_condition(name, "Running", "False", reason="Initializing")

    def pod(suffix: str) -> str:
        kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{name}-c-{suffix}", "labels": {
                "raykube.io/trainingrun": name, "ray.io/cluster": f"{name}-c",
                "ray.io/node-type": "worker"}},
            "spec": {"nodeSelector": {"raykube.io/no-such-node": "x"},
                     "containers": [{"name": "ray-worker", "image": "ray"}]}})
        kube.wait_object("Pod", f"{name}-c-{suffix}", where=lambda o: any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in (o.get("status") or {}).get("conditions") or []))
        return f"{name}-c-{suffix}"

    def named() -> bool:
        return "cannot be scheduled" in (kube.get("TrainingRun", name)["status"].get(
            "message") or "")

    brief = pod("brief")
    time.sleep(2)
    kube.delete("Pod", brief)
    kube.wait_for(lambda: kube.get("Pod", brief) is None, what="the brief pod gone")
    time.sleep(16)  # past the grace period and its re-check
    assert not named() and events_of(kube, name, "PodsPending") == []
    stays = pod("stays")
    time.sleep(2)
    assert not named()  # not yet: within the grace period
    tr = kube.wait_object("TrainingRun", name, timeout=45, where=lambda o: "cannot be "
                          "scheduled" in (o["status"].get("message") or ""))
    assert f"pod {stays} cannot be scheduled" in tr["status"]["message"], tr["status"]
    (event,) = kube.wait_for(lambda: events_of(kube, name, "PodsPending"), timeout=10,
                             what="a PodsPending Event")
    assert event["type"] == "Warning" and brief not in event["message"]
    kube.delete("Pod", stays)


def test_rayjob_deleted_while_running_is_recreated(kube):
    name = "rj-del"
    kube.create(tr_doc(name))
    run_job(kube, name)
    old = kube.get("RayJob", name)["metadata"]["uid"]
    kube.delete("RayJob", name)
    job = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old)
    assert job["spec"].get("suspend", False) is False
    tr = kube.wait_condition(name, "Running", "False", reason="RayJobRecreated")
    assert tr["status"]["phase"] == "Pending"
    # a finished run's RayJob going away (cleanup) does not start training again
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    kube.wait_condition(name, "Succeeded")
    uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.delete("RayJob", name)
    time.sleep(1.0)
    assert kube.get("RayJob", name) is None, uid
    assert kube.get("TrainingRun", name)["status"]["phase"] == "Succeeded"


def test_recreated_with_same_name_never_adopts_the_old_children(kube):
    """A same-named RayJob that is not ours (here: orphaned by ``kubectl delete
    --cascade=orphan`` of the previous TrainingRun; also the old one still running until
    the garbage collector removes it): the new TrainingRun must not take it over."""
    name = "reborn"
    kube.create(tr_doc(name))
    old = run_job(kube, name)
    old_job = kube.get("RayJob", name)["metadata"]["uid"]
    kube.delete("TrainingRun", name, propagation="Orphan")
    kube.wait_gone("TrainingRun", name)
    new = kube.create(tr_doc(name))
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="NameConflict")
    assert "not owned" in cond(tr, "SpecApplied")["message"]
    assert kube.get("RayJob", name)["metadata"]["uid"] == old_job
    kube.delete("RayJob", name)  # the garbage collector catches up
    job = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old_job)
    assert job["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]
    tr = kube.wait_condition(name, "SpecApplied", reason="Created")
    assert tr["status"]["phase"] == "Pending" and status_is_valid(tr) == []


def test_a_users_own_object_of_a_childs_name_is_never_taken_over(kube):
    """A ConfigMap the user made that happens to be named like the run's spec ConfigMap
    (``<name>-spec``): applying over it would add the spec and our ownerReference, and
    deleting the TrainingRun would then have the garbage collector delete the user's
    ConfigMap. Refused as ``NameConflict`` naming it, nothing created; the run starts
    once the user has deleted it."""
    name = "users-cm"
    kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{name}-spec", "namespace": "default"},
                 "data": {"mine": "precious"}})
    kube.create(tr_doc(name))
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="NameConflict")
    msg = cond(tr, "SpecApplied")["message"]
    assert msg.startswith(f"ConfigMap {name}-spec exists and is not owned by this "
                          "TrainingRun"), msg
    # the spec itself is fine, and the status says which generation it speaks of
    assert cond(tr, "Validated")["status"] == "True", tr["status"]
    assert tr["status"]["observedGeneration"] == tr["metadata"]["generation"], tr["status"]
    cm = kube.get("ConfigMap", f"{name}-spec")
    assert cm["data"] == {"mine": "precious"}, cm["data"]
    assert not cm["metadata"].get("ownerReferences"), cm["metadata"]
    assert kube.get("RayJob", name) is None
    kube.delete("ConfigMap", f"{name}-spec")  # no watch sees it: the handler's retry does
    job = kube.wait_object("RayJob", name, timeout=60)
    assert job["metadata"]["ownerReferences"][0]["uid"] == tr["metadata"]["uid"]
    kube.wait_condition(name, "SpecApplied", reason="Created")
    cm = kube.wait_object("ConfigMap", f"{name}-spec")
    assert "mine" not in cm["data"]


def test_a_users_job_of_the_runs_name_is_a_name_conflict(kube):
    """KubeRay names a RayJob's submitter Job after it and cannot make it when a Job of
    that name is already there ("jobs.batch already exists", a Warning on the RayJob
    only): the run sat in Pending, "waiting for the Ray cluster", for good (an operator
    audit on KubeRay's real controller). Now a Job no RayJob of the name owns is a
    ``NameConflict`` naming it, nothing is created, and the run starts once it is gone."""
    name = "users-job"
    kube.create({"apiVersion": "batch/v1", "kind": "Job",
                 "metadata": {"name": name, "namespace": "default"},
                 "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "c", "image": "busybox", "command": ["true"]}]}}}})
    kube.create(tr_doc(name))
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="NameConflict")
    msg = cond(tr, "SpecApplied")["message"]
    assert msg.startswith(f"Job {name} exists and is not owned by this TrainingRun"), msg
    assert "submitter" in msg and tr["status"]["message"] == msg
    assert cond(tr, "Validated")["status"] == "True", tr["status"]
    assert kube.get("RayJob", name) is None and kube.get("ConfigMap", f"{name}-spec") is None
    kube.delete("Job", name, propagation="Background")
    job = kube.wait_object("RayJob", name, timeout=90)
    assert job["metadata"]["ownerReferences"][0]["uid"] == tr["metadata"]["uid"]
    kube.wait_condition(name, "SpecApplied", reason="Created")


def test_companions_deleted_behind_our_back_are_applied_again(kube):
    """The spec ConfigMap and the driver's ServiceAccount, Role and RoleBinding of an
    active run deleted by someone: KubeRay's next Ray pods mount the one and run as the
    other, so a retry could start no pod, and the run said nothing. They are applied
    again at once (a watch on what carries the run's label)."""
    name = "companions"
    tr = kube.create(tr_doc(name))
    run_job(kube, name)
    names = {"ConfigMap": f"{name}-spec", "ServiceAccount": f"{name}-raykube",
             "Role": f"{name}-raykube", "RoleBinding": f"{name}-raykube"}
    old = {kind: kube.wait_object(kind, n)["metadata"]["uid"] for kind, n in names.items()}
    for kind, n in names.items():
        kube.delete(kind, n)
    for kind, n in names.items():
        new = kube.wait_object(kind, n, timeout=60,
                               where=lambda o, kind=kind: o["metadata"]["uid"] != old[kind])
        assert new["metadata"]["ownerReferences"][0]["uid"] == tr["metadata"]["uid"], new
    assert "trainingrun.yaml" in "".join(kube.get("ConfigMap", names["ConfigMap"])["data"])


def test_rayservice_deleted_is_promoted_again(kube):
    name = "rs-del"
    old = promoted(kube, name)["metadata"]["uid"]
    ready(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    kube.delete("RayService", f"{name}-serve")
    kube.wait_object("RayService", f"{name}-serve", where=lambda o: o["metadata"]["uid"] != old)
    tr = kube.wait_condition(name, "Ready", "False", reason="RayServiceDeleted")
    assert tr["status"]["phase"] == "Succeeded" and "serving" not in tr["status"]
    assert status_is_valid(tr) == []
    ready(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")


def test_rayservice_deleted_before_it_was_ready_is_promoted_again(kube):
    """A RayService deleted while its pods were still starting (never Ready): it was
    promoted again only by the resync, five minutes later."""
    name = "rs-del-early"
    old = promoted(kube, name)["metadata"]["uid"]
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    kube.delete("RayService", f"{name}-serve")
    kube.wait_object("RayService", f"{name}-serve", timeout=30,
                     where=lambda o: o["metadata"]["uid"] != old)
    tr = kube.wait_condition(name, "Ready", "False", reason="RayServiceDeleted")
    assert status_is_valid(tr) == []
    assert len(events_of(kube, name, "RayServiceDeleted")) == 1


def test_storage_moved_after_promotion_leaves_the_live_rayservice_as_it_is(kube):
    """``checkpoint.storage`` edited after the run was served (a volume -> s3://): a new run
    starts, and the live RayService was rendered again from the new spec right away
    while it still served the previous run's checkpoint, which is on the volume: its new
    pods mounted no volume (and took S3 settings instead), so KubeRay's upgrade cluster
    could not load it. The RayService keeps its storage until a checkpoint of the new
    storage is promoted."""
    name = "moved"
    svc = promoted(kube, name, min_accuracy=0.5)
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    job_uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"checkpoint": {"storage": {
        "uri": "s3://bkt/runs", "secretRef": {"name": "s3-creds"}}}}})
    kube.wait_object("RayJob", name, timeout=30,
                     where=lambda o: o["metadata"]["uid"] != job_uid)  # the new run
    time.sleep(2)
    now = kube.get("RayService", f"{name}-serve")
    assert now["spec"] == svc["spec"], "the live RayService was rendered for the new storage"
    # the new run's checkpoint (in the bucket) is promoted with the bucket's settings
    run_job(kube, name)
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"s3://bkt/runs/{kube.namespace}/{name}/ckpt", "epoch": 3,
        "metrics": {"valAccuracy": 0.96}}})
    succeed(kube, name)
    now = kube.wait_object("RayService", f"{name}-serve", timeout=30,
                           where=lambda o: "s3://bkt/runs" in o["spec"]["serveConfigV2"])
    head = now["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "volumes" not in head and any(
        e["name"] == "AWS_ACCESS_KEY_ID" for e in head["containers"][0]["env"])


def test_a_checkpoint_left_on_the_previous_storage_is_not_promoted_again(kube):
    """``checkpoint.storage`` moved after the run was served, and the RayService deleted
    while the previous RayJob is still being deleted (the run has not started on the new
    storage, its checkpoint is the previous run's): the gate promoted that checkpoint
    again, in a RayService rendered for the new storage (S3 settings, no volume) that
    could never load it. It is not promoted; the run on the new storage promotes its own."""
    name = "moved-wait"
    promoted(kube, name, min_accuracy=0.5)
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    ready(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    old = kube.patch("RayJob", name, {"metadata": {"finalizers": [HOLD]}})["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"checkpoint": {"storage": {
        "uri": "s3://bkt/runs", "secretRef": {"name": "s3-creds"}}}}})
    kube.wait_condition(name, "SpecApplied", "False", reason="WaitingForPreviousRayJob")
    time.sleep(1)  # the live RayService serves what was promoted: still said so
    assert cond(kube.get("TrainingRun", name), "Promoted")["reason"] == "GatePassed"
    kube.delete("RayService", f"{name}-serve")
    tr = kube.wait_condition(name, "Promoted", "False", reason="CheckpointOutsideStorage")
    msg = cond(tr, "Promoted")["message"]
    assert "keeps serving" not in msg, msg
    assert f"/mnt/raykube/default/{name}/ckpt" in msg and "s3://bkt/runs" in msg, msg
    time.sleep(2)
    assert kube.get("RayService", f"{name}-serve") is None
    assert status_is_valid(tr) == []
    kube.patch("RayJob", name, {"metadata": {"finalizers": None}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old)
    run_job(kube, name)  # the new run's checkpoint, in the bucket, is promoted
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"s3://bkt/runs/{kube.namespace}/{name}/ckpt", "epoch": 3,
        "metrics": {"valAccuracy": 0.96}}})
    succeed(kube, name)
    kube.wait_object("RayService", f"{name}-serve", timeout=30,
                     where=lambda o: "s3://bkt/runs" in o["spec"]["serveConfigV2"])
    kube.wait_condition(name, "Promoted", reason="GatePassed")


def _claim(obj) -> str:
    """The claim a RayService's pods mount (its head's storage volume)."""
    head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return next(v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]
                if v["name"] == "storage")


@pytest.mark.parametrize("older", [False, True], ids=["annotated", "promoted-by-an-older-operator"])
def test_claim_changed_after_promotion_leaves_the_live_rayservice_as_it_is(kube, older):
    """``checkpoint.storage.pvc.claimName`` edited after the run was served, the mount
    path kept (the default one): the checkpoint served is on the previous claim, at a
    path under the same mount path, so it passed for one on the run's storage and the
    live RayService was rendered again at once for the new claim, which does not hold
    it: KubeRay's upgrade cluster could never load the model. It is left as it is until
    the new run's checkpoint is promoted, also while the previous RayJob is held by
    KubeRay's finalizer (the gate is asked again meanwhile, on the checkpoint reported
    here as an older driver did, without the storage it is on). ``older``: a RayService
    promoted before the operator wrote ``raykube.io/checkpoint-storage`` (the claim its
    pods mount tells)."""
    name = "claim-moved-old" if older else "claim-moved"
    svc = promoted(kube, name, min_accuracy=0.5)
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    if older:
        svc = kube.patch("RayService", f"{name}-serve", {"metadata": {"annotations": {
            "raykube.io/checkpoint-storage": None}}})
    old_claim = _claim(svc)
    assert old_claim != "other"
    job_uid = kube.patch("RayJob", name, {"metadata": {"finalizers": [HOLD]}})["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"checkpoint": {"storage": {
        "pvc": {"claimName": "other"}}}}})
    kube.wait_condition(name, "SpecApplied", "False", reason="WaitingForPreviousRayJob")
    time.sleep(2)
    now = kube.get("RayService", f"{name}-serve")
    assert now["spec"] == svc["spec"], "the live RayService was rendered for the new claim"
    kube.patch("RayJob", name, {"metadata": {"finalizers": None}})
    kube.wait_object("RayJob", name, timeout=30,
                     where=lambda o: o["metadata"]["uid"] != job_uid)  # the new run
    time.sleep(2)
    now = kube.get("RayService", f"{name}-serve")
    assert now["spec"] == svc["spec"], "the live RayService was rendered for the new claim"
    assert _claim(now) == old_claim
    assert now["metadata"]["annotations"].get("raykube.io/checkpoint-storage") == (
        None if older else f"pvc/{old_claim}")
    assert cond(kube.get("TrainingRun", name), "Promoted")["reason"] == "GatePassed"
    # the new run's checkpoint, on the new claim (its driver says so), is promoted there
    run_job(kube, name)
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"/mnt/raykube/{kube.namespace}/{name}/ckpt2", "storage": "pvc/other",
        "epoch": 3, "metrics": {"valAccuracy": 0.96}}})
    succeed(kube, name)
    now = kube.wait_object("RayService", f"{name}-serve", timeout=30,
                           where=lambda o: "/ckpt2" in o["spec"]["serveConfigV2"])
    assert _claim(now) == "other"
    assert now["metadata"]["annotations"]["raykube.io/checkpoint-storage"] == "pvc/other"


def test_a_checkpoint_left_on_the_previous_claim_is_not_promoted_again(kube):
    """The claim-change twin of the test above it: ``claimName`` edited, the mount path
    kept, the RayService deleted while the previous RayJob is still being deleted. The
    previous run's checkpoint has a path under the same mount path: it was promoted
    again, in a RayService that mounts the new claim, which does not hold it. The
    driver said which claim it is on (``status.checkpoint.storage``): not promoted; the
    run on the new claim promotes its own."""
    name = "claim-wait"
    doc = tr_doc(name, serve=True, min_accuracy=0.5)
    doc["spec"].setdefault("checkpoint", {})["storage"] = {"pvc": {"claimName": "first"}}
    kube.create(doc)
    run_job(kube, name)
    old_ckpt = f"/mnt/raykube/{kube.namespace}/{name}/ckpt"
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": old_ckpt, "storage": "pvc/first", "epoch": 3,
        "metrics": {"valAccuracy": 0.95}}})
    succeed(kube, name)
    assert _claim(kube.wait_object("RayService", f"{name}-serve")) == "first"
    kube.wait_condition(name, "Promoted", reason="GatePassed")
    ready(kube, name)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    old = kube.patch("RayJob", name, {"metadata": {"finalizers": [HOLD]}})["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"checkpoint": {"storage": {
        "pvc": {"claimName": "second"}}}}})
    kube.wait_condition(name, "SpecApplied", "False", reason="WaitingForPreviousRayJob")
    time.sleep(1)  # the live RayService serves what was promoted: still said so
    assert cond(kube.get("TrainingRun", name), "Promoted")["reason"] == "GatePassed"
    assert _claim(kube.get("RayService", f"{name}-serve")) == "first"
    kube.delete("RayService", f"{name}-serve")
    tr = kube.wait_condition(name, "Promoted", "False", reason="CheckpointOutsideStorage")
    msg = cond(tr, "Promoted")["message"]
    assert old_ckpt in msg and "pvc/first" in msg and "pvc/second" in msg, msg
    assert "keeps serving" not in msg, msg
    time.sleep(2)
    assert kube.get("RayService", f"{name}-serve") is None
    assert status_is_valid(tr) == []
    kube.patch("RayJob", name, {"metadata": {"finalizers": None}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old)
    run_job(kube, name)  # the new run's checkpoint, on the new claim, is promoted
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"/mnt/raykube/{kube.namespace}/{name}/ckpt2", "storage": "pvc/second",
        "epoch": 3, "metrics": {"valAccuracy": 0.96}}})
    succeed(kube, name)
    svc = kube.wait_object("RayService", f"{name}-serve", timeout=30)
    assert _claim(svc) == "second" and "/ckpt2" in svc["spec"]["serveConfigV2"]
    kube.wait_condition(name, "Promoted", reason="GatePassed")


def test_raykube_render_output_of_the_same_run_is_left_alone(kube, tmp_path):
    """A namespace where a GitOps tool applies ``raykube render`` output, and a TrainingRun
    of the same name is created. The rendered objects carry the run's label and no owner,
    which is how an orphan of the operator's looked: the operator followed the rendered
    cluster's pods (an OOM kill there became the TrainingRun's Warning and lastIncident),
    and once the rendered RayJob was deleted (as README says to rerun an edit) it applied
    over the rendered ConfigMap and RBAC and made itself their owner, so deleting the
    TrainingRun deleted the GitOps tool's objects. They are somebody else's: NameConflict,
    and nothing of theirs is written."""
    import contextlib
    import io

    from raykube.cli import main

    name = "gitops-side"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(tr_doc(name)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["render", str(spec), "--no-serve", "-n", kube.namespace]) == 0
    rendered = [d for d in yaml.safe_load_all(out.getvalue()) if d]
    for obj in rendered:
        kube.create(obj)
    kube.create(tr_doc(name))
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="NameConflict")
    assert cond(tr, "SpecApplied")["message"].startswith(f"RayJob {name}")

    # a pod of the rendered RayJob's cluster, labelled as KubeRay labels it from the
    # template, OOM-killed (bound to no real node, so nothing but this test writes it)
    job = next(o for o in rendered if o["kind"] == "RayJob")
    labels = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    pod = f"{name}-head-x"
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": pod, "labels": {**labels, "ray.io/cluster": f"{name}-x",
                                "ray.io/node-type": "head"}},
        "spec": {"nodeName": "no-such-node", "containers": [
            {"name": "ray-head", "image": "example.com/ray:1",
             "resources": {"limits": {"memory": "1Gi"}}}]}})
    kube.patch_status("Pod", pod, {"phase": "Running", "containerStatuses": [{
        "name": "ray-head", "image": "example.com/ray:1", "imageID": "", "ready": False,
        "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                     "startedAt": "2026-12-01T00:00:00Z",
                                     "finishedAt": "2026-12-01T00:01:00Z"}}}]})
    kube.delete("RayJob", name)
    kube.wait_gone("RayJob", name)

    companions = [o for o in rendered if o["kind"] != "RayJob"]

    def still_waiting(o):  # the run retried after the RayJob went, and still refused
        msg = cond(o, "SpecApplied")["message"]
        return not msg.startswith(f"RayJob {name}") and all(
            f"{c['kind']} {c['metadata']['name']}" in msg for c in companions)

    kube.wait_object("TrainingRun", name, timeout=60, where=still_waiting)
    for c in companions:
        now = kube.get(c["kind"], c["metadata"]["name"])
        assert not now["metadata"].get("ownerReferences"), now["metadata"]
        assert now["metadata"]["labels"] == c["metadata"]["labels"]
        assert {k: v for k, v in now.items() if k not in ("metadata", "kind", "apiVersion")} \
            == {k: v for k, v in c.items() if k not in ("metadata", "kind", "apiVersion")}
    assert kube.get("RayJob", name) is None
    tr = kube.get("TrainingRun", name)
    assert cond(tr, "SpecApplied")["reason"] == "NameConflict"
    assert "lastIncident" not in tr["status"], tr["status"]
    assert not [e["message"] for e in events(kube, name)
                if e["reason"] in ("OOMKilled", "RayHeadLost")]
    kube.delete("TrainingRun", name)
    kube.wait_gone("TrainingRun", name)
    for c in companions:  # the GitOps tool's, still there
        assert kube.get(c["kind"], c["metadata"]["name"]) is not None
    kube.delete("Pod", pod)


def test_everything_above_stayed_within_the_operator_rbac(kube):
    from raykube_operator.rbac import allowed

    used = kube.operator_permissions()
    assert ("ray.io", "rayjobs", "create") in used
    denied = sorted(p for p in used if not allowed(*p))
    assert denied == [], f"operator used permissions missing from its RBAC: {denied}"


def test_deleting_a_namespace_with_a_run_logs_no_error(kube):
    """A namespace deleted with a run in it: the garbage collector deletes the
    TrainingRun and its children while the namespace refuses new objects. The operator
    logged kopf's ``events "kopf-event-" is forbidden`` errors for the Events it tried
    to post there (seen by a user on the local control plane)."""
    from raykube.testing.real_kube import RealOperator

    ns = f"{kube.namespace}-gone"
    kube.ensure_namespace(ns)
    op = RealOperator(kube, namespaces=(ns,)).start()
    try:
        kube.create(tr_doc("goes", ns, serve=True))
        run_job(kube, "goes", ns)
        checkpoint(kube, "goes", 0.95, ns)
        succeed(kube, "goes", ns)
        kube.wait_object("RayService", "goes-serve", ns)
        ready(kube, "goes", ns)
        kube.wait_object("TrainingRun", "goes", ns,
                         where=lambda o: o["status"].get("phase") == "Serving")
        logged = len(op.logs())
        kube.http.delete(f"/api/v1/namespaces/{ns}")
        kube.wait_for(lambda: kube.http.get(f"/api/v1/namespaces/{ns}").status_code == 404,
                      timeout=120, what=f"namespace {ns} to go")
        time.sleep(3)  # what the operator does after its last watch event
        log = op.logs()[logged:]
        assert error_lines(log) == [], log
        assert "raykube-event" not in log and "kopf-event" not in log, log
    finally:
        op.stop()
        kube.http.delete(f"/api/v1/persistentvolumes/raykube-storage-{ns}")
