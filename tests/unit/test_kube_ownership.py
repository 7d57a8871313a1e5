"""``applied_ownership``: the operator's create and patch entries of ``managedFields``
folded into its server-side apply's (Kubernetes' csaupgrade, as ``kubectl apply
--server-side`` does for client-side apply). Against the real API server and KubeRay:
tests/integration/test_operator_kuberay.py::test_the_head_is_placed_by_its_own_fields."""

from __future__ import annotations

from raykube_operator.kube import applied_ownership

V = "ray.io/v1"


def _entry(manager, operation, fields, subresource=None, api_version=V, time="2026-12-06T04:00:00Z"):
    e = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": time,
         "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        e["subresource"] = subresource
    return e


def test_the_creates_fields_become_the_applys_and_others_stay():
    create = _entry("OpenAPI-Generator", "Update", {"f:spec": {"f:rayClusterSpec": {
        "f:headGroupSpec": {"f:template": {"f:spec": {"f:nodeSelector": {".": {}, "f:pool": {}}}}}}}})
    applied = _entry("raykube-operator", "Apply", {"f:spec": {"f:entrypoint": {}}},
                     time="2026-12-06T04:01:00Z")
    patch = _entry("raykube-operator", "Update", {"f:spec": {"f:suspend": {}}},
                   time="2026-12-06T04:02:00Z")
    kuberay = _entry("kuberay-operator", "Update", {"f:spec": {"f:entrypoint": {}}})
    status = _entry("raykube-operator", "Update", {"f:status": {}}, subresource="status")
    old_version = _entry("OpenAPI-Generator", "Update", {"f:spec": {}}, api_version="ray.io/v1alpha1")
    moved = applied_ownership([create, applied, kuberay, patch, status, old_version], V)
    assert moved is not None
    assert moved[:3] == [kuberay, status, old_version]  # not the operator's, or not ours to fold
    assert moved[3] == {
        "manager": "raykube-operator", "operation": "Apply", "apiVersion": V,
        "time": "2026-12-06T04:02:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:entrypoint": {}, "f:suspend": {}, "f:rayClusterSpec": {
            "f:headGroupSpec": {"f:template": {"f:spec": {
                "f:nodeSelector": {".": {}, "f:pool": {}}}}}}}}}
    assert len(moved) == 4


def test_nothing_to_fold_is_none():
    applied = _entry("raykube-operator", "Apply", {"f:spec": {}})
    assert applied_ownership([applied, _entry("kuberay-operator", "Update", {"f:spec": {}})],
                             V) is None
    assert applied_ownership([], V) is None
