"""The real operator (``python -m raykube_operator``) on the real control plane.

The operator runs as its ServiceAccount (k8s/base RBAC). KubeRay's controller does not act
in this module's namespace: its part (status transitions) is stood in for by patching
RayJob /status, as KubeRay does (``rayjob_status``). What KubeRay itself does with the
children is in test_operator_kuberay.py.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import time
from pathlib import Path

import pytest

from k8s_schemas import validate_strict
from operator_helpers import CHILD_KINDS, children, cond, events
from raykube.spec import load_yaml_documents
from raykube.testing.fixtures import kube, operator, operator_logs  # noqa: F401
from raykube.testing.kube import KubeError
from raykube_operator.handlers import SPEC_HASH, TRAINING_HASH
from raykube_operator.rbac import allowed

JOBS = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("operator", "operator_logs")


def tr_doc(name: str, **spec_overrides) -> dict:
    doc = load_yaml_documents((JOBS[0].parent / "quickstart.yaml").read_text())[0]
    doc["metadata"] = {"name": name, "namespace": "default"}
    doc["spec"]["serve"]["enabled"] = False
    for key, value in spec_overrides.items():
        doc["spec"][key] = value
    return doc


def rayjob_status(kube, name, **status):
    kube.patch_status("RayJob", name, status)


def trained(kube, name: str) -> None:
    """The driver's report of a checkpoint (``status.checkpoint``): the run directory now
    holds one, which a rerun of another model, dataset or seed could not resume."""
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"/mnt/raykube/default/{name}/checkpoint_epoch_0001",
        "metrics": {"valAccuracy": 0.5}}})


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_file_creates_valid_children(kube, path):
    docs = load_yaml_documents(path.read_text())
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = "default"
        tr = kube.create(doc)
        name = doc["metadata"]["name"]
        kube.wait_condition(name, "Validated")
        kube.wait_object("RayJob", name)
        kids = kube.wait_for(lambda n=name: len(children(kube, n)) == len(CHILD_KINDS)
                             and children(kube, n), what="all children")
        for obj in kids:
            assert validate_strict(obj) == [], (obj["kind"], validate_strict(obj))
            refs = obj["metadata"]["ownerReferences"]
            assert [r["uid"] for r in refs] == [tr["metadata"]["uid"]]
            assert refs[0]["kind"] == "TrainingRun" and refs[0]["controller"] is True
        final = kube.get("TrainingRun", name)
        assert validate_strict(final) == [], validate_strict(final)  # status fits our CRD
        assert final["status"]["phase"] in ("Pending", "Suspended")
        assert final["status"]["rayJob"] == name
        assert final["status"]["observedGeneration"] == 1


def test_status_follows_kuberay_to_success(kube):
    name = "life"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    # before KubeRay's controller says anything (here: none runs) the MESSAGE column
    # says what the run waits for; it was empty
    tr = kube.wait_condition(name, "Running", "False", reason="Created")
    assert tr["status"]["message"] == "RayJob created; waiting for KubeRay", tr["status"]
    rayjob_status(kube, name, jobDeploymentStatus="Initializing")
    tr = kube.wait_condition(name, "Running", "False", reason="Initializing")
    assert tr["status"]["phase"] == "Pending"

    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING", jobId="j-1",
                  startTime="2025-01-01T00:00:00Z")
    tr = kube.wait_condition(name, "Running", reason="JobRunning")
    assert tr["status"]["phase"] == "Running"
    assert tr["status"]["attempts"] == 1 and tr["status"]["jobId"] == "j-1"
    assert tr["status"]["startTime"] == "2025-01-01T00:00:00Z"
    running_since = cond(tr, "Running")["lastTransitionTime"]

    rayjob_status(kube, name, jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1)
    tr = kube.wait_condition(name, "Running", reason="Retrying")
    assert tr["status"]["phase"] == "Running" and tr["status"]["attempts"] == 2
    assert cond(tr, "Running")["lastTransitionTime"] == running_since  # status unchanged

    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1,
                  endTime="2025-01-01T01:00:00Z")
    tr = kube.wait_condition(name, "Succeeded")
    st = tr["status"]
    assert st["phase"] == "Succeeded" and st["completionTime"] == "2025-01-01T01:00:00Z"
    assert st["attempts"] == 2
    assert cond(tr, "Running")["status"] == "False"
    failed = cond(tr, "Failed")  # it had reason JobSucceeded and an empty message
    assert (failed["status"], failed["message"]) == ("False", "the Ray job succeeded"), failed
    assert validate_strict(tr) == []
    reasons = kube.wait_for(lambda: {e.get("reason") for e in kube.list("Event")
                                     if e.get("involvedObject", {}).get("name") == name}
                            >= {"Created", "Succeeded"} and True, what="events")
    assert reasons


def test_failed_job_reported_with_kuberay_reason(kube):
    name = "fails"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Failed", jobStatus="FAILED", failed=3,
                  reason="AppFailed", message="Job entrypoint exited with code 1")
    tr = kube.wait_condition(name, "Failed", reason="AppFailed")
    assert tr["status"]["phase"] == "Failed" and tr["status"]["attempts"] == 3
    assert "exited with code 1" in cond(tr, "Failed")["message"]


def test_invalid_spec_is_refused_by_the_api_server_naming_the_field(kube):
    """The CRD's schema refuses it before any controller sees it (the operator's own
    validation of what a stale or missing CRD lets through: test_operator_faults.py)."""
    doc = tr_doc("bad")
    doc["spec"]["scaling"]["workers"] = 0
    with pytest.raises(KubeError) as err:
        kube.create(doc)
    assert err.value.status == 422 and "spec.scaling.workers" in str(err.value)
    time.sleep(0.5)
    assert kube.get("TrainingRun", "bad") is None and children(kube, "bad") == []


def test_a_relative_data_path_is_refused_in_a_cluster_naming_it(kube):
    """``data.uri: ./images`` is the spec file's folder to ``raykube run``; a pod has no
    spec file and resolved it against the image's working directory."""
    name = "relative-uri"
    doc = tr_doc(name)
    doc["spec"]["data"] = {"dataset": "image-folder", "uri": "images", "cacheDir": "cache"}
    kube.create(doc)
    tr = kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")
    msg = cond(tr, "Validated")["message"]
    assert "spec.data.uri: 'images' is a relative path, which a pod cannot resolve" in msg, msg
    assert "spec.data.cacheDir: 'cache' is a relative path" in msg, msg
    assert children(kube, name) == []


def create_with_a_bad_toleration(kube, name: str) -> dict:
    """A TrainingRun whose toleration a Pod refuses (the CRD lets it through), once the
    operator has said so."""
    doc = tr_doc(name)
    doc["spec"]["scaling"]["tolerations"] = [{"key": "gpu", "operator": "Exists",
                                              "value": "a100"}]
    kube.create(doc)
    return kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")


def test_a_pod_rule_the_crd_cannot_check_is_refused_by_the_operator(kube):
    """A toleration a Pod refuses passes the CRD (and would pass on KubeRay's RayJob,
    leaving pods never created): the operator says Validated=False naming it, creates
    nothing, and starts the run once it is fixed."""
    name = "bad-toleration"
    tr = create_with_a_bad_toleration(kube, name)
    assert "spec.scaling.tolerations[0].value" in cond(tr, "Validated")["message"]
    assert tr["status"]["phase"] == "Failed" and children(kube, name) == []
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"tolerations": [
        {"key": "gpu", "operator": "Exists"}]}}})
    kube.wait_condition(name, "Validated", "True")
    job = kube.wait_object("RayJob", name)
    pod = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_a_spec_too_large_for_an_annotation_is_refused_once(kube, operator):
    """A spec the API server takes (its own limit is 3 MiB a request) but that no
    annotation can hold: kopf's copy of it was refused ("metadata.annotations: Too
    long") and kopf retried every 5 s with a traceback, for good (an operator audit, 406
    KB of tolerations, bounded now; a search space's open ``choice`` values still reach
    it). Refused as InvalidSpec naming where the bulk is, one Warning, no RayJob, and
    the operator leaves it at that."""
    name = "huge-spec"
    doc = tr_doc(name, tune={"trials": 2, "searchSpace": {
        "train.optimizer.name": {"choice": ["x" * 1000] * 300}}})
    kube.create(doc)
    tr = kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")
    msg = cond(tr, "Validated")["message"]
    assert msg.startswith("spec: 29") and "KiB as JSON" in msg, msg
    assert "spec.tune.searchSpace[train.optimizer.name].choice" in msg, msg
    time.sleep(12)  # two of kopf's 5 s retries, had it kept trying
    warnings = [e for e in kube.list("Event") if e.get("reason") == "InvalidSpec"
                and e.get("involvedObject", {}).get("name") == name]
    assert [e.get("count", 1) for e in warnings] == [1], warnings
    again = kube.get("TrainingRun", name)
    assert kube.get("RayJob", name) is None
    assert "raykube.io/last-handled-configuration" not in (
        again["metadata"].get("annotations") or {})
    time.sleep(6)
    assert kube.get("TrainingRun", name)["metadata"]["resourceVersion"] == \
        again["metadata"]["resourceVersion"]  # nothing writes it again and again
    retried = [line for line in operator.logs().splitlines()
               if f"/{name}]" in line and ("Too long" in line or "Throttling" in line)]
    assert not retried, retried[:3]


def test_an_operator_restart_does_not_repeat_an_invalid_specs_warning(kube, operator):
    """The operator's start reconciles every TrainingRun: for one whose spec is still
    invalid it posted another InvalidSpec Warning each time (3 after 2 restarts)."""
    name = "bad-twice"
    create_with_a_bad_toleration(kube, name)

    def warnings() -> list[dict]:
        return [e for e in kube.list("Event") if e.get("reason") == "InvalidSpec"
                and e.get("involvedObject", {}).get("name") == name]

    assert kube.wait_for(lambda: len(warnings()) == 1, timeout=30, what="one Warning")
    # kopf stores its diff base (an annotation) in a patch of its own after the status:
    # the first operator's last write (CI once saw the status-only resourceVersion here)
    kube.wait_object("TrainingRun", name, timeout=30, where=lambda o: (
        (o.get("metadata") or {}).get("annotations") or {}).get(
        "raykube.io/last-handled-configuration"))
    time.sleep(1)
    tr = kube.get("TrainingRun", name)
    operator.restart()
    kube.wait_for(lambda: (kube.get("TrainingRun", name).get("metadata") or {}).get(
        "annotations") is not None, timeout=30, what="the TrainingRun")
    time.sleep(4)  # the restarted operator's resume handler has run by now
    assert [e.get("count", 1) for e in warnings()] == [1], warnings()
    again = kube.get("TrainingRun", name)
    assert again["metadata"]["resourceVersion"] == tr["metadata"]["resourceVersion"]


def test_a_model_too_large_for_its_memory_is_refused_then_runs_when_given_it(kube):
    """No schema can relate a model's size to memoryPerWorker: a model whose weights,
    gradients and optimizer buffers alone exceed it would be OOM-killed in every
    attempt. The operator refuses it naming the field and creates nothing; raising the
    memory starts the run."""
    name = "too-big"
    doc = tr_doc(name)
    doc["spec"]["model"] = {"name": "mlp", "options": {"hidden": [5_000_000]}}
    doc["spec"]["scaling"]["memoryPerWorker"] = "4Gi"
    kube.create(doc)
    tr = kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")
    msg = cond(tr, "Validated")["message"]
    assert "spec.scaling.memoryPerWorker" in msg and "4Gi cannot hold the model" in msg
    assert tr["status"]["phase"] == "Failed" and children(kube, name) == []
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"memoryPerWorker": "8Gi"}}})
    kube.wait_condition(name, "Validated", "True")
    job = kube.wait_object("RayJob", name)
    pod = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "8Gi"


def _dry_run_rayjob(kube, name: str) -> int:
    """The status code of a dry-run create of a minimal RayJob named ``name``."""
    probe = {"apiVersion": "ray.io/v1", "kind": "RayJob",
             "metadata": {"name": name, "namespace": kube.namespace},
             "spec": {"entrypoint": "true"}}
    return kube.http.post(kube.path("RayJob"), params={"dryRun": "All"},
                          json=probe).status_code


def _refuse_rayjobs_named(kube, name: str) -> tuple[str, str]:
    """A ValidatingAdmissionPolicy (the API server's own CEL admission) that refuses
    RayJobs named ``name`` in the test's namespace, as a cluster's policy may; returns the
    policy's and binding's paths. Waits until it is in force (a dry-run create refused)."""
    adm = "/apis/admissionregistration.k8s.io/v1"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1",
              "kind": "ValidatingAdmissionPolicy", "metadata": {"name": f"no-{kube.namespace}"},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{
                           "apiGroups": ["ray.io"], "apiVersions": ["*"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["rayjobs"]}]},
                       "validations": [{"expression": f"object.metadata.name != '{name}'",
                                        "message": "this cluster's policy refuses it"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": f"no-{kube.namespace}"},
               "spec": {"policyName": f"no-{kube.namespace}", "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": kube.namespace}}}}}
    for path, obj in ((f"{adm}/validatingadmissionpolicies", policy),
                      (f"{adm}/validatingadmissionpolicybindings", binding)):
        assert kube.http.post(path, json=obj).status_code == 201
    kube.wait_for(lambda: _dry_run_rayjob(kube, name) == 422, timeout=30,
                  what="the policy in force")
    return (f"{adm}/validatingadmissionpolicies/no-{kube.namespace}",
            f"{adm}/validatingadmissionpolicybindings/no-{kube.namespace}")


def test_a_child_the_api_server_refuses_is_reported_not_retried_blind(kube):
    """A RayJob rendered from a valid spec that the API server refuses (here a cluster's
    admission policy; before the spec's schema caught them, an activeDeadlineSeconds over
    KubeRay's int32 and a spec over a ConfigMap's 1 MiB did the same): the operator
    retried it every 30 s and the TrainingRun had no status at all. Now it says
    Validated=False, RefusedByAPIServer, in the API server's words, with one Warning; an
    edit once the cause is gone starts the run."""
    name = "refused"
    policy, binding = _refuse_rayjobs_named(kube, name)
    try:
        kube.create(tr_doc(name))
        tr = kube.wait_condition(name, "Validated", "False", reason="RefusedByAPIServer")
        msg = cond(tr, "Validated")["message"]
        assert msg.startswith(f"the API server refused the RayJob {name} rendered from this "
                              "spec: ") and "this cluster's policy refuses it" in msg, msg
        assert tr["status"]["phase"] == "Failed" and tr["status"]["message"] == msg
        assert kube.get("RayJob", name) is None
        time.sleep(3)  # no retry loop: no second Warning, the status untouched
        warnings = [e for e in events(kube, name) if e.get("reason") == "RefusedByAPIServer"]
        assert [e.get("count", 1) for e in warnings] == [1], warnings
        assert kube.get("TrainingRun", name)["metadata"]["resourceVersion"] == tr[
            "metadata"]["resourceVersion"]
    finally:
        kube.http.delete(binding)
        kube.http.delete(policy)
    kube.wait_for(lambda: _dry_run_rayjob(kube, name) == 201, timeout=30,
                  what="the policy gone")
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 4}}})
    tr = kube.wait_condition(name, "Validated", "True")
    assert kube.wait_object("RayJob", name)
    assert tr["status"]["message"].startswith("the spec is valid now")


def test_a_mended_edit_of_a_finished_run_gives_back_its_outcome(kube):
    """An invalid edit of a failed run, then the edit undone: the message said "the spec
    is valid now; the run goes on unchanged" for good, over why the run had failed (an
    operator audit). Now it is the outcome's again."""
    name = "mended"
    doc = tr_doc(name)
    kube.create(doc)
    kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Failed", jobStatus="FAILED", failed=1,
                  reason="AppFailed", message="boom")
    tr = kube.wait_condition(name, "Failed", "True")
    failed = cond(tr, "Failed")["message"]
    assert "boom" in failed and tr["status"]["message"] == failed
    memory = doc["spec"].get("scaling", {}).get("memoryPerWorker", "4Gi")
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"memoryPerWorker": "100Mi"}}})
    kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"memoryPerWorker": memory}}})
    tr = kube.wait_condition(name, "Validated", "True")
    assert tr["status"]["message"] == failed, tr["status"]["message"]
    assert tr["status"]["phase"] == "Failed"


def test_hand_edits_of_the_children_are_put_back(kube):
    """A RayJob (entrypoint, backoffLimit, suspend) or the spec ConfigMap the driver reads,
    edited by hand: the edit stayed for good (a run ended 'Failed after 8 attempts' with
    maxRetries 100 in its spec). Now each is put back as the spec renders it, with one
    ChildEdited Warning naming the fields; the operator's own writes raise none."""
    name = "hand-edited"
    kube.create(tr_doc(name))
    kube.wait_condition(name, "SpecApplied", "True")
    job = kube.wait_object("RayJob", name)
    config = kube.wait_object("ConfigMap", f"{name}-spec")

    def child_edited() -> list[dict]:
        return [e for e in events(kube, name) if e.get("reason") == "ChildEdited"]

    time.sleep(2)  # our own writes' events handled
    assert child_edited() == []
    kube.patch("RayJob", name, {"spec": {"backoffLimit": 7, "entrypoint": "echo hacked"}})
    kube.wait_object("RayJob", name, timeout=30, where=lambda o: (
        o["spec"]["entrypoint"], o["spec"]["backoffLimit"]) == (
        job["spec"]["entrypoint"], job["spec"]["backoffLimit"]))
    kube.wait_for(lambda: child_edited(), timeout=10, what="the Warning")
    msg = child_edited()[0]["message"]
    assert msg.startswith(f"RayJob {name} was edited outside this TrainingRun (spec.entrypoint, "
                          "spec.backoffLimit): put back"), msg

    kube.patch("RayJob", name, {"spec": {"suspend": True}})
    kube.wait_object("RayJob", name, timeout=30,
                     where=lambda o: not o["spec"].get("suspend", False))

    key = next(iter(config["data"]))
    kube.patch("ConfigMap", f"{name}-spec", {"data": {key: "epochs: 999\n"}})
    kube.wait_object("ConfigMap", f"{name}-spec", timeout=30,
                     where=lambda o: o["data"] == config["data"])
    reasons = sorted({e["message"].split(" was ")[0] for e in child_edited()})
    assert reasons == [f"ConfigMap {name}-spec", f"RayJob {name}"], child_edited()
    tr = kube.get("TrainingRun", name)
    assert cond(tr, "SpecApplied")["status"] == "True"
    assert tr["metadata"]["generation"] == 1


def test_render_output_applied_over_a_run_is_taken_back(kube, tmp_path, capsys):
    """``raykube render`` of a TrainingRun applied with kubectl beside that TrainingRun:
    its objects merge into the run's (kubectl keeps their ownerReference) and carry
    ``raykube.io/rendered-by``, which the operator's watches skipped, so the run's status
    was followed only at the resync. Now the operator follows them, removes the label
    (from the pod templates too) with one ChildEdited Warning each, and puts the spec
    back."""
    import json

    import yaml

    from raykube.cli import main
    from raykube.render import RENDERED_LABEL

    name = "rendered-over"
    doc = tr_doc(name)
    doc["metadata"]["namespace"] = kube.namespace
    kube.create(doc)
    kube.wait_condition(name, "SpecApplied", "True")
    job = kube.wait_object("RayJob", name)
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert main(["render", str(f)]) == 0
    rendered = capsys.readouterr().out
    assert RENDERED_LABEL in rendered
    kube.cp.kubectl_run("apply", "-n", kube.namespace, "-f", "-", input=rendered)
    for kind, child in (("RayJob", name), ("ConfigMap", f"{name}-spec")):
        back = kube.wait_object(kind, child, timeout=30,
                                where=lambda o: RENDERED_LABEL not in json.dumps(
                                    [o["metadata"].get("labels"), o.get("spec")]))
        assert [r["name"] for r in back["metadata"]["ownerReferences"]] == [name]
    assert kube.get("RayJob", name)["spec"]["entrypoint"] == job["spec"]["entrypoint"]
    warned = kube.wait_for(lambda: [e["message"] for e in events(kube, name)
                                    if e.get("reason") == "ChildEdited"
                                    and RENDERED_LABEL in e["message"]], timeout=10,
                           what="the ChildEdited Warnings")
    assert any(m.startswith(f"RayJob {name} carried {RENDERED_LABEL}") for m in warned), warned
    assert cond(kube.get("TrainingRun", name), "SpecApplied")["status"] == "True"
    # the RayJob alone, its labels only this time (no generation moves, no companion's
    # event reconciles): taken back from its own event
    job_doc, = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "RayJob"]
    kube.cp.kubectl_run("apply", "-n", kube.namespace, "-f", "-", input=json.dumps(job_doc))
    kube.wait_object("RayJob", name, timeout=30, where=lambda o: RENDERED_LABEL not in json.dumps(
        [o["metadata"].get("labels"), o.get("spec")]))


def test_restart_creates_no_duplicates_and_keeps_status(kube, operator):
    name = "restart"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    before = {(o["kind"], o["metadata"]["name"]): o["metadata"]["uid"] for o in children(kube, name)}
    n_calls = len(kube.calls())
    operator.restart()
    # the resume handler has run once it read our RayJob again
    kube.wait_for(lambda: any(c.verb == "get" and c.plural == "rayjobs" and c.name == name
                              for c in kube.calls()[n_calls:]
                              if c.user_agent != "raykube-tests"), what="resume")
    time.sleep(1.0)
    after_calls = [c for c in kube.calls()[n_calls:] if c.user_agent != "raykube-tests"]
    # (the start-up checks' self-subject reviews are queries: the API server stores nothing)
    writes = [(c.verb, c.resource) for c in after_calls
              if c.verb in ("create", "delete") and c.plural != "events"
              and not c.plural.startswith("selfsubject")]
    assert writes == [], writes
    child_patches = [(c.verb, c.resource, c.data) for c in after_calls if c.verb == "patch"
                     and c.plural in ("configmaps", "serviceaccounts", "roles", "rolebindings")]
    assert child_patches == []
    after = {(o["kind"], o["metadata"]["name"]): o["metadata"]["uid"] for o in children(kube, name)}
    assert after == before and job["metadata"]["uid"] == after[("RayJob", name)]
    assert kube.get("TrainingRun", name)["status"]["phase"] == "Running"


def test_suspend_propagates_and_running_edits_wait_for_the_runs_end(kube, operator):
    name = "edits"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    assert job["spec"].get("suspend", False) is False
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    kube.patch("TrainingRun", name, {"spec": {"suspend": True}})
    kube.wait_object("RayJob", name, where=lambda o: o["spec"]["suspend"] is True)
    rayjob_status(kube, name, jobDeploymentStatus="Suspended", jobStatus="STOPPED")
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Suspended")
    assert tr["status"]["observedGeneration"] == 2
    kube.patch("TrainingRun", name, {"spec": {"suspend": False}})
    kube.wait_object("RayJob", name, where=lambda o: o["spec"].get("suspend", False) is False)
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    cm_before = kube.get("ConfigMap", f"{name}-spec")["data"]
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 99}}})
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="SpecChangePending")
    kube.patch("TrainingRun", name, {"spec": {"train": {"batchSize": 32}}})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: "spec.train.batchSize" in cond(
        o, "SpecApplied")["message"])
    msg = cond(tr, "SpecApplied")["message"]
    assert msg.startswith("spec.train.epochs, spec.train.batchSize changed while the RayJob "
                          "is running"), msg  # every field edited during the run
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    assert kube.get("ConfigMap", f"{name}-spec")["data"] == cm_before
    assert tr["status"]["phase"] == "Running"
    # a restart while it runs: still pending, said once
    operator.restart()
    time.sleep(3)  # the resume handler has reconciled it by now
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="SpecChangePending")
    assert cond(tr, "SpecApplied")["message"] == msg
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    pending = [e for e in kube.list("Event") if e.get("reason") == "SpecChangePending"
               and e.get("involvedObject", {}).get("name") == name]
    assert len(pending) == 2, pending  # one per edit
    # the run ends (its outcome is recorded), and a new run starts with the spec as it is
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])
    tr = kube.wait_condition(name, "SpecApplied", reason="Rerun")
    assert cond(tr, "SpecApplied")["message"] == \
        "RayJob rerun for spec.train.epochs, spec.train.batchSize"  # what it is for
    data = kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]
    assert "epochs: 99" in data and "batchSize: 32" in data
    assert cond(tr, "Succeeded")["status"] == "Unknown" and tr["status"]["phase"] != "Succeeded"
    def reasons():
        return [e.get("reason") for e in kube.list("Event")
                if e.get("involvedObject", {}).get("name") == name]

    kube.wait_for(lambda: "Rerun" in reasons(), what="the Rerun Event")  # posted after the status
    assert "Succeeded" in reasons() and reasons().count("Rerun") == 1, reasons()
    assert [e["message"] for e in kube.list("Event") if e.get("reason") == "Rerun"
            and e.get("involvedObject", {}).get("name") == name] == [
        f"RayJob {name}: rerun for spec.train.epochs, spec.train.batchSize"]


def running_with_an_edit_pending(kube, name: str, epochs: int) -> dict:
    """A TrainingRun whose RayJob runs, edited (``train.epochs``) meanwhile: its RayJob."""
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": epochs}}})
    kube.wait_condition(name, "SpecApplied", "False", reason="SpecChangePending")
    return job


def test_children_deleted_while_an_edit_waits_are_made_again(kube):
    """While an edit waited for the run to end, nothing of the run was put back: a
    KubeRay retry's head pod was refused ("serviceaccount ... not found") and its pods
    waited for the ConfigMap's volume (an operator probe on this control plane). The
    ServiceAccount, Role and RoleBinding come back as ever; the ConfigMap, whose started
    spec went with it, comes back with the edit, and a Warning says so."""
    name = "pend-kids"
    running_with_an_edit_pending(kube, name, epochs=17)
    account = f"{name}-raykube"
    for kind, child in (("ConfigMap", f"{name}-spec"), ("ServiceAccount", account),
                        ("Role", account), ("RoleBinding", account)):
        kube.delete(kind, child)
    for kind, child in (("ServiceAccount", account), ("Role", account),
                        ("RoleBinding", account)):
        kube.wait_object(kind, child)
    cm = kube.wait_object("ConfigMap", f"{name}-spec")
    assert "epochs: 17" in cm["data"]["trainingrun.yaml"]
    (warning,) = kube.wait_for(lambda: [e for e in events(kube, name)
                                        if e.get("reason") == "ChildRecreated"],
                               what="a ChildRecreated Warning")
    assert warning["type"] == "Warning" and "while an edit was pending" in warning["message"]
    tr = kube.get("TrainingRun", name)
    assert cond(tr, "SpecApplied")["reason"] == "SpecChangePending"  # still waits


def test_a_serve_edit_of_a_running_run_moves_its_clusters_ttl(kube):
    """``ttlSecondsAfterFinished`` follows ``serve.enabled`` (0 when serving frees the
    training cluster's CPU at once, else 600 s to read its logs). A serve edit of a
    running run refreshed only the RayJob's hash: after ``serve.enabled: false`` the
    TTL stayed 0, and the finished cluster was deleted at once."""
    name = "ttl-follows"
    doc = tr_doc(name)
    doc["spec"]["serve"]["enabled"] = True
    kube.create(doc)
    job = kube.wait_object("RayJob", name)
    assert job["spec"]["ttlSecondsAfterFinished"] == 0
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    kube.patch("TrainingRun", name, {"spec": {"serve": {"enabled": False}}})
    job = kube.wait_object("RayJob", name, where=lambda o: o["spec"].get(
        "ttlSecondsAfterFinished") == 600)
    assert kube.get("TrainingRun", name)["status"]["phase"] == "Running"
    kube.patch("TrainingRun", name, {"spec": {"serve": {"enabled": True}}})
    again = kube.wait_object("RayJob", name, where=lambda o: o["spec"].get(
        "ttlSecondsAfterFinished") == 0)
    assert again["metadata"]["uid"] == job["metadata"]["uid"]  # the same run goes on
    assert cond(kube.get("TrainingRun", name), "SpecApplied")["status"] == "True"


def test_a_pending_edit_names_only_the_fields_that_still_differ(kube):
    """While one edit waits, another field edited and then edited back is no longer
    named: the message is the difference between the started spec (the ConfigMap) and
    the spec now. Before, it kept every field edited since the start ("spec.train.epochs,
    spec.scaling.workers changed" after workers went 2 -> 3 -> 2)."""
    name = "pend-back"
    workers = tr_doc(name)["spec"]["scaling"]["workers"]
    running_with_an_edit_pending(kube, name, epochs=21)
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"workers": workers + 1}}})
    kube.wait_object("TrainingRun", name, where=lambda o: "spec.scaling.workers" in cond(
        o, "SpecApplied")["message"])
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"workers": workers}}})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: "spec.scaling.workers" not in
                          cond(o, "SpecApplied")["message"])
    applied = cond(tr, "SpecApplied")
    assert applied["reason"] == "SpecChangePending", applied
    assert applied["message"].startswith("spec.train.epochs changed while"), applied
    said = [e["message"] for e in events(kube, name) if e.get("reason") == "SpecChangePending"]
    assert applied["message"] in said, said  # an Event said what the condition says


def test_an_edit_made_while_the_operator_was_down_is_said_once(kube, operator):
    """Edited while no operator ran: kopf runs the resume handler and the update handler
    for it, and each posted a SpecChangePending Event ("the spec changed ..." and
    "spec.train.epochs changed ...", one second apart: an operator probe)."""
    name = "pend-down"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kube.wait_condition(name, "Running", reason="JobRunning")
    operator.stop()
    try:
        kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 23}}})
    finally:
        operator.start()
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="SpecChangePending")
    assert cond(tr, "SpecApplied")["message"].startswith("spec.train.epochs changed"), tr
    time.sleep(3)  # both handlers have run by now
    posted = [e for e in events(kube, name) if e.get("reason") == "SpecChangePending"]
    said = [e["message"] for e in posted]
    assert len(said) == 1 and said[0].startswith("spec.train.epochs changed"), said
    # kubectl describe's From (it was kopf)
    assert (posted[0]["source"]["component"], posted[0]["reportingComponent"]) == (
        "raykube-operator", "raykube-operator"), posted[0]


def test_a_pending_edit_edited_back_is_said_to_be_undone(kube):
    """An edit made while the run trains waits for its end; edited back, it no longer
    does: SpecApplied goes back to True, and one Event says so (the condition flipped
    silently before: a fault probe on the real node)."""
    name = "undo"
    epochs = tr_doc(name)["spec"]["train"]["epochs"]
    job = running_with_an_edit_pending(kube, name, epochs + 5)
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": epochs}}})
    tr = kube.wait_condition(name, "SpecApplied", "True")
    applied = cond(tr, "SpecApplied")
    assert applied["reason"] == "UpToDate" and applied["message"] == (
        "spec.train.epochs edited back before the edit was applied: the run goes on as it "
        "was (RayJob unchanged)"), applied
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    kube.wait_for(lambda: [e for e in events(kube, name) if e.get("reason") == "SpecChangeUndone"],
                  timeout=10, what="a SpecChangeUndone Event")
    # the run's end starts nothing new: nothing was pending
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_condition(name, "Succeeded")
    time.sleep(1)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    assert [e["reason"] for e in events(kube, name)].count("SpecChangeUndone") == 1


def test_a_worker_failure_is_a_warning_once_even_across_a_restart(kube, operator):
    """The driver patches ``status.workerFailures`` as Ray Train restarts its workers; the
    next attempt's driver clears it. Each failure is one Warning Event, the record that
    outlives the attempt, and a restarted operator does not post it again."""
    name = "worker-failed"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    last = "worker failure (rank 1: killed); restarting the workers from the last checkpoint"

    def failures() -> list[str]:
        return [e["message"] for e in events(kube, name) if e.get("reason") == "WorkerFailure"
                and e.get("type") == "Warning"]

    kube.patch_status("TrainingRun", name, {"workerFailures": {
        "count": 1, "last": f"{last} (retry 1 of 3)", "at": "2026-12-06T01:00:00Z"}})
    kube.wait_for(lambda: failures() == [f"{last} (retry 1 of 3)"], timeout=15,
                  what="one WorkerFailure Warning")
    kube.patch_status("TrainingRun", name, {"progress": {"epoch": 2}})  # another field
    kube.patch_status("TrainingRun", name, {"workerFailures": {
        "count": 2, "last": f"{last} (retry 2 of 3)", "at": "2026-12-06T01:00:09Z"}})
    kube.wait_for(lambda: len(failures()) == 2, timeout=15, what="the second Warning")
    kube.wait_object("TrainingRun", name, timeout=15, where=lambda o: "retry 2 of 3" in (
        (o["metadata"].get("annotations") or {}).get("raykube.io/last-handled-configuration")
        or ""))
    operator.restart()
    time.sleep(4)  # the restarted operator's resume handler has run by now
    kube.patch_status("TrainingRun", name, {"workerFailures": None})  # a new attempt
    time.sleep(2)
    assert sorted(failures()) == [f"{last} (retry 1 of 3)", f"{last} (retry 2 of 3)"], failures()


def test_a_rayjob_deleted_with_an_edit_pending_is_recreated_with_it_unless_it_conflicts(kube):
    """Deleting an active run's RayJob ends that run: the new RayJob takes the pending
    edit, and says so. Before, it took it silently, and a pending model edit went past
    the run-directory check (a finished run's rerun is refused for it), so the new driver
    found the old model's checkpoints. A serve edit made alongside is not pending and is
    not named as pending."""
    name = "pend-del"
    job = running_with_an_edit_pending(kube, name, epochs=13)
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.5}}})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
        "observedGeneration") == o["metadata"]["generation"])
    assert cond(tr, "SpecApplied")["message"].startswith(
        "spec.train.epochs changed while the RayJob is running"), cond(tr, "SpecApplied")
    kube.delete("RayJob", name)
    new = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job[
        "metadata"]["uid"])
    assert new is not None
    tr = kube.wait_condition(name, "SpecApplied", reason="Created")
    assert cond(tr, "SpecApplied")["message"] == "RayJob recreated with spec.train.epochs"
    assert tr["status"]["message"] == (
        f"RayJob {name} was deleted while the run was active: recreated it with the pending "
        "edit of spec.train.epochs; training resumes from the latest checkpoint")
    assert "epochs: 13" in kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]

    name = "pend-del-model"
    job = running_with_an_edit_pending(kube, name, epochs=14)
    trained(kube, name)
    kube.patch("TrainingRun", name, {"spec": {"model": {"options": {"hidden": [16]}}}})
    kube.wait_object("TrainingRun", name, where=lambda o: "spec.model.options.hidden" in cond(
        o, "SpecApplied")["message"])
    kube.delete("RayJob", name)
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="RunDirConflict")
    msg = cond(tr, "SpecApplied")["message"]
    assert msg.startswith("spec.model differs from the run's (its RayJob was deleted with "
                          "this edit pending)") and "Nothing runs until the edit is undone" in msg
    # not the deleted RayJob's last "waiting for the Ray cluster" (seen on real pods)
    assert cond(tr, "Running")["reason"] == "RunDirConflict" and tr["status"]["message"] == msg
    time.sleep(2)
    assert kube.get("RayJob", name) is None
    [kept] = load_yaml_documents(kube.get("ConfigMap", f"{name}-spec")["data"][
        "trainingrun.yaml"])
    assert kept["spec"]["model"] == tr_doc(name)["spec"]["model"]  # the run's, not the edit
    # the model edit undone: the run goes on, from its checkpoints
    kube.patch("TrainingRun", name, {"spec": {"model": tr_doc(name)["spec"]["model"]}})
    kube.wait_object("RayJob", name)
    kube.wait_condition(name, "SpecApplied")


def test_suspend_and_resume_say_which(kube):
    """Both read 'RayJob suspend' (the condition) and 'RayJob x: suspend' (the Event)."""
    name = "susp-words"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    for value, word in ((True, "suspended"), (False, "resumed")):
        kube.patch("TrainingRun", name, {"spec": {"suspend": value}})
        tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
            "observedGeneration") == o["metadata"]["generation"])
        assert cond(tr, "SpecApplied")["message"] == f"RayJob {word}", cond(tr, "SpecApplied")
        kube.wait_for(lambda w=word: any(e["message"] == f"RayJob {name}: {w}"
                                         for e in events(kube, name)), what=f"{word} Event")


def test_a_run_with_an_edit_pending_can_still_be_suspended(kube):
    """Before, a training edit made while the RayJob ran held back every later change of
    the RayJob, ``suspend`` included: the run could not be stopped. Now it stops, and the
    edit reaches the suspended RayJob, with which it resumes."""
    name = "pend-susp"
    job = running_with_an_edit_pending(kube, name, epochs=11)
    kube.patch("TrainingRun", name, {"spec": {"suspend": True}})
    stopped = kube.wait_object("RayJob", name, where=lambda o: o["spec"].get("suspend") is True)
    assert "epochs: 11" not in kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]
    # the suspend alone was patched: the RayJob still says it runs the old spec
    assert stopped["metadata"]["annotations"][SPEC_HASH] == job["metadata"]["annotations"][
        SPEC_HASH]
    rayjob_status(kube, name, jobDeploymentStatus="Suspended", jobStatus="STOPPED")
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Suspended")
    # once KubeRay has stopped it, the edit reaches the suspended RayJob at once (it said
    # "changed while the RayJob is running ... pending" until the resume, seen on real pods)
    tr = kube.wait_condition(name, "SpecApplied", reason="UpdatedWhileSuspended")
    assert cond(tr, "SpecApplied")["message"].startswith("spec.train.epochs applied")
    assert "epochs: 11" in kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]
    assert kube.get("RayJob", name)["spec"]["suspend"] is True
    kube.patch("TrainingRun", name, {"spec": {"suspend": False}})
    now = kube.wait_object("RayJob", name, where=lambda o: not o["spec"].get("suspend"))
    assert now["metadata"]["uid"] == job["metadata"]["uid"]
    tr = kube.wait_condition(name, "SpecApplied", reason="SuspendUpdated")
    assert cond(tr, "SpecApplied")["message"] == "RayJob resumed"


def test_an_edit_pending_at_the_runs_end_is_started_by_a_restarted_operator(kube, operator):
    """The run ended while the operator was down: the status still holds the edit made
    while it ran, and the restarted operator records the outcome, then starts the run."""
    name = "edit-down"
    job = running_with_an_edit_pending(kube, name, epochs=7)
    operator.stop()
    try:
        rayjob_status(kube, name, jobDeploymentStatus="Failed", jobStatus="FAILED", failed=1)
    finally:
        operator.start()
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])
    kube.wait_condition(name, "SpecApplied", reason="Rerun")
    assert "epochs: 7" in kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]
    # the previous run's outcome was recorded too (its Event is posted after the status)
    kube.wait_for(lambda: any(e.get("reason") == "Failed" for e in kube.list("Event")
                              if e.get("involvedObject", {}).get("name") == name),
                  what="the previous run's Failed Event")
    assert cond(kube.get("TrainingRun", name), "Failed")["reason"] == "Rerun"


def test_a_finished_run_is_not_retrained_for_an_operator_upgrade(kube, operator):
    """A RayJob rendered by another operator version (here: one without the storage id
    env the operator renders now) differs in its training hash. Without an edit, neither
    a restart nor a serve edit retrains the finished run."""
    name = "upgraded"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    cluster = job["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        c = group["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != "RAYKUBE_STORAGE_ID"]
    ann = job["metadata"]["annotations"]
    ann[TRAINING_HASH] = "rendered-by-an-older-operator"
    kube.patch("RayJob", name, {"metadata": {"annotations": ann}, "spec": {"rayClusterSpec": cluster}})
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_condition(name, "Succeeded", "True")
    operator.restart()
    time.sleep(3)
    kube.patch("TrainingRun", name, {"spec": {"serve": {"minAccuracy": 0.5}}})
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("observedGeneration") == 2)
    time.sleep(2)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    tr = kube.get("TrainingRun", name)
    assert tr["status"]["phase"] == "Succeeded" and cond(tr, "SpecApplied")["status"] == "True"


def test_deletion_leaves_nothing_orphaned(kube):
    name = "gone"
    tr = kube.create(tr_doc(name))
    kube.wait_for(lambda: len(children(kube, name)) == len(CHILD_KINDS), what="children")
    for obj in children(kube, name):  # the API server's GC deletes these with the owner
        assert [(r["kind"], r["uid"]) for r in obj["metadata"]["ownerReferences"]] == [
            ("TrainingRun", tr["metadata"]["uid"])]
    assert "finalizers" not in kube.get("TrainingRun", name)["metadata"]  # never blocks
    assert kube.delete("TrainingRun", name)
    kube.wait_for(lambda: kube.get("TrainingRun", name) is None, what="deletion")
    # the real garbage collector (kube-controller-manager) removes every child
    kube.wait_for(lambda: children(kube, name) == [], timeout=60, what="children deleted")


def test_training_edit_while_suspended_is_applied_at_once(kube):
    """Nothing runs while suspended: an edit reaches the RayJob and the spec ConfigMap now,
    not after a run that cannot finish."""
    name = "susp-edit"
    kube.create(tr_doc(name, suspend=True))
    job = kube.wait_object("RayJob", name)
    assert job["spec"]["suspend"] is True
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Suspended")
    kube.patch("TrainingRun", name, {"spec": {"train": {"epochs": 7}}})
    tr = kube.wait_condition(name, "SpecApplied", reason="UpdatedWhileSuspended")
    assert "spec.train.epochs" in cond(tr, "SpecApplied")["message"]
    assert "epochs: 7" in kube.get("ConfigMap", f"{name}-spec")["data"]["trainingrun.yaml"]
    after = kube.get("RayJob", name)
    assert after["metadata"]["uid"] == job["metadata"]["uid"] and after["spec"]["suspend"] is True
    assert after["metadata"]["annotations"]["raykube.io/training-hash"] != \
        job["metadata"]["annotations"]["raykube.io/training-hash"]


def test_a_training_edit_before_the_ray_cluster_is_up_suspends_and_resumes_with_it(kube):
    """A run whose pods cannot be scheduled (``cpusPerWorker: 8`` on a 2-core node) stays
    Initializing for good; the edit that fixes it waited for "this run to end", which
    never came (a fault probe on the real node). Now the operator suspends the RayJob
    (KubeRay deletes the cluster it was starting) and, once Suspended, resumes it with the
    edit: the same RayJob, its spec ConfigMap and training hash updated. KubeRay's part
    (its status moving to Suspending, Suspended) is patched here as KubeRay writes it."""
    name = "edit-initializing"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Initializing", rayClusterName=f"{name}-x")
    kube.wait_condition(name, "Running", "False", reason="Initializing")
    kube.patch("TrainingRun", name, {"spec": {"scaling": {"cpusPerWorker": 0.5}}})
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="SpecChangeBeforeStart")
    assert cond(tr, "SpecApplied")["message"] == (
        "spec.scaling.cpusPerWorker changed before the Ray cluster came up: the RayJob is "
        "suspended (KubeRay deletes the Ray cluster it was starting) and then resumed with "
        "the edit"), cond(tr, "SpecApplied")
    kube.wait_object("RayJob", name, where=lambda o: o["spec"].get("suspend") is True)
    rayjob_status(kube, name, jobDeploymentStatus="Suspending")
    time.sleep(1)  # a reconcile meanwhile leaves it suspended (Suspending: still pending)
    assert kube.get("RayJob", name)["spec"].get("suspend") is True
    tr = kube.wait_condition(name, "Running", "False", reason="Suspended")
    assert "changed before the Ray cluster came up" in cond(tr, "Running")["message"]
    rayjob_status(kube, name, jobDeploymentStatus="Suspended")
    tr = kube.wait_condition(name, "SpecApplied", reason="UpdatedWhileSuspended")
    assert "spec.scaling.cpusPerWorker" in cond(tr, "SpecApplied")["message"]
    after = kube.wait_object("RayJob", name, where=lambda o: not o["spec"].get("suspend"))
    assert after["metadata"]["uid"] == job["metadata"]["uid"]
    assert after["metadata"]["annotations"][TRAINING_HASH] != \
        job["metadata"]["annotations"][TRAINING_HASH]
    assert "cpusPerWorker: 0.5" in kube.get("ConfigMap", f"{name}-spec")["data"][
        "trainingrun.yaml"]
    reasons = [e.get("reason") for e in events(kube, name)]
    assert reasons.count("SpecChangeBeforeStart") == 1, reasons
    assert "Suspended" not in reasons, reasons  # the operator's own suspend: said once


def test_model_edit_after_the_run_is_refused_before_creating_anything(kube):
    """A finished run's directory holds checkpoints of its model: a new run of another model
    under the same name could only fail every retry (RunDirConflict in the driver)."""
    name = "rerun-model"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    trained(kube, name)
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_condition(name, "Succeeded")
    kube.patch("TrainingRun", name, {"spec": {"model": {"options": {"hidden": [16]}}}})
    tr = kube.wait_condition(name, "SpecApplied", "False", reason="RunDirConflict")
    msg = cond(tr, "SpecApplied")["message"]
    assert "spec.model" in msg and "new metadata.name" in msg
    assert "delete that run directory and create the TrainingRun again" in msg
    time.sleep(1)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    assert tr["status"]["phase"] == "Succeeded"
    assert tr["status"]["message"] == msg  # -o wide said only how the run had ended
    # back to the run's model, with a training edit the run directory can hold: a new run
    model = tr_doc(name)["spec"]["model"]  # hidden is a list: a merge patch replaces it
    kube.patch("TrainingRun", name, {"spec": {"model": model, "train": {"epochs": 4}}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])


def test_a_run_that_never_trained_takes_a_data_edit(kube):
    """A run that failed before its first epoch (a mistyped ``data.uri``: the driver says
    so and asks for no retry) has no checkpoint to conflict with: the fix of its data is a
    new run. It was refused with RunDirConflict ("holds checkpoints of the previous ...
    dataset"), whatever the user did next (an operator probe)."""
    name = "never-trained"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Failed", jobStatus="FAILED", failed=4,
                  reason="AppFailed", message="job failed")
    kube.wait_condition(name, "Failed")
    assert not kube.get("TrainingRun", name)["status"].get("checkpoint")
    kube.patch("TrainingRun", name, {"spec": {"train": {"seed": 7}}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])
    kube.wait_condition(name, "SpecApplied", reason="Rerun")


def test_a_model_edit_onto_another_storage_is_a_new_run(kube):
    """The refusal above protects the run directory on the run's storage: a model edit
    that also moves ``checkpoint.storage`` to another claim has nothing there to
    conflict with, and was refused all the same. Another mountPath of the same claim is
    the same files: still refused."""
    name = "rerun-moved"
    kube.create(tr_doc(name))
    job = kube.wait_object("RayJob", name)
    trained(kube, name)
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_condition(name, "Succeeded")
    kube.patch("TrainingRun", name, {"spec": {"model": {"options": {"hidden": [16]}},
                                              "checkpoint": {"storage": {"pvc": {
                                                  "claimName": "raykube-storage",
                                                  "mountPath": "/mnt/elsewhere"}}}}})
    kube.wait_condition(name, "SpecApplied", "False", reason="RunDirConflict")
    kube.patch("TrainingRun", name, {"spec": {"checkpoint": {"storage": {"pvc": {
        "claimName": "other-claim"}}}}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])
    kube.wait_condition(name, "SpecApplied", reason="Rerun")


def test_removing_spec_rerun_asks_for_no_new_run(kube):
    """Only a new ``spec.rerun`` value runs again: a GitOps tool that prunes the field (or
    a user tidying the spec) removed it, and a finished run trained once more."""
    name = "rerun-removed"
    kube.create(tr_doc(name))
    kube.wait_object("RayJob", name)
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_condition(name, "Succeeded")
    uid = kube.get("RayJob", name)["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"rerun": "1"}})
    job = kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != uid)
    rayjob_status(kube, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get("phase") == "Succeeded"
                     and o["status"].get("observedGeneration") == o["metadata"]["generation"])
    # kopf posts Events from a queue of its own, after the status: wait for it
    kube.wait_for(lambda: len([e for e in events(kube, name) if e["reason"] == "Rerun"]) == 1,
                  what="the Rerun Event")
    reruns = [e for e in events(kube, name) if e["reason"] == "Rerun"]
    kube.patch("TrainingRun", name, {"spec": {"rerun": None}})
    tr = kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
        "observedGeneration") == o["metadata"]["generation"])
    time.sleep(2)  # a rerun would have deleted the RayJob by now
    tr = kube.get("TrainingRun", name)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    assert tr["status"]["phase"] == "Succeeded", tr["status"]
    assert cond(tr, "SpecApplied")["reason"] != "Rerun", cond(tr, "SpecApplied")
    assert [e for e in events(kube, name) if e["reason"] == "Rerun"] == reruns
    # the value the last run ran with is no request either; a new one is
    kube.patch("TrainingRun", name, {"spec": {"rerun": "1"}})
    kube.wait_object("TrainingRun", name, where=lambda o: o["status"].get(
        "observedGeneration") == o["metadata"]["generation"])
    time.sleep(2)
    assert kube.get("RayJob", name)["metadata"]["uid"] == job["metadata"]["uid"]
    kube.patch("TrainingRun", name, {"spec": {"rerun": "2"}})
    kube.wait_object("RayJob", name, where=lambda o: o["metadata"]["uid"] != job["metadata"]["uid"])


def test_operator_requests_stay_within_its_rbac(kube):
    used = kube.operator_permissions()
    assert ("ray.io", "rayjobs", "create") in used
    denied = sorted(p for p in used if not allowed(*p))
    assert denied == [], f"operator used permissions missing from its RBAC: {denied}"


def test_driver_reporter_runs_as_the_runs_service_account_only(kube, monkeypatch, tmp_path):
    """The driver's KubernetesReporter with a token of the per-run ServiceAccount (as the
    head pod mounts it) patches its own TrainingRun's status, and is refused (403) on any
    other TrainingRun: the rendered Role names only its own object."""
    import httpx

    from raykube.k8s_reporter import KubernetesReporter
    from raykube.spec import parse_spec

    kube.create(tr_doc("rep-sa"))
    kube.create(tr_doc("rep-other"))
    kube.wait_object("RoleBinding", "rep-sa-raykube")
    kubeconfig = kube.cp.kubeconfig_for("rep-sa-raykube", kube.namespace, tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rep = KubernetesReporter(kube.namespace, "rep-sa", min_interval=0)
    rep.on_start(parse_spec(tr_doc("rep-sa")["spec"], name="rep-sa"))
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.7, "valLoss": 0.5}, "/c/1", None)
    assert rep.failures == 0 and rep.patches == 1
    assert kube.get("TrainingRun", "rep-sa")["status"]["progress"]["epoch"] == 1
    other = KubernetesReporter(kube.namespace, "rep-other", min_interval=0)
    other.on_epoch({"epoch": 1, "valAccuracy": 0.7}, "/c/1", None)
    assert other.failures == 1 and other.patches == 0  # logged, training goes on
    token = kube.cp.token("rep-sa-raykube", kube.namespace)
    with httpx.Client(base_url=kube.cp.server, verify=str(kube.cp.workdir / "pki" / "ca.crt"),
                      headers={"Authorization": f"Bearer {token}"}) as http:
        path = kube.path("TrainingRun", None, "rep-other", "status")
        resp = http.patch(path, json={"status": {"phase": "Failed"}},
                          headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status_code == 403, resp.text
        assert http.get(kube.path("TrainingRun", None, "rep-sa")).status_code == 403  # no spec
        assert http.get(kube.path("TrainingRun", None, "rep-sa", "status")).status_code == 200
