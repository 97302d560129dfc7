"""Device copies of read-only host tables, shared by the GPU backends (CuPy, Numba CUDA).

The feature tables are the same host arrays on every call, so a GPU backend copies each one to
the device once and reuses the copy. Which arrays qualify: NumPy arrays whose ``writeable`` flag
is off (``FeatureTables`` freezes its tables); the caller promises not to change their memory
through another, writable view.

An entry is keyed by the array's memory (address, shape, strides, dtype) and keeps a reference
to the host array. While that reference lives, the memory cannot be freed, so no other array can
later appear at the same address and be answered with a stale device copy. Entries are evicted
least recently used beyond ``max_entries``, which bounds what the cache can pin.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ResidentTables"]


class ResidentTables:
    """Device copies of read-only host arrays, made once per array.

    Args:
        to_device: copies a C-contiguous host array to the device and returns the device array.
        max_entries: most arrays kept; the least recently used goes first.
    """

    def __init__(self, to_device: Callable[[np.ndarray], Any], max_entries: int = 32) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries}")
        self._to_device = to_device
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int, tuple[int, ...], tuple[int, ...], str],
                                   tuple[np.ndarray, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.copied_bytes = 0

    @staticmethod
    def eligible(a: Any, dtype: Any) -> bool:
        """Whether ``a`` is a read-only host array of ``dtype`` (a table to keep on the device)."""
        return isinstance(a, np.ndarray) and not a.flags.writeable and a.dtype == np.dtype(dtype)

    def get(self, a: np.ndarray) -> Any:
        """The device copy of ``a``, copying it on first use."""
        key = (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[1]
        dev = self._to_device(np.ascontiguousarray(a))
        with self._lock:
            self._entries[key] = (a, dev)
            self.copied_bytes += a.nbytes
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return dev

    def __len__(self) -> int:
        return len(self._entries)
