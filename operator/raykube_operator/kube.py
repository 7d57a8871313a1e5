"""The operator's only Kubernetes I/O: a tiny JSON-over-REST client for any kind.

Built on the official client's ``ApiClient`` (kubeconfig / in-cluster auth, TLS), but
talking plain dicts: the rendered objects are dicts, and the typed models of the
generated client would add nothing but conversions. Errors come back as
``ApiError(status, reason, message)``; ``transient`` says whether a retry can help.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import kubernetes
import urllib3

log = logging.getLogger(__name__)

TRANSIENT = {409, 429, 500, 502, 503, 504}
FIELD_MANAGER = "raykube-operator"
"""409 here means a write conflict (optimistic locking), not AlreadyExists on create."""
CLIENT_MANAGER = "OpenAPI-Generator"
"""The field manager the API server names for a create or patch from this client without
``fieldManager`` (the Python client's User-Agent): every create and merge patch of an
operator before ``create`` and ``patch`` named ``FIELD_MANAGER``."""


class ApiError(Exception):
    def __init__(self, status: int, reason: str = "", message: str = ""):
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}".strip())

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT or self.status == 0


def load_api_client(pool_size: int | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.

    ``pool_size``: HTTP connections kept to the API server, one per handler thread
    (the client's default is 5 per CPU: with 32 threads on 2 CPUs, urllib3 warned
    "Connection pool is full, discarding connection" ~80 times under load and
    reconnected each time)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    if pool_size:
        config.connection_pool_maxsize = max(config.connection_pool_maxsize or 0, pool_size)
    return kubernetes.client.ApiClient(config)


def split_api_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


def resource_path(api_version: str, plural: str, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    group, version = split_api_version(api_version)
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


# Plurals of the kinds the operator writes (render output) or reads.
PLURALS: dict[str, str] = {
    "TrainingRun": "trainingruns",
    "RayJob": "rayjobs",
    "RayService": "rayservices",
    "RayCluster": "rayclusters",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Event": "events",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Pod": "pods",
    "Job": "jobs",
}


def plural_of(kind: str) -> str:
    try:
        return PLURALS[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage kind {kind!r}") from None


class Kube:
    """Create/get/patch/delete plain-dict objects."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None,
                 timeout: float = 30.0, pool_size: int | None = None):
        self.api = api_client or load_api_client(pool_size)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            m, url, hdrs, data, _ = self.api.param_serialize(
                method, path, header_params=headers, body=body, auth_settings=["BearerToken"])
            resp = self.api.call_api(m, url, header_params=hdrs, body=data,
                                     _request_timeout=self.timeout)
            raw = resp.read()
        except kubernetes.client.ApiException as exc:
            raise ApiError(int(exc.status or 0), str(exc.reason or ""), str(exc.body or "")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # connection refused, reset, timeouts: the API server may come back. Anything
            # else (a programming error, a client without param_serialize) is not an API
            # failure and must not be retried in silence: it propagates.
            raise ApiError(0, type(exc).__name__, str(exc)) from exc
        text = raw.decode("utf-8", "replace") if raw else ""
        if not 200 <= resp.status < 300:
            reason, message = "", text[:500]
            try:
                doc = json.loads(text)
                reason, message = doc.get("reason", ""), doc.get("message", message)
            except ValueError:
                pass
            raise ApiError(resp.status, reason, message)
        return json.loads(text) if text else {}

    # ----------------------------------------------------------------- object verbs
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(api_version, plural_of(kind), namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str,
             label_selector: str = "") -> list[dict[str, Any]]:
        """The namespace's objects of ``kind`` that ``label_selector`` selects."""
        path = resource_path(api_version, plural_of(kind), namespace)
        if label_selector:
            path += "?labelSelector=" + urllib.parse.quote(label_selector)
        return self.request("GET", path).get("items") or []

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], plural_of(obj["kind"]), meta.get("namespace"))
        return self.request("POST", f"{path}?fieldManager={FIELD_MANAGER}", obj)

    def own_as_applied(self, obj: dict[str, Any], attempts: int = 3) -> dict[str, Any]:
        """Make the fields this operator wrote with a create or a patch (``Update``
        entries of ``managedFields``) its server-side apply's own, as ``kubectl apply
        --server-side`` upgrades what client-side apply wrote (Kubernetes' csaupgrade),
        so that the next ``apply`` removes what dropped out of the render. Without it a
        field the create wrote stays owned by that create whatever the applies say (a
        suspended RayJob kept the head's ``nodeSelector`` the edit had removed, and its
        head stayed unschedulable). ``obj``: the object as last read; returns it as
        written (unchanged when there is nothing to move).

        The JSON Patch tests ``resourceVersion``, so that entries another manager wrote
        meanwhile (KubeRay updates its RayJobs all the time) are never replaced by a
        stale list; a failed test (the API server answers 422) reads the object again.
        Still changing after ``attempts``: a 409, which the caller's reconcile retries
        (never the 422, which would read as a render the API server refused)."""
        for _ in range(attempts):
            entries = (obj.get("metadata") or {}).get("managedFields") or []
            moved = applied_ownership(entries, obj.get("apiVersion", ""))
            if moved is None:
                return obj
            meta = obj["metadata"]
            ref = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
            try:
                return self.json_patch(*ref, [
                    {"op": "test", "path": "/metadata/resourceVersion",
                     "value": meta["resourceVersion"]},
                    {"op": "replace", "path": "/metadata/managedFields", "value": moved}])
            except ApiError as exc:
                if exc.status not in (409, 422):
                    raise
            fresh = self.get(*ref)
            if fresh is None:
                raise ApiError(404, "NotFound", f"{ref[1]} {ref[3]} is gone")
            obj = fresh
        raise ApiError(409, "Conflict", f"{obj['kind']} {obj['metadata']['name']} kept "
                       "changing while its field ownership was moved to the apply")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (create or update) as the one field manager ``raykube-operator``.

        Fields that drop out of the render are removed from the live object (a merge patch
        would leave them); ``force`` takes over fields another manager wrote."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], plural_of(obj["kind"]), meta.get("namespace"),
                             meta["name"])
        body = {k: v for k, v in obj.items() if k != "status"}
        return self.request("PATCH", f"{path}?fieldManager={FIELD_MANAGER}&force=true",
                            json.dumps(body), "application/apply-patch+yaml")

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """JSON merge patch (RFC 7386): ``None`` deletes a key, lists are replaced."""
        path = resource_path(api_version, plural_of(kind), namespace, name, subresource)
        return self.request("PATCH", f"{path}?fieldManager={FIELD_MANAGER}", patch,
                            "application/merge-patch+json")

    def json_patch(self, api_version: str, kind: str, namespace: str, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON Patch (RFC 6902): ``remove`` takes a field whatever manager owns it."""
        path = resource_path(api_version, plural_of(kind), namespace, name)
        return self.request("PATCH", path, ops, "application/json-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               propagation: str = "Background") -> bool:
        """True when deleted, False when it was already gone. ``Foreground``: the object
        stays (``deletionTimestamp`` set) until the garbage collector has deleted its
        dependents that block their owner's deletion."""
        path = resource_path(api_version, plural_of(kind), namespace, name)
        try:
            self.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "propagationPolicy": propagation})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``fieldsV1`` sets (nested maps of ``f:``/``k:``/``v:`` keys) as one."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _union(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def applied_ownership(entries: list[dict[str, Any]], api_version: str,
                      manager: str = FIELD_MANAGER,
                      others: tuple[str, ...] = (CLIENT_MANAGER,)) -> list[dict[str, Any]] | None:
    """``managedFields`` with the operator's ``Update`` entries (``manager``'s, and
    ``others``: what its creates and patches were called before they named it) folded
    into its one ``Apply`` entry, for ``api_version``'s fields and not a subresource's
    (the status); None when there are none to fold."""
    def main(e: dict[str, Any]) -> bool:
        return (not e.get("subresource") and e.get("apiVersion") == api_version
                and e.get("fieldsType") == "FieldsV1")
    updates = [e for e in entries if main(e) and e.get("operation") == "Update"
               and e.get("manager") in (manager, *others)]
    if not updates:
        return None
    applied = [e for e in entries if main(e) and e.get("operation") == "Apply"
               and e.get("manager") == manager]
    fields: dict[str, Any] = {}
    for e in [*applied, *updates]:
        fields = _union(fields, e.get("fieldsV1") or {})
    last = max((e.get("time") or "" for e in [*applied, *updates]), default="")
    entry = {"manager": manager, "operation": "Apply", "apiVersion": api_version,
             **({"time": last} if last else {}), "fieldsType": "FieldsV1", "fieldsV1": fields}
    gone = [*applied, *updates]
    return [e for e in entries if not any(e is g for g in gone)] + [entry]
