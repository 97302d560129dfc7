"""Scalar logic shared by the Numba CPU and Numba CUDA kernels: one Python source, compiled for
each target (``numba.njit`` and ``numba.cuda.jit(device=True)``).

:func:`row_function` builds the assembly of one row around the hash compiled for the same target:
both kernels call it once per row (the CPU kernel from a ``prange`` loop, the CUDA kernel from a
grid-stride loop), so the two backends share every line that computes a feature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kernels.spec import CAT_COPY, DENSE_DOT, DENSE_NUM, GOLDEN, MIX1, MIX2, SIDE_Q

__all__ = ["cross_hash_u64", "row_function"]

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


def row_function(hash_fn: Callable[..., Any]) -> Callable[..., None]:
    """The assembly of row ``b`` (``kernels.spec.FeaturePlan``), calling ``hash_fn`` (the cross
    hash compiled for the caller's target). Compile the result with the same target."""

    def assemble_row(b, req_of, item_rows, q_cat, q_num, q_vec, item_cat, item_num, item_vec,  # type: ignore[no-untyped-def]
                     cat_ops, dense_ops, cat, dense):
        # Indexes as uint64: the compiler then knows them non-negative and drops the negative-index
        # wrap-around test from every read (twice as fast on the CPU).
        q = np.uint64(req_of[b])
        i = np.uint64(item_rows[b])
        for j in range(cat_ops.shape[0]):
            col = np.uint64(cat_ops[j, 2])
            a = q_cat[q, col] if cat_ops[j, 1] == SIDE_Q else item_cat[i, col]
            if cat_ops[j, 0] == CAT_COPY:
                cat[b, j] = a
            else:
                col = np.uint64(cat_ops[j, 4])
                c = q_cat[q, col] if cat_ops[j, 3] == SIDE_Q else item_cat[i, col]
                cat[b, j] = np.int64(hash_fn(a, c, cat_ops[j, 6], cat_ops[j, 5]))
        for k in range(dense_ops.shape[0]):
            kind = dense_ops[k, 0]
            a = np.uint64(dense_ops[k, 2])
            out = np.uint64(dense_ops[k, 5])
            if kind == DENSE_NUM:
                dense[b, out] = q_num[q, a] if dense_ops[k, 1] == SIDE_Q else item_num[i, a]
                continue
            c = np.uint64(dense_ops[k, 3])
            width = np.uint64(dense_ops[k, 4])
            if kind == DENSE_DOT:
                acc = np.float32(0.0)
                for d in range(width):
                    e = np.uint64(d)  # already uint64 when compiled; in Python uint64 + int is a float
                    acc += q_vec[q, a + e] * item_vec[i, c + e]
                dense[b, out] = acc
            else:
                for d in range(width):
                    e = np.uint64(d)
                    dense[b, out + e] = q_vec[q, a + e] * item_vec[i, c + e]

    return assemble_row
