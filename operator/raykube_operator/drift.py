"""Whether a child still holds what the operator rendered for it (pure).

A hand edit of a RayJob (its entrypoint, ``backoffLimit``, a worker group's replicas, its
``suspend``) or of the spec ConfigMap the driver reads changes what runs without changing
the TrainingRun: before this, such an edit stayed for good (the operator only compared its
own spec-hash annotation, which an edit leaves alone), and a run could end ``Failed
after 8 attempts`` while its spec said ``maxRetries: 100``. Level-triggered, as
controller-runtime's reconcilers are: the fields the render sets are compared with the
live object, and a difference is applied again.

Only the fields the render sets are compared: what the API server, KubeRay's CRD defaults
or other controllers add beside them (``status``, defaulted fields, ``metadata``) is not
ours to put back.
"""

from __future__ import annotations

from typing import Any

from raykube.k8s_rules import quantity_bytes

NOT_COMPARED = frozenset({"apiVersion", "kind", "metadata", "status"})
"""Top-level keys never compared: identity, and what the API server and KubeRay own."""


def _empty(value: Any) -> bool:
    """A rendered value that may come back absent: an empty map or list, or a zero value
    (KubeRay's controller writes the whole RayJob back when it adds its finalizer, from
    Go types whose ``omitempty`` drops ``false``, ``0`` and ``""``)."""
    return value is None or value in ({}, [], "") or value is False or (
        type(value) is int and value == 0)


def _same_quantity(cur: Any, want: Any) -> bool:
    """``"0.5"`` and ``"500m"``, ``"1Gi"`` and ``"1073741824"``: one quantity, written as
    the API server's and KubeRay's Go types put it back (canonical form)."""
    if not isinstance(cur, str | int | float) or not isinstance(want, str | int | float):
        return False
    a, b = quantity_bytes(str(cur)), quantity_bytes(str(want))
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1)


def drifted(current: dict[str, Any], desired: dict[str, Any],
            ignore: frozenset[str] = frozenset()) -> list[str]:
    """Paths (``spec.entrypoint``, ``spec.rayClusterSpec.workerGroupSpecs[0].replicas``)
    where ``current`` no longer holds what ``desired`` sets. Maps are compared key by key
    for the keys ``desired`` has; lists item by item and by length (every list the render
    sets is atomic: a server-side apply replaces it whole). ``ignore``: paths whose
    difference is no drift (e.g. fields another decision owns)."""
    out: list[str] = []

    def walk(cur: Any, want: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(want, dict):
            if not isinstance(cur, dict):
                if not (_empty(want) and cur is None):
                    out.append(path)
                return
            for key, value in want.items():
                sub = f"{path}.{key}"
                if key not in cur:
                    if not _empty(value) and sub not in ignore:
                        out.append(sub)
                    continue
                walk(cur[key], value, sub)
        elif isinstance(want, list):
            if not isinstance(cur, list) or len(cur) != len(want):
                if not (_empty(want) and cur is None):
                    out.append(path)
                return
            for i, (c, w) in enumerate(zip(cur, want, strict=True)):
                walk(c, w, f"{path}[{i}]")
        elif (cur != want or isinstance(cur, bool) != isinstance(want, bool)) and not (
                ".resources." in path and _same_quantity(cur, want)):
            out.append(path)

    for key, value in desired.items():
        if key in NOT_COMPARED:
            continue
        if key not in current:
            if not _empty(value) and key not in ignore:
                out.append(key)
            continue
        walk(current[key], value, key)
    return out


def differing_paths(old: Any, new: Any, path: str) -> list[str]:
    """The dotted paths of the leaves in which two plain documents differ (a list is one
    leaf; a key on one side only names its own leaves)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [p for k in dict.fromkeys([*old, *new])
                for p in differing_paths(old.get(k), new.get(k), f"{path}.{k}")]
    if old == new:
        return []
    if isinstance(old, dict) or isinstance(new, dict):
        return differing_paths(old if isinstance(old, dict) else {},
                               new if isinstance(new, dict) else {}, path) or [path]
    return [path]


def summary(paths: list[str], limit: int = 4) -> str:
    """``spec.entrypoint, spec.backoffLimit`` (and how many more)."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def label_paths(obj: dict[str, Any], key: str) -> list[str]:
    """JSON Pointers (RFC 6901) of label ``key`` wherever ``obj`` carries it: its own
    ``metadata.labels`` and each pod template's (``.../template/metadata/labels``), for a
    JSON Patch that removes it. A server-side apply cannot: the label belongs to the
    field manager that wrote it (``raykube render``'s output, applied with kubectl)."""
    escaped = key.replace("~", "~0").replace("/", "~1")
    out: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            labels = (node.get("metadata") or {}).get("labels") if isinstance(
                node.get("metadata"), dict) else None
            if isinstance(labels, dict) and key in labels:
                out.append(f"{path}/metadata/labels/{escaped}")
            for k, v in node.items():
                if k != "metadata" and k != "status":
                    walk(v, f"{path}/{k.replace('~', '~0').replace('/', '~1')}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(obj, "")
    return out
