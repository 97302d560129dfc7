"""Numba CPU backend: one fused, parallel loop over (user, item) pairs.

Threads: Numba's pool, sized by ``NUMBA_NUM_THREADS`` (default: all cores). The kernel is cached
on disk (``cache=True``), so a restarted server loads it instead of compiling it again.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from kernels import _scalar
from kernels.spec import CrossInputs, CrossOutput, CrossSpec

__all__ = ["cross_numba_cpu"]

_cross_pair = _scalar.make_cross_pair(numba.njit(inline="always"))


def _make_kernel(stamp: int) -> Any:
    """The parallel kernel; ``stamp`` sits in its closure, hence in its on-disk cache key."""

    @numba.njit(parallel=True, cache=True)
    def cross_kernel(user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs, buckets,
                     hashed, dense):  # type: ignore[no-untyped-def]
        _ = stamp  # the shared per-pair logic changed -> different cache key -> recompiled
        for b in prange(user_rows.shape[0]):
            _cross_pair(b, user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs, buckets,
                        hashed, dense)

    return cross_kernel


_cross_kernel = _make_kernel(_scalar.SOURCE_STAMP)


def cross_numba_cpu(inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """Fused crossing on the CPU: bit-identical hashes, float32 dense; host in, host out."""
    ur = np.ascontiguousarray(inputs.user_rows, dtype=np.int64)
    ir = np.ascontiguousarray(inputs.item_rows, dtype=np.int64)
    n = ur.shape[0]
    hashed = np.empty((n, spec.n_pairs), dtype=np.int64)
    dense = np.empty((n, spec.n_dense_out), dtype=np.float32)
    if n:
        _cross_kernel(ur, ir, np.ascontiguousarray(inputs.user_cat, dtype=np.int64),
                      np.ascontiguousarray(inputs.item_cat, dtype=np.int64),
                      np.ascontiguousarray(inputs.user_dense, dtype=np.float32),
                      np.ascontiguousarray(inputs.item_dense, dtype=np.float32),
                      spec.pairs_array(), np.int64(spec.buckets), hashed, dense)
    return CrossOutput(hashed=hashed, dense=dense)
