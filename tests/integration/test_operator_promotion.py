"""Promotion: RayJob SUCCEEDED + gate -> one RayService, updated in place; Serving status."""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from k8s_schemas import validate_strict
from operator_helpers import events
from raykube.spec import load_yaml_documents
from raykube.testing.fixtures import kube, operator, operator_logs  # noqa: F401

QUICKSTART = Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"

pytestmark = pytest.mark.usefixtures("operator", "operator_logs")


def make(kube, name, min_accuracy=0.9):
    doc = load_yaml_documents(QUICKSTART.read_text())[0]
    doc["metadata"] = {"name": name, "namespace": "default"}
    doc["spec"]["serve"] = {"enabled": True, "minAccuracy": min_accuracy}
    kube.create(doc)
    kube.wait_object("RayJob", name)
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    kube.wait_condition(name, "Running", reason="JobRunning")


def driver_checkpoint(kube, name, uri, acc):
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": uri, "epoch": 3, "metrics": {"valAccuracy": acc, "valLoss": 0.3}}})


def succeed(kube, name, n=1):
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": n})


def cond(tr, t):
    return next(c for c in tr["status"]["conditions"] if c["type"] == t)


def served_checkpoint(svc):
    return yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]["checkpoint"]


def test_gate_met_promotes_then_serves_and_new_checkpoint_updates_in_place(kube):
    name = "promo"
    make(kube, name)
    driver_checkpoint(kube, name, "/mnt/raykube/default/promo/ckpt-3", 0.95)
    succeed(kube, name)
    svc = kube.wait_object("RayService", f"{name}-serve")
    assert validate_strict(svc) == [], validate_strict(svc)
    assert served_checkpoint(svc) == "/mnt/raykube/default/promo/ckpt-3"
    tr = kube.wait_condition(name, "Promoted", reason="GatePassed")
    assert "0.9500" in cond(tr, "Promoted")["message"]

    kube.patch_status("RayService", f"{name}-serve", {"conditions": [
        {"type": "Ready", "status": "True", "reason": "RunningServeDeployments", "message": "",
         "lastTransitionTime": "2025-01-01T00:00:00Z"}], "serviceStatus": "Running",
        "activeServiceStatus": {"applicationStatuses": {"classifier": {"status": "RUNNING"}}}})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    serving = tr["status"]["serving"]
    assert serving["endpoint"] == f"http://{name}-serve-svc.{kube.namespace}:8000"
    assert serving["checkpoint"] == "/mnt/raykube/default/promo/ckpt-3" and serving["since"]
    assert validate_strict(tr) == []

    # a new run of the same TrainingRun (training field changed after it finished)
    uid = svc["metadata"]["uid"]
    old_job = kube.get("RayJob", name)["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 20}}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != old_job)
    tr = kube.wait_condition(name, "SpecApplied", reason="Rerun")
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    kube.wait_condition(name, "Running", reason="JobRunning")
    driver_checkpoint(kube, name, "/mnt/raykube/default/promo/ckpt-20", 0.97)
    succeed(kube, name)
    svc = kube.wait_object("RayService", f"{name}-serve",
                           where=lambda o: served_checkpoint(o).endswith("ckpt-20"))
    assert svc["metadata"]["uid"] == uid  # updated in place
    assert [s["metadata"]["name"] for s in kube.list("RayService")
            if s["metadata"]["labels"].get("raykube.io/trainingrun") == name] == [f"{name}-serve"]
    assert validate_strict(svc) == []


def test_gate_not_met_creates_no_rayservice(kube):
    name = "weak"
    make(kube, name)
    driver_checkpoint(kube, name, "/mnt/raykube/default/weak/ckpt-3", 0.5)
    succeed(kube, name)
    tr = kube.wait_condition(name, "Promoted", "False", reason="GateNotMet")
    msg = cond(tr, "Promoted")["message"]
    assert "0.5000" in msg and "0.9" in msg and "minAccuracy" in msg
    assert tr["status"]["phase"] == "Succeeded"
    time.sleep(0.5)
    assert kube.get("RayService", f"{name}-serve") is None


def test_no_checkpoint_is_reported(kube):
    name = "nockpt"
    make(kube, name)
    succeed(kube, name)
    kube.wait_condition(name, "Promoted", "False", reason="NoCheckpoint")
    assert kube.get("RayService", f"{name}-serve") is None


def test_fields_that_leave_the_render_leave_the_rayservice(kube):
    """Children are written by server-side apply: a GPU serving config turned back to CPU
    loses its GPU limit and toleration (a merge patch of the render would keep them)."""
    name = "ssa"
    make(kube, name)
    kube.patch("TrainingRun", name, {"spec": {"serve": {"gpusPerReplica": 1}}})
    driver_checkpoint(kube, name, "/mnt/raykube/default/ssa/ckpt-3", 0.95)
    succeed(kube, name)

    def worker(o):
        return o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    svc = kube.wait_object("RayService", f"{name}-serve")
    assert worker(svc)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    kube.patch("TrainingRun", name, {"spec": {"serve": {"gpusPerReplica": 0}}})
    svc = kube.wait_object("RayService", f"{name}-serve", where=lambda o: "nvidia.com/gpu" not in
                           worker(o)["containers"][0]["resources"]["limits"])
    assert not worker(svc).get("tolerations")
    managers = {m["manager"] for m in svc["metadata"]["managedFields"]}
    assert "raykube-operator" in managers


def test_a_serve_edit_says_how_the_live_rayservice_changes(kube):
    """A serve edit on a serving run posts one Normal ServeUpdated Event naming the field,
    its old and new value, and how KubeRay rolls it out: a new serve config in place, a
    pod change by a new cluster. (Before, the RayService changed with no word on the
    TrainingRun.) Several paths may apply an edit (its handler, the spec ConfigMap's
    event, the gate's re-check): each says the same."""
    name = "serve-edit"
    make(kube, name)
    driver_checkpoint(kube, name, "/mnt/raykube/default/serve-edit/ckpt-3", 0.95)
    succeed(kube, name)
    kube.wait_condition(name, "Promoted", reason="GatePassed")

    def updates():
        return sorted(e["message"] for e in events(kube, name, kube.namespace)
                      if e.get("reason") == "ServeUpdated")

    def promoted():
        return [e["message"] for e in events(kube, name, kube.namespace)
                if e.get("reason") == "Promoted"]
    assert updates() == []
    assert len(promoted()) == 1, promoted()
    kube.patch("TrainingRun", name, {"spec": {"serve": {"maxBatchSize": 8}}})
    said = kube.wait_for(lambda: updates() or None, what="a ServeUpdated Event")
    assert said == [f"RayService {name}-serve updated (spec.serve.maxBatchSize 32 -> 8): Ray "
                    "Serve applies it in place on the running cluster"], said
    kube.patch("TrainingRun", name, {"spec": {"serve": {"replicas": 2}}})
    said = kube.wait_for(lambda: u if len(u := updates()) == 2 else None,
                         what="a second ServeUpdated Event")
    assert (f"RayService {name}-serve updated (spec.serve.replicas 1 -> 2): KubeRay starts a "
            "new Ray cluster with it and moves traffic there once it is ready; the current "
            "one serves meanwhile") in said, said
    # a gate edit changes no RayService: no Event; and no edit read as a new promotion
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.8}}})
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
        "observedGeneration") == o["metadata"]["generation"])
    time.sleep(1)
    assert len(updates()) == 2, updates()
    assert len(promoted()) == 1, promoted()


def test_an_outage_of_the_served_model_is_a_warning_and_clears_serving(kube):
    """KubeRay's Ready=False ZeroServeEndpoints after the model served: the status kept
    advertising the endpoint (SERVING column, message) and the outage was a Normal Event
    named "Succeeded" (an operator audit on KubeRay's real controller). Now: one
    ``ServeNotReady`` Warning, ``serving`` cleared, the message says why; back when it is."""
    name = "outage"
    make(kube, name)
    driver_checkpoint(kube, name, "/mnt/raykube/default/outage/ckpt-3", 0.95)
    succeed(kube, name)
    kube.wait_object("RayService", f"{name}-serve")
    ready = {"type": "Ready", "status": "True", "reason": "RunningServeDeployments",
             "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    app = {"applicationStatuses": {"classifier": {"status": "RUNNING"}}}
    kube.patch_status("RayService", f"{name}-serve", {
        "conditions": [ready], "serviceStatus": "Running", "activeServiceStatus": app})
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Serving")
    kube.patch_status("RayService", f"{name}-serve", {"conditions": [{
        **ready, "status": "False", "reason": "ZeroServeEndpoints",
        "message": "Number of serve endpoints dropped to 0"}]})
    tr = kube.wait_object("TrainingRun", name,
                          where=lambda o: o["status"].get("phase") == "Succeeded")
    assert not tr["status"].get("serving"), tr["status"]
    assert tr["status"]["message"] == ("not serving: the RayService is not ready: "
                                       "ZeroServeEndpoints: Number of serve endpoints "
                                       "dropped to 0"), tr["status"]["message"]
    kube.wait_for(lambda: [e["type"] for e in events(kube, name)
                           if e["reason"] == "ServeNotReady"] == ["Warning"],
                  what="one ServeNotReady Warning")
    assert not [e for e in events(kube, name) if e["reason"] == "Succeeded"
                and "not ready" in e["message"]]
    kube.patch_status("RayService", f"{name}-serve", {"conditions": [ready]})
    tr = kube.wait_object("TrainingRun", name,
                          where=lambda o: o["status"].get("phase") == "Serving")
    assert tr["status"]["serving"]["endpoint"].startswith(f"http://{name}-serve-svc.")
