"""Loopback ports and addresses: the one definition of a free port and of a loopback target.

Owns: picking a free loopback port, telling whether a port is taken (and by which process, where
the system says), and telling whether a URL names a loopback host.
Must not touch: anything of rankserve (bottom layer).
"""

from __future__ import annotations

import errno
import os
import random
import socket
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["QUIET_PORTS", "free_port", "is_loopback", "port_holder", "port_in_use"]

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


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket holds ``host:port`` for TCP (a listener, or one bound to it).

    Raises:
        OSError: the address cannot be bound for another reason (not an address of this host, a
            privileged port).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return inodes


def port_holder(port: int) -> str | None:
    """``pid 123 (name)`` of a process listening on TCP ``port``, where /proc tells (Linux, a
    process this user may inspect); else ``None``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes for fd in fds):
                return f"pid {proc.name} ({(proc / 'comm').read_text().strip()})"
        except OSError:
            continue
    return None
