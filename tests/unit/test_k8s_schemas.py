"""Self-tests of tests/k8s_schemas.py: the strict validator must catch what the API
server would refuse or silently prune, for each family of kinds."""

from __future__ import annotations

import copy

import pytest

from k8s_schemas import strict_schema, validate_strict


def _pod_spec(**extra):
    return {"containers": [{"name": "c", "image": "busybox", **extra}]}


CORE_OK = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "b"}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "x"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
     "rules": [{"apiGroups": ["raykube.io"], "resources": ["trainingruns/status"],
                "resourceNames": ["a"], "verbs": ["get", "patch"]}]},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
     "spec": {"selector": {"matchLabels": {"a": "b"}},
              "template": {"metadata": {"labels": {"a": "b"}},
                           "spec": _pod_spec(resources={"limits": {"cpu": 1, "memory": "1Gi"}})}}},
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"},
     "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
]


@pytest.mark.parametrize("obj", CORE_OK, ids=lambda o: o["kind"])
def test_core_valid(obj):
    assert validate_strict(obj) == []


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy2="x"),
         "'imagePullPolicy2' was unexpected"),
        (lambda d: d["spec"].update(replicas="2"), "spec.replicas: '2' is not of type"),
        (lambda d: d["metadata"].update(lables={"a": "b"}), "'lables' was unexpected"),
        (lambda d: d["metadata"].pop("name"), "metadata.name: is required"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "not a valid DNS subdomain"),
        (lambda d: d["metadata"].update(labels={"a": 1}), "metadata.labels[a]"),
    ],
    ids=["unknown-nested", "wrong-type", "unknown-metadata", "no-name", "bad-name", "label-type"],
)
def test_core_errors(mutate, expect):
    obj = copy.deepcopy(CORE_OK[3])
    mutate(obj)
    errors = validate_strict(obj)
    assert any(expect in e for e in errors), errors


def test_core_unknown_kind_or_version():
    assert validate_strict({"apiVersion": "v1", "kind": "Nope", "metadata": {"name": "a"}})
    assert validate_strict({"apiVersion": "apps/v9", "kind": "Deployment", "metadata": {"name": "a"}})
    assert validate_strict({"kind": "ConfigMap"})
    assert validate_strict([])


def _rayjob():
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j", "labels": {"a": "b"}},
        "spec": {
            "entrypoint": "python -c 1", "shutdownAfterJobFinishes": True,
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"},
                                  "template": {"metadata": {"labels": {"a": "b"}},
                                               "spec": _pod_spec(resources={"limits": {"cpu": "1"}})}},
                "workerGroupSpecs": [{"groupName": "w", "replicas": 2, "minReplicas": 2, "maxReplicas": 2,
                                      "rayStartParams": {},
                                      "template": {"spec": _pod_spec(resources={"limits": {"cpu": 2}})}}],
            },
        },
    }


def test_kuberay_valid():
    assert validate_strict(_rayjob()) == []
    assert validate_strict({"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "s"},
                            "spec": {"serveConfigV2": "applications: []",
                                     "rayClusterConfig": _rayjob()["spec"]["rayClusterSpec"]}}) == []
    assert validate_strict({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c"},
                            "spec": _rayjob()["spec"]["rayClusterSpec"]}) == []


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["spec"].update(entryPoint="x"), "'entryPoint' was unexpected"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
         ["containers"][0].update(gpu=1), "'gpu' was unexpected"),
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]
         .update(label={"a": "b"}), "'label' was unexpected"),
        (lambda d: d["spec"].update(backoffLimit="2"), "spec.backoffLimit: '2' is not of type"),
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(x=1),
         "rayStartParams.x: 1 is not of type 'string'"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
         ["containers"][0].update(resources={"limits": {"cpu": 1.5}}), "limits.cpu: 1.5"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
         ["containers"].append({"name": "c", "image": "x"}), "duplicate entry"),
        (lambda d: d["metadata"].update(ownerReferences=[{"kind": "X"}]), "ownerReferences[0]"),
        (lambda d: d.update(apiVersion="ray.io/v2"), "no CRD known"),
        (lambda d: d.update(statuss={}), "'statuss' was unexpected"),
    ],
    ids=["unknown-spec", "unknown-container", "unknown-template-meta", "wrong-type",
         "start-param-type", "int-or-string", "list-map-dup", "owner-ref", "version", "top-level"],
)
def test_kuberay_errors(mutate, expect):
    obj = _rayjob()
    mutate(obj)
    errors = validate_strict(obj)
    assert any(expect in e for e in errors), errors


def test_strict_schema_rules():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "n": {"type": "integer", "nullable": True},
        "ios": {"x-kubernetes-int-or-string": True},
    }}
    out = strict_schema(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["open"]
    assert out["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert out["properties"]["n"]["type"] == ["integer", "null"]
    assert out["properties"]["ios"]["type"] == ["integer", "string"]
    assert "additionalProperties" not in schema["properties"]["a"]  # input untouched


def _trainingrun():
    return {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "t"},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                     "scaling": {"workers": 2, "cpusPerWorker": 1.5}},
            "status": {"phase": "Running", "progress": {"epoch": 3, "valAccuracy": 0.5}}}


def test_trainingrun_valid():
    assert validate_strict(_trainingrun()) == []


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["spec"]["scaling"].update(gpus=1), "'gpus' was unexpected"),
        (lambda d: d["spec"]["scaling"].update(workers="2"), "spec.scaling.workers: '2' is not of type"),
        (lambda d: d["spec"]["scaling"].update(workers=0), "spec.scaling.workers: 0 is less than"),
        # (cpusPerWorker's fractional minimum is a CEL rule, which this validator does not
        # run: the real API server's tests check it)
        (lambda d: d["spec"]["data"].update(validationFraction=0), "spec.data.validationFraction"),
        (lambda d: d["spec"].pop("data"), "'data' is a required property"),
        (lambda d: d["status"]["progress"].update(acc=1), "'acc' was unexpected"),
        (lambda d: d.update(apiVersion="raykube.io/v1"), "no CRD known"),
    ],
    ids=["unknown", "wrong-type", "minimum", "exclusive-minimum", "required", "status-unknown", "version"],
)
def test_trainingrun_errors(mutate, expect):
    obj = _trainingrun()
    mutate(obj)
    errors = validate_strict(obj)
    assert any(expect in e for e in errors), errors
