"""pytest fixtures for operator tests: import them into a test module.

    from raykube.testing.fixtures import kube, operator  # noqa: F401

``kube`` is a module-scoped emulator (``KubeCluster``); ``operator`` the real operator
process against it (``OperatorProcess``), started once per module. Tests use distinct
TrainingRun names, so they can share both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raykube.testing.kube import KubeCluster, OperatorProcess


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path_factory.mktemp("kmock")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def operator(kube: KubeCluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kube).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator_logs(operator: OperatorProcess) -> Iterator[None]:
    """The operator's log tail, printed at teardown (pytest shows it when a test fails)."""
    yield
    print(operator.logs()[-8000:])
