"""Numba CPU backend: one fused, parallel loop over (user, item) pairs."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from kernels import _scalar
from kernels.spec import CrossInputs, CrossOutput, CrossSpec

__all__ = ["cross_numba_cpu"]

# No cache=True: Numba's on-disk cache is invalidated only by changes to THIS file, so an edit of
# the hash in _scalar.py would keep running the old compiled kernel. Compiling costs ~1 s once
# per process (the dispatcher does it at start-up, before the first request).
_hash = numba.njit(inline="always")(_scalar.cross_hash_u64)


@numba.njit(parallel=True, fastmath=False, nogil=True)
def _cross_kernel(user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs, buckets,
                  hashed, dense):  # type: ignore[no-untyped-def]
    n = user_rows.shape[0]
    n_pairs = pairs.shape[0]
    d = user_dense.shape[1]
    for b in prange(n):
        u = user_rows[b]
        i = item_rows[b]
        for p in range(n_pairs):
            h = _hash(user_cat[u, pairs[p, 0]], item_cat[i, pairs[p, 1]], p, buckets)
            hashed[b, p] = np.int64(h)
        acc = np.float32(0.0)
        for k in range(d):
            prod = user_dense[u, k] * item_dense[i, k]
            dense[b, 1 + k] = prod
            acc += prod
        dense[b, 0] = acc


def cross_numba_cpu(inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """Fused crossing on the CPU (bit-identical hashes, float32 dense)."""
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
