"""Loopback ports for the local mesh's processes (and for tests, which never take the defaults).

A port is picked now and bound later by another process (MLServer, Envoy), so the pick must not
be a port the kernel may hand out meanwhile. ``bind(0)`` returns an *ephemeral* port, the very
range the kernel also gives every outgoing connection: between the pick and the bind, a
connection of any process can take it (seen: Envoy's admin port "already in use" on a busy
machine). So ports are picked below the ephemeral range, which the kernel never assigns by
itself, and checked free. Each process walks up from its own random start, so it never hands out
a port twice, and two processes picking at once collide only if their starts nearly meet.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The lowest port picked: above the usual fixed service ports (msm's own defaults 8008, 8033,
#: 18000, 18001 among them).
LOWEST = 20000
_next: int | None = None


def _ephemeral_low() -> int | None:
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return low if low > LOWEST + 1000 else None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already holds ``host:port`` (a listener, or a socket bound to it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds now and that no outgoing connection will take before it is bound."""
    global _next
    low = _ephemeral_low()
    if low is not None:
        if _next is None:
            _next = random.randrange(LOWEST, low)
        for _ in range(low - LOWEST):
            port = _next
            _next = LOWEST if _next + 1 >= low else _next + 1
            if not port_in_use(port, host):
                return port
    with socket.socket() as s:  # no known ephemeral range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]
