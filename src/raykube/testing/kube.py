"""A Kubernetes API emulator on real HTTP, plus the real operator in a subprocess.

Used by the operator integration tests and by the operator benchmark. Pieces:

- ``Emulator``: kmock's ``KubernetesEmulator`` extended with what kopf and our handlers
  rely on and kmock 0.8 leaves out: ``uid``, ``creationTimestamp``, ``generation``
  (bumped on spec changes) and ``resourceVersion`` on every write; the ``status``
  subresource honoured (a write to the main resource cannot change ``status``, a
  ``/status`` write changes nothing else); a ``metadata.resourceVersion`` in a patch
  is a precondition (409 Conflict when the object has moved on); and fault injection (``Fault``: answer the
  next N matching requests with 409/429/500 *before* any state changes).
- ``KubeCluster``: runs the emulator + ``kmock.Server`` on 127.0.0.1 in a background
  thread with every resource we use declared (kind, singular, namespaced, verbs and
  subresources as sets; kopf needs CRDs and namespaces declared), writes a kubeconfig,
  and offers a small synchronous HTTP client (``create/get/patch/delete/list``), waits,
  and the request log (``operator_calls()``: the (verb, resource) pairs RBAC must allow).
- ``OperatorProcess``: ``python -m raykube_operator -A`` with that KUBECONFIG.

Nothing here is a test double of *our* code: the operator runs unmodified and talks
HTTP to the emulator exactly as it would to an API server.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import httpx
import kmock
from kmock._internal import dicts as kmock_dicts
from kmock._internal import enums as kmock_enums

from raykube.ports import free_port
from raykube.run_failure import now as _now

VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

# (apiVersion, plural) -> (kind, namespaced, subresources, short names)
RESOURCES: dict[tuple[str, str], tuple[str, bool, set[str], set[str]]] = {
    ("raykube.io/v1alpha1", "trainingruns"): ("TrainingRun", True, {"status"}, {"tr"}),
    ("ray.io/v1", "rayjobs"): ("RayJob", True, {"status"}, set()),
    ("ray.io/v1", "rayservices"): ("RayService", True, {"status"}, set()),
    ("ray.io/v1", "rayclusters"): ("RayCluster", True, {"status"}, set()),
    ("v1", "configmaps"): ("ConfigMap", True, set(), {"cm"}),
    ("v1", "secrets"): ("Secret", True, set(), set()),
    ("v1", "serviceaccounts"): ("ServiceAccount", True, set(), {"sa"}),
    ("v1", "events"): ("Event", True, set(), {"ev"}),
    ("v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True, {"status"}, {"pvc"}),
    ("v1", "namespaces"): ("Namespace", False, {"status"}, {"ns"}),
    ("rbac.authorization.k8s.io/v1", "roles"): ("Role", True, set(), set()),
    ("rbac.authorization.k8s.io/v1", "rolebindings"): ("RoleBinding", True, set(), set()),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions"):
        ("CustomResourceDefinition", False, {"status"}, {"crd"}),
}
KIND_TO_RESOURCE = {kind: (av, plural) for (av, plural), (kind, *_rest) in RESOURCES.items()}



def _api_version(res: Any) -> str:
    return f"{res.group}/{res.version}" if res.group else res.version


@dataclass
class Fault:
    """Answer the next ``times`` requests matching (verb, plural[, subresource]) with ``status``.

    ``verb`` is a Kubernetes verb: create, get, list, watch, patch, delete.
    """

    verb: str
    plural: str
    status: int
    times: int = 1
    subresource: str | None = None
    hits: int = 0

    def matches(self, verb: str, plural: str | None, subresource: str | None) -> bool:
        return (self.times > self.hits and verb == self.verb and plural == self.plural
                and (self.subresource is None or subresource == self.subresource))


_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def _verb(request: Any) -> str | None:
    action = request.action
    if action is None:
        return {"PUT": "update"}.get(str(getattr(request.method, "value", request.method)).upper())
    return {
        kmock_enums.action.LIST: "list", kmock_enums.action.WATCH: "watch",
        kmock_enums.action.FETCH: "get", kmock_enums.action.CREATE: "create",
        kmock_enums.action.UPDATE: "patch", kmock_enums.action.DELETE: "delete",
    }.get(action)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator + server-set metadata, the status subresource and fault injection."""

    faults: list[Fault] = attrs.field(factory=list)
    log: list[Any] = attrs.field(factory=list)
    """Every request, in arrival order (kmock's own log is trimmed: see ``_handle``)."""
    _rv: Any = attrs.field(factory=lambda: itertools.count(1))
    _fault_lock: Any = attrs.field(factory=threading.Lock)
    _done: set[int] = attrs.field(factory=set)

    def _status_subresource(self, res: Any) -> bool:
        key = (_api_version(res), res.plural)
        return key in RESOURCES and "status" in RESOURCES[key][2]

    async def _handle(self, request: Any) -> Any:
        # kmock matches each request by scanning its whole request log (O(n) per request:
        # 70 ms per GET after 1,000 requests, and a test module makes thousands). Keep
        # only requests still being served there (no await between kmock's append and
        # here, so this one stays); the full history lives in ``log``.
        self.log.append(request)
        if len(self._requests) > 16:
            done = self._done
            self._requests[:] = [r for r in self._requests if id(r) not in done]
            done.clear()
        try:
            return await self._serve(request)
        finally:
            self._done.add(id(request))

    async def _serve(self, request: Any) -> Any:
        self._server_side_apply(request)
        if request.resource is not None and request.resource.plural:
            verb = _verb(request)
            with self._fault_lock:
                for fault in self.faults:
                    if verb and fault.matches(verb, request.resource.plural, request.subresource):
                        fault.hits += 1
                        raise kmock.KubernetesError(
                            status=fault.status, reason=_REASONS.get(fault.status, "Error"),
                            message=f"injected fault {fault.status} for {verb} "
                            f"{request.resource.plural}", details={"retryAfterSeconds": 0})
            self._stamp(request)
        return await super()._handle(request)

    def _server_side_apply(self, request: Any) -> None:
        """Server-side apply, as far as the operator needs it: an apply of a missing object
        creates it; of an existing one, kmock merges it (a real API server also removes
        the fields the applier no longer sets: the real control plane tests that)."""
        ctype = str(request.headers.get("Content-Type", ""))
        if request.action != kmock_enums.action.UPDATE or "apply-patch" not in ctype:
            return
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            object.__setattr__(request, "action", kmock_enums.action.CREATE)

    def _stamp(self, request: Any) -> None:
        """Set what a real API server sets; enforce the status subresource."""
        data = request.data
        if not isinstance(data, dict):
            return
        res = request.resource
        has_status = self._status_subresource(res)
        if request.action == kmock_enums.action.CREATE:
            meta = data.setdefault("metadata", {})
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(self._rv))
            if has_status:
                data.pop("status", None)
        elif request.action == kmock_enums.action.UPDATE and request.name:
            key = (res, request.namespace, request.name)
            current = self._objects[key].raw if key in self._objects else None
            wanted = (data.get("metadata") or {}).get("resourceVersion")
            have = ((current or {}).get("metadata") or {}).get("resourceVersion")
            if wanted and current is not None and str(wanted) != str(have):
                # a resourceVersion in a patch is a precondition (optimistic locking)
                raise kmock.KubernetesError(
                    status=409, reason="Conflict", message=f"the object has been modified "
                    f"(resourceVersion {wanted} != {have}); please apply your changes to "
                    "the latest version and try again")
            if has_status and request.subresource == "status":
                for k in [k for k in data if k not in ("status", "metadata")]:
                    data.pop(k)
                meta = data.get("metadata") or {}
                data["metadata"] = {k: v for k, v in meta.items() if k == "resourceVersion"}
            elif has_status and request.subresource is None:
                data.pop("status", None)
            meta = data.setdefault("metadata", {})
            if meta is None:
                meta = data["metadata"] = {}
            meta.pop("uid", None)
            meta.pop("generation", None)
            if current is not None and "spec" in data and request.subresource is None:
                merged = kmock_dicts.merge_patch_dict(current, data)
                if merged.get("spec") != current.get("spec"):
                    meta["generation"] = int((current.get("metadata") or {}).get("generation") or 1) + 1
            meta["resourceVersion"] = str(next(self._rv))


@dataclass
class Call:
    """One request the emulator received."""

    verb: str
    group: str
    plural: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user_agent: str
    data: Any = None

    @property
    def resource(self) -> str:
        return self.plural + (f"/{self.subresource}" if self.subresource else "")


TEST_AGENT = "raykube-tests"


class Waiting:
    """Polling helpers shared by the test clients (``KubeCluster`` here, ``RealKube`` on
    the real control plane); they need only ``get(kind, name, namespace)``."""

    wait_timeout: float = 20.0

    def _ns(self, namespace: str | None) -> str | None:
        return namespace

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None,
                 interval: float = 0.1, what: str = "condition") -> Any:
        """Poll until ``predicate()`` is truthy; return its value (TimeoutError otherwise)."""
        timeout = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except (KeyError, TypeError, IndexError, AttributeError) as exc:
                last_exc = exc
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                           + (f" (last error: {last_exc!r})" if last_exc else ""))

    def wait_object(self, kind: str, name: str, namespace: str = "default",
                    where: Callable[[dict[str, Any]], Any] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(kind, name, namespace)  # type: ignore[attr-defined]
            return obj if obj is not None and (where is None or where(obj)) else None
        return self.wait_for(check, timeout, what=f"{kind} {self._ns(namespace)}/{name}")

    def wait_gone(self, kind: str, name: str, namespace: str = "default",
                  timeout: float = 60.0) -> None:
        self.wait_for(lambda: self.get(kind, name, namespace) is None,  # type: ignore[attr-defined]
                      timeout, what=f"{kind} {self._ns(namespace)}/{name} to be deleted")

    def wait_condition(self, name: str, type_: str, status: str = "True",
                       namespace: str = "default", reason: str | None = None,
                       timeout: float | None = None) -> dict[str, Any]:
        """Wait for a TrainingRun condition; returns the TrainingRun."""
        def ok(tr: dict[str, Any]) -> bool:
            return any(c.get("type") == type_ and c.get("status") == status
                       and (reason is None or c.get("reason") == reason)
                       for c in (tr.get("status") or {}).get("conditions") or [])
        return self.wait_object("TrainingRun", name, namespace, ok, timeout)


class KubeCluster(Waiting):
    """The emulator on 127.0.0.1 (background thread) + a kubeconfig + an HTTP client."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator: Emulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.http: httpx.Client | None = None
        self.kubeconfig = self.workdir / "kubeconfig.yaml"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> KubeCluster:
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        if self._error:
            raise RuntimeError(f"kmock failed: {self._error!r}")
        self.http = httpx.Client(base_url=self.url, timeout=10,
                                 headers={"User-Agent": TEST_AGENT})
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: kmock\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: kmock\n  user:\n    token: kmock-token\n"
            "contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n"
            "    namespace: default\n"
            "current-context: kmock\n")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emu = Emulator()
        for (api_version, plural), (kind, namespaced, subs, short) in RESOURCES.items():
            emu.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=set(VERBS),
                subresources=set(subs), shortnames=set(short))
        self.emulator = emu
        async with emu, kmock.Server(emu) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------- paths
    @staticmethod
    def path(kind: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        api_version, plural = KIND_TO_RESOURCE[kind]
        p = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespace and RESOURCES[(api_version, plural)][1]:
            p += f"/namespaces/{namespace}"
        p += f"/{plural}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    # ------------------------------------------------------------------ client
    def _check(self, resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise KubeError(resp.status_code, resp.text[:300])
        return resp.json() if resp.content else {}

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST the object as given (the emulator validates nothing)."""
        obj = copy.deepcopy(obj)
        ns = obj.setdefault("metadata", {}).setdefault("namespace", "default")
        assert self.http is not None
        return self._check(self.http.post(self.path(obj["kind"], ns), json=obj))

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        assert self.http is not None
        resp = self.http.get(self.path(kind, namespace, name))
        if resp.status_code == 404:
            return None
        return self._check(resp)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert self.http is not None
        return self._check(self.http.get(self.path(kind, namespace)))["items"]

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str = "default",
              subresource: str | None = None) -> dict[str, Any]:
        assert self.http is not None
        return self._check(self.http.patch(
            self.path(kind, namespace, name, subresource), json=patch,
            headers={"Content-Type": "application/merge-patch+json"}))

    def patch_status(self, kind: str, name: str, status: dict[str, Any],
                     namespace: str = "default") -> dict[str, Any]:
        return self.patch(kind, name, {"status": status}, namespace, subresource="status")

    def delete(self, kind: str, name: str, namespace: str = "default") -> bool:
        assert self.http is not None
        resp = self.http.delete(self.path(kind, namespace, name))
        if resp.status_code == 404:
            return False
        self._check(resp)
        return True

    # ----------------------------------------------------------------- waiting
    # ------------------------------------------------------------ request log
    def calls(self) -> list[Call]:
        assert self.emulator is not None
        out = []
        for req in list(self.emulator.log):
            if req.resource is None or not req.resource.plural:
                continue
            out.append(Call(
                verb=_verb(req) or str(req.method), group=req.resource.group or "",
                plural=req.resource.plural, subresource=req.subresource,
                namespace=req.namespace, name=req.name,
                user_agent=str(req.headers.get("User-Agent", "")), data=req.data))
        return out

    def operator_calls(self) -> list[Call]:
        """Requests not made by the test client (i.e. by the operator)."""
        return [c for c in self.calls() if c.user_agent != TEST_AGENT]

    def operator_permissions(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) triples the operator used: RBAC must allow them."""
        return {(c.group, c.resource, c.verb) for c in self.operator_calls()}

    def inject(self, verb: str, plural: str, status: int, times: int = 1,
               subresource: str | None = None) -> Fault:
        """Make the next ``times`` matching requests fail with ``status`` (no state change)."""
        assert self.emulator is not None
        fault = Fault(verb, plural, status, times, subresource)
        with self.emulator._fault_lock:
            self.emulator.faults.append(fault)
        return fault


class KubeError(Exception):
    def __init__(self, status: int, text: str):
        self.status = status
        super().__init__(f"{status}: {text}")


class OperatorLifecycle:
    """Stop, kill, restart and read the log of an operator subprocess (``OperatorProcess``
    against kmock, ``RealOperator`` on the real control plane); subclasses provide
    ``start()``, ``proc``, ``_log`` and ``log_path``."""

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash or an evicted pod (no graceful shutdown, nothing flushed)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()
        self.proc = None

    def restart(self) -> Any:
        self.stop()
        return self.start()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class OperatorProcess(OperatorLifecycle):
    """The real operator (``python -m raykube_operator -A``) against a KubeCluster."""

    cluster: KubeCluster
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("-A",)
    proc: subprocess.Popen[bytes] | None = None
    liveness_port: int = 0
    _log_count: int = 0

    @property
    def log_path(self) -> Path:
        return self.cluster.workdir / f"operator-{self._log_count}.log"

    def start(self, wait: bool = True, timeout: float = 30.0) -> OperatorProcess:
        self._log_count += 1
        self.liveness_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig),
               "RAYKUBE_LIVENESS": f"http://127.0.0.1:{self.liveness_port}/healthz",
               "RAYKUBE_RETRY_DELAY": "0.5", "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        watches_before = self._watch_count()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "raykube_operator", *self.args],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.cluster.wait_for(lambda: self._watch_count() > watches_before or self._dead(),
                                  timeout, what="the operator to watch TrainingRuns")
            if self._dead():
                raise RuntimeError(f"operator exited:\n{self.logs()}")
        return self

    def _watch_count(self) -> int:
        return sum(1 for c in self.cluster.operator_calls()
                   if c.verb == "watch" and c.plural == "trainingruns")


def iter_children(cluster: KubeCluster, namespace: str = "default",
                  kinds: tuple[str, ...] = ("RayJob", "RayService", "ConfigMap", "ServiceAccount",
                                            "Role", "RoleBinding", "Secret")
                  ) -> Iterator[dict[str, Any]]:
    """Every object of the kinds the operator may create."""
    for kind in kinds:
        yield from cluster.list(kind, namespace)
