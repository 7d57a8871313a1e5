"""Field ownership on the real API server: what the operator's create and merge patches
wrote stays on an object whatever its server-side applies say, until
``Kube.own_as_applied`` makes those fields the apply's (Kubernetes' csaupgrade). Found on a
suspended RayJob whose head ``nodeSelector`` an edit had removed
(test_operator_kuberay.py::test_the_head_is_placed_by_its_own_fields); shown here on a
ConfigMap, the same machinery in the API server."""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import kubernetes
import pytest

from raykube.testing.fixtures import kube  # noqa: F401
from raykube_operator.kube import ApiError, Kube


def _cm(ns: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "owned", "namespace": ns}, "data": data}


def test_fields_the_create_wrote_leave_with_the_apply_once_owned_as_applied(kube):
    ns = kube.namespace
    ops = Kube(kubernetes.config.new_client_from_config(config_file=str(kube.cp.kubeconfig)))
    ops.create(_cm(ns, {"a": "1", "b": "2"}))
    ops.patch("v1", "ConfigMap", ns, "owned", {"data": {"c": "3"}})
    # the apply alone: b (the create's) and c (the patch's) stay
    ops.apply(_cm(ns, {"a": "1"}))
    assert ops.get("v1", "ConfigMap", ns, "owned")["data"] == {"a": "1", "b": "2", "c": "3"}

    # a stale read (the object changed since): the patch's resourceVersion test fails
    # with 422 and the object is read again, not reported as refused
    stale = ops.get("v1", "ConfigMap", ns, "owned")
    ops.patch("v1", "ConfigMap", ns, "owned", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ApiError) as refused:  # one try only: a 409 the reconcile retries
        ops.own_as_applied(stale, attempts=1)
    assert refused.value.status == 409
    written = ops.own_as_applied(stale)
    managers = {(m["manager"], m["operation"]) for m in written["metadata"]["managedFields"]}
    assert managers == {("raykube-operator", "Apply")}, written["metadata"]["managedFields"]
    ops.apply(_cm(ns, {"a": "1"}))
    live = ops.get("v1", "ConfigMap", ns, "owned")
    assert live["data"] == {"a": "1"}
    assert "x" not in (live["metadata"].get("labels") or {})  # the patch's label: ours too
    assert ops.own_as_applied(live) is live  # nothing left to move: no request


def test_a_child_the_first_sight_created_loses_what_its_next_render_drops(kube):
    """``apply_child`` over a ConfigMap the operator's first sight made with a plain
    create (``_first_sight``): a key and a label the new render leaves out leave the live
    object; before ``_apply_over`` they stayed, owned by the create."""
    from raykube_operator.handlers import apply_child

    ns = kube.namespace
    ops = Kube(kubernetes.config.new_client_from_config(config_file=str(kube.cp.kubeconfig)))
    first = _cm(ns, {"spec.yaml": "a", "old.yaml": "b"})
    first["metadata"]["name"] = "first-sight"
    first["metadata"]["labels"] = {"raykube.io/old": "x"}
    ops.create(first)
    second = _cm(ns, {"spec.yaml": "c"})
    second["metadata"]["name"] = "first-sight"
    assert apply_child(ops, second) == "updated"
    live = ops.get("v1", "ConfigMap", ns, "first-sight")
    assert live["data"] == {"spec.yaml": "c"}
    assert "raykube.io/old" not in (live["metadata"].get("labels") or {})
    assert apply_child(ops, second, live) == "unchanged"
