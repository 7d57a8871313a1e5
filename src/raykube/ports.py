"""A free TCP port, for everything that starts a server on this machine (the embedded
Ray's ports, the benches' servers and DDP rendezvous, the test control plane and
fakes). The port is free when asked; the caller binds it soon after."""

from __future__ import annotations

import random
import socket

EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_LISTEN_PORT = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` ("" for every address, as Ray binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low(path: str = EPHEMERAL_RANGE) -> int:
    """The first port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def late_bound_port(host: str = "", tries: int = 64) -> int:
    """A free port below the kernel's ephemeral range, for a server that binds it long
    after it is chosen (HAProxy's stats and metrics listeners: chosen when ``raykube``
    sets up Ray's environment, bound when Serve starts, seconds to minutes later).

    ``free_port`` answers from the ephemeral range, which every outgoing connection on
    the machine draws from too (Ray's processes open hundreds): a CI run's HAProxy found
    its metrics port taken in between ("cannot bind socket (Address already in use) for
    [0.0.0.0:37245]") and Serve failed to start. Ports below the range are only taken by
    servers. Falls back to ``free_port`` when none of ``tries`` is free."""
    high = _ephemeral_low() - 1
    if high <= LOWEST_LISTEN_PORT:
        return free_port(host)
    for _ in range(tries):
        port = random.randint(LOWEST_LISTEN_PORT, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)
