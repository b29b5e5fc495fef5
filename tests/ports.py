"""Free loopback ports for the tests and benchmarks that start servers (one home for the probe).

A port found free can be taken by another process before the server binds it; every caller starts its
server right after asking, which is as close as a test can get without letting the server pick (``--port 0``,
used wherever the port need not be known in advance).
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_ports"]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that were all free a moment ago (e.g. the /metrics
    ports of ``--workers count``, which are ``--metrics-port + i``)."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65536 and all(_can_bind(base + i) for i in range(1, count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free loopback ports in 100 tries")


def _can_bind(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
