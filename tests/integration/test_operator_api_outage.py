"""The real API server crashes under the running operator and comes back.

Why: kopf gives up on one API request after its retry budget (``error_backoffs``: 0.5 +
1 + 2 + 5 + 10 s), and an operator that exited with it would leave every TrainingRun
unwatched until something restarts it. Its watch streams are meant to reconnect for as
long as it takes. Here the session's API server is killed (SIGKILL, so open watches are
cut) and kept down longer than that budget, then started again on the same etcd; right
after, its RBAC authorizer refuses requests for a few seconds until its caches fill (403
"clusterrole ... not found"), which the operator also rides out.

The operator's resync runs every 3 s here (``RAYKUBE_RESYNC_SECONDS``, 300 by default):
a RayJob deleted right after the restart, before kopf has listed RayJobs again, sends
no DELETED event to anyone (the new list simply lacks it). A clean-clone CI run met
exactly that before the resync existed: the RayJob was never recreated.

Its own module: the restart is seen by everything in the session (KubeRay, kwok, the
controller manager reconnect), and the forbidden requests of the warm-up land in the
audit log that test_operator_robustness.py reads for the operator's permissions.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import pytest

from operator_helpers import tr_doc
from raykube.testing.fixtures import kube, operator_logs  # noqa: F401
from raykube.testing.real_kube import RealOperator

KOPF_RETRY_BUDGET_S = 0.5 + 1 + 2 + 5 + 10
"""raykube_operator.handlers.configure: settings.networking.error_backoffs, summed."""


@pytest.fixture(scope="module")
def operator(kube):
    op = RealOperator(kube, env={"RAYKUBE_RESYNC_SECONDS": "3"}).start()
    try:
        yield op
    finally:
        op.stop()


def test_operator_outlives_an_api_server_crash(kube, operator, operator_logs):
    kube.create(tr_doc("before"))
    kube.wait_object("RayJob", "before")
    kube.wait_condition("before", "SpecApplied", reason="Created")

    kube.cp.crash_apiserver(down_s=KOPF_RETRY_BUDGET_S + 6)
    assert operator.proc.poll() is None, f"the operator exited:\n{operator.logs()[-4000:]}"

    # at once, while kopf may still be listing again: a child deleted behind its back is
    # put back (a DELETED event, or the resync when the watch missed it); and a new run
    # is handled once its watches are back
    uid = kube.get("RayJob", "before")["metadata"]["uid"]
    kube.delete("RayJob", "before")
    kube.create(tr_doc("after"))
    kube.wait_object("RayJob", "after", timeout=60)
    kube.wait_for(lambda: (kube.get("RayJob", "before") or {}).get("metadata", {}).get(
        "uid") not in (None, uid), timeout=60, what="the deleted RayJob to be recreated")
    assert operator.proc.poll() is None


def operator_memo(kube):
    """A memo as the operator's start makes it, with a client of its ServiceAccount."""
    import kopf
    import kubernetes

    from raykube.testing.real_kube import OPERATOR_SA
    from raykube_operator.config import OperatorConfig
    from raykube_operator.handlers import init_memo
    from raykube_operator.kube import Kube

    path = kube.cp.kubeconfig_for(*reversed(OPERATOR_SA), kube.cp.workdir / "resync.kubeconfig")
    client = kubernetes.config.new_client_from_config(config_file=str(path))
    return init_memo(kopf.Memo(), OperatorConfig(resync=0), Kube(client))


def test_resync_promotes_again_a_rayservice_whose_deletion_no_watch_saw(kube, operator):
    """The same for a RayService deleted before it was ever Ready (its pods starting):
    the resync only looked for RayServices that had been Ready, so this one was never
    promoted again."""
    from raykube_operator.handlers import resync

    name = "missed-svc"
    kube.create(tr_doc(name, serve=True))
    kube.wait_object("RayJob", name)
    kube.patch_status("TrainingRun", name, {"checkpoint": {
        "uri": f"/mnt/raykube/{kube.namespace}/{name}/ckpt", "epoch": 3,
        "metrics": {"valAccuracy": 0.95}}})
    kube.patch_status("RayJob", name, {"jobDeploymentStatus": "Complete",
                                       "jobStatus": "SUCCEEDED", "succeeded": 1})
    old = kube.wait_object("RayService", f"{name}-serve")["metadata"]["uid"]
    tr = kube.wait_condition(name, "Promoted", reason="GatePassed")
    operator.kill()
    try:
        kube.delete("RayService", f"{name}-serve")
        kube.wait_for(lambda: kube.get("RayService", f"{name}-serve") is None,
                      what="the RayService gone")
        memo = operator_memo(kube)
        memo.runs[(kube.namespace, name)] = tr["metadata"]["uid"]
        assert resync(memo) == [f"RayService/{kube.namespace}/{name}-serve"]
        svc = kube.get("RayService", f"{name}-serve")
        assert svc is not None and svc["metadata"]["uid"] != old
        kube.wait_condition(name, "Ready", status="False", reason="RayServiceDeleted")
        assert resync(memo) == []  # nothing missing now: nothing done
    finally:
        operator.start()


def test_resync_puts_back_a_rayjob_whose_deletion_no_watch_saw(kube, operator):
    """The resync alone, deterministically: the operator is down while the RayJob is
    deleted (as a cut watch misses it), and ``resync`` runs as the operator's
    ServiceAccount, on a memo that knows the run (as kopf's list would have told it),
    with nothing else running that could react."""
    from raykube_operator.handlers import resync

    kube.create(tr_doc("missed"))
    kube.wait_object("RayJob", "missed")
    tr = kube.wait_condition("missed", "SpecApplied", reason="Created")
    operator.kill()
    try:
        old = kube.get("RayJob", "missed")["metadata"]["uid"]
        kube.delete("RayJob", "missed")
        kube.wait_for(lambda: kube.get("RayJob", "missed") is None, what="the RayJob gone")

        memo = operator_memo(kube)
        memo.runs[(kube.namespace, "missed")] = tr["metadata"]["uid"]
        memo.runs[(kube.namespace, "never-existed")] = "0"
        live, gone = (kube.namespace, "missed"), (kube.namespace, "never-existed")
        for key in (live, gone):  # what the pod watch and the handlers keep per run
            memo.locks[key]
            memo.pod_problems[key] = {"pod": ("cluster", "Unschedulable", 0.0)}
            memo.incidents_seen[key] = {"uid/ray-worker/1/t"}
        assert resync(memo) == [f"RayJob/{kube.namespace}/missed"]
        tables = (memo.locks, memo.pod_problems, memo.incidents_seen)
        assert all(live in t and gone not in t for t in tables), "a gone run's state is kept"
        job = kube.get("RayJob", "missed")
        assert job is not None and job["metadata"]["uid"] != old
        kube.wait_condition("missed", "Running", status="False", reason="RayJobRecreated")
        # its Warning too: kopf.event outside kopf's handlers (the resync's thread, here
        # the test's) raised, and the Event was dropped
        kube.wait_for(lambda: [e for e in kube.list("Event") if e.get("reason") ==
                               "RayJobRecreated" and (e.get("involvedObject") or {}).get(
                                   "name") == "missed"], timeout=10,
                      what="the resync's RayJobRecreated Event")
        assert (kube.namespace, "never-existed") not in memo.runs  # forgotten, once
        assert resync(memo) == []  # nothing missing now: nothing done
    finally:
        operator.start()
