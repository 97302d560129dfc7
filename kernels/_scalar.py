"""Scalar hash logic shared by the Numba CPU and Numba CUDA kernels: one Python source, compiled
for each target (``numba.njit`` and ``numba.cuda.jit(device=True)``)."""

from __future__ import annotations

import numpy as np

from kernels.spec import GOLDEN, MIX1, MIX2

__all__ = ["cross_hash_u64"]

_M1 = np.uint64(MIX1)
_M2 = np.uint64(MIX2)
_G = np.uint64(GOLDEN)
_S33 = np.uint64(33)


def cross_hash_u64(a, b, pair, buckets):  # type: ignore[no-untyped-def]  # compiled by numba
    """``fmix64(uint64(a) ^ fmix64(uint64(b) + (pair + 1) * GOLDEN)) % buckets`` in uint64."""
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
