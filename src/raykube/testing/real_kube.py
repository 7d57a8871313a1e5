"""Test clients for the real control plane (``raykube.testing.control_plane``).

``RealKube`` offers the small synchronous API the operator tests were written against
(create/get/list/patch/delete and waits, see ``raykube.testing.kube.KubeCluster``), bound
to one namespace of a shared control plane: each test module gets its own namespace, so
modules share one API server without seeing each other. "default" in a call means that
namespace.

``RealOperator`` runs the unmodified operator (``python -m raykube_operator``) against
it, authenticated as the ``raykube-operator`` ServiceAccount of ``k8s/base`` with a token
from the TokenRequest API: the RBAC we ship is the RBAC the tests run under. Every
request it makes is read back from the API server's audit log (``operator_calls``).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from raykube.ports import free_port
from raykube.testing.control_plane import ControlPlane
from raykube.testing.kube import (
    KIND_TO_RESOURCE,
    RESOURCES,
    Call,
    KubeError,
    OperatorLifecycle,
    Waiting,
)

OPERATOR_SA = ("raykube-system", "raykube-operator")
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_SA[0]}:{OPERATOR_SA[1]}"
TEST_AGENT = "raykube-tests"

_EXTRA = {  # kinds the tests read besides the operator's own
    "Pod": ("v1", "pods", True),
    "Service": ("v1", "services", True),
    "Job": ("batch/v1", "jobs", True),
    "Node": ("v1", "nodes", False),
}


def _resource(kind: str) -> tuple[str, str, bool]:
    if kind in _EXTRA:
        return _EXTRA[kind]
    api_version, plural = KIND_TO_RESOURCE[kind]
    return api_version, plural, RESOURCES[(api_version, plural)][1]


def bound_claim(namespace: str, claim: str, volume: str) -> list[dict[str, Any]]:
    """A ReadWriteMany claim and the hostPath PersistentVolume it is bound to (the control
    plane has no provisioner; the path is never used: kwok runs no container)."""
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "",
                  "claimRef": {"namespace": namespace, "name": claim},
                  "hostPath": {"path": f"/var/local/raykube/{volume}"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]


class RealKube(Waiting):
    """A namespace of the real API server, as an admin client."""

    wait_timeout = 30.0

    def __init__(self, cp: ControlPlane, namespace: str, *, pvc: bool = True):
        self.cp = cp
        self.namespace = namespace
        self.other_namespace = f"{namespace}-b"
        """A second namespace the module's operator also watches (same-name tests)."""
        self.kubeconfig = cp.kubeconfig
        self.http = httpx.Client(
            base_url=cp.server, timeout=30, verify=str(cp.workdir / "pki" / "ca.crt"),
            headers={"Authorization": f"Bearer {cp.tokens['admin']}", "User-Agent": TEST_AGENT})
        self.created_at = time.time()
        self.ensure_namespace(namespace, pvc=pvc)

    def close(self) -> None:
        self.http.close()

    def ensure_namespace(self, namespace: str, *, pvc: bool = True) -> None:
        """The namespace, and (``pvc``) the ``raykube-storage`` claim the rendered pods
        mount, bound to a hostPath volume of its own (pods stay Pending otherwise)."""
        objs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": namespace}}]
        if pvc and namespace != "default":
            objs += bound_claim(namespace, "raykube-storage", f"raykube-storage-{namespace}")
        self.cp.apply_objects(objs)

    def delete_namespace(self) -> None:
        """Both namespaces and their volumes (the garbage collector takes the rest)."""
        for ns in (self.namespace, self.other_namespace):
            self.http.delete(f"/api/v1/namespaces/{ns}")
            self.http.delete(f"/api/v1/persistentvolumes/raykube-storage-{ns}")

    # ------------------------------------------------------------------- paths
    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace in (None, "default") else namespace

    def path(self, kind: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        api_version, plural, namespaced = _resource(kind)
        p = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            p += f"/namespaces/{self._ns(namespace)}"
        p += f"/{plural}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    # ------------------------------------------------------------------ client
    @staticmethod
    def _check(resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise KubeError(resp.status_code, resp.text[:500])
        return resp.json() if resp.content else {}

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = self._ns(meta.get("namespace"))
        if meta["namespace"] != self.namespace:
            self.ensure_namespace(meta["namespace"])
        return self._check(self.http.post(self.path(obj["kind"], meta["namespace"]), json=obj))

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        resp = self.http.get(self.path(kind, namespace, name))
        if resp.status_code == 404:
            return None
        return self._check(resp)

    def list(self, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        items = self._check(self.http.get(self.path(kind, namespace), params=params))["items"]
        api_version = _resource(kind)[0]
        for item in items:  # a real list leaves them out of its items
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        return items

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str = "default",
              subresource: str | None = None) -> dict[str, Any]:
        return self._check(self.http.patch(
            self.path(kind, namespace, name, subresource), json=patch,
            headers={"Content-Type": "application/merge-patch+json"}))

    def patch_status(self, kind: str, name: str, status: dict[str, Any],
                     namespace: str = "default") -> dict[str, Any]:
        return self.patch(kind, name, {"status": status}, namespace, subresource="status")

    def delete(self, kind: str, name: str, namespace: str = "default",
               propagation: str = "Background") -> bool:
        """``propagation``: Background (the garbage collector deletes the dependents),
        Foreground, or Orphan (they stay, without the owner reference)."""
        resp = self.http.request("DELETE", self.path(kind, namespace, name),
                                 json={"propagationPolicy": propagation})
        if resp.status_code == 404:
            return False
        self._check(resp)
        return True

    # ------------------------------------------------------------ request log
    def calls(self, user: str | None = OPERATOR_USER, since: float = 0.0) -> list[Call]:
        """Requests of ``user`` (the operator by default) from the audit log, in this
        module's namespaces or cluster-scoped, made after ``since`` (epoch seconds)."""
        out = []
        for ev in self.cp.audit_events(user):
            ref = ev.get("objectRef") or {}
            if not ref.get("resource"):
                continue
            if _epoch(ev.get("requestReceivedTimestamp", "")) < since:
                continue
            out.append(Call(verb=ev.get("verb", ""), group=ref.get("apiGroup", ""),
                            plural=ref["resource"], subresource=ref.get("subresource"),
                            namespace=ref.get("namespace"), name=ref.get("name"),
                            user_agent=ev.get("userAgent", ""),
                            data=ev.get("requestObject")))
        return out


    def operator_calls(self) -> list[Call]:
        """The operator's requests since this client was made, in its namespace(s) or
        cluster-scoped."""
        mine = (None, self.namespace, self.other_namespace)
        return [c for c in self.calls(since=self.created_at) if c.namespace in mine]

    def operator_permissions(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) triples the operator used."""
        return {(c.group, c.resource, c.verb) for c in self.operator_calls()}


def _epoch(ts: str) -> float:
    from datetime import datetime
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


@dataclass
class RealOperator(OperatorLifecycle):
    """``python -m raykube_operator`` as the operator's ServiceAccount, scoped to the
    module's namespace(s)."""

    kube: RealKube
    namespaces: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log_count: int = 0

    @property
    def workdir(self) -> Path:
        d = self.kube.cp.workdir / "operators" / self.kube.namespace
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self._log_count}.log"

    def start(self, wait: bool = True, timeout: float = 90.0) -> RealOperator:
        if not self.started_at:
            self.started_at = time.time()
        self._log_count += 1
        kubeconfig = self.kube.cp.kubeconfig_for(*reversed(OPERATOR_SA),
                                                 self.workdir / "kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "RAYKUBE_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
               "RAYKUBE_RETRY_DELAY": "0.5", "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        scope: list[str] = []
        for ns in self.namespaces or (self.kube.namespace, self.kube.other_namespace):
            scope += ["-n", ns]
        since = time.time() - 0.5
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "raykube_operator", *scope],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.kube.wait_for(lambda: self._watching(since) or self._dead(), timeout,
                               what="the operator to watch TrainingRuns")
            if self._dead():
                raise RuntimeError(f"operator exited:\n{self.logs()}")
        return self

    def _watching(self, since: float) -> bool:
        return any(c.verb == "watch" and c.plural == "trainingruns"
                   for c in self.kube.calls(since=since))

    def calls(self) -> list[Call]:
        """Every request this operator (all its restarts) made."""
        return self.kube.calls(since=self.started_at)

