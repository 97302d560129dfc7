"""Per-pair logic shared by the Numba CPU and Numba CUDA kernels: one Python source, compiled for
each target (``numba.njit`` and ``numba.cuda.jit(device=True)``), as in numba-cuda's CPU/GPU
compatibility example. Each backend only supplies its loop over pairs (``prange`` or grid-stride).

``SOURCE_STAMP`` fingerprints this logic (this file and the hash constants). Numba's on-disk cache
only notices edits to the file of the cached function itself, so the cached CPU kernel carries the
stamp in its cache key: editing the shared logic recompiles it instead of loading a stale kernel.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kernels.spec import GOLDEN, MIX1, MIX2

__all__ = ["SOURCE_STAMP", "cross_hash_u64", "make_cross_pair"]

_M1 = np.uint64(MIX1)
_M2 = np.uint64(MIX2)
_G = np.uint64(GOLDEN)
_S33 = np.uint64(33)

SOURCE_STAMP = zlib.crc32(Path(__file__).read_bytes() + repr((MIX1, MIX2, GOLDEN)).encode())


def cross_hash_u64(a, b, pair, buckets):  # type: ignore[no-untyped-def]  # compiled by numba
    """``fmix64(uint64(a) ^ fmix64(uint64(b) + (pair + 1) * GOLDEN)) % buckets``, all in uint64.

    Every operand is cast to uint64 explicitly: mixing int64 and uint64 in Numba promotes to
    float64 and would silently lose bits.
    """
    x = np.uint64(b) + np.uint64(pair + 1) * _G
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    x = x ^ (x >> _S33)
    y = np.uint64(a) ^ x
    y = y ^ (y >> _S33)
    y = y * _M1
    y = y ^ (y >> _S33)
    y = y * _M2
    y = y ^ (y >> _S33)
    return y % np.uint64(buckets)


def make_cross_pair(device_jit: Callable[[Any], Any]) -> Any:
    """Compile the work of one pair ``b`` for one target.

    Args:
        device_jit: ``numba.njit(inline="always")`` for the CPU, ``numba.cuda.jit(device=True)``
            for CUDA.

    Returns:
        ``cross_pair(b, user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs,
        buckets, hashed, dense)``: gathers the user and item rows of pair ``b`` once and writes
        ``hashed[b, :]`` and ``dense[b, :]`` once.
    """
    hash_u64 = device_jit(cross_hash_u64)

    def cross_pair(b, user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs, buckets,
                   hashed, dense):  # type: ignore[no-untyped-def]
        u = user_rows[b]
        i = item_rows[b]
        for p in range(pairs.shape[0]):
            hashed[b, p] = np.int64(hash_u64(user_cat[u, pairs[p, 0]], item_cat[i, pairs[p, 1]], p, buckets))
        acc = np.float32(0.0)
        for k in range(user_dense.shape[1]):
            prod = user_dense[u, k] * item_dense[i, k]
            dense[b, 1 + k] = prod
            acc += prod
        dense[b, 0] = acc

    return device_jit(cross_pair)
