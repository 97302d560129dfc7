"""Numba CPU backend: one fused, parallel loop over the batch's rows."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from kernels import _scalar
from kernels.spec import FeatureInputs, FeatureOutput, FeaturePlan

__all__ = ["assemble_numba_cpu"]

# No cache=True: Numba's on-disk cache is invalidated only by changes to THIS file, so an edit of
# the hash in _scalar.py would keep running the old compiled kernel. Compiling costs ~1 s once
# per process (the dispatcher does it at start-up, before the first request).
_row = numba.njit(inline="always")(_scalar.row_function(numba.njit(inline="always")(_scalar.cross_hash_u64)))


@numba.njit(parallel=True, fastmath=False, nogil=True)
def _assemble_kernel(req_of, item_rows, q_cat, q_num, q_vec, item_cat, item_num, item_vec, cat_ops,  # type: ignore[no-untyped-def]
                     dense_ops, cat, dense):
    for b in prange(req_of.shape[0]):
        _row(b, req_of, item_rows, q_cat, q_num, q_vec, item_cat, item_num, item_vec, cat_ops, dense_ops, cat, dense)


def assemble_numba_cpu(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Fused assembly on the CPU (bit-identical hashes, float32 dense)."""
    plan.check(inputs)
    x = inputs
    n = int(x.req_of.shape[0])
    cat = np.empty((n, plan.n_cat), dtype=np.int64)
    dense = np.empty((n, plan.n_dense), dtype=np.float32)
    if n:
        i64, f32 = np.int64, np.float32
        _assemble_kernel(np.ascontiguousarray(x.req_of, i64), np.ascontiguousarray(x.item_rows, i64),
                         np.ascontiguousarray(x.q_cat, i64), np.ascontiguousarray(x.q_num, f32),
                         np.ascontiguousarray(x.q_vec, f32), np.ascontiguousarray(x.item_cat, i64),
                         np.ascontiguousarray(x.item_num, f32), np.ascontiguousarray(x.item_vec, f32),
                         plan.cat_ops, plan.dense_ops, cat, dense)
    return FeatureOutput(cat=cat, dense=dense)

