"""kopf handlers: parse, render, apply, write status. Nothing else lives here.

Decisions (README "Operator"):

- **Children** (RayJob, ConfigMap, ServiceAccount, Role, RoleBinding, later the
  RayService) are created idempotently: read first, create when missing (a 409 on
  create re-reads), and patch only when the ``raykube.io/spec-hash`` annotation of the
  rendered object differs. A restarted operator therefore writes nothing.
- **Deletion** relies on ownerReferences (every child points at the TrainingRun's uid)
  and Kubernetes' garbage collector; there is no delete handler, so kopf adds no
  finalizer and a TrainingRun can always be deleted, even with the operator down.
  Checkpoints live on shared storage and are never deleted by the operator.
- **Spec changes**: ``suspend`` is propagated to the RayJob (KubeRay stops / restarts
  the Ray cluster; training resumes from the latest checkpoint). ``serve`` changes
  re-render the RayService in place. Other (training) fields: while the RayJob is
  active they are *not* applied (condition ``SpecApplied=False``, reason
  ``SpecChangeIgnored``, naming the fields); once it has finished, a change starts a new
  run (the RayJob is replaced; a passing result updates the RayService in place).
- **Status**: KubeRay's RayJob/RayService status is followed with ``kopf.on.field`` and
  mapped by the pure ``raykube_operator.status``; every phase change posts an Event.
- kopf's own bookkeeping lives in ``raykube.io/*`` annotations.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections import defaultdict
from typing import Any

import kopf

from raykube.render import render_rayservice, render_training, serve_endpoint
from raykube.spec import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL,
    PLURAL,
    VERSION,
    InvalidTrainingRun,
    TrainingRun,
    parse_training_run,
)
from raykube_operator import status as st
from raykube_operator.config import OperatorConfig
from raykube_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

TR = (GROUP, VERSION, PLURAL)
RAY_API = "ray.io/v1"
SPEC_HASH = f"{GROUP}/spec-hash"
TRAINING_HASH = f"{GROUP}/training-hash"
CHECKPOINT_ANNOTATION = f"{GROUP}/checkpoint"
FINALIZER = f"{GROUP}/finalizer"


# ------------------------------------------------------------------------- settings
@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """All kopf settings in one place; the API client and config go into ``memo``."""
    cfg = OperatorConfig.from_env()
    settings.persistence.finalizer = FINALIZER  # only used if a delete handler is added
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our explicit events + warnings, no chatter
    settings.execution.max_workers = cfg.max_workers
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    memo.cfg = cfg
    memo.kube = Kube()
    memo.locks = defaultdict(threading.Lock)
    memo.locks_guard = threading.Lock()
    logger.info("raykube operator configured: namespaces=%s", list(cfg.namespaces) or "all")


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
    return parse_training_run(doc)


def _hash(obj: dict[str, Any], *, drop_suspend: bool = False) -> str:
    doc = copy.deepcopy(obj)
    anns = (doc.get("metadata") or {}).get("annotations") or {}
    for key in (SPEC_HASH, TRAINING_HASH):
        anns.pop(key, None)
    if drop_suspend:
        (doc.get("spec") or {}).pop("suspend", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _annotate(obj: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    anns = obj.setdefault("metadata", {}).setdefault("annotations", {})
    anns.update(extra or {})
    anns[SPEC_HASH] = _hash(obj)
    return obj


def training_hash(run: TrainingRun, job: dict[str, Any]) -> str:
    """What a run's result depends on: the spec minus suspend/serve, and the RayJob minus
    suspend (the spec reaches the driver through the ConfigMap, not the RayJob)."""
    spec = run.spec.to_dict()
    spec.pop("suspend", None)
    spec.pop("serve", None)
    doc = {"spec": spec, "rayjob": _hash(job, drop_suspend=True)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _ann(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key)


def _ref(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]


def apply_child(kube: Kube, obj: dict[str, Any]) -> str:
    """Create ``obj`` or bring it up to date. Returns created, unchanged or updated."""
    obj = _annotate(obj)
    current = kube.get(*_ref(obj))
    if current is None:
        try:
            kube.create(obj)
            return "created"
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = kube.get(*_ref(obj))
            if current is None:
                raise ApiError(409, "Conflict", "object exists but cannot be read yet") from exc
    if _ann(current, SPEC_HASH) == _ann(obj, SPEC_HASH):
        return "unchanged"
    kube.patch(*_ref(obj), {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")})
    return "updated"


def rayjob_blocked(kube: Kube, job: dict[str, Any], *, allow_rerun: bool) -> str | None:
    """"ignored"/"finished" when the training change must not be applied now, else None.

    ``job`` carries its TRAINING_HASH annotation already."""
    current = kube.get(*_ref(job))
    if current is None or _ann(current, TRAINING_HASH) == _ann(job, TRAINING_HASH):
        return None
    deployment = ((current.get("status") or {}).get("jobDeploymentStatus")) or ""
    if deployment in st.TERMINAL_DEPLOYMENT:
        return None if allow_rerun else "finished"
    return "ignored"


def apply_rayjob(kube: Kube, job: dict[str, Any], *, allow_rerun: bool) -> str:
    """The RayJob's spec-change semantics (module docstring). Returns what was done."""
    job = _annotate(job)
    current = kube.get(*_ref(job))
    if current is not None and (current.get("metadata") or {}).get("deletionTimestamp"):
        raise ApiError(409, "Terminating", "the previous RayJob is still being deleted")
    if current is None:
        return apply_child(kube, job)
    if _ann(current, TRAINING_HASH) != _ann(job, TRAINING_HASH):
        deployment = ((current.get("status") or {}).get("jobDeploymentStatus")) or ""
        if deployment not in st.TERMINAL_DEPLOYMENT:
            return "ignored"
        if not allow_rerun:
            return "finished"
        kube.delete(*_ref(job))
        if kube.get(*_ref(job)) is not None:  # KubeRay's finalizer: wait for it
            raise ApiError(409, "Terminating", "the previous RayJob is still being deleted")
        kube.create(job)
        return "rerun"
    if _ann(current, SPEC_HASH) == _ann(job, SPEC_HASH):
        return "unchanged"
    kube.patch(*_ref(job), {"metadata": {"annotations": {SPEC_HASH: _ann(job, SPEC_HASH)}},
                            "spec": {"suspend": bool(job["spec"].get("suspend", False))}})
    return "suspend"


def _get_tr(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(API_VERSION, KIND, namespace, name)


def _patch_status(kube: Kube, tr: dict[str, Any], patch: dict[str, Any]) -> None:
    meta = tr["metadata"]
    kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {"status": patch},
               subresource="status")


def _event(tr: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(tr, type=type_, reason=reason, message=message[:1000])
    except Exception:  # events are best effort
        log.debug("could not post event", exc_info=True)


def _owned(child: dict[str, Any], tr: dict[str, Any]) -> bool:
    uid = (tr.get("metadata") or {}).get("uid")
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs) if uid else True


# ------------------------------------------------------------------ TrainingRun
@kopf.on.resume(*TR)
@kopf.on.create(*TR)
def on_trainingrun(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """First sight (or operator restart): validate and make sure the children exist."""
    reconcile(dict(body), memo, allow_rerun=False, changed=None)


@kopf.on.update(*TR, field="spec")
def on_spec_change(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, **_: Any) -> None:
    """A spec edit: apply it as the module docstring says (suspend, serve, rerun, ignore)."""
    changed = sorted({"spec." + ".".join(str(p) for p in d[1]) if d[1] else "spec" for d in diff})
    reconcile(dict(body), memo, allow_rerun=True, changed=changed)


def reconcile(body: dict[str, Any], memo: kopf.Memo, *, allow_rerun: bool,
              changed: list[str] | None) -> dict[str, str]:
    """Validate, render, apply; returns what happened to each child (for logs/tests).

    Handlers do not return it: kopf would store it in status, outside our schema."""
    cfg: OperatorConfig = memo.cfg
    kube: Kube = memo.kube
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation")
    try:
        with _lock(memo, ns, name):
            tr = _get_tr(kube, ns, name) or body
            cur = tr.get("status") or {}
            now = st.now_rfc3339()
            try:
                run = _parse(body)
            except InvalidTrainingRun as exc:
                msg = "; ".join(f"{e.path}: {e.message}" for e in exc.errors)
                conds = st.set_condition(cur.get("conditions"), st.VALIDATED, False,
                                         "InvalidSpec", msg, now=now, generation=gen)
                _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                         "observedGeneration": gen, "message": msg})
                _event(tr, "Warning", "InvalidSpec", msg)
                return {"validated": False, "errors": msg}

            children = render_training(run, cfg.render, owner=_owner(meta))
            jobs = [_annotate(c, {TRAINING_HASH: training_hash(run, c)})
                    for c in children if c.get("kind") == "RayJob"]
            others = [c for c in children if c.get("kind") != "RayJob"]
            results: dict[str, str] = {}
            if rayjob_blocked(kube, jobs[0], allow_rerun=allow_rerun) is None:
                # the ConfigMap holds the spec the driver reads (also on a retry): it only
                # changes together with the RayJob
                results = {f"{c['kind']}/{c['metadata']['name']}": apply_child(kube, c)
                           for c in others}
            job_result = apply_rayjob(kube, jobs[0], allow_rerun=allow_rerun)
            results[f"RayJob/{jobs[0]['metadata']['name']}"] = job_result

            conds = st.set_condition(cur.get("conditions"), st.VALIDATED, True, "SpecValid",
                                     "the spec is valid", now=now, generation=gen)
            patch: dict[str, Any] = {"rayJob": jobs[0]["metadata"]["name"],
                                     "observedGeneration": gen}
            if job_result == "ignored":
                fields = ", ".join(changed or []) or "training fields"
                msg = (f"{fields} changed while the RayJob is running: not applied to this "
                       "run; change the spec again after it finishes to start a new run")
                conds = st.set_condition(conds, st.SPEC_APPLIED, False, "SpecChangeIgnored", msg,
                                         now=now, generation=gen)
                _event(tr, "Warning", "SpecChangeIgnored", msg)
            else:
                reason = {"created": "Created", "unchanged": "UpToDate", "updated": "Updated",
                          "suspend": "SuspendUpdated", "rerun": "Rerun",
                          "finished": "Finished"}[job_result]
                conds = st.set_condition(conds, st.SPEC_APPLIED, True, reason,
                                         f"RayJob {job_result}", now=now, generation=gen)
            if job_result == "created" and st.get_condition(conds, st.RUNNING) is None:
                conds = st.set_condition(conds, st.RUNNING, False, "Created",
                                         "RayJob created; waiting for KubeRay", now=now,
                                         generation=gen)
            if job_result == "rerun":
                for t in (st.SUCCEEDED, st.FAILED):
                    if st.get_condition(conds, t) is not None:
                        conds = st.set_condition(conds, t, False, "Rerun", "", now=now,
                                                 generation=gen)
                conds = st.set_condition(conds, st.RUNNING, False, "Rerun", "a new run was "
                                         "started for the changed spec", now=now, generation=gen)
                patch.update({"startTime": None, "completionTime": None, "attempts": None})
            if run.spec.suspend and job_result in ("created", "suspend"):
                conds = st.set_condition(conds, st.RUNNING, False, "Suspended",
                                         "spec.suspend is true", now=now, generation=gen)
            patch["conditions"] = conds
            patch["phase"] = st.phase_of(conds)
            _patch_status(kube, tr, patch)
            if job_result in ("created", "rerun", "suspend"):
                _event(tr, "Normal", {"created": "Created", "rerun": "Rerun",
                                      "suspend": "Suspend"}[job_result],
                       f"RayJob {jobs[0]['metadata']['name']}: {job_result}")
            _reconcile_rayservice(kube, cfg, tr, run, now=now, gen=gen, results=results)
            return results
    except ApiError as exc:
        raise _transient(exc, cfg) from exc


def _reconcile_rayservice(kube: Kube, cfg: OperatorConfig, tr: dict[str, Any], run: TrainingRun,
                          *, now: str, gen: int | None, results: dict[str, str]) -> None:
    """serve changes reach an existing RayService; serve.enabled=false removes it."""
    name = run.name
    svc = kube.get(RAY_API, "RayService", run.namespace, name)
    if svc is None or not _owned(svc, tr):
        return
    if not run.spec.serve.enabled:
        kube.delete(RAY_API, "RayService", run.namespace, name)
        results[f"RayService/{name}"] = "deleted"
        fresh = _get_tr(kube, run.namespace, name) or tr
        conds = st.remove_condition((fresh.get("status") or {}).get("conditions"), st.READY)
        conds = st.set_condition(conds, st.PROMOTED, False, "ServeDisabled",
                                 "spec.serve.enabled is false", now=now, generation=gen)
        _patch_status(kube, fresh, {"conditions": conds, "phase": st.phase_of(conds),
                                    "serving": None, "rayService": None})
        return
    checkpoint = _ann(svc, CHECKPOINT_ANNOTATION)
    if checkpoint:
        obj = render_rayservice(run, cfg.render, checkpoint, owner=_owner(tr["metadata"]))
        obj = _annotate(obj, {CHECKPOINT_ANNOTATION: checkpoint})
        results[f"RayService/{name}"] = apply_child(kube, obj)


# ---------------------------------------------------------------------- RayJob status
@kopf.on.field("ray.io", "v1", "rayjobs", field="status", labels={LABEL: kopf.PRESENT})
def on_rayjob_status(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """KubeRay moved the job: map it onto the TrainingRun, promote on success."""
    cfg: OperatorConfig = memo.cfg
    kube: Kube = memo.kube
    rayjob = dict(body)
    ns = body.metadata.namespace
    tr_name = body.metadata.labels[LABEL]
    try:
        with _lock(memo, ns, tr_name):
            tr = _get_tr(kube, ns, tr_name)
            if tr is None or not _owned(rayjob, tr):
                return
            cur = tr.get("status") or {}
            patch = st.status_from_rayjob(rayjob, cur, now=st.now_rfc3339(),
                                          generation=tr["metadata"].get("generation"))
            _patch_status(kube, tr, patch)
            old_phase, new_phase = cur.get("phase"), patch["phase"]
            if old_phase != new_phase or patch.get("message") != cur.get("message"):
                failed = st.is_true(patch["conditions"], st.FAILED)
                _event(tr, "Warning" if failed else "Normal",
                       new_phase if new_phase != "Running" else
                       (st.get_condition(patch["conditions"], st.RUNNING) or {}).get("reason", "Running"),
                       patch.get("message") or new_phase)
            succeeded = st.is_true(patch["conditions"], st.SUCCEEDED)
        if succeeded:
            promote(kube, cfg, memo, ns, tr_name)
    except ApiError as exc:
        raise _transient(exc, cfg) from exc


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
        decision = st.gate(run.spec.serve.to_dict(), cur.get("checkpoint"))
        now = st.now_rfc3339()
        gen = tr["metadata"].get("generation")
        if decision.reason == "ServeDisabled":
            return
        if not decision.promote:
            old = st.get_condition(cur.get("conditions"), st.PROMOTED) or {}
            conds = st.set_condition(cur.get("conditions"), st.PROMOTED, False, decision.reason,
                                     decision.message, now=now, generation=gen)
            _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds)})
            if old.get("reason") != decision.reason or old.get("message") != decision.message:
                _event(tr, "Warning", decision.reason, decision.message)
            return
        assert decision.checkpoint is not None
        obj = render_rayservice(run, cfg.render, decision.checkpoint, owner=_owner(tr["metadata"]))
        obj = _annotate(obj, {CHECKPOINT_ANNOTATION: decision.checkpoint})
        result = apply_child(kube, obj)
        conds = st.set_condition(cur.get("conditions"), st.PROMOTED, True, decision.reason,
                                 decision.message, now=now, generation=gen)
        _patch_status(kube, tr, {"conditions": conds, "phase": st.phase_of(conds),
                                 "rayService": obj["metadata"]["name"]})
        if result != "unchanged":
            _event(tr, "Normal", "Promoted", f"RayService {obj['metadata']['name']} {result}: "
                   f"{decision.message}")


# ------------------------------------------------------------------ RayService status
@kopf.on.field("ray.io", "v1", "rayservices", field="status", labels={LABEL: kopf.PRESENT})
def on_rayservice_status(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    cfg: OperatorConfig = memo.cfg
    kube: Kube = memo.kube
    svc = dict(body)
    ns = body.metadata.namespace
    tr_name = body.metadata.labels[LABEL]
    try:
        with _lock(memo, ns, tr_name):
            tr = _get_tr(kube, ns, tr_name)
            if tr is None or not _owned(svc, tr):
                return
            try:
                run = _parse(tr)
            except InvalidTrainingRun:
                return
            cur = tr.get("status") or {}
            patch = st.serving_from_rayservice(
                svc, cur, endpoint=serve_endpoint(run),
                checkpoint=_ann(svc, CHECKPOINT_ANNOTATION), now=st.now_rfc3339(),
                generation=tr["metadata"].get("generation"))
            _patch_status(kube, tr, patch)
            if patch["phase"] != cur.get("phase"):
                _event(tr, "Normal", patch["phase"],
                       f"serving {(patch.get('serving') or {}).get('checkpoint')} at "
                       f"{(patch.get('serving') or {}).get('endpoint')}"
                       if patch["phase"] == "Serving" else "RayService not ready")
    except ApiError as exc:
        raise _transient(exc, cfg) from exc
