"""Checks made once before kopf starts: can the operator reach the API server, do its
credentials hold, and may it do what it must? A failure is one line and exit code 2.

Why: kopf (1.45) reports these failures at length but not plainly. Measured against the
real API server before this module (``python -m raykube_operator -A``):

- a token the API server rejects (401): 130 log lines with 6 tracebacks ending in kopf's
  "Ran out of valid credentials. Consider installing an API client library", exit 1;
- a token without the operator's RBAC (403): 282 lines, 12 tracebacks, exit after ~20 s;
- no kubeconfig and not in a pod: a traceback from the startup handler, retried every
  60 s, forever;
- the API server unreachable: six retries per endpoint, then two chained errors (4
  tracebacks, 175 lines in all) and exit 1 after ~18 s.

What is checked, in order: the credentials load (in-cluster, else KUBECONFIG /
``~/.kube/config``); the API server answers and accepts them (``SelfSubjectReview``, which
also names the identity; a connection failure is retried for ``wait_s``, a TLS or 401
failure is not); then one ``SelfSubjectAccessReview`` per permission of
``raykube_operator.rbac.PERMISSIONS`` in the operator's scope (cluster-wide, or each named
namespace). A missing permission is fatal, except the two kopf copes without (listing
CRDs and namespaces: it retries for ~18 s, then warns and falls back), which are a
warning here. A cluster that does not answer the reviews (an older API server, a
restrictive authorizer, an emulator) only costs the check: a warning, and the operator
starts.

Before all of these, and also with ``RAYKUBE_PREFLIGHT=0`` (it is local, and instant):
that kopf can listen where its liveness endpoint is asked for (``check_liveness``). A port
already in use (a second operator started locally) was a 64-line exit 1 with two
tracebacks, once kopf had logged in.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from raykube_operator.kube import ApiError, Kube
from raykube_operator.rbac import PERMISSIONS

log = logging.getLogger(__name__)

SOFT = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
"""Permissions kopf can do without (it warns and falls back): a warning, not fatal. Both
are cluster-scoped: checked cluster-wide whatever the operator watches."""
OPTIONAL = {("ray.io", "rayclusters"): {
    "get": "a RayCluster deleted under its job is announced as a head loss (RayHeadLost), "
           "not RayClusterLost",
    "delete": "a job past its activeDeadlineSeconds trains on until KubeRay deletes its "
              "cluster (ttlSecondsAfterFinished)"},
    ("batch", "jobs"): {
    "get": "a RayJob deleted while its run is active is made again without waiting for "
           "its submitter Job to go, which KubeRay may take as the new one's (the attempt "
           "then fails at once)"}}
"""Namespaced permissions the operator does without, at a cost named here per verb: a
warning, not fatal (an operator upgraded before its ClusterRole keeps working)."""
NOT_FATAL = SOFT | OPTIONAL.keys()
OWN = {("authentication.k8s.io", "selfsubjectreviews"),
       ("authorization.k8s.io", "selfsubjectaccessreviews")}
"""What the preflight itself uses (every authenticated user may, through the built-in
``system:basic-user`` ClusterRole): not checked, a refusal only skips the check."""
GLOB_CHARS = set("*?[!")


class PreflightError(Exception):
    """The operator cannot work: ``str(exc)`` is the one line to print."""


@dataclass(frozen=True)
class Check:
    group: str
    resource: str  # "trainingruns/status": resource and subresource
    verb: str
    namespace: str | None  # None: cluster-wide

    def attributes(self) -> dict[str, str]:
        resource, _, sub = self.resource.partition("/")
        attrs = {"group": self.group, "resource": resource, "verb": self.verb}
        if sub:
            attrs["subresource"] = sub
        if self.namespace:
            attrs["namespace"] = self.namespace
        return attrs

    def kind(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def check_liveness(url: str, source: str = "RAYKUBE_LIVENESS") -> None:
    """Can kopf listen where ``url`` (valid: ``raykube_operator.config.liveness_endpoint``)
    asks? Bound as aiohttp will (asyncio's ``create_server``: every address the host
    resolves to, ``SO_REUSEADDR``, IPv6 only on IPv6 sockets), then closed; a PreflightError
    naming ``source`` if not. (The port can still be taken between this and kopf's start.)"""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 0
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"{source}={url!r}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PreflightError(f"{head}: cannot resolve {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, addr in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # a family this machine lacks: asyncio passes over it too
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    why = (f"{where} is in use (another operator?): pick another port, "
                           f"or 'off'")
                elif exc.errno == errno.EADDRNOTAVAIL:
                    why = (f"{host} is no address of this machine: use one of its own, "
                           f"0.0.0.0 (every interface) or 127.0.0.1")
                elif exc.errno == errno.EACCES:
                    why = f"no permission to listen on {where}: pick a port above 1023"
                else:
                    why = f"cannot listen on {where}: {exc.strerror or exc}"
                raise PreflightError(f"{head}: {why}") from None


def load_kube(factory: Callable[[], Kube] = Kube) -> Kube:
    """The same credentials kopf will use (its ``login_via_client`` reads them through the
    same ``kubernetes`` client), or a one-line PreflightError."""
    try:
        return factory()
    except Exception as exc:  # ConfigException, a YAML error, an unreadable file, ...
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(
            f"no usable Kubernetes credentials: not running in a pod, and the kubeconfig "
            f"({where}) could not be loaded: {first}") from None


def server_of(kube: Kube) -> str:
    return str(getattr(getattr(kube.api, "configuration", None), "host", "") or "the API server")


def whoami(kube: Kube, *, wait_s: float) -> str | None:
    """The authenticated user's name (None when the cluster has no SelfSubjectReview API).

    Connection failures and 5xx/429 answers are retried until ``wait_s`` has passed (an
    API server that is starting, a pod whose network is not up yet), each attempt logged
    on one line; a TLS failure or a 401 is not retried: it will not fix itself."""
    server = server_of(kube)
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            doc = kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                               {"apiVersion": "authentication.k8s.io/v1",
                                "kind": "SelfSubjectReview"})
            return ((doc.get("status") or {}).get("userInfo") or {}).get("username") or None
        except ApiError as exc:
            if exc.status == 401:
                raise PreflightError(
                    f"the API server at {server} rejected the operator's credentials "
                    f"(401 Unauthorized): the token or client certificate is wrong or "
                    f"expired") from None
            if exc.status in (403, 404):  # no such API, or not allowed to ask: skip it
                return None
            tls = _tls_problem(exc)
            if tls:
                raise PreflightError(f"TLS with the API server at {server} failed: {tls}") from None
            if not exc.transient:
                raise PreflightError(f"the API server at {server} answered {exc}") from None
            left = deadline - time.monotonic()
            reason = _short(exc)
            if left <= 0:
                raise PreflightError(
                    f"cannot reach the API server at {server} after {attempt} attempts "
                    f"({wait_s:g} s): {reason}") from None
            log.warning("waiting for the API server at %s (attempt %d): %s",
                        server, attempt, reason)
            time.sleep(min(2.0, left))


def _short(exc: ApiError) -> str:
    """The useful tail of urllib3's nested messages (``...: [Errno 111] Connection
    refused``), on one line."""
    text = " ".join(str(exc.message or exc).split())
    for marker in ("[Errno", "timed out", "Name or service", "NewConnectionError"):
        i = text.find(marker)
        if i >= 0:
            text = text[i:]
            break
    return text.rstrip("')\"")[:200] or f"{exc.status} {exc.reason}"


def _tls_problem(exc: ApiError) -> str | None:
    text = str(exc.message or "")
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "SSLError" in exc.reason:
        i = text.find("certificate verify failed")
        detail = text[i:].split(")")[0] if i >= 0 else "SSL error"
        return (f"{detail} (does the kubeconfig's certificate-authority belong to this "
                f"server?)")
    return None


KUBERAY_KINDS = {"rayjobs": "RayJob", "rayservices": "RayService"}


def unserved(kube: Kube) -> list[str]:
    """KubeRay's kinds the API server does not serve (its discovery of ray.io/v1): not a
    reason to stop (KubeRay may be installed after the operator, and kopf starts watching
    them when they appear), but worth one line at start."""
    try:
        doc = kube.request("GET", "/apis/ray.io/v1")
    except ApiError as exc:
        if exc.status != 404:
            return []  # unknown: say nothing
        doc = {}
    served = {r.get("name") for r in doc.get("resources") or []}
    return [f"ray.io/v1 {kind}" for plural, kind in KUBERAY_KINDS.items()
            if plural not in served]


def scope_namespaces(namespaces: Sequence[str]) -> list[str | None]:
    """Where the namespaced permissions must hold: everywhere (cluster-wide operator), or
    in each named namespace. Glob patterns name no namespace in advance: kopf lists the
    namespaces (a soft permission) and what it finds can only be checked when it finds it."""
    if not namespaces:
        return [None]
    return [ns for ns in namespaces if not (set(ns) & GLOB_CHARS)]


def checks(namespaces: Sequence[str]) -> list[Check]:
    where = scope_namespaces(namespaces)
    out = []
    for (group, resource), verbs in sorted(PERMISSIONS.items()):
        if (group, resource) in OWN:
            continue
        spaces: Iterable[str | None] = [None] if (group, resource) in SOFT else where
        for ns in spaces:
            out.extend(Check(group, resource, verb, ns) for verb in sorted(verbs))
    return out


def denied(kube: Kube, todo: Sequence[Check], *, threads: int = 8) -> list[Check] | None:
    """The checks the API server says no to; None when it does not answer reviews (then
    nothing is known, and nothing is refused)."""

    def review(c: Check) -> bool | None:
        try:
            doc = kube.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                               {"apiVersion": "authorization.k8s.io/v1",
                                "kind": "SelfSubjectAccessReview",
                                "spec": {"resourceAttributes": c.attributes()}})
        except ApiError as exc:
            if exc.status == 0:  # the API server went away since whoami: say so
                raise
            return None  # refused or not understood (403, 404, ...): unchecked
        status = doc.get("status")
        if not isinstance(status, dict) or "allowed" not in status:
            return None  # not an authorizer's answer (an emulator, a proxy): unchecked
        return bool(status["allowed"])

    with ThreadPoolExecutor(max(1, threads)) as pool:
        answers = list(pool.map(review, todo))
    if any(a is None for a in answers):
        return None
    return [c for c, ok in zip(todo, answers, strict=True) if not ok]


def describe(missing: Sequence[Check]) -> str:
    """``list, watch trainingruns.raykube.io; create rayjobs.ray.io in namespace a``: one
    clause per resource and namespace, verbs sorted."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for c in missing:
        groups.setdefault((c.kind(), c.namespace), []).append(c.verb)
    parts = []
    for (kind, ns), verbs in groups.items():
        where = f" in namespace {ns}" if ns else ""
        parts.append(f"{', '.join(verbs)} {kind}{where}")
    return "; ".join(parts)


def run(namespaces: Sequence[str], *, wait_s: float,
        factory: Callable[[], Kube] = Kube) -> None:
    """All checks; raises PreflightError with the line to print. Logs soft problems."""
    kube = load_kube(factory)
    kube.timeout = min(kube.timeout, 10.0)  # one review must not hold the start for 30 s
    # urllib3 logs each of its own quick retries; ours say the same once per attempt
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        user = whoami(kube, wait_s=wait_s)
        missing_kinds = unserved(kube)
        todo = checks(namespaces)
        try:
            missing = denied(kube, todo)
        except ApiError as exc:
            raise PreflightError(f"could not check the operator's permissions at "
                                 f"{server_of(kube)}: {_short(exc)}") from None
    finally:
        pool_log.setLevel(level)
        close = getattr(kube.api, "close", None)
        if callable(close):
            close()
    who = user or "the operator's identity"
    if missing_kinds:
        log.warning("the API server serves no %s: is KubeRay installed? TrainingRuns wait "
                    "(SpecApplied=False, reason KubeRayMissing) until its CRDs are",
                    " or ".join(missing_kinds))
    if missing is None:
        log.warning("the API server does not answer SelfSubjectAccessReviews: the "
                    "operator's permissions were not checked")
        return
    hard = [c for c in missing if (c.group, c.resource) not in NOT_FATAL]
    soft = [c for c in missing if (c.group, c.resource) in SOFT]
    for key, costs in OPTIONAL.items():
        if lacking := [c for c in missing if (c.group, c.resource) == key]:
            log.warning("%s may not %s: %s; grant the ClusterRole raykube-operator of "
                        "k8s/base/rbac.yaml", who, describe(lacking),
                        "; ".join(costs[c.verb] for c in lacking))
    scope = ("cluster-wide" if not namespaces
             else "in namespace(s) " + ", ".join(namespaces))
    if hard:
        fix = ("grant it the ClusterRole raykube-operator of k8s/base/rbac.yaml (kubectl "
               "apply --server-side -k k8s/base)")
        fix += (", or watch only namespaces where a RoleBinding grants it (--namespace)"
                if not namespaces else " with a RoleBinding in each namespace it watches")
        if len(hard) == sum((c.group, c.resource) not in NOT_FATAL for c in todo):
            raise PreflightError(f"{who} holds none of the operator's permissions (watching "
                                 f"{scope}; the first: {describe(hard[:1])}): {fix}")
        raise PreflightError(f"{who} may not {describe(hard)} (watching {scope}): {fix}")
    if soft:
        log.warning("%s may not %s: kopf retries for ~18 s, then falls back (the "
                    "watched namespaces are assumed to exist, new CRDs are not noticed); "
                    "bind the ClusterRole raykube-operator with a ClusterRoleBinding for "
                    "these (k8s/base/rbac.yaml)", who, describe(soft))
