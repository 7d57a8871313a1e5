"""What the operator's ClusterRole must allow: (apiGroup, resource, verbs).

The integration tests record every request the operator makes against the emulator and
check it stays within this table; the k8s manifests' ClusterRole must cover it.
"""

from __future__ import annotations

PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    ("raykube.io", "trainingruns"): frozenset({"get", "list", "watch", "patch"}),
    ("raykube.io", "trainingruns/status"): frozenset({"get", "patch"}),
    # never called: the OwnerReferencesPermissionEnforcement admission plugin checks it
    # when a child's ownerReference sets blockOwnerDeletion
    ("raykube.io", "trainingruns/finalizers"): frozenset({"update"}),
    ("ray.io", "rayjobs"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("ray.io", "rayservices"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    # read when a running job's head pod is deleted: alone, or with its whole RayCluster
    # (which KubeRay recreates under the same name: the uid tells); deleted when KubeRay
    # failed a RayJob for its deadline but left its job running. Optional
    # (preflight.OPTIONAL, which says what each verb's absence costs).
    ("ray.io", "rayclusters"): frozenset({"get", "delete"}),
    # read before a RayJob is created: KubeRay takes a Job of its name as its submitter,
    # whoever owns it, and a deleted RayJob's may not be collected yet. Optional too.
    ("batch", "jobs"): frozenset({"get"}),
    # delete: never called; OwnerReferencesPermissionEnforcement requires it to set an
    # ownerReference on an existing object (adopting a same-named orphan). list/watch:
    # those labelled as a run's, to apply one again when it is deleted behind our back.
    ("", "configmaps"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("", "serviceaccounts"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("rbac.authorization.k8s.io", "roles"):
        frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("rbac.authorization.k8s.io", "rolebindings"):
        frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("", "events"): frozenset({"create"}),
    # watched (label raykube.io/trainingrun) to say why a run's Ray pods do not start
    ("", "pods"): frozenset({"list", "watch"}),
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
    # raykube_operator.preflight, once at start: who am I, and may I do all of the above?
    ("authentication.k8s.io", "selfsubjectreviews"): frozenset({"create"}),
    ("authorization.k8s.io", "selfsubjectaccessreviews"): frozenset({"create"}),
    ("", "namespaces"): frozenset({"list", "watch"}),
}
"""Operator needs ``escalate``/``bind``-free RBAC: the rendered Role grants only
get/patch on ``trainingruns/status``, which the operator itself holds."""


def allowed(group: str, resource: str, verb: str) -> bool:
    return verb in PERMISSIONS.get((group, resource), frozenset())
