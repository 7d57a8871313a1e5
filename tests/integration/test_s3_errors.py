"""Bad S3 settings end in one line naming the URI and the cause, in seconds, before
Ray starts: against the real MinIO (wrong secret, missing bucket, missing object), a
loopback port nobody listens on, and one that accepts connections but never answers."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
import yaml

from ray_output import command_lines
from raykube.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_endpoint():
    """A loopback server that accepts TCP connections and never answers (a hung proxy)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    for s in held:
        s.close()
    sock.close()


@pytest.fixture
def web_page():
    """A real HTTP server that is no S3 API (what MinIO's console port or a proxy's front
    page is): every GET is a 200 HTML page, every other method a 501."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"<html><body>MinIO Console</body></html>")

        def log_message(self, *_) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a command gets as far as starting Ray."""
    import raykube.local

    def refuse(**_):
        raise AssertionError("Ray was started before the S3 problem was reported")

    monkeypatch.setattr(raykube.local, "init_ray", refuse)


def one_line(capsys, rc: int, started: float, want_rc: int = 1) -> str:
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    lines = command_lines(err)
    assert rc == want_rc
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert elapsed < 15, f"took {elapsed:.1f} s"
    print(f"[{elapsed:.2f} s] {lines[0]}")  # the README and the report quote these
    return lines[0]


def job(tmp_path, *, storage: str | None = None, data_uri: str | None = None):
    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, "scaling": {"workers": 1}}
    if storage:
        spec["checkpoint"] = {"storage": {"uri": storage}}
    if data_uri:
        spec["data"] = {"dataset": "image-folder", "uri": data_uri}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                                 "metadata": {"name": "bad-s3"}, "spec": spec}))
    return str(f)


def bad_s3(case: str, monkeypatch, request) -> tuple[str, str]:
    """Set up one bad S3 setting against the real MinIO: (storage URI, what the line says)."""
    storage = "s3://raykube-test/runs"
    if case == "wrong-secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        return storage, "refused the credentials"
    if case == "missing-bucket":
        return "s3://no-such-bucket/runs", "bucket 'no-such-bucket' does not exist"
    if case == "web-page":
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("web_page"))
        return storage, "is not an S3 API (it answered HTTP 200, text/html); is AWS_ENDPOINT_URL the S3 port?"
    if case == "refused":
        from s3_server import free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("silent_endpoint"))
    return storage, "cannot reach the S3 endpoint http://127.0.0.1:"


@pytest.mark.parametrize("case", ["wrong-secret", "missing-bucket", "web-page", "refused", "silent"])
def test_run_with_bad_s3_storage_says_why_in_one_line(case, s3_server, tmp_path, monkeypatch,
                                                      capsys, no_ray, request):
    storage, want = bad_s3(case, monkeypatch, request)
    started = time.monotonic()
    line = one_line(capsys, main(["run", job(tmp_path, storage=storage)]), started)
    assert line.startswith(f"raykube run: storage {storage}/default/bad-s3: "), line
    assert want in line, line


@pytest.mark.parametrize("case,retry", [("wrong-secret", False), ("missing-bucket", False),
                                        ("web-page", False), ("refused", True), ("silent", True)])
def test_only_an_endpoint_that_did_not_answer_is_worth_a_retry(case, retry, s3_server,
                                                               monkeypatch, request):
    """What ``raykube train`` asks the operator not to retry (``raykube.transient``):
    refused credentials and a missing bucket would fail every attempt."""
    from raykube.train import StorageError, check_storage
    from raykube.transient import retry_would_help

    storage, want = bad_s3(case, monkeypatch, request)
    with pytest.raises(StorageError) as err:
        check_storage(storage, "bad-s3")
    assert want in str(err.value)
    assert retry_would_help(err.value) is retry


def test_run_with_an_image_folder_in_a_missing_bucket(s3_server, tmp_path, capsys, no_ray):
    started = time.monotonic()
    line = one_line(capsys, main(["run", job(tmp_path, data_uri="s3://no-such-bucket/images"),
                                  "--storage", str(tmp_path / "runs")]), started)
    assert line == ("raykube run: data.uri s3://no-such-bucket/images: bucket 'no-such-bucket' "
                    f"does not exist at {s3_server.endpoint}")


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_serve_and_predict_of_a_missing_s3_checkpoint(command, s3_server, tmp_path, capsys):
    uri = "s3://raykube-test/no/such/run/best"
    extra = ["--out", str(tmp_path / "p.parquet")] if command == "predict" else []
    started = time.monotonic()
    line = one_line(capsys, main([command, uri, *extra]), started, want_rc=2)
    assert f"{uri}/checkpoint.pt: no such object at {s3_server.endpoint}" in line, line


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_serve_and_predict_with_refused_credentials(command, s3_server, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    uri = "s3://raykube-test/some/run/best"
    extra = ["--out", str(tmp_path / "p.parquet")] if command == "predict" else []
    started = time.monotonic()
    line = one_line(capsys, main([command, uri, *extra]), started, want_rc=2)
    assert uri in line and "refused the credentials" in line, line


def test_a_malformed_s3_uri_is_named(capsys):
    started = time.monotonic()
    line = one_line(capsys, main(["serve", "s3:///best"]), started, want_rc=2)
    assert "s3:///best" in line and "names no bucket (s3://<bucket>/<prefix>)" in line, line


@pytest.mark.parametrize("case", ["wrong-secret", "missing-bucket", "web-page"])
def test_a_replica_waiting_for_training_says_at_once_what_waiting_would_not_mend(
        case, s3_server, monkeypatch, request):
    """A rendered RayService's replica waits for its run's ``best`` (``waitForTraining``);
    refused credentials, a missing bucket or a wrong endpoint are no reason to wait: one
    line, in seconds, as without waiting."""
    from raykube.s3 import S3Unavailable
    from raykube.serve import wait_for_training

    storage, want = bad_s3(case, monkeypatch, request)
    started = time.monotonic()
    with pytest.raises(S3Unavailable) as raised:
        wait_for_training(f"{storage}/default/quickstart/best", poll_s=0.1)
    assert want in str(raised.value) and "\n" not in str(raised.value), raised.value
    assert time.monotonic() - started < 15


class _Stopped(Exception):
    pass


@pytest.mark.parametrize("case", ["refused", "silent"])
def test_a_replica_waiting_for_training_waits_out_an_endpoint_that_does_not_answer(
        case, s3_server, monkeypatch, request, caplog):
    """An object store that does not answer for a moment (restarted, overloaded) must not
    fail a replica that waits for training: it looks again. Stand-in: the waiting loop's
    sleep ends the test after its third look (this thread only)."""
    import logging

    from raykube.serve import wait_for_training

    storage, want = bad_s3(case, monkeypatch, request)
    me, looks, real_sleep = threading.get_ident(), [], time.sleep

    def sleep(s: float) -> None:
        if threading.get_ident() != me:
            return real_sleep(s)
        looks.append(s)
        if len(looks) == 3:
            raise _Stopped

    monkeypatch.setattr(time, "sleep", sleep)
    serve_log = logging.getLogger("ray.serve")  # what a replica logs to (not propagated)
    serve_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ray.serve"), pytest.raises(_Stopped):
            wait_for_training(f"{storage}/default/quickstart/best", poll_s=0.1, log_every_s=0)
    finally:
        serve_log.removeHandler(caplog.handler)
    assert len(looks) == 3
    said = [r.getMessage() for r in caplog.records if r.name == "ray.serve"]
    assert len(said) == 3 and all("it cannot be read now: " in m and want in m for m in said), said


def test_a_replica_waiting_for_training_on_s3_loads_once_the_run_has_finished(s3_prefix):
    """The run writes ``best/`` and then ``result.json``: the wait ends with the second."""
    from raykube.serve import wait_for_training
    from raykube.storage import write_bytes

    run_dir = f"{s3_prefix}/default/quickstart"
    write_bytes(f"{run_dir}/best/checkpoint.pt", b"weights")  # best/, the run not done yet

    def finish() -> None:
        time.sleep(1.5)
        write_bytes(f"{run_dir}/result.json", b"{}")

    threading.Thread(target=finish, daemon=True).start()
    waited = wait_for_training(f"{run_dir}/best", poll_s=0.2)
    assert 1.0 < waited < 30, waited
    assert wait_for_training(f"{run_dir}/best", poll_s=0.2) == 0.0  # finished already
