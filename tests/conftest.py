"""Test-session wiring shared by all suites.

One local Ray instance serves the whole session (starting Ray costs ~10 s here); tests
that need it take the ``ray_session`` fixture. Unit tests never start Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the real control plane (session), per-module namespaces, the operator process; and a
# real S3 server (MinIO): s3_server, s3_prefix
pytest_plugins = ["raykube.testing.fixtures", "s3_server"]

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
SHARED = REPO.parent / "shared"
KUBERAY_CRDS = SHARED / "kuberay" / "v1.7.0"

# No network here and no telemetry wanted in tests.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Keep Ray Train's worker processes from each spawning a full set of BLAS threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls workers every 2 s by default and each report waits for
# the poll: tiny test epochs would take 2 s each (raykube run and rendered pods set it too).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session", autouse=True)
def _ray_data_logs_to_the_sessions_stderr(request):
    """Import Ray Data (which sets up its ``ray.data`` loggers) before any test runs.

    Its console handler, ``ray._private.log.PlainRayHandler``, says it writes to
    ``sys.stderr`` as it is when a record is emitted, but as a ``StreamHandler`` it
    keeps the stream it was created with. Created inside a test that captures stderr
    (``capsys``; ``raykube run`` imports Ray Data), every later Ray Data log went to that
    closed stream and printed "--- Logging error ---" into the next test's stderr:
    ``test_predict`` failed after ``test_s3_errors``. Only for sessions with
    integration tests (unit tests never import Ray Data)."""
    if any("integration" in item.nodeid for item in request.session.items):
        import ray.data  # noqa: F401


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test of the session.

    Ray's default (dashboard on 127.0.0.1) is kept: in Ray 2.60 the state API lives
    there, and Ray Train's placement-group cleaner polls it (as in `raykube run`).

    Logical CPUs are oversubscribed (4 on a 2-core machine) so a 2-worker Train run, a
    Serve replica and the Train controller can be scheduled together; the work itself
    is small.
    """
    import ray

    from raykube.local import apply_ray_env

    apply_ray_env()  # the settings `raykube run`/`serve` and the pods use (HAProxy ingress...)
    if not ray.is_initialized():
        ray.init(
            num_cpus=int(os.environ.get("RAYKUBE_TEST_RAY_CPUS", "4")),
            log_to_driver=True,
            configure_logging=False,
        )
    yield ray
    # Serve (if a test started it) must go before Ray itself.
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture
def jobs_dir() -> Path:
    return JOBS


@pytest.fixture(scope="session")
def kuberay_crds() -> Path:
    """KubeRay v1.7.0 CRDs: ../shared in CI, or fetched by `make kuberay-crds`."""
    for candidate in (KUBERAY_CRDS, REPO / "build" / "kuberay" / "v1.7.0"):
        if (candidate / "ray.io_rayjobs.yaml").exists():
            return candidate
    pytest.fail(
        "KubeRay v1.7.0 CRDs not found: expected ../shared/kuberay/v1.7.0/ or "
        "build/kuberay/v1.7.0/ (run `make kuberay-crds`)"
    )


@pytest.fixture
def no_requests(monkeypatch):
    """Fails the test if an S3 client is built or an HTTP request is sent: proof that
    a setting was refused before anything went out (an empty AWS_ENDPOINT_URL would
    otherwise reach amazonaws.com)."""
    import urllib.request

    import pyarrow.fs as pafs

    def refuse(*_, **__):
        raise AssertionError("a request was about to go out")

    monkeypatch.setattr(pafs, "S3FileSystem", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
