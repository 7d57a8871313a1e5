"""Helpers the operator's integration tests share (test_operator*.py): TrainingRun
documents built from jobs/quickstart.yaml, a run's children, conditions and Events, and
its stored status checked against our CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k8s_schemas import validate_strict
from raykube.spec import load_yaml_documents

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "jobs" / "quickstart.yaml"
CHILD_KINDS = ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "RayJob")
LABEL = "raykube.io/trainingrun"


def good_spec(serve: bool = False, min_accuracy: float = 0.9) -> dict[str, Any]:
    """The quickstart's spec, serving as asked."""
    spec = load_yaml_documents(QUICKSTART.read_text())[0]["spec"]
    spec["serve"] = {"enabled": serve, "minAccuracy": min_accuracy}
    return spec


def tr_doc(name: str, namespace: str = "default", **kw: Any) -> dict[str, Any]:
    return {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": good_spec(**kw)}


def children(kube: Any, name: str, namespace: str = "default",
             kinds: tuple[str, ...] = CHILD_KINDS) -> list[dict[str, Any]]:
    """The objects of ``kinds`` that carry the run's label."""
    return [o for kind in kinds for o in kube.list(kind, namespace)
            if (o["metadata"].get("labels") or {}).get(LABEL) == name]


def cond(tr: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (tr.get("status") or {}).get("conditions") or []
                 if c["type"] == type_), None)


def events(kube: Any, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    return [e for e in kube.list("Event", namespace)
            if (e.get("involvedObject") or {}).get("name") == name]


def status_is_valid(tr: dict[str, Any]) -> list[str]:
    """The stored status against our CRD (the spec replaced by a valid one: it may be junk)."""
    doc = {"apiVersion": tr["apiVersion"], "kind": tr["kind"],
           "metadata": {"name": tr["metadata"]["name"], "namespace": tr["metadata"]["namespace"]},
           "spec": good_spec(), "status": tr.get("status") or {}}
    return validate_strict(doc)
