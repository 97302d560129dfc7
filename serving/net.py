"""Loopback ports and addresses: the one definition of a free port and of a loopback target.

Owns: picking a free loopback port and telling whether a URL names a loopback host.
Must not touch: anything of rankserve (bottom layer).
"""

from __future__ import annotations

import random
import socket
from urllib.parse import urlparse

__all__ = ["QUIET_PORTS", "free_port", "is_loopback"]

# Below the kernel's ephemeral range (32768-60999) and above Ray's worker ports (10002-19999): a
# port picked here before Ray starts is not one Ray binds a moment later.
QUIET_PORTS = range(20000, 32000)


def free_port(within: range | None = None) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: any (the kernel's choice), or one
    ``within`` a range."""
    if within is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for port in random.sample(within, min(len(within), 200)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {within.start}-{within.stop - 1}")


def is_loopback(url: str) -> bool:
    """Whether ``url`` (``http://``, ``grpc://``) names a loopback host: the only targets load is sent to."""
    host = urlparse(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")
