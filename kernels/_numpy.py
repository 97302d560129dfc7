"""NumPy reference implementation of the crossing contract (see ``kernels.spec``)."""

from __future__ import annotations

import numpy as np

from kernels.spec import GOLDEN, MIX1, MIX2, CrossInputs, CrossOutput, CrossSpec

__all__ = ["cross_numpy", "hash_pairs_numpy"]


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


def cross_numpy(inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """Reference crossing: gathers rows, hashes each configured pair, computes dense interactions."""
    ur = np.asarray(inputs.user_rows, dtype=np.int64)
    ir = np.asarray(inputs.item_rows, dtype=np.int64)
    n = ur.shape[0]
    hashed = np.empty((n, spec.n_pairs), dtype=np.int64)
    for p, (uf, itf) in enumerate(spec.pairs):
        hashed[:, p] = hash_pairs_numpy(inputs.user_cat[ur, uf], inputs.item_cat[ir, itf], p, spec.buckets)
    u = inputs.user_dense[ur].astype(np.float32, copy=False)
    v = inputs.item_dense[ir].astype(np.float32, copy=False)
    dense = np.empty((n, spec.n_dense_out), dtype=np.float32)
    np.multiply(u, v, out=dense[:, 1:])
    dense[:, 0] = dense[:, 1:].sum(axis=1, dtype=np.float32)
    return CrossOutput(hashed=hashed, dense=dense)
