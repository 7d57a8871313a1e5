"""The RayJob decision table of the operator (pure: no API, no kopf run)."""

from __future__ import annotations

import logging

import pytest

from raykube_operator.handlers import (
    SPEC_HASH,
    TRAINING_HASH,
    _fields,
    _training_changed,
    plan_rayjob,
    rayjob_drift,
)


def job(training: str = "t1", spec: str = "s1", deployment: str | None = None,
        deleting: bool = False, suspend: bool = False) -> dict:
    meta: dict = {"name": "x", "annotations": {TRAINING_HASH: training, SPEC_HASH: spec}}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"suspend": suspend},
            "status": {"jobDeploymentStatus": deployment} if deployment else {}}


def _failed_once(rayjob: dict) -> dict:
    rayjob["status"]["failed"] = 1  # KubeRay's count of failed attempts
    return rayjob


@pytest.mark.parametrize("current, finished, edited, expected", [
    (None, False, False, "create"),  # first sight / restart before creation
    (None, False, True, "create"),  # fixed invalid spec
    (None, True, False, "finished"),  # cleaned-up RayJob of a finished run: no retrain
    (None, True, True, "rerun"),  # training edit after cleanup
    (job(), False, False, "unchanged"),
    (job(spec="s2", suspend=True), False, False, "suspend"),  # resumed
    # a serve edit of a finished run: the RayJob's hash only, not "Suspend"
    (job(spec="s2", deployment="Complete"), True, False, "refresh"),
    (job(training="t0", deployment="Running"), False, True, "pending"),
    # rendered by another operator version, and no edit: the run goes on as it is
    (job(training="t0", deployment="Running"), False, False, "unchanged"),
    (job(training="t0", deployment="Complete"), True, True, "rerun"),
    (job(training="t0", deployment="Complete"), True, False, "finished"),
    # ended, its outcome not mapped yet: the mapping (and the old run's promotion) first
    (job(training="t0", deployment="Complete"), False, True, "pending"),
    (job(training="t0", deployment="Suspended"), False, True, "update"),
    (job(deleting=True), False, False, "terminating"),
])
def test_plan_rayjob(current, finished, edited, expected):
    assert plan_rayjob(current, job(), finished=finished, edited=edited) == expected


@pytest.mark.parametrize("current, finished, edited, rerun_pending, expected", [
    # a training edit of a finished run whose RayJob KubeRay's finalizer still holds:
    # a rerun (it waits for it), not an error
    (job(training="t0", deployment="Complete", deleting=True), True, True, False, "rerun"),
    # decided already: the deletion's event (or a restarted operator) starts it
    (job(training="t0", deployment="Complete", deleting=True), True, False, True, "rerun"),
    (None, True, False, True, "rerun"),
    # no edit: the finished run's RayJob is going, nothing to start
    (job(deployment="Complete", deleting=True), True, True, False, "terminating"),
    (job(training="t0", deployment="Complete", deleting=True), True, False, False, "terminating"),
    # an edit made while it ran (held in the status): its end starts the new run
    (job(training="t0", deployment="Complete"), True, False, True, "rerun"),
    (job(training="t0", deployment="Failed"), True, False, True, "rerun"),
    # still running (a restarted operator): still pending
    (job(training="t0", deployment="Running"), False, False, True, "pending"),
    # suspended with an edit pending: the suspend goes through now (the edit follows
    # while it is suspended); a RayJob that has ended is not suspended
    (job(training="t0", deployment="Running", suspend=True), False, False, True, "suspend-pending"),
    (job(training="t0", deployment="Running", suspend=True), False, True, False, "suspend-pending"),
    (job(training="t0", deployment="Complete", suspend=True), False, False, True, "pending"),
    # the edit was undone before the run ended: nothing to run again
    (job(deployment="Complete"), True, False, True, "unchanged"),
    # an edit while the first cluster comes up: suspended for it (it may fix the pods)
    (job(training="t0", deployment="Initializing"), False, True, False, "suspend-for-edit"),
    # but a KubeRay retry's cluster runs the spec the run started with: an operator
    # restart applied an edit pending since attempt 1 to the retry (an operator probe)
    (_failed_once(job(training="t0", deployment="Initializing")), False, False, True, "pending"),
    (_failed_once(job(training="t0", deployment="Initializing")), False, True, False, "pending"),
])
def test_plan_a_pending_or_waiting_rerun(current, finished, edited, rerun_pending, expected):
    assert plan_rayjob(current, job(), finished=finished, edited=edited,
                       rerun_pending=rerun_pending) == expected


@pytest.mark.parametrize("changed, expected", [
    (None, False), ([], False), (["spec.serve.minAccuracy"], False), (["spec.suspend"], False),
    (["spec.serve"], False), (["spec.train.epochs"], True), (["spec"], True),
    (["spec.serveX"], True), (["spec.serve.enabled", "spec.image"], True), (["spec.rerun"], True),
])
def test_training_changed(changed, expected):
    assert _training_changed(changed) is expected


def test_a_non_api_failure_is_not_transient(monkeypatch):
    """Only API answers and connection failures are retried; a client bug (an AttributeError
    from a too-old kubernetes client, say) propagates instead of looping in silence."""
    import kubernetes

    from raykube_operator import __main__ as entry
    from raykube_operator.kube import ApiError, Kube

    class Broken:
        def param_serialize(self, *a, **k):
            raise AttributeError("'ApiClient' object has no attribute 'param_serialize'")

    kube = Kube(api_client=Broken())
    with pytest.raises(AttributeError):
        kube.request("GET", "/api/v1/namespaces")

    class Refused:
        def param_serialize(self, *a, **k):
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ApiError) as err:
        Kube(api_client=Refused()).request("GET", "/api/v1/namespaces")
    assert err.value.transient
    assert entry.client_problem() is None  # the pinned client
    monkeypatch.delattr(kubernetes.client.ApiClient, "param_serialize")
    assert "kubernetes>=37" in entry.client_problem()


def test_the_operator_starts_as_a_uid_without_a_passwd_entry(monkeypatch):
    """The Deployment runs the image as uid 65532, which has no /etc/passwd entry, and
    kopf's default identity (getpass.getuser) raises KeyError there: the operator pod
    crashed at start on a real node. The entry point names its identity itself."""
    import getpass

    import kopf

    from raykube_operator import __main__ as entry

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    seen = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setenv("RAYKUBE_PREFLIGHT", "0")  # no API server here (checked in integration)
    assert entry.main(["-A", "--liveness", "off"]) == 0
    assert seen["identity"].startswith("raykube-operator@") and seen["standalone"] is True
    monkeypatch.setenv("POD_ID", "raykube-operator-abc")
    entry.main(["-A", "--liveness", "off"])
    assert seen["identity"] == "raykube-operator-abc"


@pytest.mark.parametrize("message,level", [
    # kopf's words at the operator's start, just after the API server started
    ("Request attempt #1/6 failed; will retry: GET https://127.0.0.1:44941/apis/raykube.io/"
     "v1alpha1/trainingruns -> APITooManyRequestsError('storage is (re)initializing', {}, "
     "status=429)", logging.WARNING),
    # the last attempt, and every other failure, stay errors
    ("Request attempt #6/6 failed; escalating: GET https://h/apis -> "
     "APITooManyRequestsError('x', {}, status=429)", logging.ERROR),
    ("Request attempt #1/6 failed; will retry: GET https://h/apis -> "
     "APIServerError('etcdserver: leader changed', {}, status=500)", logging.ERROR),
    ("Handler 'on_spec_change/spec' failed temporarily: boom", logging.ERROR),
])
def test_a_throttled_request_that_kopf_retries_is_a_warning(message, level):
    from raykube_operator.__main__ import throttled_retry_is_a_warning

    record = logging.LogRecord("kopf._cogs.clients.watching", logging.ERROR, __file__, 1,
                               message, None, None)
    assert throttled_retry_is_a_warning(record) is True
    assert (record.levelno, record.levelname) == (level, logging.getLevelName(level))


# ------------------------------------------------------- what `raykube render` printed
def _rendered(owner=None):
    """The quickstart's objects as ``raykube render`` prints them (no owner), or as the
    operator makes them (``owner``), and the pods' labels (pod templates, as KubeRay
    copies them onto the pods)."""
    from pathlib import Path

    from raykube import render as R
    from raykube.spec import load_file

    run, = load_file(str(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"))
    cfg = R.RenderConfig()
    objs = [*R.render_training(run, cfg, owner), R.render_rayservice(run, cfg, "/x", owner)]
    pods = []
    for o in objs[-2:]:
        cluster = o["spec"].get("rayClusterSpec") or o["spec"]["rayClusterConfig"]
        pods += [cluster["headGroupSpec"]["template"],
                 *(g["template"] for g in cluster["workerGroupSpecs"])]
    pods.append(objs[-2]["spec"]["submitterPodTemplate"])
    return objs, [{"kind": "Pod", "metadata": t["metadata"]} for t in pods]


OWNER = {"name": "quickstart", "uid": "0b3c5a4e-0000-4000-8000-000000000001"}


def test_the_operator_watches_skip_what_raykube_render_printed():
    """Argo CD, Flux or kubectl manage what ``raykube render`` printed. It carries the run's
    label, which every watch of the operator on children and Ray pods selected on: a
    rendered RayJob's pods were followed, and their OOM kills and head losses written
    into the status of a same-named TrainingRun with Warning Events, for pods it did not
    own. Each watch now skips ``raykube.io/rendered-by`` (kopf's own label matching)."""
    import kopf
    from kopf._core.intents.registries import _matches_metadata

    from raykube_operator import handlers

    kinds = {"RayJob": "rayjobs", "RayService": "rayservices", "ConfigMap": "configmaps",
             "ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings",
             "Pod": "pods"}
    watches = {h.selector.any_name: h for h in kopf.get_default_registry()._watching
               .get_all_handlers() if h.id in handlers.WATCH_HANDLERS}
    assert set(kinds.values()) <= set(watches), sorted(watches)

    def seen(obj):
        h = watches[kinds[obj["kind"]]]
        return _matches_metadata(pattern=h.labels, content=obj["metadata"]["labels"],
                                 kwargs={}, cause=None) and (h.when is None or h.when(body=obj))

    rendered, rendered_pods = _rendered()
    ours, our_pods = _rendered(OWNER)
    assert len(rendered_pods) == len(our_pods) == 5
    assert [o["kind"] for o in rendered] == [o["kind"] for o in ours] == [
        "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "RayJob", "RayService"]
    assert [seen(o) for o in rendered + rendered_pods] == [False] * 11
    assert [seen(o) for o in ours + our_pods] == [True] * 11
    # render's output applied over a run's children: still the run's (its ownerReference
    # stays), followed, and taken back by the reconcile (test_operator.py)
    from raykube.render import RENDERED_BY, RENDERED_LABEL

    over = [{**o, "metadata": {**o["metadata"], "labels": {
        **o["metadata"]["labels"], RENDERED_LABEL: RENDERED_BY}}} for o in ours]
    assert [seen(o) for o in over] == [True] * 6


def test_rendered_companions_are_never_taken_over():
    """A TrainingRun next to the same run's ``raykube render`` output (a namespace that
    GitOps also deploys to): the rendered ConfigMap and RBAC carry the run's label and no
    owner, which is what an orphan of a same-named TrainingRun deleted with
    ``--cascade=orphan`` looks like, so the operator applied over them and set itself as
    their owner (deleting the TrainingRun then deleted the GitOps tool's objects). Only
    what the operator made (its ``managed-by``) is taken over."""
    import copy

    from raykube_operator.handlers import _ours_to_apply

    tr = {"metadata": {"name": "quickstart", "uid": OWNER["uid"]}}
    rendered, _ = _rendered()
    ours, _ = _rendered(OWNER)
    for obj in rendered[:4]:
        assert not _ours_to_apply(obj, tr), obj["metadata"]
    for obj in ours[:4]:
        assert _ours_to_apply(obj, tr)
        orphan = copy.deepcopy(obj)
        del orphan["metadata"]["ownerReferences"]
        assert _ours_to_apply(orphan, tr)
        other = copy.deepcopy(obj)  # another TrainingRun's (the GC has not caught up)
        other["metadata"]["ownerReferences"][0]["uid"] = "another"
        assert not _ours_to_apply(other, tr)
    users = {"metadata": {"name": "quickstart-spec", "labels": {"raykube.io/trainingrun":
                                                                "quickstart"}}}
    assert not _ours_to_apply(users, tr)


def test_a_rayjob_another_operator_rendered_is_not_retrained():
    """The RayJob's RAYKUBE_STORAGE_ID (where the driver says its checkpoints are) is
    new: a RayJob an older operator rendered without it has another training hash. With
    no edit that is no reason to train again, neither while it runs (no pending change)
    nor after (a serve edit, or a restart, starts nothing). A training edit still does."""
    from raykube.render import RenderConfig, render_rayjob
    from raykube.spec import parse_spec
    from raykube_operator.handlers import _annotate, _edited, training_hash

    owner = {"name": "x", "uid": "0b3c5a4e-0000-4000-8000-000000000001"}
    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"}}, name="x")
    new = render_rayjob(run, RenderConfig(), owner)
    older = render_rayjob(run, RenderConfig(), owner)
    cluster = older["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        c = group["template"]["spec"]["containers"][0]
        assert any(e["name"] == "RAYKUBE_STORAGE_ID" for e in c["env"])
        c["env"] = [e for e in c["env"] if e["name"] != "RAYKUBE_STORAGE_ID"]
    assert training_hash(run, older) != training_hash(run, new)
    new = _annotate(new, {TRAINING_HASH: training_hash(run, new)})
    older = _annotate(older, {TRAINING_HASH: training_hash(run, older)})
    status = {"rayJob": "x", "observedGeneration": 3}
    tr = {"metadata": {"generation": 3}, "status": status}
    for deployment, finished, want in [("Running", False, "unchanged"),
                                       ("Complete", True, "finished")]:
        older["status"] = {"jobDeploymentStatus": deployment}
        for changed in (None, ["spec.serve.minAccuracy"]):  # a restart; a serve edit
            assert plan_rayjob(older, new, finished=finished,
                               edited=_edited(changed, tr)) == want
        assert plan_rayjob(older, new, finished=finished, edited=_edited(
            ["spec.train.epochs"], tr)) == ("pending" if deployment == "Running" else "rerun")
    # edited while the operator was down: the generation moved past what it applied
    assert _edited(None, {"metadata": {"generation": 4}, "status": status}) is True
    assert _edited(None, {"metadata": {"generation": 1}, "status": {}}) is False  # first sight


class _RayClusterReader:
    """Stands in for the API server's answer to ``get rayclusters``: a refusal (403) is
    what a ClusterRole from before the operator read RayClusters gives, which a real API
    server produces too (tests/integration/test_operator_preflight.py) but not inside a
    running pod handler without a second operator deployment."""

    def __init__(self, answer):
        self.answer = answer

    def get(self, api_version, kind, namespace, name):
        assert (kind, namespace, name) == ("RayCluster", "ns", "r-abc")
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_head_loss_stays_one_when_the_raycluster_cannot_be_read():
    from types import SimpleNamespace

    from raykube_operator import status as st
    from raykube_operator.handlers import _cluster_loss
    from raykube_operator.kube import ApiError

    pod = {"metadata": {"name": "r-abc-head-x", "uid": "u1", "labels": {
        "ray.io/node-type": "head", "ray.io/cluster": "r-abc"},
        "ownerReferences": [{"kind": "RayCluster", "name": "r-abc", "uid": "c1"}]}}
    loss = st.head_loss(pod, deleted=True, now="2026-12-05T00:00:00Z")

    def judged(answer):
        return _cluster_loss(SimpleNamespace(kube=_RayClusterReader(answer)), "ns", "r-abc",
                             pod, loss)

    assert judged(ApiError(403, "Forbidden")) is loss
    assert judged(None).reason == "RayClusterLost"
    assert judged({"metadata": {"uid": "c1"}}) is loss
    with pytest.raises(ApiError):  # anything else is retried by the pod handler
        judged(ApiError(500, "Internal Server Error"))


def _live(current: dict, **spec) -> dict:
    out = {**current, "spec": {**current["spec"], **spec}}
    return out


@pytest.mark.parametrize("current, status, expected", [
    (job(deployment="Running"), {}, []),
    (_live(job(deployment="Running"), backoffLimit=7), {}, ["spec.backoffLimit"]),
    (_live(job(deployment="Running"), suspend=True), {}, ["spec.suspend"]),
    # rendered by another operator version (its spec-hash): kept as it runs, no "edit"
    (_live(job(spec="s0", deployment="Running"), backoffLimit=7), {}, []),
    # ended, or being deleted: nothing more runs from it
    (_live(job(deployment="Failed"), backoffLimit=7), {}, []),
    (_live(job(deleting=True), backoffLimit=7), {}, []),
    # the operator lowered backoffLimit itself for a permanent failure
    (_live(job(deployment="Running"), backoffLimit=0),
     {"permanentFailure": {"message": "m"}}, []),
    (_live(job(deployment="Running"), entrypoint="x"), {"permanentFailure": {"message": "m"}},
     ["spec.entrypoint"]),
])
def test_rayjob_drift(current, status, expected):
    desired = job()
    desired["spec"] = {"backoffLimit": 2, "entrypoint": "raykube train"}
    current = {**current, "spec": {"backoffLimit": 2, "entrypoint": "raykube train",
                                   **current["spec"]}}
    assert rayjob_drift(current, desired, status) == expected


@pytest.mark.parametrize("pending, changed, expected", [
    ([], None, "the spec"),
    (["the spec"], ["spec.train.epochs"], "spec.train.epochs"),  # read 'the spec, spec...'
    (["spec.model.name"], ["spec.train.epochs", "spec.model.name"],
     "spec.model.name, spec.train.epochs"),
])
def test_the_fields_an_edit_names(pending, changed, expected):
    assert _fields(pending, changed) == expected


def test_a_write_into_a_namespace_being_deleted_is_no_error(caplog):
    """Deleting a namespace with a run in it: each child's DELETED event reconciled the run
    and logged an ERROR ('403 Forbidden: ... because it is being terminated (the next
    operator start reconciles it)'). The API server's answer, as NamespaceLifecycle
    gives it, stands in for the namespace (a unit test of the classification)."""
    from types import SimpleNamespace

    from raykube_operator.config import OperatorConfig
    from raykube_operator.handlers import _retrying
    from raykube_operator.kube import ApiError

    memo = SimpleNamespace(cfg=OperatorConfig(retry_delay=0))
    calls = []

    def terminating():
        calls.append(1)
        raise ApiError(403, "Forbidden", 'configmaps "r-spec" is forbidden: unable to create '
                       "new content in namespace ns1 because it is being terminated")

    with caplog.at_level(logging.INFO):
        _retrying(memo, "reconciling after ConfigMap ns1/r-spec was deleted", terminating)
    assert calls == [1]  # not retried
    assert [r.levelname for r in caplog.records] == ["INFO"], caplog.text
    assert "its namespace is being deleted" in caplog.text

    def refused():
        raise ApiError(403, "Forbidden", "roles is forbidden: User cannot create")

    caplog.clear()
    _retrying(memo, "reconciling", refused)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "the resync, every 300 s, or the next operator start reconciles it" in caplog.text


def test_a_name_conflicts_retries_are_warnings_not_errors():
    """kopf logs each retry of a TemporaryError at ERROR: a NameConflict's every 30 s,
    though the status and a Warning Event say it once. Other failures keep their level."""
    import logging

    from raykube_operator.handlers import NAME_CONFLICT_WAIT, quiet_watch_handlers

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, msg, None, None)

    wait = record(f"Handler 'on_trainingrun' failed temporarily: waiting for ConfigMap/x-spec"
                  f"{NAME_CONFLICT_WAIT}")
    assert quiet_watch_handlers(wait) and wait.levelname == "WARNING"
    other = record("Handler 'on_trainingrun' failed temporarily: something else")
    assert quiet_watch_handlers(other) and other.levelname == "ERROR"


@pytest.mark.parametrize("metrics, ann", [
    ({"valAccuracy": 0.9612}, {"raykube.io/val-accuracy": "0.9612"}),
    ({"valAccuracy": 1}, {"raykube.io/val-accuracy": "1.0"}),
    ({"valLoss": 0.2}, {}), ({"valAccuracy": float("nan")}, {}), ({"valAccuracy": True}, {}),
    (None, {})])
def test_the_promoted_accuracy_annotation(metrics, ann):
    from raykube_operator.handlers import promoted_accuracy

    assert promoted_accuracy({"metrics": metrics} if metrics is not None else None) == ann


def test_a_removed_rerun_keeps_the_value_the_run_ran_with():
    """Only a new ``spec.rerun`` asks for a run: the RayJob keeps the value it ran with
    (also for an operator that was down and sees no diff), and a removed one is no ask."""
    from raykube_operator.handlers import RERUN_ANNOTATION, _rerun_asked, keep_rerun

    def rj(rerun=None):
        anns = {RERUN_ANNOTATION: rerun} if rerun else {}
        return {"metadata": {"annotations": anns}}

    assert not _rerun_asked(rj("1"), rj())
    assert not _rerun_asked(rj("1"), rj("1"))
    assert _rerun_asked(rj("1"), rj("2")) and _rerun_asked(rj(), rj("1"))
    kept = keep_rerun(rj(), rj("1"))
    assert kept["metadata"]["annotations"][RERUN_ANNOTATION] == "1"
    assert keep_rerun(rj("2"), rj("1"))["metadata"]["annotations"][RERUN_ANNOTATION] == "2"
    assert keep_rerun(rj(), None) == rj()


def test_a_section_added_whole_is_named_by_its_fields():
    """Adding ``train: {epochs: 5}`` to a spec that had no train section was reported as
    "spec.train changed" (kopf's diff names the section); an edit inside one names the
    field, and so does this now."""
    from raykube_operator.handlers import _leaf_paths

    assert _leaf_paths("spec.train", None, {"epochs": 5, "optimizer": {"lr": 0.1}}) == [
        "spec.train.epochs", "spec.train.optimizer.lr"]
    assert _leaf_paths("spec.train", {"epochs": 5}, None) == ["spec.train.epochs"]
    assert _leaf_paths("spec.train.epochs", 3, 5) == ["spec.train.epochs"]
    assert _training_changed(_leaf_paths("spec.serve", None, {"replicas": 2})) is False
