"""The operator's pod watch (``handlers.on_pod_event``) without an API server: what it
calls the API for. A recording client stands in for the API server here; what the
calls do is tested against the real one (test_operator_kuberay.py, test_operator_robustness.py)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from raykube.spec import LABEL
from raykube_operator import handlers
from raykube_operator.config import OperatorConfig


class Recorder:
    """Records each API call; answers none (nothing exists)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **_: Any) -> None:
            self.calls.append((name, args))
        return call


@pytest.fixture
def memo():
    saved = dict(handlers._EVENTS)
    api = Recorder()
    yield handlers.init_memo(kopf.Memo(), OperatorConfig(pod_problem_grace=15.0), api)
    handlers._EVENTS.clear()
    handlers._EVENTS.update(saved)


def pod(phase: str = "Running", *, unschedulable: bool = False) -> kopf.Body:
    status: dict[str, Any] = {"phase": phase}
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                 "message": "0/1 nodes are available: 1 Insufficient cpu."}]
    return kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "r-c-worker", "namespace": "ns", "uid": "u",
        "labels": {LABEL: "r", "ray.io/cluster": "r-c", "ray.io/node-type": "worker"}},
        "spec": {"containers": [{"name": "ray-worker"}]}, "status": status})


def test_a_healthy_pods_events_cost_no_api_call(memo):
    """Every status change of every Ray pod reaches the operator; a healthy one must cost
    nothing (a slip in the grace period's bookkeeping made each one read the RayJob)."""
    for _ in range(3):
        handlers.on_pod_event(type="MODIFIED", body=pod(), memo=memo)
    assert memo.kube.calls == []


def test_a_problem_is_followed_once_and_kept_from_its_first_sighting(memo):
    """A new problem re-derives the status (and is named once it has lasted the grace
    period); the same problem seen again costs nothing and keeps its first sighting."""
    handlers.on_pod_event(type="MODIFIED", body=pod("Pending", unschedulable=True), memo=memo)
    assert memo.kube.calls and memo.kube.calls[0][0] == "get"
    first = memo.pod_problems[("ns", "r")]["r-c-worker"][2]
    n = len(memo.kube.calls)
    handlers.on_pod_event(type="MODIFIED", body=pod("Pending", unschedulable=True), memo=memo)
    assert len(memo.kube.calls) == n and memo.pod_problems[("ns", "r")]["r-c-worker"][2] == first
    assert handlers._pod_problems(memo, "ns", "r", lambda c: True) == []  # within the grace
    handlers.on_pod_event(type="MODIFIED", body=pod(), memo=memo)  # scheduled: forgotten
    assert ("ns", "r") not in memo.pod_problems
