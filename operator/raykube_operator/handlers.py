"""kopf handlers: parse, render, apply, write status. Nothing else lives here.

Decisions (README "Operator"):

- **Children** (RayJob, ConfigMap, ServiceAccount, Role, RoleBinding, later the
  RayService) are created idempotently: read first, create when missing (a 409 on
  create re-reads), and patch only when the ``raykube.io/spec-hash`` annotation of the
  rendered object differs. A restarted operator therefore writes nothing. (A
  TrainingRun with no status yet cannot have children: those are created without
  reading first, and any 409 falls back to the read-first path; the RayJob is created
  last, after the ConfigMap and RBAC its pods need.)
- **Deletion** relies on ownerReferences (every child points at the TrainingRun's uid)
  and Kubernetes' garbage collector; there is no delete handler, so kopf adds no
  finalizer and a TrainingRun can always be deleted, even with the operator down.
  Checkpoints live on shared storage and are never deleted by the operator.
- **Spec changes**: ``suspend`` is propagated to the RayJob (KubeRay stops / restarts
  the Ray cluster; training resumes from the latest checkpoint). ``serve`` changes
  re-render the RayService in place. Other (training) fields: while the RayJob is
  active they are *not* applied to it (condition ``SpecApplied=False``, reason
  ``SpecChangePending``, naming the fields): when that run ends (KubeRay's retries
  included) a new run starts with the spec as it then is, as for a change made after
  the run finished (the RayJob is replaced; a passing result updates the RayService in
  place). The pending edit lives in the status, so a restarted operator starts it too.
  A RayJob rendered by another operator version, with no edit, is left alone. The old RayJob is
  deleted first, and KubeRay's finalizer holds it while it stops its Ray cluster: the
  status says so (``SpecApplied=False``, reason ``WaitingForPreviousRayJob``), and that
  status is what makes the RayJob's DELETED event (or the resync, or a restarted
  operator) create the new one.
  After success, ``serve`` edits re-check the gate without retraining: lowering
  ``serve.minAccuracy`` below the reported accuracy (or turning ``serve.enabled`` back
  on) promotes; raising it above keeps the live RayService (``Promoted=False`` says so;
  ``serve.enabled: false`` removes it). Metadata-only edits (labels) change no child.
- **Children deleted behind our back**: a RayJob deleted (``kubectl delete rayjob``)
  while the run is active is recreated (condition ``Running=False``, reason
  ``RayJobRecreated``, Warning event; the new Ray cluster resumes from the latest
  checkpoint; stop a run with ``spec.suspend`` instead). Once the run has finished, a
  missing RayJob is *not* recreated (that would train again): the outcome stays. A
  deleted RayService is promoted again when the gate still passes. The spec ConfigMap,
  ServiceAccount, Role and RoleBinding are applied again when deleted while the run is
  active (watched by label). Children with our name that another TrainingRun owns (e.g.
  a just-deleted one with the same name whose children the garbage collector has not
  removed yet), or that are the user's own objects, are never adopted or written:
  ``NameConflict``, retried until they are gone (``_ours_to_apply``). The same holds after an operator
  restart (the resume handler reconciles every TrainingRun level-triggered), and for a
  child deleted while a watch was cut (an API server restart: kopf lists again, and
  nothing says what vanished meanwhile): every ``RAYKUBE_RESYNC_SECONDS`` each known
  TrainingRun's RayJob (while the run is active) and RayService (while it serves) are
  looked up, and a missing one goes down the same path as a deletion.
- **KubeRay missing** (its CRDs not installed: a create answered "404 page not found"):
  ``SpecApplied=False``, reason ``KubeRayMissing``, phase Pending, one Warning event;
  retried until the RayJob can be created.
- **Bad input**: anything the API server let through (no CRD installed, a stale CRD)
  is validated again here: ``Validated=False``, reason ``InvalidSpec``, naming every
  field, phase Failed, a Warning event, no children; fixing the spec starts the run.
- **Status**: KubeRay's RayJob/RayService status is followed with ``kopf.on.field`` and
  mapped by the pure ``raykube_operator.status``; every phase change posts an Event.
- kopf's own bookkeeping lives in ``raykube.io/*`` annotations.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import kopf

from raykube.render import (
    MANAGED_BY_LABEL,
    OPERATOR_MANAGER,
    RENDERED_LABEL,
    in_storage,
    rayservice_name,
    render_rayservice,
    render_training,
    serve_endpoint,
    served_storage_id,
    storage_id,
)
from raykube.spec import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL,
    PLURAL,
    VERSION,
    InvalidTrainingRun,
    TrainingRun,
    check_for_cluster,
    parse_training_run,
)
from raykube_operator import drift
from raykube_operator import status as st
from raykube_operator.config import OperatorConfig
from raykube_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

TR = (GROUP, VERSION, PLURAL)
RAY_API = "ray.io/v1"
SPEC_HASH = f"{GROUP}/spec-hash"
TRAINING_HASH = f"{GROUP}/training-hash"
RERUN_ANNOTATION = f"{GROUP}/rerun"
"""On a RayJob: the ``spec.rerun`` value its run was started with. It is kept when the
field is removed from the spec, so that only a new value asks for a run, also when the
operator was down and sees no diff (the training hash leaves ``rerun`` out)."""
CHECKPOINT_ANNOTATION = f"{GROUP}/checkpoint"
STORAGE_ANNOTATION = f"{GROUP}/checkpoint-storage"
"""On a promoted RayService, next to ``CHECKPOINT_ANNOTATION``: the ``storage_id`` its pods
were rendered for, which the checkpoint it serves is on (``pvc/<claim>`` or the URI)."""
SERVE_ANNOTATION = f"{GROUP}/serve"
"""On a RayService: the ``spec.serve`` settings it was rendered from (``serve_settings``),
which the ``ServeUpdated`` Event compares."""
ACCURACY_ANNOTATION = f"{GROUP}/val-accuracy"
"""On a promoted RayService: the validation accuracy its checkpoint was promoted with
(``status.serving.valAccuracy``, the Served-Acc column)."""
FINALIZER = f"{GROUP}/finalizer"
CHILD_LABELS = {LABEL: kopf.PRESENT, RENDERED_LABEL: kopf.ABSENT}
"""What the watch on Ray pods follows: the run's label, but not what ``raykube render``
printed (``RENDERED_LABEL``, on its objects and pod templates), which Argo CD, Flux or
kubectl manage: the operator never follows, recreates or adopts those, even where a
TrainingRun of the same name exists. The watches on children add the run's own children
that carry it (``_followed``)."""
OUR_CHILDREN = {LABEL: kopf.PRESENT}


def _followed(body: kopf.Body, **_: Any) -> bool:
    """A child the watches follow: not ``raykube render``'s output, except a TrainingRun's
    own child that carries its label. That is render's output applied over a run's
    children (``kubectl apply`` keeps their ownerReference): the watches stopped
    following them, and the reconcile takes them back (``_take_back``)."""
    meta = body.get("metadata") or {}
    return RENDERED_LABEL not in (meta.get("labels") or {}) or any(
        r.get("kind") == KIND and r.get("controller") for r in meta.get("ownerReferences") or [])


# ------------------------------------------------------------------------- settings
DIFFBASE_MAX_BYTES = 128 * 1024
"""Largest copy of a TrainingRun kopf may keep in its annotation (annotations hold 256
KiB in all, ``kubectl apply`` keeps another copy)."""


class BoundedDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff base, except for a spec too large for an annotation: the
    API server refused kopf's patch (422, "metadata.annotations: Too long") and kopf
    retried it every 5 s with a traceback, for good (an operator audit: 406 KB of
    tolerations). Such a spec is refused anyway (``raykube.spec.MAX_SPEC_BYTES``, one
    ``Validated=False``); without a diff base kopf reads each change as a creation, which
    the level-triggered reconcile handles the same way."""

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        if len(json.dumps(essence, separators=(",", ":"))) > DIFFBASE_MAX_BYTES:
            return
        super().store(body=body, patch=patch, essence=essence)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """All kopf settings in one place; the API client and config go into ``memo``."""
    cfg = OperatorConfig.from_env()
    settings.persistence.finalizer = FINALIZER  # only used if a delete handler is added
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = BoundedDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our explicit events + warnings, no chatter
    # `kubectl describe tr` said "From: kopf"; the instance is the operator's pod
    settings.posting.reporting_component = EVENT_COMPONENT
    settings.posting.reporting_instance = EVENT_INSTANCE
    settings.posting.event_name_prefix = EVENT_PREFIX
    logging.getLogger("kopf.objects").addFilter(quiet_watch_handlers)
    logging.getLogger("kopf._core.engines.posting").addFilter(quiet_events_of_a_gone_namespace)
    settings.execution.max_workers = cfg.max_workers
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    init_memo(memo, cfg, Kube(pool_size=cfg.max_workers + 4))  # + the watch-side callers
    if cfg.resync > 0:
        memo.resync_stop = threading.Event()
        threading.Thread(target=_resync_loop, args=(memo, cfg.resync), daemon=True,
                         name="raykube-resync").start()
    logger.info("raykube operator configured: namespaces=%s", list(cfg.namespaces) or "all")


def quiet_watch_handlers(record: logging.LogRecord) -> bool:
    """kopf logs ``Handler '...' succeeded.`` at INFO after every handler call. For the
    watch handlers that is a line per event of every Ray pod, RayJob and TrainingRun (the
    driver patches progress every few seconds): at scale the log says nothing else. Those
    lines become DEBUG (``--verbose`` shows them); their failures stay as they are."""
    if record.levelno == logging.INFO and record.getMessage() in _WATCH_SUCCEEDED:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    if record.levelno == logging.ERROR and NAME_CONFLICT_WAIT in record.getMessage():
        # kopf says every retry of a NameConflict "failed temporarily" at ERROR, every
        # 30 s; the status and one Warning say it already: a wait, not a fault
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def quiet_events_of_a_gone_namespace(record: logging.LogRecord) -> bool:
    """An Event posted just as its namespace is deleted (a child's DELETED event, seen
    before the garbage collector reached the TrainingRun) is refused with 403
    ``NamespaceTerminating``, which kopf's poster retries and logs at ERROR each time,
    then 404 once the namespace is gone. The Event would go with its namespace anyway:
    those lines become DEBUG."""
    msg = record.getMessage()
    if NAMESPACE_TERMINATING in msg or (
            msg.startswith("Failed to post an event") and "Code: 404" in msg
            and "'kind': 'namespaces'" in msg):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def init_memo(memo: kopf.Memo, cfg: OperatorConfig, kube: Kube) -> kopf.Memo:
    """The operator's shared state: config, API client, locks, and what it has observed."""
    memo.cfg = cfg
    memo.kube = kube
    _EVENTS["kube"] = kube
    memo.locks = defaultdict(threading.Lock)
    memo.locks_guard = threading.Lock()
    # (namespace, TrainingRun) -> {pod name: (Ray cluster, problem, first seen: monotonic
    # s)}: what keeps a run's Ray pods from running, as last observed (see on_pod_event)
    memo.pod_problems = {}
    # (namespace, run) -> pod_oom / head_loss keys already handled: a cache that spares
    # the API calls on later events of the same pod (what was announced is the
    # TrainingRun's status.lastIncident, which survives a restart)
    memo.incidents_seen = {}
    memo.pods_guard = threading.Lock()
    memo.runs = {}  # (namespace, name) -> uid: the TrainingRuns seen, for the resync
    memo.runs_guard = threading.Lock()
    # child uid -> metadata.generation last seen on a RayJob or RayService: a new one
    # means its spec was written (by us, or by someone: see _spec_written)
    memo.generations = {}
    return memo


def _lock(memo: kopf.Memo, namespace: str, name: str) -> threading.Lock:
    """One lock per TrainingRun: its status is read-modified-written by several handlers."""
    with memo.locks_guard:
        return memo.locks[(namespace, name)]


def _transient(exc: ApiError, cfg: OperatorConfig) -> kopf.TemporaryError:
    delay = cfg.retry_delay if exc.transient else cfg.retry_delay * 6
    return kopf.TemporaryError(f"Kubernetes API error, will retry: {exc}", delay=delay)


# --------------------------------------------------------------------------- helpers
def _owner(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k) is not None}


def _parse(body: dict[str, Any]) -> TrainingRun:
    meta = body.get("metadata") or {}
    doc = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k)},
           "spec": body.get("spec")}
    return check_for_cluster(parse_training_run(doc))


def _hash(obj: dict[str, Any], *, drop_suspend: bool = False) -> str:
    doc = copy.deepcopy(obj)
    anns = (doc.get("metadata") or {}).get("annotations") or {}
    for key in (SPEC_HASH, TRAINING_HASH):
        anns.pop(key, None)
    if drop_suspend:
        # neither changes what is trained: suspend pauses, the TTL (which follows
        # serve.enabled) only says when the finished cluster goes
        (doc.get("spec") or {}).pop("suspend", None)
        (doc.get("spec") or {}).pop("ttlSecondsAfterFinished", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _annotate(obj: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    anns = obj.setdefault("metadata", {}).setdefault("annotations", {})
    anns.update(extra or {})
    anns[SPEC_HASH] = _hash(obj)
    return obj


def training_hash(run: TrainingRun, job: dict[str, Any]) -> str:
    """What a run's result depends on: the spec minus suspend/serve, and the RayJob minus
    suspend (the spec reaches the driver through the ConfigMap, not the RayJob). A
    difference starts a new run only together with an edit (``plan_rayjob``): a RayJob
    another operator version rendered differently is not retrained."""
    spec = run.spec.to_dict()
    for key in ("suspend", "serve", "rerun"):  # rerun: RERUN_ANNOTATION
        spec.pop(key, None)
    doc = {"spec": spec, "rayjob": _hash(job, drop_suspend=True)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _ann(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key)


def _ref(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]


_UNREAD: Any = object()


class ChildRefused(Exception):
    """The API server refused (422) an object rendered from a spec that passed our own
    validation: a bound the CRDs know and the spec's schema does not (KubeRay's int32
    fields, a ConfigMap's 1 MiB). Retrying cannot help until the spec (or a CRD)
    changes, so it is reported like an invalid spec, not retried every 30 s with no
    status, as it was."""

    def __init__(self, obj: dict[str, Any], exc: ApiError):
        self.kind, self.name = obj.get("kind", "object"), obj["metadata"]["name"]
        self.reason = exc.message or str(exc)
        super().__init__(f"the API server refused the {self.kind} {self.name} rendered "
                         f"from this spec: {self.reason}")


@contextlib.contextmanager
def _refused_as_child(obj: dict[str, Any]) -> Iterator[None]:
    """Turn a 422 on writing ``obj`` (a child) into ``ChildRefused``."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 422:
            raise ChildRefused(obj, exc) from exc
        raise


def apply_child(kube: Kube, obj: dict[str, Any], current: dict[str, Any] | None = _UNREAD) -> str:
    """Create ``obj`` or bring it up to date (server-side apply, when its spec-hash
    annotation differs, or when a field the render sets was edited by someone:
    ``drift``). Returns created, unchanged, updated or repaired.

    ``current``: the object as the caller has just read it (None: it does not exist),
    so that it is not read again. The RayJob is created with a plain create instead
    (``apply_rayjob``): a 409 there is how a same-named leftover of another TrainingRun
    is noticed."""
    obj = _annotate(obj)
    if current is _UNREAD:
        current = kube.get(*_ref(obj))
    if current is not None and _ann(current, SPEC_HASH) == _ann(obj, SPEC_HASH):
        if not drift.drifted(current, obj):
            return "unchanged"
        _apply_over(kube, obj, current)  # edited by someone: the render's fields put back
        return "repaired"
    # server-side apply: fields that left the render leave the object
    _apply_over(kube, obj, current)
    return "created" if current is None else "updated"


def _apply_over(kube: Kube, obj: dict[str, Any], current: dict[str, Any] | None
                ) -> dict[str, Any]:
    """Server-side apply ``obj`` over ``current`` (as last read; None: none exists), first
    making what the operator's own creates and patches wrote there the apply's
    (``Kube.own_as_applied``: no request when there is nothing to move). Every child's
    first write is a plain create (``_first_sight``; the RayJob's always, for its 409),
    and a create's fields stay whatever a later apply leaves out: a suspended RayJob kept
    the head ``nodeSelector`` an edit had removed, and a ConfigMap, ServiceAccount or Role
    would keep a key or label its render dropped."""
    if current is not None:
        kube.own_as_applied(current)
    return kube.apply(obj)


def plan_rayjob(current: dict[str, Any] | None, job: dict[str, Any], *, finished: bool,
                edited: bool, rerun_pending: bool = False) -> str:
    """What to do with the RayJob (pure; ``job`` carries its hash annotations).

    ``edited``: the user changed training fields (this spec edit; or the generation moved
    while the operator was away). A RayJob whose training hash differs without an edit
    was rendered by another operator version: that is not a reason to train again.
    ``rerun_pending``: the status holds a decision already (an edit made while the
    RayJob ran, waiting for the run to end; or a rerun waiting for the old RayJob to go).

    - ``create``: none exists and the run has no outcome yet (first sight, or the RayJob
      was deleted by someone while the run was active: it is recreated and training
      resumes from the latest checkpoint);
    - ``finished``: nothing asks for a new run (no edit; or the run is over and its
      RayJob was cleaned up: it is not recreated, that would train again);
    - ``rerun``: a training edit after the run finished, or one pending from while it
      ran: a new RayJob replaces the old;
    - ``pending``: a training edit while the RayJob is active: applied by a new run once
      this one ends;
    - ``suspend-for-edit``: a training edit while the RayJob's Ray cluster is still coming
      up (``Initializing``: nothing of the run runs yet, and its pods may never be
      scheduled, which the edit may fix): suspend it; once ``Suspended`` the edit is an
      ``update`` and it resumes (``Suspending``: ``pending`` until then). Not while a
      KubeRay retry's cluster comes up (``status.failed`` > 0): the run has trained, and
      its retries run the spec it started with (an operator restart applied an edit
      pending since the first attempt to the retry, "before the Ray cluster came up");
    - ``update``: a training change while the RayJob is suspended: applied to it now;
    - ``suspend``: ``spec.suspend`` differs (and no training field): patch it;
    - ``suspend-pending``: ``spec.suspend`` differs on an active RayJob whose training edit
      is pending: the suspend alone is patched now (stopping a run is not a training
      edit); the ConfigMap and the rest wait for the edit to apply;
    - ``refresh``: only other non-training fields differ (a ``serve`` edit changes the
      RayJob's spec hash, not what it runs): its annotation is patched, nothing else;
    - ``terminating``: the RayJob is being deleted (KubeRay's finalizer holds it while it
      stops the Ray cluster), no rerun waits for it: its DELETED event reconciles again;
    - ``unchanged``.
    """
    differs = current is not None and (
        _ann(current, TRAINING_HASH) != _ann(job, TRAINING_HASH) or _rerun_asked(current, job))
    if current is None:
        if not finished:
            return "create"
        return "rerun" if rerun_pending or edited else "finished"
    if (current.get("metadata") or {}).get("deletionTimestamp"):
        if finished and (rerun_pending or (edited and differs)):
            return "rerun"  # apply_rayjob waits for it to go
        return "terminating"
    if differs:
        deployment = ((current.get("status") or {}).get("jobDeploymentStatus")) or ""
        if deployment == "Suspended" or (deployment in ("", "New") and (
                current.get("spec") or {}).get("suspend")):
            return "update"  # nothing runs: the edit applies when it resumes
        if edited or rerun_pending:
            if deployment == "Initializing" and not ((current.get("status") or {}).get(
                    "failed") or 0):  # (suspended already: KubeRay has yet to see it)
                return "pending" if _suspended(current) else "suspend-for-edit"
            if deployment == "Suspending":
                return "pending"  # Suspended next: then the edit is an update
        if deployment not in st.TERMINAL_DEPLOYMENT or not finished:
            # (ended, but its outcome is not in the status yet: mapping it reconciles again)
            if _suspend_differs(current, job) and deployment not in st.TERMINAL_DEPLOYMENT:
                return "suspend-pending"
            return "pending" if edited or rerun_pending else "unchanged"
        return "rerun" if edited or rerun_pending else "finished"
    if _ann(current, SPEC_HASH) == _ann(job, SPEC_HASH):
        return "unchanged"
    return "suspend" if _suspend_differs(current, job) else "refresh"


def _rerun_asked(current: dict[str, Any], job: dict[str, Any]) -> bool:
    """``spec.rerun`` holds a value the current RayJob did not run with (a removed value
    asks for nothing: ``keep_rerun`` carries the old one over)."""
    wanted = _ann(job, RERUN_ANNOTATION)
    return wanted is not None and wanted != _ann(current, RERUN_ANNOTATION)


def keep_rerun(job: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """``job`` with the current RayJob's ``RERUN_ANNOTATION`` where the spec has no
    ``rerun`` any more: applying the RayJob (a serve edit's refresh) must not forget the
    value the run ran with, or setting it again would read as a new request."""
    ran = _ann(current, RERUN_ANNOTATION)
    if ran is None or _ann(job, RERUN_ANNOTATION) is not None:
        return job
    return _annotate(job, {RERUN_ANNOTATION: ran})


def _suspend_differs(current: dict[str, Any], job: dict[str, Any]) -> bool:
    return _suspended(current) != _suspended(job)


def _suspended(obj: dict[str, Any] | None) -> bool:
    """A RayJob's ``spec.suspend`` (the render leaves ``false`` out)."""
    return bool(((obj or {}).get("spec") or {}).get("suspend", False))


RAYJOB_NOT_COMPARED = frozenset({"spec.suspend", "spec.ttlSecondsAfterFinished"})
"""Compared on their own (``suspend``: the render leaves ``false`` out) or not at all
(the TTL follows serve.enabled, which a RayJob already running keeps: ``_hash``)."""


def _not_compared(status: dict[str, Any]) -> frozenset[str]:
    """``RAYJOB_NOT_COMPARED``, and ``backoffLimit`` once the driver reported a permanent
    failure: the operator lowers it itself then (``_cancel_retries``)."""
    if status.get("permanentFailure"):
        return RAYJOB_NOT_COMPARED | {"spec.backoffLimit"}
    return RAYJOB_NOT_COMPARED


def rayjob_drift(current: dict[str, Any] | None, job: dict[str, Any],
                 status: dict[str, Any]) -> list[str]:
    """The fields of a RayJob ``plan_rayjob`` found up to date (same spec-hash annotation)
    that someone edited since (pure; ``status``: the TrainingRun's): a RayJob that has
    ended is left as it is (nothing more runs from it), and so is one being deleted, and
    one another operator version rendered (its spec-hash differs: ``plan_rayjob`` keeps
    it running as it is; comparing it with this version's render would take the upgrade
    for a hand edit and rewrite every running RayJob)."""
    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
        return []
    if _ann(current, SPEC_HASH) != _ann(job, SPEC_HASH):
        return []
    if ((current.get("status") or {}).get("jobDeploymentStatus")) in st.TERMINAL_DEPLOYMENT:
        return []
    paths = drift.drifted(current, job, ignore=_not_compared(status))
    return paths + (["spec.suspend"] if _suspend_differs(current, job) else [])


def repair_rayjob(kube: Kube, job: dict[str, Any], current: dict[str, Any],
                  status: dict[str, Any]) -> None:
    """Put the render's fields back (a forced server-side apply takes them from whoever
    edited them), and ``suspend`` as the spec says. After a permanent failure the
    ``backoffLimit`` the operator set is kept."""
    if drift.drifted(current, job, ignore=_not_compared(status)):
        if "spec.backoffLimit" in _not_compared(status):
            job = copy.deepcopy(job)
            job["spec"]["backoffLimit"] = current["spec"].get("backoffLimit", 0)
        current = _apply_over(kube, job, current)
    if _suspend_differs(current, job):
        kube.patch(*_ref(job), {"spec": {"suspend": _suspended(job)}})


def apply_rayjob(kube: Kube, job: dict[str, Any], current: dict[str, Any] | None,
                 action: str) -> str:
    """Carry out ``plan_rayjob``'s decision. Returns the action (``created`` for create;
    ``deleting`` for a rerun whose previous RayJob is still there: KubeRay's finalizer
    holds it while it stops its Ray cluster, and its DELETED event creates the new one)."""
    if action == "create":
        _await_old_submitter(kube, job)
        kube.create(job)
        return "created"
    suspend = {"spec": {"suspend": _suspended(job)}}
    if action == "update":  # suspended: a training edit takes effect when it resumes
        # what the create (and our suspend patch) wrote becomes the apply's, so that a
        # field the edit removed (a nodeSelector, our `suspend: true`) leaves the RayJob
        if _suspended(_apply_over(kube, job, current)) != _suspended(job):
            # the render leaves `suspend: false` out, and a suspend someone else set
            # (`kubectl patch rayjob`: another field manager) is not removed by the apply
            kube.patch(*_ref(job), suspend)
        return "update"
    if action == "rerun":
        if current is not None:
            if not (current.get("metadata") or {}).get("deletionTimestamp"):
                # Foreground: the RayJob goes only after its submitter Job. KubeRay takes
                # a Job of the RayJob's name as its own whoever owns it, so a new RayJob
                # created while the previous run's Job was still there "finished" at
                # once, with that run's outcome (a lost retry; with maxRetries: 0 the
                # rerun failed without running: an operator probe)
                kube.delete(*_ref(job), propagation="Foreground")
            if kube.get(*_ref(job)) is not None:  # KubeRay's finalizer: wait for it
                return "deleting"
        _await_old_submitter(kube, job)  # (deleted by someone else, in the background)
        kube.create(job)
        return "rerun"
    if action == "suspend-pending":  # its spec hash stays: the RayJob runs the old spec
        kube.patch(*_ref(job), suspend)
        return "suspend"
    if action == "suspend-for-edit":  # the edit reaches it once Suspended (``update``)
        kube.patch(*_ref(job), {"spec": {"suspend": True}})
        return action
    if action in ("suspend", "refresh"):
        # the TTL follows serve.enabled (``ttl_after_finished``): a serve edit of a
        # running run changes when its finished cluster goes (it stayed 0 after
        # ``serve.enabled: false``, so nothing was kept to read the logs from)
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        kube.patch(*_ref(job), {"metadata": {"annotations": {SPEC_HASH: _ann(job, SPEC_HASH)}},
                                "spec": {**suspend["spec"], "ttlSecondsAfterFinished": ttl}})
    return action


SUBMITTER_WAIT_S = 30.0
"""Longest a new RayJob waits for the previous one's submitter Job to be collected."""


def _await_old_submitter(kube: Kube, job: dict[str, Any]) -> None:
    """Before a RayJob is created: wait until no Job of its name is left. KubeRay takes a
    Job of the RayJob's name as its submitter whoever owns it (v1.6.2's
    ``createK8sJobIfNeed``): one left by a deleted RayJob of that name, which the garbage
    collector deletes a moment after its owner, made the new RayJob "finish" at once with
    the previous run's outcome. The operator's own deletions are in the foreground (the
    RayJob goes after its Job); this covers one deleted by someone else (``kubectl
    delete rayjob``: ``RayJobRecreated``). Without ``get`` on jobs (a ClusterRole from
    before it was needed; the preflight warns), or past ``SUBMITTER_WAIT_S``, the RayJob
    is created anyway."""
    meta = job["metadata"]
    deadline = time.monotonic() + SUBMITTER_WAIT_S
    while True:
        try:
            left = kube.get("batch/v1", "Job", meta["namespace"], meta["name"])
        except ApiError as exc:
            if exc.status == 403:
                return
            raise
        if left is None:
            return
        if time.monotonic() > deadline:
            log.warning("Job %s/%s (a previous RayJob's submitter?) is still there after "
                        "%.0f s: creating RayJob %s anyway; KubeRay may take it as the new "
                        "one's", meta["namespace"], meta["name"], SUBMITTER_WAIT_S,
                        meta["name"])
            return
        time.sleep(0.5)


def _foreign_submitter(kube: Kube, namespace: str, job_name: str) -> bool:
    """A Job of the RayJob's name that no RayJob of that name owns (a user's own, made
    before the run): KubeRay cannot create its submitter under that name ("jobs.batch
    already exists", a Warning on the RayJob only), and the run waited in Pending for
    ever, "waiting for the Ray cluster" (an operator audit). A previous RayJob's
    submitter (owned by a RayJob of the name, any uid) is waited for instead
    (``_await_old_submitter``). Without ``get`` on jobs (the preflight warns): False."""
    try:
        found = kube.get("batch/v1", "Job", namespace, job_name)
    except ApiError as exc:
        if exc.status == 403:
            return False
        raise
    if found is None:
        return False
    refs = (found.get("metadata") or {}).get("ownerReferences") or []
    return not any(r.get("kind") == "RayJob" and r.get("name") == job_name for r in refs)


def _get_tr(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(API_VERSION, KIND, namespace, name)


def _patch_status(kube: Kube, tr: dict[str, Any], patch: dict[str, Any], *,
                  precondition: bool = False) -> None:
    """Merge-patch ``status``. With ``precondition`` the patch carries ``tr``'s
    resourceVersion: the API server answers 409 if the TrainingRun changed since ``tr``
    was read (or was deleted and recreated under the same name)."""
    meta = tr["metadata"]
    body: dict[str, Any] = {"status": patch}
    if precondition and meta.get("resourceVersion"):
        body["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], body,
               subresource="status")


_EVENTS: dict[str, Kube] = {}
"""The API client for Events posted outside kopf's handlers (``init_memo`` sets it)."""


def _event(tr: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        try:
            kopf.event(tr, type=type_, reason=reason, message=message[:1000])
        except LookupError:
            # a thread of our own (the resync, a pod problem's re-check after its grace
            # period): kopf's event queue lives in its handlers' context variables, and
            # kopf.event there raised, so such an Event was dropped
            _post_event(_EVENTS["kube"], tr, type_, reason, message[:1000])
    except Exception:  # events are best effort
        log.debug("could not post event", exc_info=True)


EVENT_COMPONENT = "raykube-operator"
"""Who the run's Events are from (``kubectl describe``'s From; kopf's default: kopf)."""
EVENT_INSTANCE = os.environ.get("HOSTNAME") or EVENT_COMPONENT
EVENT_PREFIX = "raykube-event-"


def _post_event(kube: Kube, tr: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """One Event as kopf posts it (``kopf._cogs.clients.events.post_event``), by us."""
    meta = tr["metadata"]
    now = datetime.now(timezone.utc).isoformat()
    kube.create({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": meta["namespace"], "generateName": EVENT_PREFIX},
        "action": "Action?", "type": type_, "reason": reason, "message": message,
        "reportingComponent": EVENT_COMPONENT, "reportingInstance": EVENT_INSTANCE,
        "source": {"component": EVENT_COMPONENT},
        "involvedObject": {"apiVersion": tr.get("apiVersion") or API_VERSION,
                           "kind": tr.get("kind") or KIND, "name": meta["name"],
                           "uid": meta.get("uid"), "namespace": meta["namespace"]},
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": now})


def _owned(child: dict[str, Any], tr: dict[str, Any]) -> bool:
    uid = (tr.get("metadata") or {}).get("uid")
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs) if uid else True


def _ours_to_apply(child: dict[str, Any], tr: dict[str, Any]) -> bool:
    """Whether the operator may apply over this existing ConfigMap, ServiceAccount, Role
    or RoleBinding of ``tr``'s name: it is ``tr``'s, or an orphan of a same-named
    TrainingRun deleted with ``--cascade=orphan`` (labelled as that run's, owned by
    nothing), which the run takes over. Anything else is somebody's own object (a
    ConfigMap the user made, with no label of ours) or another owner's (the previous
    run's, until the garbage collector removes it): applying over it would add our data
    and ownerReference to it, and deleting the TrainingRun would then have the garbage
    collector delete the user's object. An orphan is what the operator made: it carries
    our ``managed-by``. ``raykube render``'s objects carry the run's label too, and no
    owner, but a GitOps tool manages them: taken over, they were rewritten under it and
    deleted with the TrainingRun. The RayJob is stricter (``_owned`` alone): an orphaned
    RayJob may still be training."""
    if _owned(child, tr):
        return True
    meta = child.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (not meta.get("ownerReferences")
            and labels.get(LABEL) == (tr.get("metadata") or {}).get("name")
            and labels.get(MANAGED_BY_LABEL) == OPERATOR_MANAGER
            and RENDERED_LABEL not in labels)


def _name_conflict(kube: Kube, tr: dict[str, Any],
                   foreign: list[tuple[str, str]]) -> dict[str, str]:
    """``SpecApplied=False``, reason ``NameConflict``, for children of our names that we
    may not take over (``foreign``: (kind, name)); nothing is created or changed. Status
    and event only when the message is new (the run is retried until they are gone)."""
    cur = tr.get("status") or {}
    gen = tr["metadata"].get("generation")
    what = ", ".join(f"{kind} {name}" for kind, name in foreign)
    one = len(foreign) == 1
    msg = (f"{what} {'exists' if one else 'exist'} and {'is' if one else 'are'} not owned by "
           f"this TrainingRun: rename the TrainingRun or delete {'it' if one else 'them'}")
    if any(kind == "Job" for kind, _ in foreign):
        msg += " (KubeRay names the RayJob's submitter Job after the run, and cannot make it)"
    now = st.now_rfc3339()
    # the spec was validated to get this far: say so (a conflict is not the spec's fault)
    conds = st.set_condition(cur.get("conditions"), st.VALIDATED, True, "SpecValid",
                             "the spec is valid", now=now, generation=gen)
    conds = st.set_condition(conds, st.SPEC_APPLIED, False, "NameConflict", msg, now=now,
                             generation=gen)
    patch = {"conditions": conds, "phase": st.phase_of(conds), "message": msg,
             "observedGeneration": gen}
    said = st.get_condition(cur.get("conditions"), st.SPEC_APPLIED) or {}
    if cur.get("message") != msg or said.get("reason") != "NameConflict":
        _patch_status(kube, tr, patch)
        _event(tr, "Warning", "NameConflict", msg)
    elif any(cur.get(k) != v for k, v in patch.items() if k != "conditions") or (
            said.get("observedGeneration") != gen):
        _patch_status(kube, tr, patch)  # a new generation, the same conflict: no Event
    return {f"{kind}/{name}": "conflict" for kind, name in foreign}


NAME_CONFLICT_WAIT = " (not this TrainingRun's) to be deleted or renamed"


def _raise_while_conflicting(results: dict[str, str], cfg: OperatorConfig) -> None:
    """A NameConflict over a child other than the RayJob (no watch tells us when it is
    gone; a deleted RayJob's event does): kopf retries the handler until it is gone."""
    waiting = sorted(k for k, v in results.items() if v == "conflict" and not k.startswith(
        "RayJob/"))
    if waiting:
        raise kopf.TemporaryError(f"waiting for {', '.join(waiting)}{NAME_CONFLICT_WAIT}",
                                  delay=cfg.retry_delay * 6)


# ------------------------------------------------------------------ TrainingRun
SERVING_ONLY = ("spec.serve", "spec.suspend")
"""Spec paths whose change never starts a new training run."""


@kopf.on.resume(*TR)
@kopf.on.create(*TR)
def on_trainingrun(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """First sight (or operator restart): validate and make sure the children exist."""
    _raise_while_conflicting(reconcile(dict(body), memo, changed=None), memo.cfg)


@kopf.on.update(*TR, field="spec")
def on_spec_change(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, **_: Any) -> None:
    """A spec edit: apply it as the module docstring says (suspend, serve, rerun, pending).

    Removing ``spec.rerun`` asks for nothing (a GitOps tool pruning the field, a user
    tidying the spec): only a new value is a request to run again."""
    changed = sorted({path for d in diff if not _rerun_removed(d) for path in _leaf_paths(
        "spec." + ".".join(str(p) for p in d[1]) if d[1] else "spec", d[2], d[3])})
    _raise_while_conflicting(reconcile(dict(body), memo, changed=changed), memo.cfg)


def _leaf_paths(path: str, old: Any, new: Any) -> list[str]:
    """The fields an edit of ``path`` changed: a section added or removed whole (kopf's
    diff says ``spec.train`` when the spec had no train: section) names its fields, as
    an edit inside it does (``spec.train.epochs``)."""
    whole = new if old is None else old if new is None else None
    if not isinstance(whole, dict) or not whole:
        return [path]
    return [leaf for k, v in whole.items()
            for leaf in _leaf_paths(f"{path}.{k}", None if old is None else v,
                                    None if new is None else v)]


def _rerun_removed(d: Any) -> bool:
    """A kopf diff item that removes ``spec.rerun`` (or sets it to null)."""
    op, path, _old, new = d
    return tuple(path) == ("rerun",) and op in ("remove", "change") and new is None


def _training_changed(changed: list[str] | None) -> bool:
    return any(not any(c == p or c.startswith(p + ".") for p in SERVING_ONLY)
               for c in changed or [])


def reconcile(body: dict[str, Any], memo: kopf.Memo, *, changed: list[str] | None
              ) -> dict[str, str]:
    """Validate, render, apply; returns what happened to each child (for logs/tests).

    ``changed``: the spec paths of the edit being handled; None when no edit is (first
    sight, a restart, a child's event, the resync).

    Handlers do not return it: kopf would store it in status, outside our schema."""
    cfg: OperatorConfig = memo.cfg
    kube: Kube = memo.kube
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    try:
        with _lock(memo, ns, name):
            try:
                results = _reconcile_locked(kube, cfg, body, changed=changed)
            except ChildRefused as exc:
                return _report_refused(kube, ns, name, exc)
        if results.get("promote"):
            # a finished run whose serve settings (or missing RayService) call for the
            # gate again: e.g. serve.minAccuracy lowered, serve.enabled turned back on
            promote(kube, cfg, memo, ns, name)
        return results
    except ApiError as exc:
        if kuberay_missing(exc):
            msg = _report_kuberay_missing(kube, ns, name)
            raise kopf.TemporaryError(msg, delay=cfg.retry_delay * 6) from exc
        raise _transient(exc, cfg) from exc


KUBERAY_MISSING = (
    f"KubeRay is not installed: the API server serves no {RAY_API} RayJob. Install the "
    "KubeRay operator 1.7.0 with its CRDs (Helm chart kuberay/kuberay-operator from "
    "https://ray-project.github.io/kuberay-helm/); this run starts once they are there")


def kuberay_missing(exc: ApiError) -> bool:
    """A 404 without a Status body: the API server serves no such resource type (KubeRay's
    CRDs are absent), as opposed to a missing object ("NotFound"). The only objects the
    operator creates from a type it does not own are KubeRay's."""
    return exc.status == 404 and exc.reason != "NotFound" and "page not found" in exc.message


def _report_kuberay_missing(kube: Kube, ns: str, name: str) -> str:
    """``SpecApplied=False``, reason ``KubeRayMissing``, phase Pending, and one Warning
    event: written once, not at every retry. The retry (kopf, every 6 x retry delay)
    creates the RayJob as soon as KubeRay's CRDs are installed."""
    try:
        tr = _get_tr(kube, ns, name)
        if tr is None:
            return KUBERAY_MISSING
        cur = tr.get("status") or {}
        gen = tr["metadata"].get("generation")
        now = st.now_rfc3339()
        conds = st.set_condition(cur.get("conditions"), st.VALIDATED, True, "SpecValid",
                                 "the spec is valid", now=now, generation=gen)
        conds = st.set_condition(conds, st.SPEC_APPLIED, False, "KubeRayMissing",
                                 KUBERAY_MISSING, now=now, generation=gen)
        patch = {"conditions": conds, "phase": st.phase_of(conds), "message": KUBERAY_MISSING,
                 "observedGeneration": gen}
        if any(cur.get(k) != v for k, v in patch.items()):
            _patch_status(kube, tr, patch)
            _event(tr, "Warning", "KubeRayMissing", KUBERAY_MISSING)
    except ApiError as exc:  # the status is a courtesy; the retry is what matters
        log.warning("could not report that KubeRay is missing on %s/%s: %s", ns, name, exc)
    return KUBERAY_MISSING


def _report_refused(kube: Kube, ns: str, name: str, exc: ChildRefused) -> dict[str, str]:
    """``Validated=False``, reason ``RefusedByAPIServer``, the API server's words, and one
    Warning event (not again for the same refusal of the same generation). Not retried:
    an edit of the spec reconciles again (so does the resync)."""
    msg = str(exc)
    tr = _get_tr(kube, ns, name)
    if tr is None:
        return {"validated": "False", "errors": msg}
    cur = tr.get("status") or {}
    gen = tr["metadata"].get("generation")
    said = st.get_condition(cur.get("conditions"), st.VALIDATED) or {}
    if (said.get("reason"), said.get("message"), said.get("observedGeneration")) != (
            REFUSED, msg, gen):
        log.warning("TrainingRun %s/%s: %s", ns, name, msg)
        conds = st.set_condition(cur.get("conditions"), st.VALIDATED, False, REFUSED, msg,
                                 now=st.now_rfc3339(), generation=gen)
        _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                 "observedGeneration": gen, "message": msg})
        _event(tr, "Warning", REFUSED, msg)
    return {"validated": "False", "errors": msg}


REFUSED = "RefusedByAPIServer"


def _reconcile_locked(kube: Kube, cfg: OperatorConfig, body: dict[str, Any], *,
                      changed: list[str] | None) -> dict[str, str]:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return {}  # going: ownerReferences clean up, nothing to create
    if changed is None and not body.get("status") and meta.get("uid"):
        results = _first_sight(kube, cfg, body)
        if results is not None:
            return results
    ns, name = meta["namespace"], meta["name"]
    tr = _get_tr(kube, ns, name)
    if tr is None or (tr.get("metadata") or {}).get("deletionTimestamp"):
        return {}  # gone or going: ownerReferences clean up, nothing to create
    if tr["metadata"].get("uid") != meta.get("uid") and meta.get("uid"):
        return {}  # deleted and recreated under the same name: the new one has its own event
    body = {**body, "spec": tr.get("spec"), "metadata": tr["metadata"]}  # the freshest spec
    prepared = _prepare(kube, cfg, body)
    if isinstance(prepared, dict):
        return prepared
    run, job, others = prepared
    cur = tr.get("status") or {}
    job_name = job["metadata"]["name"]
    finished = _finished(cur)
    current = kube.get(*_ref(job))
    job = keep_rerun(job, current)
    currents = [kube.get(*_ref(c)) for c in others]
    foreign = [("RayJob", job_name)] if current is not None and not _owned(current, tr) else []
    foreign += [(c["kind"], c["metadata"]["name"]) for c, now in zip(others, currents, strict=True)
                if now is not None and not _ours_to_apply(now, tr)]
    if current is None and _foreign_submitter(kube, ns, job_name):
        # (asked only when a RayJob is to be made: once ours exists, KubeRay has made
        # its submitter, and each reconcile would read the Job for nothing)
        foreign.append(("Job", job_name))
    if foreign:
        return _name_conflict(kube, tr, foreign)
    for now in (current, *currents):
        if now is not None:
            _take_back(kube, tr, now)
    action = plan_rayjob(current, job, finished=finished, edited=_edited(changed, tr),
                         rerun_pending=_rerun_pending(cur) or st.edit_pending(cur))
    if action == "terminating":
        # deleted by someone (KubeRay's finalizer holds it a moment): its DELETED event
        # reconciles again, and recreates it if the run is still active
        log.info("RayJob %s/%s is being deleted: reconciled again once it is gone", ns,
                 job_name)
        return {f"RayJob/{job_name}": "terminating"}
    # A rerun, or an active run's RayJob deleted by someone while an edit was pending:
    # either way a new RayJob of the edited spec resumes from the run directory
    with_edit = action == "rerun" or (action == "create" and bool(cur.get("rayJob")) and (
        st.edit_pending(cur) or _rerun_pending(cur)))
    # only a run directory with checkpoints in it can conflict: a run that failed before
    # its first epoch (a mistyped data.uri) was refused the very fix its failure asked for
    conflicts = _run_dir_conflict(kube, cfg, run) if with_edit and cur.get("checkpoint") else []
    if conflicts:
        return _refuse_rerun(kube, cfg, tr, run, job_name, conflicts, finished=finished)
    results: dict[str, str] = {}
    if action in ("create", "rerun", "suspend", "refresh", "unchanged", "update"):
        # the ConfigMap holds the spec the driver reads (also on a retry): it only
        # changes together with the RayJob (not on suspend-pending: the edit reaches
        # both while it is suspended)
        for c, now in zip(others, currents, strict=True):
            with _refused_as_child(c):
                result = apply_child(kube, c, now)
            results[f"{c['kind']}/{c['metadata']['name']}"] = result
            if result == "repaired":
                _child_edited(tr, f"{c['kind']} {c['metadata']['name']}",
                              drift.drifted(now, c))
    elif action in ("pending", "suspend-pending", "suspend-for-edit"):  # an edit waits
        results.update(_keep_while_pending(kube, tr, others, currents))
    with _refused_as_child(job):
        job_result = apply_rayjob(kube, job, current, action)
        results[f"RayJob/{job_name}"] = job_result
        if action == "unchanged" and (paths := rayjob_drift(current, job, cur)):
            repair_rayjob(kube, job, current, cur)
            results[f"RayJob/{job_name}"] = "repaired"
            _child_edited(tr, f"RayJob {job_name}", paths)
    edits = _edits_since_start(others, currents) if action in (
        "pending", "suspend-for-edit") else None
    return _applied(kube, cfg, tr, run, job_name, job_result, changed, results, edits=edits)


def _edits_since_start(others: list[dict[str, Any]], currents: list[dict[str, Any] | None]
                       ) -> list[str] | None:
    """The training fields in which the spec now differs from the one the run started
    with (the spec ConfigMap, which changes only together with the RayJob), or None when
    that cannot be read. The pending edit's message names these: fields edited and then
    edited back (``scaling.workers`` 2 -> 3 -> 2) are no longer named, where the names
    of every edit made since the start were gathered before."""
    import yaml

    for want, now in zip(others, currents, strict=True):
        if want["kind"] != "ConfigMap" or now is None:
            continue
        try:
            started, edited = ((yaml.safe_load(next(iter((o.get("data") or {}).values())))
                                or {}).get("spec") for o in (now, want))
        except (StopIteration, yaml.YAMLError, AttributeError):
            return None
        if not isinstance(started, dict) or not isinstance(edited, dict):
            return None
        paths = drift.differing_paths(started, edited, "spec")
        return [p for p in paths if _training_changed([p])] or None
    return None


def _keep_while_pending(kube: Kube, tr: dict[str, Any], others: list[dict[str, Any]],
                        currents: list[dict[str, Any] | None]) -> dict[str, str]:
    """The children besides the RayJob while an edit waits for the run to end. The
    ServiceAccount, Role and RoleBinding are the same for any spec: put back as always
    (deleted or edited). The ConfigMap holds the spec the run started with, which KubeRay's
    retries read, so it is left as it is; one deleted is made again, from the edited spec
    (the started one is gone with it), and a Warning says so. Before, nothing was put
    back while an edit waited: a retry's head pod was refused ("serviceaccount not
    found") and its pods waited for the ConfigMap's volume (an operator probe)."""
    results: dict[str, str] = {}
    for c, now in zip(others, currents, strict=True):
        what = f"{c['kind']}/{c['metadata']['name']}"
        if c["kind"] == "ConfigMap" and now is not None:
            continue
        with _refused_as_child(c):
            results[what] = apply_child(kube, c, now)
        if results[what] == "repaired":
            _child_edited(tr, f"{c['kind']} {c['metadata']['name']}", drift.drifted(now, c))
        elif c["kind"] == "ConfigMap":
            _warn(tr, "ChildRecreated", (
                f"ConfigMap {c['metadata']['name']} was deleted while an edit was pending: "
                "made again from the edited spec (the spec the run started with went with "
                "it), so KubeRay's retries of this run read the edit"))
    return results


def _take_back(kube: Kube, tr: dict[str, Any], child: dict[str, Any]) -> None:
    """Remove ``RENDERED_LABEL`` from a child of ``tr`` (and its pod templates), with a
    ChildEdited Warning: ``raykube render``'s output applied over the run's children
    labelled them so, and the watches then skipped them (status followed only at the
    resync, the pods of a new Ray cluster not at all). The spec the apply wrote is put
    back by the drift check as any hand edit's."""
    paths = drift.label_paths(child, RENDERED_LABEL)
    if not paths:
        return
    meta = child["metadata"]
    kube.json_patch(child["apiVersion"], child["kind"], meta["namespace"], meta["name"],
                    [{"op": "remove", "path": p} for p in paths])
    _warn(tr, "ChildEdited", (
        f"{child['kind']} {meta['name']} carried {RENDERED_LABEL}: `raykube render` "
        "output was applied over this TrainingRun's objects. They are the operator's: "
        "the label is removed and the spec put back as the TrainingRun renders it "
        "(render's output is for clusters without the operator, or another run name)"))


def _finished(status: dict[str, Any]) -> bool:
    """The run has an outcome (Succeeded or Failed) in ``status``."""
    return st.is_true(status.get("conditions"), st.SUCCEEDED) or st.is_true(
        status.get("conditions"), st.FAILED)


def _suspend_word(run: TrainingRun) -> str:
    """What a ``spec.suspend`` change did to the RayJob, for its condition and Event."""
    return "suspended" if run.spec.suspend else "resumed"


def _child_edited(tr: dict[str, Any], what: str, paths: list[str]) -> None:
    """Say that ``what`` (a child) was edited by someone and put back."""
    _warn(tr, "ChildEdited", f"{what} was edited outside this TrainingRun "
                             f"({drift.summary(paths)}): put back as the spec renders it "
                             "(edit the TrainingRun instead)")


def _warn(tr: dict[str, Any], reason: str, msg: str) -> None:
    """One log line and one Warning event (``reason``) on the TrainingRun."""
    log.warning("TrainingRun %s/%s: %s", tr["metadata"]["namespace"], tr["metadata"]["name"],
                msg)
    _event(tr, "Warning", reason, msg)


def _rerun_pending(status: dict[str, Any]) -> bool:
    return (st.get_condition(status.get("conditions"), st.SPEC_APPLIED) or {}).get(
        "reason") == st.RERUN_WAITING


SOME_FIELDS = "the spec"
"""What an edit is called when its fields are not known (made while the operator was
down: only the generation moved)."""


def _fields(pending: list[str], changed: list[str] | None) -> str:
    """The fields an edit pending from before and this one's (``changed``) name, once;
    ``the spec`` only when no field is known (it read 'the spec, spec.train.epochs')."""
    # a serve or suspend edit made alongside is applied at once, not pending
    names = list(dict.fromkeys([*pending, *[c for c in changed or []
                                            if _training_changed([c])]]))
    return ", ".join([n for n in names if n != SOME_FIELDS] or [SOME_FIELDS])


def _edited(changed: list[str] | None, tr: dict[str, Any]) -> bool:
    """Training fields were edited: this edit's paths say so, or, with no edit at hand, the
    generation moved since the operator last applied the spec (edited while it was down).
    A RayJob rendered differently by another operator version is no edit."""
    if changed is not None:
        return _training_changed(changed)
    status = tr.get("status") or {}
    return bool(status.get("rayJob")) and tr["metadata"].get("generation") != status.get(
        "observedGeneration")


SPEC_NOT_APPLIED = (st.SPEC_CHANGE_NOT_APPLIED, "RunDirConflict")
"""``SpecApplied=False`` reasons that a later reconcile of the finished run keeps: the
edit they name is still not applied (a restart must not turn them into ``Finished``)."""

RUN_DIR_IDENTITY = ("model", "data", "train.seed")
"""What a run directory's checkpoints are tied to (raykube.train refuses to resume them
with another model, dataset or seed, which splits train from validation): a new run of such a spec under the same name would fail
every KubeRay retry with RunDirConflict, each on a fresh Ray cluster."""


def _run_dir_conflict(kube: Kube, cfg: OperatorConfig, run: TrainingRun) -> list[str]:
    """The identity sections in which ``run`` differs from the spec its run directory was
    trained with (the spec ConfigMap of the finished run, which only changes with a run)."""
    from raykube.render import spec_configmap_name

    cm = kube.get("v1", "ConfigMap", run.namespace, spec_configmap_name(run))
    if cm is None:
        return []
    try:
        import yaml

        old = parse_training_run(yaml.safe_load(next(iter((cm.get("data") or {}).values()))))
    except Exception:  # unreadable: the driver's own check still stands
        return []
    if storage_id(old, cfg.render) != storage_id(run, cfg.render):
        return []  # a run directory on another volume or bucket: nothing there to resume

    def at(spec: Any, path: str) -> Any:
        for part in path.split("."):
            spec = getattr(spec, part)
        return spec

    return [f"spec.{k}" for k in RUN_DIR_IDENTITY if at(old.spec, k) != at(run.spec, k)]


def _refuse_rerun(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any], run: TrainingRun,
                  job_name: str, conflicts: list[str], *, finished: bool = True
                  ) -> dict[str, str]:
    """Refuse, before creating anything, a rerun its run directory cannot hold (also the
    RayJob of an active run deleted with such an edit pending: nothing is recreated
    until the edit is undone)."""
    from raykube.render import storage_root

    fields = ", ".join(conflicts)
    whose, kept = (("the finished run's", "The finished run is kept.") if finished else
                   ("the run's (its RayJob was deleted with this edit pending)",
                    "Nothing runs until the edit is undone, which recreates the RayJob and "
                    "resumes the run."))
    msg = (f"{fields} differs from {whose}: {storage_root(run, cfg.render)}/"
           f"{run.name} holds checkpoints of the previous model, dataset or seed (the seed "
           "decides the train/validation split), which a new run cannot resume; apply the "
           "new spec under a new metadata.name, or delete that run directory and create "
           f"the TrainingRun again (kubectl delete, then apply). {kept}")
    cur = tr.get("status") or {}
    gen = tr["metadata"].get("generation")
    now = st.now_rfc3339()
    # validated it was (the conflict is with what the run directory holds)
    conds = st.set_condition(cur.get("conditions"), st.VALIDATED, True, "SpecValid",
                             "the spec is valid", now=now, generation=gen)
    conds = st.set_condition(conds, st.SPEC_APPLIED, False, "RunDirConflict", msg, now=now,
                             generation=gen)
    # the message too: `kubectl get tr -o wide` went on saying how the finished run
    # ended, and only describe said the edit was refused
    patch = {"conditions": conds, "observedGeneration": gen, "message": msg}
    if not finished:
        # no RayJob runs: the deleted one's last state ("waiting for the Ray cluster")
        # no longer describes anything
        conds = st.set_condition(conds, st.RUNNING, False, "RunDirConflict",
                                 "nothing runs: its RayJob was deleted with an edit pending "
                                 "that the run directory cannot take (SpecApplied)",
                                 now=now, generation=gen)
        patch["conditions"] = conds
    patch["phase"] = st.phase_of(conds)
    if any(cur.get(k) != v for k, v in patch.items()):
        _patch_status(kube, tr, patch)
        _event(tr, "Warning", "RunDirConflict", msg)
    return {f"RayJob/{job_name}": "conflict"}


def _prepare(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any], *, precondition: bool = False
             ) -> tuple[TrainingRun, dict[str, Any], list[dict[str, Any]]] | dict[str, str]:
    """Parse and render ``tr``: (run, annotated RayJob, other children), or, for a spec
    the operator cannot run, the result after reporting it (status + Warning event)."""
    meta = tr["metadata"]
    gen = meta.get("generation")
    cur = tr.get("status") or {}
    now = st.now_rfc3339()
    try:
        run = _parse(tr)
    except InvalidTrainingRun as exc:
        msg = "; ".join(f"{e.path}: {e.message}" for e in exc.errors)
        said = st.get_condition(cur.get("conditions"), st.VALIDATED) or {}
        if (said.get("reason"), said.get("message"), said.get("observedGeneration")) == (
                "InvalidSpec", msg, gen):
            # said already (an operator restart, a retry): no second Warning, no write
            return {"validated": "False", "errors": msg}
        conds = st.set_condition(cur.get("conditions"), st.VALIDATED, False,
                                 "InvalidSpec", msg, now=now, generation=gen)
        _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                 "observedGeneration": gen, "message": msg},
                      precondition=precondition)
        _event(tr, "Warning", "InvalidSpec", msg)
        return {"validated": "False", "errors": msg}

    try:
        children = render_training(run, cfg.render, owner=_owner(meta))
    except Exception as exc:  # a valid spec render cannot handle: a bug, say so and stop
        msg = f"could not render the Kubernetes objects: {type(exc).__name__}: {exc}"
        conds = st.set_condition(cur.get("conditions"), st.VALIDATED, False, "RenderFailed",
                                 msg, now=now, generation=gen)
        _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                 "observedGeneration": gen, "message": msg},
                      precondition=precondition)
        _event(tr, "Warning", "RenderFailed", msg)
        raise kopf.PermanentError(msg) from exc
    rerun = {RERUN_ANNOTATION: run.spec.rerun} if run.spec.rerun else {}
    job = next(_annotate(c, {TRAINING_HASH: training_hash(run, c), **rerun})
               for c in children if c.get("kind") == "RayJob")
    return run, job, [c for c in children if c.get("kind") != "RayJob"]


def _first_sight(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any]) -> dict[str, str] | None:
    """The fast path for a TrainingRun kopf shows us with no status at all (just created,
    or created while the operator was down): nothing of ours can exist yet, so create the
    children straight away, without reading the TrainingRun or any child first.

    The body kopf gave is used as is; the status patch carries its resourceVersion, so
    a TrainingRun changed (or recreated) meanwhile is re-read instead of overwritten.
    Returns None when anything already exists (a 409 on any create: a retry after a
    partial attempt, or another TrainingRun's leftovers): the caller then takes the
    careful read-first path, which checks ownership before touching anything.

    Order: ConfigMap, ServiceAccount, Role, RoleBinding, then the RayJob, as on the
    read-first path: the RayJob's pods mount the ConfigMap and run as the
    ServiceAccount, so they exist (with this spec) before KubeRay starts any pod."""
    prepared = _prepare(kube, cfg, tr, precondition=True)
    if isinstance(prepared, dict):
        return prepared
    run, job, others = prepared
    if _foreign_submitter(kube, job["metadata"]["namespace"], job["metadata"]["name"]):
        return None  # the careful path says NameConflict, before anything is created
    results: dict[str, str] = {}
    try:
        for child in [*(_annotate(c) for c in others), job]:
            # 409: something of that name exists (a retry after a partial attempt, a
            # leftover, the user's own object): the careful path decides whose it is
            with _refused_as_child(child):
                kube.create(child)
            results[f"{child['kind']}/{child['metadata']['name']}"] = "created"
    except ApiError as exc:
        if exc.status == 409:
            return None
        raise
    try:
        return _applied(kube, cfg, tr, run, job["metadata"]["name"], "created", None, results,
                        precondition=True)
    except ApiError as exc:
        if exc.status != 409:
            raise
    # the TrainingRun changed between kopf's event and our status patch: write the same
    # outcome onto the fresh status (the RayJob is ours: we just created it)
    meta = tr["metadata"]
    fresh = _get_tr(kube, meta["namespace"], meta["name"])
    if fresh is None or fresh["metadata"].get("uid") != meta.get("uid") or (
            fresh["metadata"].get("deletionTimestamp")):
        return results
    return _applied(kube, cfg, fresh, run, job["metadata"]["name"], "created", None, results)


def _valid_again(cur: dict[str, Any], job_result: str) -> str:
    """The run's message once an invalid edit is mended. A finished run's is its outcome
    again (it said "the spec is valid now; the run goes on unchanged" for good, over why
    the run had failed: an operator audit); an edit that waits for the running job says
    so ("RayJob pending" read as a RayJob that had not started)."""
    conds = cur.get("conditions")
    if job_result in ("unchanged", "finished") and _finished(cur):
        serving = cur.get("serving") or {}
        if st.is_true(conds, st.READY) and serving.get("endpoint"):
            return f"serving {serving.get('checkpoint')} at {serving['endpoint']}"
        for type_ in (st.FAILED, st.SUCCEEDED):
            if st.is_true(conds, type_):
                return (st.get_condition(conds, type_) or {}).get("message") or type_.lower()
    if job_result in ("unchanged", "finished"):
        return "the spec is valid now; the run goes on unchanged"
    if job_result == "pending":
        return "the spec is valid now; the edit waits for the running job to end"
    if job_result == "suspend-for-edit":
        return ("the spec is valid now; the Ray cluster that was starting is stopped and "
                "started again with the edit")
    return f"the spec is valid now: RayJob {job_result}"


def _applied(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any], run: TrainingRun,
             job_name: str, job_result: str, changed: list[str] | None,
             results: dict[str, str], *, precondition: bool = False,
             edits: list[str] | None = None) -> dict[str, str]:
    """After the RayJob action: one status patch (if anything changed), the event, the
    RayService follow-up. ``tr`` is the TrainingRun as last read (its status is the
    base of the conditions written). ``edits``: ``_edits_since_start``, which a pending
    edit's message names when known."""
    meta = tr["metadata"]
    gen = meta.get("generation")
    cur = tr.get("status") or {}
    now = st.now_rfc3339()
    old_applied = st.get_condition(cur.get("conditions"), st.SPEC_APPLIED)
    if job_result == "unchanged" and not cur.get("rayJob") and old_applied is None:
        # ours, and the status never said so: created just before an operator was killed
        job_result = "created"
    was_invalid = (st.get_condition(cur.get("conditions"), st.VALIDATED) or {}).get(
        "status") == "False"
    recreated = job_result == "created" and bool(cur.get("rayJob"))

    conds = st.set_condition(cur.get("conditions"), st.VALIDATED, True, "SpecValid",
                             "the spec is valid", now=now, generation=gen)
    patch: dict[str, Any] = {"rayJob": job_name, "observedGeneration": gen}
    if was_invalid:
        # "the spec is valid now: RayJob unchanged" read as news of the RayJob for the
        # ~40 s of training until KubeRay's next status (on the real node)
        patch["message"] = _valid_again(cur, job_result)
    elif (st.get_condition(cur.get("conditions"), st.SPEC_APPLIED) or {}).get(
            "reason") == "KubeRayMissing":
        patch["message"] = f"KubeRay is installed now: RayJob {job_result}"
    events: list[tuple[str, str, str]] = []
    pending = st.pending_fields(old_applied)
    # the fields of this edit and of one not applied yet (pending, or a waiting rerun's)
    fields = _fields(st.named_fields(old_applied), changed)
    # every field edited since the run started, not only the last edit's
    since_start = _fields(pending, changed)
    if edits:  # in the order they were edited, those edited back left out
        named = since_start.split(", ")
        since_start = ", ".join([n for n in named if n in edits]
                                + [e for e in edits if e not in named])
    if job_result == "pending":
        msg, reason = st.spec_change_pending(since_start), st.SPEC_CHANGE_PENDING
        if changed is None and pending:  # a restart, an event: said already (the reason
            # too: SpecChangeBeforeStart while KubeRay suspends the RayJob for the edit)
            msg, reason = old_applied.get("message") or msg, old_applied.get("reason") or reason
        elif (old_applied or {}).get("message") != msg:
            # not again for what the condition says already: an edit made while the
            # operator was down reached both its resume and kopf's update handler, two
            # Events in one second (an operator probe)
            events.append(("Normal", st.SPEC_CHANGE_PENDING, msg))
        conds = st.set_condition(conds, st.SPEC_APPLIED, False, reason, msg, now=now,
                                 generation=gen)
    elif job_result == "suspend-for-edit":
        msg = st.spec_change_before_start(since_start)
        events.append(("Normal", st.SPEC_CHANGE_BEFORE_START, msg))
        conds = st.set_condition(conds, st.SPEC_APPLIED, False, st.SPEC_CHANGE_BEFORE_START,
                                 msg, now=now, generation=gen)
        patch["message"] = msg
    elif job_result == "deleting":
        when = "while the previous run ran" if pending else "after the run finished"
        msg = st.rerun_waiting(fields, when, job_name)
        if changed is None and old_applied and old_applied.get("reason") == st.RERUN_WAITING:
            msg = old_applied.get("message") or msg  # said already (a restart, an event)
        conds = st.set_condition(conds, st.SPEC_APPLIED, False, st.RERUN_WAITING, msg, now=now,
                                 generation=gen)
        patch["message"] = msg
        log.info("TrainingRun %s/%s: waiting for the previous RayJob %s to be deleted; the "
                 "new run starts then", meta["namespace"], meta["name"], job_name)
    elif job_result == "finished" and (old_applied or {}).get("status") == "False" and (
            old_applied or {}).get("reason") in SPEC_NOT_APPLIED:
        pass  # the finished run's RayJob still ran an older spec: still not applied
    elif job_result == "suspend" and pending:
        pass  # suspended now; the pending edit reaches the RayJob while it is suspended
    else:
        reason = {"created": "Created", "unchanged": "UpToDate", "updated": "Updated",
                  "suspend": "SuspendUpdated", "refresh": "Updated", "rerun": "Rerun",
                  "finished": "Finished", "update": "UpdatedWhileSuspended"}[job_result]
        message = (f"RayJob {'updated' if job_result == 'refresh' else job_result}"
                   if job_result != "update" else
                   f"{_fields(pending, changed)} applied to the suspended RayJob: the run "
                   "resumes with it")
        if job_result == "rerun":
            message = f"RayJob rerun for {fields}"
        elif job_result == "suspend":  # it read "RayJob suspend" either way
            message = f"RayJob {_suspend_word(run)}"
        elif job_result == "unchanged" and pending:
            # the pending edit undone: the condition flips back without an Event
            # before (a fault probe on the real node)
            message = st.spec_change_undone(", ".join(pending))
            events.append(("Normal", "SpecChangeUndone", message))
        old = st.get_condition(conds, st.SPEC_APPLIED)
        if job_result == "unchanged" and old is not None and old.get("status") == "True" and (
                old.get("observedGeneration") == gen):
            # a no-op of the same spec keeps the reason of the last real action (Created,
            # Rerun, ...); an edit that asks for nothing (a removed spec.rerun, a label)
            # must not be reported as that action again
            reason, message = old.get("reason") or reason, old.get("message") or message
        elif job_result == "unchanged" and _finished(cur):
            reason, message = "Finished", "RayJob finished"
        conds = st.set_condition(conds, st.SPEC_APPLIED, True, reason, message, now=now,
                                 generation=gen)
    if recreated:
        # a pending edit (or a waiting rerun's) goes into the new RayJob: say so
        edit = fields if (pending or st.named_fields(old_applied)) else ""
        msg = (f"RayJob {job_name} was deleted while the run was active: recreated it"
               + (f" with the pending edit of {edit}" if edit else "")
               + "; training resumes from the latest checkpoint")
        if edit:
            conds = st.set_condition(conds, st.SPEC_APPLIED, True, "Created",
                                     f"RayJob recreated with {edit}", now=now,
                                     generation=gen)
        conds = st.set_condition(conds, st.RUNNING, False, "RayJobRecreated", msg, now=now,
                                 generation=gen)
        patch["message"] = msg
        events.append(("Warning", "RayJobRecreated", msg))
    elif job_result == "created" and st.get_condition(conds, st.RUNNING) is None:
        conds = st.set_condition(conds, st.RUNNING, False, "Created",
                                 "RayJob created; waiting for KubeRay", now=now,
                                 generation=gen)
        # the MESSAGE column too: with KubeRay's controller down it stayed empty
        patch.setdefault("message", "suspended (spec.suspend is true)" if run.spec.suspend
                         else "RayJob created; waiting for KubeRay")
    if job_result == "rerun":
        msg = "a new run was started for the changed spec"
        for t in (st.SUCCEEDED, st.FAILED):
            if st.get_condition(conds, t) is not None:
                conds = st.set_condition(conds, t, "Unknown", "Rerun", f"{msg}: no outcome yet",
                                         now=now, generation=gen)
        conds = st.set_condition(conds, st.RUNNING, False, "Rerun", msg, now=now,
                                 generation=gen)
        patch.update({"startTime": None, "completionTime": None, "attempts": None,
                      "jobId": None, "permanentFailure": None, "message": msg})
    if run.spec.suspend and job_result in ("created", "suspend"):
        conds = st.set_condition(conds, st.RUNNING, False, "Suspended",
                                 "spec.suspend is true", now=now, generation=gen)
    patch["conditions"] = conds
    patch["phase"] = st.phase_of(conds)
    if any(cur.get(k) != v for k, v in patch.items()):
        _patch_status(kube, tr, patch, precondition=precondition)
    for type_, reason, msg in events:
        _event(tr, type_, reason, msg)
    if job_result in ("created", "rerun", "suspend") and not recreated:
        _event(tr, "Normal", {"created": "Created", "rerun": "Rerun",
                              "suspend": "Suspend"}[job_result],
               f"RayJob {job_name}: " + (
                   f"rerun for {fields}" if job_result == "rerun" else
                   _suspend_word(run) if job_result == "suspend" else job_result))
    _reconcile_rayservice(kube, cfg, tr, run, now=now, gen=gen, results=results)
    if (job_result not in ("rerun", "deleting") and run.spec.serve.enabled
            and st.is_true(conds, st.SUCCEEDED)):
        results["promote"] = "gate"
    return results


def _reconcile_rayservice(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any], run: TrainingRun,
                          *, now: str, gen: int | None, results: dict[str, str]) -> None:
    """serve changes reach an existing RayService; serve.enabled=false removes it."""
    name = run.name
    cur = tr.get("status") or {}
    if (not cur.get("rayService") and st.get_condition(cur.get("conditions"), st.SUCCEEDED)
            is None and st.get_condition(cur.get("conditions"), st.PROMOTED) is None):
        return  # never succeeded, never promoted: no RayService of ours can exist
    svc_name = rayservice_name(run)
    svc = kube.get(RAY_API, "RayService", run.namespace, svc_name)
    if svc is None or not _owned(svc, tr):
        return
    _take_back(kube, tr, svc)
    if not run.spec.serve.enabled:
        kube.delete(RAY_API, "RayService", run.namespace, svc_name)
        results[f"RayService/{svc_name}"] = "deleted"
        fresh = _get_tr(kube, run.namespace, name) or tr
        conds = st.remove_condition((fresh.get("status") or {}).get("conditions"), st.READY)
        conds = st.set_condition(conds, st.PROMOTED, False, "ServeDisabled",
                                 "spec.serve.enabled is false", now=now, generation=gen)
        said = f"spec.serve.enabled is false: RayService {svc_name} deleted"
        patch = {"conditions": conds, "phase": st.phase_of(conds), "serving": None,
                 "rayService": None}
        if ((fresh.get("status") or {}).get("message") or "").startswith("serving "):
            patch["message"] = said  # it went on saying "serving <checkpoint> at <url>"
        _patch_status(kube, fresh, patch)
        _event(tr, "Normal", "ServeDisabled", said)  # the phase leaves Serving: say why
        return
    checkpoint = _ann(svc, CHECKPOINT_ANNOTATION)
    if checkpoint and not in_storage(checkpoint, run, cfg.render, _served_on(svc)):
        # checkpoint.storage was edited (a new run): the checkpoint served is on the
        # storage the spec named before, which pods rendered for the new one cannot
        # read (no volume, another claim at the same path, or no S3 settings);
        # KubeRay's upgrade would never be ready. The live RayService stays as it is
        # until a checkpoint of the new storage is promoted (serve.enabled=false still
        # removes it).
        log.info("RayService %s/%s serves %s, outside the run's storage now: kept as it is "
                 "until the new run's checkpoint is promoted", run.namespace, svc_name,
                 checkpoint)
        return
    if checkpoint:
        obj = render_rayservice(run, cfg.render, checkpoint, owner=_owner(tr["metadata"]))
        kept = {ACCURACY_ANNOTATION: a} if (a := _ann(svc, ACCURACY_ANNOTATION)) else {}
        obj = _annotate(obj, {CHECKPOINT_ANNOTATION: checkpoint,
                              STORAGE_ANNOTATION: storage_id(run, cfg.render), **kept,
                              **serve_settings(run)})
        current = kube.get(*_ref(obj))
        results[f"RayService/{svc_name}"] = result = apply_child(kube, obj, current)
        if result == "repaired" and current is not None:
            _child_edited(tr, f"RayService {svc_name}", drift.drifted(current, obj))
        elif result == "updated" and current is not None:
            _serve_updated(tr, current, obj)


SERVE_GATE = ("enabled", "minAccuracy")
"""``spec.serve`` fields that decide whether a checkpoint serves, not how: they are not
rendered into the RayService (a gate edit changes no pod and no serve config)."""


def serve_settings(run: TrainingRun) -> dict[str, str]:
    """``SERVE_ANNOTATION``: the ``spec.serve`` settings a RayService was rendered from,
    so that a later update can say which of them changed, whichever path applies it (the
    edit's handler, the ConfigMap's event, the gate's re-check race for it)."""
    sv = {k: v for k, v in run.spec.serve.to_dict().items() if k not in SERVE_GATE}
    return {SERVE_ANNOTATION: json.dumps(sv, sort_keys=True, separators=(",", ":"))}


def serve_update_message(svc_name: str, before: str | None, after: str | None,
                         paths: list[str]) -> str | None:
    """The ``ServeUpdated`` Event's message for a RayService updated in place (its
    checkpoint unchanged), or None when only its metadata moved (another operator
    version's annotations: nothing the user changed). ``before``/``after``: its
    ``SERVE_ANNOTATION`` then and now; ``paths``: ``drift.drifted(before, after)``.
    A new serve config is applied by Ray Serve on the running cluster; a change to the
    cluster's pods (replicas, CPUs, memory, GPUs) is KubeRay's zero-downtime upgrade,
    which starts a second Ray cluster and moves traffic once it is ready (on a small node
    it waits for room, and the serving message says so)."""
    if all(p.startswith("metadata") for p in paths):
        return None
    try:
        old, new = json.loads(before or "null"), json.loads(after or "null")
    except ValueError:  # edited by someone: the fields are not known
        old = new = None
    what = ""
    if isinstance(old, dict) and isinstance(new, dict):
        named = [f"spec.serve.{k} {old.get(k)!r} -> {new.get(k)!r}"
                 for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        what = f" ({', '.join(named)})" if named else ""
    if any(p.startswith("spec.rayClusterConfig") for p in paths):
        how = ("KubeRay starts a new Ray cluster with it and moves traffic there once it "
               "is ready; the current one serves meanwhile")
    else:
        how = "Ray Serve applies it in place on the running cluster"
    return f"RayService {svc_name} updated{what}: {how}"


def _serve_updated(tr: dict[str, Any], current: dict[str, Any], obj: dict[str, Any]) -> None:
    """One Normal ``ServeUpdated`` Event for a RayService brought up to date with the same
    checkpoint (a serve edit): before, the live service changed with no word."""
    message = serve_update_message(obj["metadata"]["name"], _ann(current, SERVE_ANNOTATION),
                                   _ann(obj, SERVE_ANNOTATION), drift.drifted(current, obj))
    if message is not None:
        _event(tr, "Normal", "ServeUpdated", message)


def promoted_accuracy(checkpoint: dict[str, Any] | None) -> dict[str, str]:
    """``ACCURACY_ANNOTATION`` for the checkpoint promoted (``status.checkpoint``), or
    nothing when it has no finite ``valAccuracy``."""
    acc = ((checkpoint or {}).get("metrics") or {}).get("valAccuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
        return {}
    return {ACCURACY_ANNOTATION: repr(float(acc))}


def _served_accuracy(svc: dict[str, Any]) -> float | None:
    try:
        acc = float(_ann(svc, ACCURACY_ANNOTATION) or "nan")
    except ValueError:  # edited by someone: no figure rather than a wrong one
        return None
    return acc if math.isfinite(acc) else None


def _served_on(svc: dict[str, Any]) -> str | None:
    """The storage a promoted RayService reads its checkpoint from: its
    ``STORAGE_ANNOTATION``, or for one promoted before that was written, the claim its
    pods mount (None for an s3:// run's: its checkpoint's URI names the bucket)."""
    return _ann(svc, STORAGE_ANNOTATION) or served_storage_id(svc)


# ---------------------------------------------------------------------- RayJob status
# RayJobs and RayServices are followed with kopf.on.event, which keeps no bookkeeping: a
# kopf.on.field handler would store kopf's last-handled-configuration annotation on them,
# and KubeRay copies a RayJob's annotations into its RayCluster. Objects whose schema is
# KubeRay's carry only what we render.
def _sync_rayjob_status(memo: kopf.Memo, ns: str, tr_name: str, job_name: str) -> None:
    """KubeRay moved the job: map it onto the TrainingRun, promote on success.

    The RayJob is read here, under the run's lock, not taken from the watch event: a
    pod's event and the RayJob's own are handled on different threads, and an older
    RayJob mapped after a newer one set the status back a step (a retry read as
    ``JobPending`` between two ``Retrying``, each with its Event). A RayJob being deleted
    is not followed: it is no longer the run's (a rerun's previous RayJob, or one deleted
    by someone, which its DELETED event handles)."""
    cfg: OperatorConfig = memo.cfg
    kube: Kube = memo.kube
    with _lock(memo, ns, tr_name):
        rayjob = kube.get(RAY_API, "RayJob", ns, job_name)
        if rayjob is None or rayjob["metadata"].get("deletionTimestamp") or not (
                rayjob.get("status")):
            return
        tr = _get_tr(kube, ns, tr_name)
        if tr is None or not _owned(rayjob, tr):
            return
        cur = tr.get("status") or {}
        if _asked_to_cancel(cur):  # the driver's request, if its own handler missed it
            tr = _cancel_retries(kube, tr)
            cur = tr.get("status") or {}
        cluster = (rayjob.get("status") or {}).get("rayClusterName")
        problems = _pod_problems(memo, ns, tr_name, lambda c: c is None or (
            cluster and c == cluster), cur)  # None: the submitter
        patch = st.status_from_rayjob(
            rayjob, cur, now=st.now_rfc3339(), generation=tr["metadata"].get("generation"),
            pod_problems=problems)
        changed = any(cur.get(k) != v for k, v in patch.items())
        if changed:
            _patch_status(kube, tr, patch)
        event = st.phase_event(cur, patch)
        if event is not None:
            _event(tr, *event)
        if stale := st.cluster_left_running(rayjob):
            _stop_past_deadline(kube, tr, stale)
        succeeded = st.is_true(patch["conditions"], st.SUCCEEDED)
        ended = succeeded or st.is_true(patch["conditions"], st.FAILED)
        suspended = (rayjob.get("status") or {}).get("jobDeploymentStatus") == "Suspended"
    if succeeded and changed:
        promote(kube, cfg, memo, ns, tr_name)
    if (ended or suspended) and st.edit_pending(patch):
        # an edit made while it ran: the run it waited for is over, a new one starts
        # (once this RayJob is deleted); the status holds that, so a restart does it too.
        # Suspended: nothing runs now, so the edit reaches the RayJob at once
        # (UpdatedWhileSuspended) instead of staying "pending" until the resume
        _unwrap(lambda: reconcile(tr, memo, changed=None))


def _stop_past_deadline(kube: Kube, tr: dict[str, Any], cluster: str) -> None:
    """Delete the Ray cluster of a run that KubeRay failed for its deadline but left
    running (``st.cluster_left_running``), so that nothing trains after the run says
    Failed; one Warning, when the delete is ours (a cluster already going says nothing)."""
    meta = tr["metadata"]
    rc = kube.get(RAY_API, "RayCluster", meta["namespace"], cluster)
    if rc is None or rc["metadata"].get("deletionTimestamp"):
        return
    if kube.delete(RAY_API, "RayCluster", meta["namespace"], cluster):
        _warn(tr, "DeadlineStop", (
            f"spec.activeDeadlineSeconds passed: KubeRay failed the RayJob but left its "
            f"Ray job running; RayCluster {cluster} is deleted so that it stops (the "
            "submitter pod's log keeps the driver's output)"))


def _asked_to_cancel(status: dict[str, Any]) -> bool:
    report = status.get("permanentFailure") or {}
    return bool(report.get("message")) and report.get("retriesCancelled") is None


def _cancel_retries(kube: Kube, tr: dict[str, Any]) -> dict[str, Any]:
    """Answer the driver's ``status.permanentFailure`` (``st.retry_cancellation``): lower
    the RayJob's ``backoffLimit`` so that KubeRay does not retry the attempt, then say so
    in ``retriesCancelled``, which the driver waits for before it exits. Call with the
    run's lock held; returns the TrainingRun as patched."""
    meta, cur = tr["metadata"], tr.get("status") or {}
    report = cur["permanentFailure"]
    name = cur.get("rayJob")
    job = kube.get(RAY_API, "RayJob", meta["namespace"], name) if name else None
    if job is not None and not _owned(job, tr):
        job = None
    limit, cancelled = st.retry_cancellation(job, report)
    if limit is not None:
        kube.patch(RAY_API, "RayJob", meta["namespace"], name, {"spec": {"backoffLimit": limit}})
    patched = kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"],
                         {"status": {"permanentFailure": {"retriesCancelled": cancelled}}},
                         subresource="status")
    if cancelled:
        _event(tr, "Normal", "RetriesCancelled",
               f"{report['message']}: KubeRay will not retry (a new attempt would fail "
               "the same way)")
    else:
        log.info("TrainingRun %s/%s asked to cancel retries too late (RayJob %s)",
                 meta["namespace"], meta["name"],
                 ((job or {}).get("status") or {}).get("jobDeploymentStatus", "missing"))
    return patched


@kopf.on.field(*TR, field="status.permanentFailure")
def on_permanent_failure(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The driver reports that its attempt failed for a cause every attempt would meet,
    and waits for the answer (``_cancel_retries``) before it exits."""
    if not _asked_to_cancel(dict(body.get("status") or {})):
        return
    ns, name = body.metadata.namespace, body.metadata.name
    try:
        with _lock(memo, ns, name):
            tr = _get_tr(memo.kube, ns, name)
            if tr is not None and _asked_to_cancel(tr.get("status") or {}):
                _cancel_retries(memo.kube, tr)
    except ApiError as exc:
        raise _transient(exc, memo.cfg) from exc


@kopf.on.field(*TR, field="status.workerFailures")
def on_worker_failure(old: Any, new: Any, body: kopf.Body, **_: Any) -> None:
    """The driver reported a failure of Ray Train's worker group (a worker killed, a
    node lost, an exception in the loop): one Warning Event, the record of it that
    outlives the attempt (the next attempt's driver clears the field). kopf keeps the
    last value handled in the TrainingRun's annotation, so an operator restarted later
    does not announce it again."""
    if event := st.worker_failure_event(old, new):
        _event(dict(body), *event)


@kopf.on.event("ray.io", "v1", "rayjobs", labels=OUR_CHILDREN, when=_followed)
def on_rayjob_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A RayJob changed (status: follow it) or was deleted behind our back.

    Deleted while the run is active: the RayJob is recreated (KubeRay starts a new Ray
    cluster; the driver resumes from the latest checkpoint); once the run has finished it
    is not (that would train again), the TrainingRun keeps its outcome. Its spec edited
    by someone: put back (``_spec_written``)."""
    if type == "DELETED":
        _spec_written(memo, type, body)

        def again() -> None:
            # not only its owner: a same-named successor may be waiting (NameConflict)
            tr = _owner_of(body, memo.kube, owned=False)
            if tr is not None:
                reconcile(tr, memo, changed=None)

        _retrying(memo, f"reconciling after RayJob {body.metadata.name} was deleted",
                  lambda: _unwrap(again))
        return
    if _spec_written(memo, type, body) or RENDERED_LABEL in body.metadata.labels:
        # a label-only apply of render's output moves no generation: still ours to take back
        _reconcile_owner(memo, body, "was changed")
    if body.get("status") and not body.metadata.get("deletionTimestamp"):
        ns, tr_name, name = body.metadata.namespace, body.metadata.labels[LABEL], body.metadata.name
        _retrying(memo, f"following RayJob {name}",
                  lambda: _sync_rayjob_status(memo, ns, tr_name, name))


def _spec_written(memo: kopf.Memo, type: str | None, body: kopf.Body) -> bool:
    """A RayJob's or RayService's spec was written since the operator last saw it (its
    ``metadata.generation`` moved on a MODIFIED event): by us (a reconcile finds nothing
    to do) or by someone's edit, which the reconcile puts back (``drift``). The first
    sight of a child records its generation only (the resume handler reconciles every
    run at start)."""
    meta = body.metadata
    uid, gen = meta.get("uid"), meta.get("generation")
    if type == "DELETED":
        with memo.runs_guard:
            memo.generations.pop(uid, None)
        return False
    with memo.runs_guard:
        seen = memo.generations.get(uid)
        memo.generations[uid] = gen
    return (type == "MODIFIED" and seen is not None and gen != seen
            and not meta.get("deletionTimestamp"))


def _reconcile_owner(memo: kopf.Memo, body: kopf.Body, what: str) -> None:
    """Reconcile the TrainingRun that owns ``body`` (a child that ``what``)."""
    desc = f"{body.get('kind', 'object')} {body.metadata.namespace}/{body.metadata.name}"

    def again() -> None:
        tr = _owner_of(body, memo.kube)
        if tr is not None:
            reconcile(tr, memo, changed=None)

    _retrying(memo, f"reconciling after {desc} {what}", lambda: _unwrap(again))


# ------------------------------------------------- the RayJob's companions, deleted
@kopf.on.event("", "v1", "configmaps", labels=OUR_CHILDREN, when=_followed)
@kopf.on.event("", "v1", "serviceaccounts", labels=OUR_CHILDREN, when=_followed)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=OUR_CHILDREN, when=_followed)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=OUR_CHILDREN, when=_followed)
def on_companion_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The spec ConfigMap, the driver's ServiceAccount, Role or RoleBinding deleted
    behind our back: reconcile its run, which applies it again while the run is active
    (KubeRay's next Ray pods mount the ConfigMap and run as the ServiceAccount: without
    them no pod of a retry could start, and nothing said why). A finished run's are not
    recreated, as its RayJob is not. Edited (MODIFIED): reconciled too, which puts back
    what the render sets (``drift``; each of our own applies costs one reconcile that
    finds nothing to do). Other events cost nothing (no API call)."""
    if type == "MODIFIED" and not body.metadata.get("deletionTimestamp"):
        _reconcile_owner(memo, body, "was changed")
        return
    if type != "DELETED":
        return
    what = f"{body.get('kind', 'object')} {body.metadata.namespace}/{body.metadata.name}"

    def again() -> None:
        tr = _owner_of(body, memo.kube)
        if tr is not None:
            log.info("%s of a run was deleted: reconciling its run", what)
            reconcile(tr, memo, changed=None)

    _retrying(memo, f"reconciling after {what} was deleted", lambda: _unwrap(again))


# ------------------------------------------------------------------------ Ray pods
@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def on_pod_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pod of a TrainingRun changed (a Ray pod, or KubeRay's job submitter, which has
    no ``ray.io/cluster`` label and belongs to the RayJob's current cluster): when whether
    it can run changed (unschedulable, an unbound claim, an image that cannot be pulled;
    or no longer so), re-derive the run's status from its RayJob, which then names the
    pod and the reason instead of "waiting for the Ray cluster"; a pod of the run's
    RayService's clusters re-derives serving's status (``Ready`` names it). A container OOM-killed
    (``st.pod_oom``) is one Warning Event naming the field that sizes the pod; a Ray head
    lost while the job runs on it (``st.head_loss``) is one Warning Event saying that the
    job starts again from the latest checkpoint. The latest of either is the run's
    ``status.lastIncident``; its message notes it while the job runs, retries or has
    failed on that cluster. Healthy pods cost nothing: no API
    call is made unless the set of problems of the run changed or a new kill or loss was
    seen."""
    meta = body.metadata
    labels = meta.labels or {}
    key, cluster = (meta.namespace, labels[LABEL]), labels.get("ray.io/cluster")
    problem = None if type == "DELETED" else st.pod_problem(dict(body))
    now = st.now_rfc3339()
    oom = None if type == "DELETED" or cluster is None else st.pod_oom(dict(body), now=now)
    loss = st.head_loss(dict(body), deleted=type == "DELETED", now=now)
    with memo.pods_guard:
        seen_keys = memo.incidents_seen.get(key, set())
        new = [inc for inc in (oom, loss) if inc is not None and inc.key not in seen_keys]
        if new:
            memo.incidents_seen[key] = seen_keys | {inc.key for inc in new}
        was = _note_pod(memo, key, dict(body), cluster, problem)
        if (was[:2] if was else None) == ((cluster, problem) if problem else None) and not new:
            return  # a healthy pod (or one whose problem is unchanged): no API call

    def sync(new: list[st.Incident] = new) -> None:
        job = memo.kube.get(RAY_API, "RayJob", key[0], key[1])
        for inc in new:  # a head lost is a fault only while the job runs on it
            if inc.reason == "OOMKilled" or st.running_on(job, cluster):
                if cluster and inc.key.endswith("/deleted"):  # with its whole cluster?
                    inc = _cluster_loss(memo, key[0], cluster, dict(body), inc)
                _announce(memo, key, cluster, inc, labels, job)
        if job is not None and cluster in (None, (job.get("status") or {}).get("rayClusterName")):
            _sync_rayjob_status(memo, key[0], key[1], key[1])
        elif cluster is not None and (svc := _rayservice_of(memo.kube, key[0], key[1])) \
                is not None and cluster in st.serving_clusters(svc):
            _sync_rayservice_status(svc, memo)

    _retrying(memo, f"following pod {meta.name}", lambda: _unwrap(sync))
    left = memo.cfg.pod_problem_grace - st.pod_problem_age(dict(body), datetime.now(timezone.utc))
    if problem and not was and left > 0:
        # named once it has lasted the grace period, if it still does then
        # (controller-runtime's RequeueAfter)
        later = threading.Timer(left + 0.5, _retrying, args=(
            memo, f"following pod {meta.name}", lambda: _unwrap(lambda: sync([]))))
        later.daemon = True
        later.start()


def _note_pod(memo: kopf.Memo, key: tuple[str, str], pod: dict[str, Any],
              cluster: str | None, problem: str | None) -> tuple[Any, ...] | None:
    """Record one pod's ``st.pod_problem`` (None: it has none) in ``memo.pod_problems``
    and return what was recorded for it before. A problem keeps its first sighting while
    the scheduler rewrites its words; a new one starts at ``st.pod_problem_age`` ago.
    Call with ``memo.pods_guard`` held."""
    seen = memo.pod_problems.get(key, {})
    name = pod["metadata"]["name"]
    was = seen.get(name)
    if problem:
        first = was[2] if was else time.monotonic() - st.pod_problem_age(
            pod, datetime.now(timezone.utc))
        seen = {**seen, name: (cluster, problem, first)}
    else:
        seen = {k: v for k, v in seen.items() if k != name}
    if seen:
        memo.pod_problems[key] = seen
    else:
        memo.pod_problems.pop(key, None)
    return was


def _pod_problems(memo: kopf.Memo, ns: str, tr_name: str, mine: Any,
                  status: dict[str, Any] | None = None) -> list[str]:
    """The problems of the run's pods in the clusters ``mine(cluster)`` accepts that have
    lasted ``pod_problem_grace``: a pod Pending for a moment is no news (a serving pod
    waits for the CPU of the training cluster being deleted on every happy path).

    ``status``, the run's status as it is: when it names a pod wait that the pod watch
    has not (yet) reported, the run's pods are read once from the API server. After an
    operator restart the run's first reconcile comes before the pod watch has listed the
    pods; the status then said "waiting for the Ray cluster" for a moment and a second
    Warning named the same pod again."""
    with memo.pods_guard:
        known = (ns, tr_name) in memo.pod_problems
    if not known and st.names_pod_wait(status):
        _list_pods(memo, ns, tr_name)
    oldest = time.monotonic() - memo.cfg.pod_problem_grace
    with memo.pods_guard:
        return [why for c, why, first in memo.pod_problems.get((ns, tr_name), {}).values()
                if mine(c) and first <= oldest]


def _list_pods(memo: kopf.Memo, ns: str, tr_name: str) -> None:
    """Record the problems of the run's pods as listed now that have lasted the grace
    period (what ``on_pod_event`` would have recorded from the watch). Younger ones are
    left to the watch, whose event also re-checks them once the grace period is over;
    recorded here, that event would find them known and nothing would name them (a
    serving pod while the status still named a training pod). Pods the watch has
    already reported are left as it did."""
    pods = memo.kube.list("v1", "Pod", ns, f"{LABEL}={tr_name},!{RENDERED_LABEL}")
    now = datetime.now(timezone.utc)
    with memo.pods_guard:
        seen = memo.pod_problems.get((ns, tr_name), {})
        for pod in pods:
            if pod.get("metadata", {}).get("name") not in seen and (
                    problem := st.pod_problem(pod)) and (
                    st.pod_problem_age(pod, now) >= memo.cfg.pod_problem_grace):
                cluster = (pod["metadata"].get("labels") or {}).get("ray.io/cluster")
                _note_pod(memo, (ns, tr_name), pod, cluster, problem)


def _rayservice_of(kube: Kube, ns: str, tr_name: str) -> dict[str, Any] | None:
    """The run's RayService, as the API server has it, or None."""
    tr = _get_tr(kube, ns, tr_name)
    try:
        run = _parse(tr) if tr is not None else None
    except InvalidTrainingRun:
        return None
    return kube.get(RAY_API, "RayService", ns, rayservice_name(run)) if run else None


def _cluster_loss(memo: kopf.Memo, namespace: str, cluster: str, pod: dict[str, Any],
                  loss: st.Incident) -> st.Incident:
    """``st.cluster_loss`` of the RayCluster as it is now. Without the permission to read
    it (a ClusterRole from before it was needed; the preflight warned) the loss stays a
    head loss."""
    try:
        raycluster = memo.kube.get(RAY_API, "RayCluster", namespace, cluster)
    except ApiError as exc:
        if exc.status != 403:
            raise
        return loss
    return st.cluster_loss(loss, pod, raycluster)


def _announce(memo: kopf.Memo, key: tuple[str, str], cluster: str | None, inc: st.Incident,
              labels: dict[str, str], job: dict[str, Any] | None = None) -> None:
    """Record an OOM kill, head loss or cluster loss in ``status.lastIncident`` and post
    its one Warning Event, unless the status already holds it or a later one: an operator
    (re)starting lists every pod again, kills and restarts from before its start
    included."""
    with _lock(memo, *key):
        tr = _get_tr(memo.kube, *key)
        if tr is None or not st.incident_is_new(inc, (tr.get("status") or {}).get("lastIncident")):
            return
        _patch_status(memo.kube, tr, {"lastIncident": st.incident_status(inc, cluster)})
    if inc.reason == "OOMKilled":  # kubectl describe tr says why, and what to raise
        _event(tr, "Warning", "OOMKilled", f"{inc.message}: the run needs more memory "
               f"than its pods get; raise {st.oom_field(dict(labels))}")
    elif inc.reason == "RayClusterLost":
        _event(tr, "Warning", "RayClusterLost",
               f"{inc.message} while the job ran on it: KubeRay recreates it, and the job "
               f"is lost with its head; {st.head_loss_outcome(job)}")
    else:
        _event(tr, "Warning", "RayHeadLost",
               f"{inc.message} while the job ran on it: the job is lost with its head; "
               f"{st.head_loss_outcome(job)}")


@kopf.on.field(*TR, field="status.checkpoint")
def on_checkpoint(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new best checkpoint after the job succeeded (late report): re-check the gate."""
    conds = (body.get("status") or {}).get("conditions")
    if st.is_true(conds, st.SUCCEEDED):
        try:
            promote(memo.kube, memo.cfg, memo, body.metadata.namespace, body.metadata.name)
        except ApiError as exc:
            raise _transient(exc, memo.cfg) from exc


def promote(kube: Kube, cfg: OperatorConfig, memo: kopf.Memo, ns: str, name: str) -> None:
    """Gate passed: create or update (in place) the one RayService; else say why not."""
    with _lock(memo, ns, name):
        tr = _get_tr(kube, ns, name)
        if tr is None:
            return
        try:
            run = _parse(tr)
        except InvalidTrainingRun:
            return
        cur = tr.get("status") or {}
        if not st.is_true(cur.get("conditions"), st.SUCCEEDED):
            return  # only a finished, successful run is promoted
        decision = st.gate(run.spec.serve.to_dict(), cur.get("checkpoint"))
        now = st.now_rfc3339()
        gen = tr["metadata"].get("generation")
        if decision.reason == "ServeDisabled":
            return
        svc = kube.get(RAY_API, "RayService", ns, rayservice_name(run))
        live = svc if svc is not None and _owned(svc, tr) else None
        written_to = (cur.get("checkpoint") or {}).get("storage")
        if written_to is None and live is not None and decision.checkpoint and _ann(
                live, CHECKPOINT_ANNOTATION) == decision.checkpoint:
            # reported by an older driver: the RayService promoted from this very
            # checkpoint says which storage it was read from
            written_to = _served_on(live)
        if decision.promote and decision.checkpoint and not in_storage(
                decision.checkpoint, run, cfg.render, written_to):
            if live is not None:
                return  # it serves what was promoted, as it is (_reconcile_rayservice)
            decision = _outside_storage(decision, run, cfg, written_to)
        if not decision.promote:
            message = decision.message
            if live is not None:
                # e.g. serve.minAccuracy raised after promotion: a config tweak does not
                # take a live model down; serve.enabled=false does
                message += (f"; RayService {rayservice_name(run)} keeps serving "
                            f"{_ann(live, CHECKPOINT_ANNOTATION)} (promoted earlier): set "
                            "spec.serve.enabled=false to remove it")
            old = st.get_condition(cur.get("conditions"), st.PROMOTED) or {}
            conds = st.set_condition(cur.get("conditions"), st.PROMOTED, False, decision.reason,
                                     message, now=now, generation=gen)
            if conds != cur.get("conditions"):
                _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds)})
            if old.get("reason") != decision.reason or old.get("message") != message:
                _event(tr, "Warning", decision.reason, message)
            return
        assert decision.checkpoint is not None
        obj = render_rayservice(run, cfg.render, decision.checkpoint, owner=_owner(tr["metadata"]))
        obj = _annotate(obj, {CHECKPOINT_ANNOTATION: decision.checkpoint,
                              STORAGE_ANNOTATION: storage_id(run, cfg.render),
                              **promoted_accuracy(cur.get("checkpoint")),
                              **serve_settings(run)})
        if svc is not None and live is None:
            msg = (f"a RayService named {rayservice_name(run)} exists and is not owned by this TrainingRun: "
                   "not promoted")
            conds = st.set_condition(cur.get("conditions"), st.PROMOTED, False, "NameConflict",
                                     msg, now=now, generation=gen)
            if conds != cur.get("conditions"):
                _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds)})
                _event(tr, "Warning", "NameConflict", msg)
            return
        result = apply_child(kube, obj, live)
        was_promoted = st.is_true(cur.get("conditions"), st.PROMOTED)
        conds = st.set_condition(cur.get("conditions"), st.PROMOTED, True, decision.reason,
                                 decision.message, now=now, generation=gen)
        patch = {"conditions": conds, "phase": st.phase_of(conds),
                 "rayService": obj["metadata"]["name"]}
        if any(cur.get(k) != v for k, v in patch.items()):
            _patch_status(kube, tr, patch)
        if (result == "updated" and was_promoted and live is not None
                and _ann(live, CHECKPOINT_ANNOTATION) == decision.checkpoint):
            _serve_updated(tr, live, obj)  # a serve edit: no new promotion
        elif result != "unchanged" or not was_promoted:
            # also a gate passed again over a RayService that kept serving (GateNotMet
            # after serve.minAccuracy was raised, then lowered): the Warning that said
            # it was not promoted is not the last word
            _event(tr, "Normal", "Promoted", f"RayService {obj['metadata']['name']} "
                   f"{'kept' if result == 'unchanged' else result}: {decision.message}")


STORAGE_MOVED = "CheckpointOutsideStorage"
"""``Promoted=False``'s reason while the run's checkpoint is on a storage its spec no
longer names (``checkpoint.storage`` edited, the new run not finished yet)."""


def _outside_storage(decision: st.GateDecision, run: TrainingRun, cfg: OperatorConfig,
                     written_to: str | None = None) -> st.GateDecision:
    """The gate's verdict on a checkpoint outside the run's storage: not promoted.

    ``checkpoint.storage`` was edited after the checkpoint was written, and the run on
    the new storage has not promoted one of its own yet (it waits for the previous
    RayJob to go, or runs). A RayService rendered now would get the new storage's volume
    or S3 settings and no way to read this checkpoint; KubeRay's cluster would never be
    ready. Asked only when no RayService is left: a live one keeps serving it, and
    ``Promoted`` keeps saying so (``_reconcile_rayservice``).

    ``written_to``: ``status.checkpoint.storage``, named when the driver reported it (a
    checkpoint on another claim can have a path under the same mount path)."""
    from raykube.render import storage_root

    on = f" (on {written_to})" if written_to else ""
    where = storage_root(run, cfg.render)
    if not run.spec.checkpoint.storage.uri:
        where = f"{storage_id(run, cfg.render)} at {where}"
    return st.GateDecision(False, STORAGE_MOVED, (
        f"checkpoint {decision.checkpoint}{on} is outside checkpoint.storage ({where}): "
        "written before checkpoint.storage was edited (or by a driver on other storage); "
        "a run on this storage promotes its own checkpoint"), decision.checkpoint)


# ------------------------------------------------------------- children deleted
NAMESPACE_TERMINATING = "because it is being terminated"
"""The API server's words (NamespaceLifecycle admission, 403) for a write into a namespace
being deleted."""


def _retrying(memo: kopf.Memo, what: str, fn: Any) -> None:
    """kopf does not retry event handlers: retry transient API errors here, then log."""
    cfg: OperatorConfig = memo.cfg
    for attempt in range(5):
        try:
            fn()
            return
        except ApiError as exc:
            if exc.status == 403 and NAMESPACE_TERMINATING in exc.message:
                # the namespace is being deleted (its objects go with it): nothing to put
                # back, and no error to report (it logged one per deleted child)
                log.info("%s: skipped, its namespace is being deleted", what)
                return
            if exc.status == 404 and exc.reason == "NotFound":
                # what it reconciles was deleted meanwhile (the TrainingRun, by the
                # garbage collector of a deleted namespace): its own event says so
                log.info("%s: skipped, %s", what, exc.message)
                return
            if not exc.transient or attempt == 4:
                again = (f"the resync, every {cfg.resync:.0f} s, or the next operator start"
                         if cfg.resync > 0 else "the next operator start")
                log.error("%s failed: %s (%s reconciles it)", what, exc, again)
                return
            time.sleep(cfg.retry_delay * (attempt + 1))


def _owner_of(body: kopf.Body, kube: Kube, *, owned: bool = True) -> dict[str, Any] | None:
    """The live TrainingRun named by the child's label; None if gone or going, or (with
    ``owned``) when it does not own the child."""
    tr = _get_tr(kube, body.metadata.namespace, body.metadata.labels[LABEL])
    if tr is None or tr["metadata"].get("deletionTimestamp"):
        return None
    return tr if not owned or _owned(dict(body), tr) else None


def _rayservice_deleted(body: kopf.Body, memo: kopf.Memo) -> None:
    """A RayService deleted by someone: not Ready any more; promoted again if still due."""
    _rayservice_gone(memo, body.metadata.namespace, body.metadata.labels[LABEL],
                     body.metadata.name, lambda tr: _owned(dict(body), tr))


def _rayservice_gone(memo: kopf.Memo, ns: str, tr_name: str, svc_name: str,
                     owned: Callable[[dict[str, Any]], bool]) -> None:
    """The RayService ``svc_name`` of a TrainingRun (that ``owned(tr)`` says owned it)
    is gone: not Ready any more; promoted again if still due."""
    kube: Kube = memo.kube
    with _lock(memo, ns, tr_name):
        tr = _get_tr(kube, ns, tr_name)
        if tr is None or tr["metadata"].get("deletionTimestamp") or not owned(tr):
            return
        if not ((tr.get("spec") or {}).get("serve") or {}).get("enabled"):
            return  # the operator removed it itself (serve.enabled=false)
        # also one that was not Ready yet (its pods still starting): it was promoted
        # again only by the resync, minutes later
        cur = tr.get("status") or {}
        conds = st.set_condition(cur.get("conditions"), st.READY, False, "RayServiceDeleted",
                                 f"RayService {svc_name} was deleted",
                                 now=st.now_rfc3339(),
                                 generation=tr["metadata"].get("generation"))
        _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                 "serving": None})
        _event(tr, "Warning", "RayServiceDeleted", f"RayService {svc_name} was deleted")
    promote(kube, memo.cfg, memo, ns, tr_name)


def _sync_rayservice_status(svc: dict[str, Any], memo: kopf.Memo) -> None:
    kube: Kube = memo.kube
    meta = svc["metadata"]
    if meta.get("deletionTimestamp"):
        # going (KubeRay's finalizer holds it a moment): its DELETED event says who
        # deleted it; following its status now would bring back the Ready condition
        # that the operator removed when it deleted it (serve.enabled: false)
        return
    ns, tr_name = meta["namespace"], meta["labels"][LABEL]
    with _lock(memo, ns, tr_name):
        tr = _get_tr(kube, ns, tr_name)
        if tr is None or not _owned(svc, tr):
            return
        try:
            run = _parse(tr)
        except InvalidTrainingRun:
            return
        cur = tr.get("status") or {}
        clusters = st.serving_clusters(svc)
        problems = _pod_problems(memo, ns, tr_name, lambda c: c in clusters, cur)
        patch = st.serving_from_rayservice(
            svc, cur, endpoint=serve_endpoint(run),
            checkpoint=_ann(svc, CHECKPOINT_ANNOTATION), now=st.now_rfc3339(),
            generation=tr["metadata"].get("generation"), val_accuracy=_served_accuracy(svc),
            pod_problems=problems)
        if any(cur.get(k) != v for k, v in patch.items()):
            _patch_status(kube, tr, patch)
        if event := st.serve_wait_event(cur, patch):
            _event(tr, *event)
        if st.is_true(cur.get("conditions"), st.READY) and not st.is_true(
                patch["conditions"], st.READY):
            # an outage of what served: a Warning of its own (it was a Normal Event
            # named after the phase the run fell back to, "Succeeded")
            _event(tr, "Warning", "ServeNotReady",
                   f"{st.NOT_SERVING}: {_ready_words(patch['conditions'])}")
        elif patch["phase"] != cur.get("phase"):
            _event(tr, "Normal", patch["phase"],
                   f"serving {(patch.get('serving') or {}).get('checkpoint')} at "
                   f"{(patch.get('serving') or {}).get('endpoint')}"
                   if patch["phase"] == "Serving" else
                   f"RayService not ready: {_ready_words(patch['conditions'])}")


def _ready_words(conditions: list[dict[str, Any]]) -> str:
    ready = st.get_condition(conditions, st.READY) or {}
    return ": ".join(w for w in (ready.get("reason"), ready.get("message")) if w) or "no status"


@kopf.on.event("ray.io", "v1", "rayservices", labels=OUR_CHILDREN, when=_followed)
def on_rayservice_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A RayService changed (follow its status) or was deleted by someone."""
    if type == "DELETED":
        _spec_written(memo, type, body)
        _retrying(memo, f"reconciling after RayService {body.metadata.name} was deleted",
                  lambda: _rayservice_deleted(body, memo))
        return
    if _spec_written(memo, type, body) or RENDERED_LABEL in body.metadata.labels:
        _reconcile_owner(memo, body, "was changed")
    if body.get("status"):
        svc = dict(body)
        _retrying(memo, f"following RayService {body.metadata.name}",
                  lambda: _sync_rayservice_status(svc, memo))


def _unwrap(fn: Any) -> None:
    """Run ``fn``; a kopf.TemporaryError from ``reconcile`` back into its ApiError."""
    try:
        fn()
    except kopf.TemporaryError as exc:
        if isinstance(exc.__cause__, ApiError):
            raise exc.__cause__ from None
        raise


# --------------------------------------------------------------------------- resync
@kopf.on.event(*TR)
async def on_trainingrun_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Which TrainingRuns exist, for the resync. No API call: kopf's own watch (and its
    list after each reconnect) says so. Async: it only takes a short lock, and runs on
    kopf's event loop instead of taking a handler thread at every TrainingRun event."""
    key = (body.metadata.namespace, body.metadata.name)
    with memo.runs_guard:
        if type == "DELETED":
            memo.runs.pop(key, None)
        else:
            memo.runs[key] = body.metadata.uid


def _resync_loop(memo: kopf.Memo, interval: float) -> None:
    while not memo.resync_stop.wait(interval):
        try:
            resync(memo)
        except Exception:  # never let the backstop die
            log.exception("resync failed (tried again in %s s)", interval)


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    stop = getattr(memo, "resync_stop", None)
    if stop is not None:
        stop.set()


def resync(memo: kopf.Memo) -> list[str]:
    """controller-runtime's SyncPeriod for what kopf cannot see: a RayJob or RayService
    deleted while the watch on it was cut (the API server restarted). kopf then lists
    again, and a list says nothing about what vanished meanwhile, so no DELETED event
    comes. Each known TrainingRun costs one GET, plus one per child it should have: the
    RayJob while the run is active, the RayService while it serves. A missing one goes
    down the deletion path. Returns what it found missing (for logs and tests)."""
    kube: Kube = memo.kube
    with memo.runs_guard:
        runs = list(memo.runs.items())
    found = []
    for (ns, name), uid in runs:
        try:
            tr = _get_tr(kube, ns, name)
            if tr is None or tr["metadata"].get("uid") != uid:
                with memo.runs_guard:  # gone (its DELETED may have been lost too)
                    if memo.runs.get((ns, name)) == uid:
                        del memo.runs[(ns, name)]
                continue
            if tr["metadata"].get("deletionTimestamp"):
                continue
            cur = tr.get("status") or {}
            conds = cur.get("conditions")
            finished = st.is_true(conds, st.SUCCEEDED) or st.is_true(conds, st.FAILED)
            job = cur.get("rayJob")
            due = not finished or _rerun_pending(cur)  # a rerun waits for its deletion
            invalid = (st.get_condition(conds, st.VALIDATED) or {}).get("status") == "False"
            if finished and st.edit_pending(cur) and not invalid:
                # its end was seen, the rerun not started (an invalid spec holds it back:
                # Validated says so, and its fix reconciles; no warning every resync)
                log.warning("TrainingRun %s/%s ended with an edit pending and no new run "
                            "was started: reconciling", ns, name)
                _retrying(memo, f"starting the pending rerun of {ns}/{name}",
                          lambda tr=tr: _unwrap(lambda: reconcile(tr, memo, changed=None)))
                continue
            if job and due and kube.get(RAY_API, "RayJob", ns, job) is None:
                found.append(f"RayJob/{ns}/{job}")
                log.warning("RayJob %s/%s of an active run (or of a rerun's previous run) "
                            "is gone and no deletion was seen (a watch was cut?): reconciling",
                            ns, job)
                _retrying(memo, f"reconciling after RayJob {job} was found gone",
                          lambda tr=tr: _unwrap(lambda: reconcile(
                              tr, memo, changed=None)))
            svc = cur.get("rayService")
            ready = st.get_condition(conds, st.READY)
            serving = ((tr.get("spec") or {}).get("serve") or {}).get("enabled")
            if (svc and serving and (ready or {}).get("reason") != "RayServiceDeleted"
                    and kube.get(RAY_API, "RayService", ns, svc) is None):
                found.append(f"RayService/{ns}/{svc}")
                log.warning("RayService %s/%s is gone and no deletion was seen (a watch was "
                            "cut?)", ns, svc)
                _retrying(memo, f"reconciling after RayService {svc} was found gone",
                          lambda ns=ns, name=name, svc=svc, uid=uid: _rayservice_gone(
                              memo, ns, name, svc, lambda t: t["metadata"].get("uid") == uid))
        except ApiError as exc:
            log.warning("resync of TrainingRun %s/%s: %s", ns, name, exc)
    _forget_gone(memo)
    return found


def _forget_gone(memo: kopf.Memo) -> None:
    """Drop what the operator keeps per run (its lock, its pods' problems and OOM kills)
    for runs that no longer exist. Not at the TrainingRun's DELETED event: its pods'
    termination events come after it and would bring entries back. By the next resync
    they have come and gone. A lock that is held is kept (a handler is still at work)."""
    with memo.runs_guard:
        alive = set(memo.runs)
    with memo.locks_guard:
        for key in [k for k, lock in memo.locks.items() if k not in alive and not lock.locked()]:
            del memo.locks[key]
    with memo.pods_guard:
        for table in (memo.pod_problems, memo.incidents_seen):
            for key in [k for k in table if k not in alive]:
                del table[key]


WATCH_HANDLERS = tuple(f.__name__ for f in (on_rayjob_event, on_pod_event, on_rayservice_event,
                                             on_trainingrun_event, on_companion_event))
"""The ``kopf.on.event`` handlers (kopf's handler id is the function's name): they run at
every event of every watched object."""
_WATCH_SUCCEEDED = tuple(f"Handler {h!r} succeeded." for h in WATCH_HANDLERS)
