"""System shared memory for large Triton inputs: regions in ``/dev/shm``, pooled by size.

Owns: creating, reusing and removing this process's regions (named ``rankserve-<pid>-<n>``), and
removing regions left by processes that died. Must not touch: Triton's registration calls (the
client makes them) or tensor meanings.

A region is written by the client and read by a Triton on the same host, which saves the
protobuf encoding and decoding of every input byte (measured here: a 5,000-row ranker call
11.7 -> 8.6 ms, ``docs/measurements/tuning.md``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serving.files import pid_alive

__all__ = ["ShmPool", "ShmRegion"]

SHM_DIR = Path("/dev/shm")
_PREFIX = "rankserve"
_MIN_REGION_BYTES = 256 * 1024


class ShmRegion:
    """One ``/dev/shm`` region of ``size`` bytes, mapped into this process."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @property
    def key(self) -> str:
        """The ``shm_open`` key Triton opens."""
        return f"/{self.name}"

    def write(self, arrays: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        """Copy ``arrays`` one after another; returns each one's (offset, bytes)."""
        spans, offset = [], 0
        for a in arrays:
            view: np.ndarray = np.ndarray(a.shape, a.dtype, buffer=self._mm, offset=offset)
            view[...] = a
            spans.append((offset, a.nbytes))
            offset += a.nbytes
        return spans

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._mm.close()
        (SHM_DIR / self.name).unlink(missing_ok=True)


class ShmPool:
    """Regions by size class (powers of two from 256 KiB); a region serves one call at a time."""

    def __init__(self) -> None:
        self._free: dict[int, list[ShmRegion]] = {}
        self._all: list[ShmRegion] = []
        _remove_stale()

    def acquire(self, nbytes: int) -> tuple[ShmRegion, bool]:
        """A free region of at least ``nbytes``, and whether it is new (not yet registered)."""
        size = max(_MIN_REGION_BYTES, 1 << max(0, nbytes - 1).bit_length())
        free = self._free.setdefault(size, [])
        if free:
            return free.pop(), False
        region = ShmRegion(f"{_PREFIX}-{os.getpid()}-{len(self._all)}", size)
        self._all.append(region)
        return region, True

    def release(self, region: ShmRegion) -> None:
        self._free.setdefault(region.size, []).append(region)

    @property
    def regions(self) -> list[ShmRegion]:
        return list(self._all)

    def close(self) -> None:
        for r in self._all:
            r.close()
        self._all.clear()
        self._free.clear()


def _remove_stale() -> None:
    """Remove regions whose process is gone (a replica killed before it could clean up)."""
    if not SHM_DIR.is_dir():
        return
    for path in SHM_DIR.glob(f"{_PREFIX}-*"):
        m = re.fullmatch(rf"{_PREFIX}-(\d+)-\d+", path.name)
        if m and not pid_alive(int(m.group(1))):
            path.unlink(missing_ok=True)
