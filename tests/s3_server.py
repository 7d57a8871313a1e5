"""A real S3 server for the tests: MinIO (built from its Go module by tests/s3/build.sh),
started once per test session on free loopback ports, stopped at the end.

Why MinIO and not a mock: the point of the S3 tests is the real protocol (signatures,
multipart uploads, error codes, an endpoint that goes away mid-upload), which only a
real server has.

Registered through ``pytest_plugins`` in tests/conftest.py. The AWS_* variables that
raykube reads (raykube.s3) are set in ``pytest_configure``, before any test can start
Ray: Ray's worker processes (Serve replicas, Ray Data tasks) inherit the environment of
the process that starts Ray, exactly as pods inherit it from the Secret.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raykube.ports import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
MINIO = REPO / "build" / "bin" / "minio"
ACCESS_KEY = "raykube-test"
SECRET_KEY = "raykube-test-secret"
REGION = "us-east-1"
BUCKET = "raykube-test"
"""Created at start; tests use a fresh prefix each (``s3_prefix``)."""


@dataclass
class MinioServer:
    """One MinIO process on ``127.0.0.1:port`` over ``data_dir``; stop/start keep both,
    so a restarted server holds what was written before."""

    port: int
    data_dir: Path
    binary: Path = MINIO
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / "minio.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **override: str) -> dict[str, str]:
        """The AWS_* variables a client needs (``override`` to spoil one on purpose)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION, **override}

    def start(self, timeout: float = 60.0) -> None:
        if not self.binary.exists():
            pytest.fail(f"{self.binary} is missing: run `make s3-build` (tests/s3/build.sh); "
                        "`make test` builds it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY,
               "MINIO_REGION": REGION, "MINIO_BROWSER": "off", "MINIO_UPDATE": "off",
               "MINIO_CALLHOME_ENABLE": "off", "MINIO_PROMETHEUS_AUTH_TYPE": "public",
               "CI": "true"}
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process's life)
        self.proc = subprocess.Popen(
            [str(self.binary), "server", "--quiet", "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{free_port()}", str(self.data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"MinIO exited with {self.proc.returncode}; log: {self.log_path}\n"
                            + self.log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"MinIO did not become ready in {timeout:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: no graceful end for in-flight uploads)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def filesystem(self):  # noqa: ANN201 (pyarrow.fs.S3FileSystem)
        """An admin filesystem onto this server (what the tests inspect the bucket with)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                                 endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 allow_bucket_creation=True, allow_bucket_deletion=True)

    def make_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)


_PORT: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Pick the server's port and export its AWS_* settings before anything starts Ray."""
    global _PORT
    _PORT = free_port()
    for key, value in MinioServer(_PORT, Path("/nonexistent")).env().items():
        os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server() -> MinioServer:
    """The session's MinIO, with bucket ``raykube-test``; AWS_* already point at it."""
    assert _PORT is not None
    work = Path(tempfile.mkdtemp(prefix="raykube-minio-"))
    server = MinioServer(_PORT, work / "data")
    server.start()
    server.make_bucket(BUCKET)
    yield server
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def s3_prefix(s3_server: MinioServer, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://raykube-test/<test name>-<n>`` for one test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:60]
    return f"s3://{BUCKET}/{name}-{time.monotonic_ns()}"


class SlowProxy:
    """A loopback TCP proxy in front of the server that forwards uploads at ``rate``
    bytes/s and counts them.

    Why: to stop the server *during* an upload, the test must know an upload is under
    way and have time to act; a checkpoint uploaded at full loopback speed is gone in
    milliseconds. Nothing is altered, only slowed: the server still sees the real
    requests, and when it dies the client's connection breaks as it would.
    """

    def __init__(self, upstream_port: int, rate: float):
        import threading

        self.upstream_port = upstream_port
        self.rate = rate
        self.uploaded = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="slow-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:  # the server is down: the client sees a closed connection
                client.close()
                continue
            upstream.settimeout(None)
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if upload:
                    time.sleep(len(data) / self.rate)
                    with self._lock:
                        self.uploaded += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()
