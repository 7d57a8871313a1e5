"""A cluster without KubeRay: the operator says so in the TrainingRun's status, and the run
starts by itself once KubeRay's CRDs are installed.

Its own control plane (the session's has KubeRay's CRDs, which other modules need):
etcd, kube-apiserver, controller manager and scheduler, raykube's CRD and RBAC, no KubeRay
CRDs, no KubeRay controller, no kwok. The operator is the real one, as its ServiceAccount.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from operator_helpers import cond, tr_doc
from raykube.testing.control_plane import ControlPlane
from raykube.testing.real_kube import RealKube, RealOperator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealKube]:
    cp = ControlPlane(tmp_path_factory.mktemp("no-kuberay"), kuberay=False, kwok=False,
                      with_kuberay_crds=False)
    try:
        cp.up(timeout=120, fresh=True)
        kube = RealKube(cp, "no-kuberay")
        yield kube
        kube.close()
    finally:
        cp.down(quiet=True)


def test_a_run_waits_for_kuberay_and_says_so_then_starts(bare):
    kube = bare
    op = RealOperator(kube).start()
    try:
        assert "is KubeRay installed?" in op.logs(), op.logs()[-3000:]
        kube.create(tr_doc("waits"))
        tr = kube.wait_condition("waits", "SpecApplied", "False", reason="KubeRayMissing")
        assert tr["status"]["phase"] == "Pending"
        assert "KubeRay is not installed" in tr["status"]["message"]
        assert "RayJob" in cond(tr, "SpecApplied")["message"]
        assert cond(tr, "Validated")["status"] == "True"
        # one Warning event, not one per retry
        time.sleep(4)  # > one retry (6 x the tests' 0.5 s retry delay)
        events = [e for e in kube.list("Event")
                  if (e.get("involvedObject") or {}).get("name") == "waits"
                  and e.get("reason") == "KubeRayMissing"]
        assert len(events) == 1 and events[0]["type"] == "Warning", events
        assert (events[0].get("count") or 1) == 1, events

        args = ["apply", "--server-side", "--field-manager=kuberay-install"]
        for f in sorted(kube.cp.kuberay_crds().glob("ray.io_*.yaml")):
            args += ["-f", str(f)]
        kube.cp.kubectl_run(*args, timeout=120)
        kube.wait_object("RayJob", "waits", timeout=60)
        tr = kube.wait_condition("waits", "SpecApplied", "True", reason="Created")
        assert tr["status"]["message"] == "KubeRay is installed now: RayJob created"
        assert tr["status"]["phase"] == "Pending"  # waiting for KubeRay's Ray cluster
    finally:
        op.stop()
