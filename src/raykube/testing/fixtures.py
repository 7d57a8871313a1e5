"""pytest fixtures for operator tests: import them into a test module.

    from raykube.testing.fixtures import kube, operator, operator_logs  # noqa: F401

``kube`` is a namespace of the session's real control plane (``control_plane``, see
``raykube.testing.control_plane``), one per test module, where KubeRay's real controller
does *not* act: tests there stand in for KubeRay by patching RayJob/RayService status
(they say so). ``kuberay_kube`` is a namespace where KubeRay does act. ``operator`` is
the real operator process, as its ServiceAccount, scoped to the module's namespace.

``kmock_kube``/``kmock_operator``: the HTTP emulator, kept only for faults a real API
server cannot produce on demand (injected 429/5xx/409 on a chosen request; objects that
no CRD schema would let through).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from raykube.testing.control_plane import REPO, ControlPlane
from raykube.testing.kube import KubeCluster, OperatorProcess
from raykube.testing.real_kube import RealKube, RealOperator

KUBERAY_NAMESPACES = tuple(f"kuberay-{i}" for i in range(12))
"""The namespaces where the session's KubeRay acts (one per module that needs it)."""
_kuberay_ns = itertools.count()
_ns_ids = itertools.count()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd, API server, controller manager, scheduler, kwok and KubeRay, once per session."""
    reuse = os.environ.get("RAYKUBE_TEST_CLUSTER")
    if reuse:  # a running `make cluster-up` (faster iterations); left running afterwards
        yield ControlPlane(Path(reuse).resolve()).attach()
        return
    workdir = Path(REPO / "build" / "cluster-test")
    cp = ControlPlane(workdir.resolve(), kuberay_namespaces=KUBERAY_NAMESPACES)
    try:
        cp.up(timeout=120, fresh=True)
    except BaseException:
        cp.down(quiet=True)
        raise
    try:
        yield cp
    finally:
        cp.down(quiet=True)


def _module_namespace(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", Path(str(request.node.path)).stem.lower()).strip("-")
    # unique per session too: the last session's namespace may still be terminating
    return f"{stem[:36]}-{next(_ns_ids)}{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[RealKube]:
    client = RealKube(control_plane, _module_namespace(request))
    try:
        yield client
    finally:
        client.delete_namespace()
        client.close()


@pytest.fixture(scope="module")
def kuberay_kube(control_plane: ControlPlane) -> Iterator[RealKube]:
    """A namespace where KubeRay's real controller acts on what the operator writes."""
    client = RealKube(control_plane, KUBERAY_NAMESPACES[next(_kuberay_ns)])
    try:
        yield client
    finally:
        client.delete_namespace()
        client.close()


@pytest.fixture(scope="module")
def operator(kube: RealKube) -> Iterator[RealOperator]:
    op = RealOperator(kube).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator_logs(operator: RealOperator | OperatorProcess) -> Iterator[None]:
    """The operator's log tail, printed at teardown (pytest shows it when a test fails)."""
    yield
    print(operator.logs()[-8000:])


@pytest.fixture(scope="module")
def kmock_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path_factory.mktemp("kmock")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def kmock_operator(kmock_kube: KubeCluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kmock_kube).start()
    try:
        yield op
    finally:
        op.stop()
