"""Loopback ports and addresses: the one definition of a free port and of a loopback target.

Owns: picking a free loopback port and telling whether a URL names a loopback host.
Must not touch: anything of rankserve (bottom layer).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

__all__ = ["free_port", "is_loopback"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_loopback(url: str) -> bool:
    """Whether ``url`` (``http://``, ``grpc://``) names a loopback host: the only targets load is sent to."""
    host = urlparse(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")
