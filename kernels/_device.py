"""Host/device helpers shared by the GPU backends (no GPU library imported here).

* :func:`is_device_array`: whether an input already lives on a CUDA device (CUDA array interface
  or a DLPack capsule on a CUDA device), so it is used in place rather than copied.
* :class:`ResidentTables`: one device copy per read-only host table. Feature tables are marked
  read-only by their owner (``serving.features.FeatureTables``); their device copy is uploaded on
  first use and dropped when the host array dies, so a reloaded table can never be served from a
  stale copy (the cache is keyed on the live object, not on its address).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ResidentTables", "is_device_array", "is_immutable_host_array"]

# DLPack device types that are CUDA memory: kDLCUDA, kDLCUDAManaged.
_DLPACK_CUDA = (2, 13)


def is_device_array(a: Any) -> bool:
    """True for CUDA arrays (Numba, CuPy, torch CUDA tensors, any DLPack CUDA producer)."""
    if isinstance(a, np.ndarray):
        return False
    if getattr(a, "__cuda_ndarray__", False) or hasattr(a, "__cuda_array_interface__"):
        return True
    dl_device = getattr(a, "__dlpack_device__", None)
    if dl_device is None:
        return False
    try:
        return int(dl_device()[0]) in _DLPACK_CUDA
    except Exception:  # noqa: BLE001 - a producer that cannot say where it lives is not on a GPU
        return False


def is_immutable_host_array(a: Any) -> bool:
    """A NumPy array that is read-only, as is every NumPy array it views (its data cannot change)."""
    if not isinstance(a, np.ndarray):
        return False
    x: Any = a
    while isinstance(x, np.ndarray):
        if x.flags.writeable:
            return False
        x = x.base
    return True


class ResidentTables:
    """Device copies of immutable host tables, one per live host array.

    The entry of a host array is removed when that array is garbage-collected, which frees the
    device copy too.
    """

    def __init__(self) -> None:
        self._copies: dict[int, tuple[weakref.ref[np.ndarray], Any]] = {}
        # re-entrant: a garbage collection inside the lock may run an eviction callback
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, a: Any, dtype: Any, upload: Callable[[np.ndarray], Any]) -> Any | None:
        """The device copy of ``a`` (uploaded on first use), or None if ``a`` may change.

        Args:
            a: a host array; only immutable ones (see :func:`is_immutable_host_array`) are kept.
            dtype: the dtype the device copy must have.
            upload: copies a contiguous host array to the device and returns the device array.
        """
        if not is_immutable_host_array(a):
            return None
        key, dtype = id(a), np.dtype(dtype)
        with self._lock:
            hit = self._copies.get(key)
            if hit is not None and hit[0]() is a and hit[1].dtype == dtype:
                return hit[1]
        dev = upload(np.ascontiguousarray(a, dtype=dtype))
        with self._lock:
            self._copies[key] = (weakref.ref(a, self._evictor(key)), dev)
        return dev

    def _evictor(self, key: int) -> Callable[[weakref.ref[np.ndarray]], None]:
        def evict(ref: weakref.ref[np.ndarray]) -> None:
            with self._lock:
                hit = self._copies.get(key)
                if hit is not None and hit[0] is ref:  # a newer array may already reuse this id
                    del self._copies[key]

        return evict
