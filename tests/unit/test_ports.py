"""``raykube.ports``: ports for servers that bind them long after they are chosen."""

from __future__ import annotations

import socket

from raykube import ports


def test_a_late_bound_port_is_free_and_below_the_ephemeral_range():
    """Outgoing connections draw from the ephemeral range (HAProxy once found its metrics
    port, chosen there, taken by the time Serve started it)."""
    low = ports._ephemeral_low()
    for _ in range(20):
        port = ports.late_bound_port("")
        assert ports.LOWEST_LISTEN_PORT <= port < low
        with socket.socket() as s:
            s.bind(("", port))  # free when handed out


def test_the_range_is_read_from_the_kernel_and_defaults_when_unreadable(tmp_path):
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert ports._ephemeral_low(str(f)) == 40000
    assert ports._ephemeral_low(str(tmp_path / "missing")) == 32768


def test_a_machine_with_no_room_below_the_range_gets_any_free_port(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: ports.LOWEST_LISTEN_PORT)
    assert ports.late_bound_port("") > 0
