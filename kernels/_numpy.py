"""NumPy reference implementation of the assembly and crossing contracts (see ``kernels.spec``)."""

from __future__ import annotations

import functools

import numpy as np

from kernels.spec import (
    CAT_COPY,
    DENSE_DOT,
    DENSE_NUM,
    GOLDEN,
    MIX1,
    MIX2,
    SIDE_ITEM,
    SIDE_Q,
    FeatureInputs,
    FeatureOutput,
    FeaturePlan,
    cross_with,
)

__all__ = ["assemble_numpy", "cross_numpy", "hash_pairs_numpy"]


def _fmix64(x: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, as the contract requires.
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(MIX1)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(MIX2)
    return x ^ (x >> np.uint64(33))


def hash_pairs_numpy(a: np.ndarray, b: np.ndarray, pair: int, buckets: int) -> np.ndarray:
    """Vectorised ``cross_hash`` for int64 arrays ``a`` and ``b``; returns int64."""
    au = np.ascontiguousarray(a, dtype=np.int64).view(np.uint64)
    bu = np.ascontiguousarray(b, dtype=np.int64).view(np.uint64)
    salt = np.uint64(((pair + 1) * GOLDEN) & ((1 << 64) - 1))
    with np.errstate(over="ignore"):
        h = _fmix64(au ^ _fmix64(bu + salt))
    return (h % np.uint64(buckets)).astype(np.int64)


def assemble_numpy(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Reference assembly: one vectorised gather (and hash, or product) per operation of the plan."""
    plan.check(inputs)
    x = inputs
    q = np.asarray(x.req_of, dtype=np.int64)
    i = np.asarray(x.item_rows, dtype=np.int64)
    rows = {SIDE_Q: q, SIDE_ITEM: i}
    cats = {SIDE_Q: x.q_cat, SIDE_ITEM: x.item_cat}
    nums = {SIDE_Q: x.q_num, SIDE_ITEM: x.item_num}
    cat = np.empty((q.shape[0], plan.n_cat), dtype=np.int64)
    for j, (kind, a_side, a_col, b_side, b_col, buckets, salt) in enumerate(plan.cat_ops.tolist()):
        a = cats[a_side][rows[a_side], a_col]
        cat[:, j] = a if kind == CAT_COPY else hash_pairs_numpy(a, cats[b_side][rows[b_side], b_col], salt, buckets)
    dense = np.empty((q.shape[0], plan.n_dense), dtype=np.float32)
    for kind, side, a, b, width, out in plan.dense_ops.tolist():
        if kind == DENSE_NUM:
            dense[:, out] = nums[side][rows[side], a]
            continue
        prod = np.multiply(x.q_vec[q, a:a + width], x.item_vec[i, b:b + width], dtype=np.float32)
        if kind == DENSE_DOT:
            dense[:, out] = prod.sum(axis=1, dtype=np.float32)
        else:
            dense[:, out:out + width] = prod
    return FeatureOutput(cat=cat, dense=dense)


# Reference crossing: the crossing contract's plan, assembled by assemble_numpy.
cross_numpy = functools.partial(cross_with, assemble_numpy)
