"""raykube's pod-field checks (``raykube.k8s_rules``) agree with the real API server.

A RayJob's pod template is only typed by KubeRay's CRD, so a toleration or node selector
that a Pod refuses is accepted on the RayJob and only fails when KubeRay creates the
pods. ``raykube validate`` and the operator refuse those specs up front; here each case
is sent both ways: as a Pod (dry run) to the real kube-apiserver, which must refuse it
exactly when raykube does, and, for the refused ones, inside the rendered RayJob, which
the API server accepts (the gap the check closes).
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import copy
from typing import Any

import pytest

from raykube.render import RenderConfig, render_rayjob
from raykube.spec import (
    InvalidTrainingRun,
    Metadata,
    TrainingRun,
    TrainingRunSpec,
    parse_spec,
)
from raykube.testing.fixtures import kube  # noqa: F401

SPEC = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}

# (tolerations, nodeSelector): valid and invalid, each by one rule of ValidateTolerations
# or of label keys / values
CASES: list[tuple[str, list[dict[str, Any]], dict[str, str]]] = [
    ("equal-ok", [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}], {}),
    ("exists-all-ok", [{"operator": "Exists"}], {}),
    ("noexecute-seconds-ok", [{"key": "example.com/spot", "operator": "Exists",
                               "effect": "NoExecute", "tolerationSeconds": 30}], {}),
    ("exists-with-value", [{"key": "gpu", "operator": "Exists", "value": "a100"}], {}),
    ("seconds-without-noexecute", [{"key": "gpu", "operator": "Equal", "value": "x",
                                    "effect": "NoSchedule", "tolerationSeconds": 5}], {}),
    ("empty-key-equal", [{"operator": "Equal", "value": "x"}], {}),
    ("empty-key-no-operator", [{"effect": "NoSchedule"}], {}),
    ("key-with-space", [{"key": "my taint", "operator": "Exists"}], {}),
    ("value-with-slash", [{"key": "gpu", "operator": "Equal", "value": "a/b"}], {}),
    ("selector-ok", [], {"kubernetes.io/arch": "amd64", "pool": ""}),
    ("selector-key-space", [], {"node pool": "a"}),
    ("selector-key-upper-prefix", [], {"Example.com/pool": "a"}),
    ("selector-value-long", [], {"pool": "a" * 64}),
    ("selector-value-dash-end", [], {"pool": "gpu-"}),
]


def _pod(tolerations: list[dict[str, Any]], selector: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if tolerations:
        spec["tolerations"] = tolerations
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rules-probe"},
            "spec": spec}


@pytest.mark.parametrize("name, tolerations, selector", CASES, ids=[c[0] for c in CASES])
def test_raykube_refuses_what_a_pod_refuses(kube, name, tolerations, selector):
    doc = copy.deepcopy(SPEC)
    doc["scaling"] = {"tolerations": tolerations} if tolerations else {}
    if selector:
        doc["scaling"]["nodeSelector"] = selector
    try:
        parse_spec(doc, name="rules", namespace=kube.namespace)
        ours = []
    except InvalidTrainingRun as exc:
        ours = exc.errors

    resp = kube.http.post(kube.path("Pod"), params={"dryRun": "All"},
                          json=_pod(tolerations, selector))
    assert resp.status_code in (201, 422), resp.text
    refused = resp.status_code == 422
    assert bool(ours) == refused, (name, [str(e) for e in ours], resp.text)
    if refused:
        # the message names the field as the API server's does
        field = "tolerations" if tolerations else "nodeSelector"
        assert all(f"spec.scaling.{field}[" in e.path for e in ours), ours
        assert f"spec.{field}" in resp.json()["message"], resp.text
        # without the check the RayJob would be accepted and its pods never created
        run = TrainingRun.model_construct(
            api_version="raykube.io/v1alpha1", kind="TrainingRun",
            metadata=Metadata(name="rules", namespace=kube.namespace),
            spec=TrainingRunSpec.model_validate(doc), status=None)
        rayjob = render_rayjob(run, RenderConfig())
        resp = kube.http.post(kube.path("RayJob"), params={"dryRun": "All"}, json=rayjob)
        assert resp.status_code == 201, resp.text
