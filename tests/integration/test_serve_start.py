"""Serve's start failing on this machine is one line, and leaves Serve able to start again.

`raykube run` and `raykube serve` check the port before they start Serve, but a port can
be taken between that check and HAProxy binding it (seen: two `raykube run`s of one spec,
the first serving its demo request on 8000 while the second finished training). Ray
reports that as a remote traceback; the user must get one line naming the port.
"""

from __future__ import annotations

import socket

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_a_port_taken_before_serve_binds_is_one_line_and_serve_recovers(ray_session,
                                                                        tmp_path):
    from ray import serve
    from test_serve import train_digits_checkpoint

    from raykube.serve import start_local, stop_local

    checkpoint = train_digits_checkpoint(tmp_path / "checkpoint_000002", epochs=1)
    serve.shutdown()  # another module's Serve would keep its own port
    with socket.socket() as taken:  # a plain listener: HAProxy cannot share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as exc:
            start_local(checkpoint, port=port, timeout_s=60, quiet=True)
    msg = str(exc.value)
    assert msg == f"127.0.0.1:{port} is already in use (taken while the model was loading)"
    # the failed start was cleaned up: the same call works once the port is free
    try:
        base = start_local(checkpoint, port=port, timeout_s=120, quiet=True)
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    finally:
        stop_local()
