"""A free TCP port, for everything that starts a server on this machine (the embedded
Ray's ports, the benches' servers and DDP rendezvous, the test control plane and
fakes). The port is free when asked; the caller binds it soon after."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` ("" for every address, as Ray binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
