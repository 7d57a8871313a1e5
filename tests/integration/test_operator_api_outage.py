"""The real API server crashes under the running operator and comes back.

Why: kopf gives up on one API request after its retry budget (``error_backoffs``: 0.5 +
1 + 2 + 5 + 10 s), and an operator that exited with it would leave every TrainingRun
unwatched until something restarts it. Its watch streams are meant to reconnect for as
long as it takes. Here the session's API server is killed (SIGKILL, so open watches are
cut) and kept down longer than that budget, then started again on the same etcd; right
after, its RBAC authorizer refuses requests for a few seconds until its caches fill (403
"clusterrole ... not found"), which the operator also rides out.

Its own module: the restart is seen by everything in the session (KubeRay, kwok, the
controller manager reconnect), and the forbidden requests of the warm-up land in the
audit log that test_operator_robustness.py reads for the operator's permissions.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

from operator_helpers import tr_doc
from raykube.testing.fixtures import kube, operator, operator_logs  # noqa: F401

KOPF_RETRY_BUDGET_S = 0.5 + 1 + 2 + 5 + 10
"""raykube_operator.handlers.configure: settings.networking.error_backoffs, summed."""


def test_operator_outlives_an_api_server_crash(kube, operator, operator_logs):
    kube.create(tr_doc("before"))
    kube.wait_object("RayJob", "before")
    kube.wait_condition("before", "SpecApplied", reason="Created")

    kube.cp.crash_apiserver(down_s=KOPF_RETRY_BUDGET_S + 6)
    assert operator.proc.poll() is None, f"the operator exited:\n{operator.logs()[-4000:]}"

    # its watches are back: a new run is handled, and a child deleted behind its back
    # (an event on a RayJob watch) is put back
    kube.create(tr_doc("after"))
    kube.wait_object("RayJob", "after", timeout=60)
    uid = kube.get("RayJob", "before")["metadata"]["uid"]
    kube.delete("RayJob", "before")
    kube.wait_for(lambda: (kube.get("RayJob", "before") or {}).get("metadata", {}).get(
        "uid") not in (None, uid), timeout=60, what="the deleted RayJob to be recreated")
    assert operator.proc.poll() is None
