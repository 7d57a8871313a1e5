"""``raykube_operator.drift``: which rendered fields a live child no longer holds."""

from __future__ import annotations

import copy

from raykube_operator.drift import differing_paths, drifted, summary

RENDERED = {
    "apiVersion": "ray.io/v1", "kind": "RayJob",
    "metadata": {"name": "r", "annotations": {"raykube.io/spec-hash": "abc"}},
    "spec": {
        "entrypoint": "raykube train",
        "backoffLimit": 2,
        "shutdownAfterJobFinishes": True,
        "rayClusterSpec": {"workerGroupSpecs": [{
            "replicas": 2,
            "template": {"spec": {"containers": [{
                "name": "ray-worker", "env": [],
                "resources": {"limits": {"cpu": "0.5", "memory": "2Gi"}}}]}}}]},
    },
}


def live() -> dict:
    """The object as the API server returns it: defaults, status and metadata added."""
    obj = copy.deepcopy(RENDERED)
    obj["metadata"].update(uid="u", resourceVersion="7", generation=2, finalizers=["f"])
    obj["spec"]["submissionMode"] = "K8sJobMode"  # a CRD default: not ours
    obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 0
    obj["status"] = {"jobDeploymentStatus": "Running"}
    return obj


def test_what_the_server_adds_is_no_drift():
    assert drifted(live(), RENDERED) == []


def test_kuberays_write_back_is_no_drift():
    """KubeRay's controller PUTs the whole RayJob (its finalizer) from Go types: quantities
    come back canonical and zero values / empty lists are dropped (omitempty)."""
    obj = live()
    container = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]
    container["resources"]["limits"] = {"cpu": "500m", "memory": "2147483648"}
    del container["env"]
    rendered = copy.deepcopy(RENDERED)
    rendered["spec"]["suspend"] = False
    assert drifted(obj, rendered) == []


def test_canonical_quantities_of_any_form_are_no_drift():
    """``memoryPerWorker: 1.0000000001Gi`` came back from KubeRay as
    ``1073741824107374183n``, which the comparison could not read: a ChildEdited Warning
    and a repair on every new run (differential probe, real API server and KubeRay)."""
    for rendered_qty, written in (("1.0000000001Gi", "1073741824107374183n"),
                                  ("0.5", "500m"), ("1500m", "1500m"), ("1k", "1e3")):
        rendered = copy.deepcopy(RENDERED)
        obj = live()
        for o, qty in ((rendered, rendered_qty), (obj, written)):
            o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"][0]["resources"]["limits"]["memory"] = qty
        assert drifted(obj, rendered) == [], (rendered_qty, written)
    obj = live()
    obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
        0]["resources"]["limits"]["memory"] = "1073741824n"  # 1.07 bytes: an edit
    assert drifted(obj, RENDERED) == [
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].resources"
        ".limits.memory"]


def test_hand_edits_are_named():
    obj = live()
    obj["spec"]["entrypoint"] = "echo hacked"
    obj["spec"]["backoffLimit"] = 7
    obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 5
    paths = drifted(obj, RENDERED)
    assert paths == ["spec.entrypoint", "spec.backoffLimit",
                     "spec.rayClusterSpec.workerGroupSpecs[0].replicas"]
    assert summary(paths, limit=2) == "spec.entrypoint, spec.backoffLimit and 1 more"


def test_removed_fields_a_changed_quantity_and_a_list_length_are_drift():
    obj = live()
    del obj["spec"]["backoffLimit"]
    groups = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
    groups.append(copy.deepcopy(groups[0]))
    assert drifted(obj, RENDERED) == ["spec.backoffLimit", "spec.rayClusterSpec.workerGroupSpecs"]
    obj = live()
    obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["cpu"] = "2"
    assert drifted(obj, RENDERED) == [
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.cpu"]


def test_a_bool_is_not_a_number_and_ignored_paths_are_skipped():
    obj = live()
    obj["spec"]["shutdownAfterJobFinishes"] = 1
    assert drifted(obj, RENDERED) == ["spec.shutdownAfterJobFinishes"]
    assert drifted(obj, RENDERED, ignore=frozenset({"spec.shutdownAfterJobFinishes"})) == []


def test_a_configmaps_data_edit_is_drift():
    rendered = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r-spec"},
                "data": {"spec.yaml": "epochs: 7\n"}}
    obj = copy.deepcopy(rendered)
    obj["data"]["spec.yaml"] = "epochs: 999\n"
    assert drifted(obj, rendered) == ["data.spec.yaml"]
    del obj["data"]
    assert drifted(obj, rendered) == ["data"]


def test_differing_paths_names_leaves_in_document_order():
    started = {"train": {"epochs": 10, "batchSize": 64}, "scaling": {"workers": 2},
               "model": {"options": {"hidden": [64, 32]}}}
    now = {"train": {"epochs": 12, "batchSize": 64}, "scaling": {"workers": 2},
           "model": {"options": {"hidden": [64]}}, "rerun": "b"}
    assert differing_paths(started, now, "spec") == [
        "spec.train.epochs", "spec.model.options.hidden", "spec.rerun"]
    assert differing_paths(started, started, "spec") == []
    # a section present on one side only names its own leaves; a dict against a scalar
    assert differing_paths({}, {"data": {"uri": "x", "kind": "k"}}, "spec") == [
        "spec.data.uri", "spec.data.kind"]
    assert differing_paths({"a": {}}, {"a": 3}, "spec") == ["spec.a"]
