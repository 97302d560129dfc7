"""CuPy backend: the fused crossing kernel as CUDA C in a ``RawKernel`` compiled by CuPy.

Host inputs are copied once; device inputs (CuPy arrays, or torch CUDA tensors / anything with
``__cuda_array_interface__`` or DLPack) stay on the device, and :func:`cross_device` returns
CuPy arrays without a copy back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._resident import ResidentTables
from kernels.spec import GOLDEN, MIX1, MIX2, CrossInputs, CrossOutput, CrossSpec

__all__ = ["CUDA_SOURCE", "cross_cupy", "cross_device"]

CUDA_SOURCE = r"""
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ u64 fmix64(u64 x) {
    x ^= x >> 33; x *= %(MIX1)sULL;
    x ^= x >> 33; x *= %(MIX2)sULL;
    x ^= x >> 33;
    return x;
}

extern "C" __global__ void rankserve_cross(
        const i64* __restrict__ user_rows, const i64* __restrict__ item_rows,
        const i64* __restrict__ user_cat, const i64* __restrict__ item_cat,
        const float* __restrict__ user_dense, const float* __restrict__ item_dense,
        const i64* __restrict__ pairs, const int n_pairs, const u64 buckets,
        const i64 n, const int fu, const int fi, const int d,
        i64* __restrict__ hashed, float* __restrict__ dense) {
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < n; b += (i64)blockDim.x * gridDim.x) {
        const i64 u = user_rows[b];
        const i64 i = item_rows[b];
        for (int p = 0; p < n_pairs; ++p) {
            const u64 a = (u64)user_cat[u * fu + pairs[2 * p]];
            const u64 c = (u64)item_cat[i * fi + pairs[2 * p + 1]];
            const u64 inner = fmix64(c + (u64)(p + 1) * %(GOLDEN)sULL);
            hashed[b * n_pairs + p] = (i64)(fmix64(a ^ inner) %% buckets);
        }
        const float* ud = user_dense + u * d;
        const float* id = item_dense + i * d;
        float* out = dense + b * (d + 1);
        float acc = 0.0f;
        for (int k = 0; k < d; ++k) {
            const float prod = __fmul_rn(ud[k], id[k]);
            out[1 + k] = prod;
            acc = __fadd_rn(acc, prod);
        }
        out[0] = acc;
    }
}
""" % {"MIX1": hex(MIX1), "MIX2": hex(MIX2), "GOLDEN": hex(GOLDEN)}  # noqa: UP031 - C braces

_KERNEL: Any = None
_THREADS = 256


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:
        import cupy as cp

        _KERNEL = cp.RawKernel(CUDA_SOURCE, "rankserve_cross")
    return _KERNEL


def _to_device(a: np.ndarray) -> Any:
    import cupy as cp

    return cp.asarray(a)


_RESIDENT = ResidentTables(_to_device)


def _dev(a: Any, dtype: Any) -> Any:
    """Device view of ``a``. Read-only host arrays (the feature tables) are copied once and kept."""
    import cupy as cp

    if ResidentTables.eligible(a, dtype):
        return _RESIDENT.get(a)
    if isinstance(a, cp.ndarray):
        return cp.ascontiguousarray(a, dtype=dtype)
    if hasattr(a, "__cuda_array_interface__") or hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray):
        return cp.ascontiguousarray(cp.asarray(a), dtype=dtype)
    return cp.asarray(np.ascontiguousarray(a, dtype=dtype))


def cross_device(inputs: CrossInputs, spec: CrossSpec) -> tuple[Any, Any]:
    """Crossing with device outputs: (hashed int64, dense float32) CuPy arrays."""
    import cupy as cp

    ur, ir = _dev(inputs.user_rows, np.int64), _dev(inputs.item_rows, np.int64)
    uc, ic = _dev(inputs.user_cat, np.int64), _dev(inputs.item_cat, np.int64)
    ud, idn = _dev(inputs.user_dense, np.float32), _dev(inputs.item_dense, np.float32)
    pairs = cp.asarray(spec.pairs_array())
    n = int(ur.shape[0])
    hashed = cp.empty((n, spec.n_pairs), dtype=cp.int64)
    dense = cp.empty((n, spec.n_dense_out), dtype=cp.float32)
    if n:
        blocks = min((n + _THREADS - 1) // _THREADS, 65535 * 4)
        _kernel()((blocks,), (_THREADS,), (ur, ir, uc, ic, ud, idn, pairs, np.int32(spec.n_pairs),
                                          np.uint64(spec.buckets), np.int64(n), np.int32(uc.shape[1]),
                                          np.int32(ic.shape[1]), np.int32(ud.shape[1]), hashed, dense))
    return hashed, dense


def _pinned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A page-locked host array: device-to-host copies into it run at full PCIe/NVLink speed."""
    import cupyx

    return cupyx.empty_pinned(shape, dtype=dtype)


def cross_cupy(inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """Host in, host out (outputs copied into pinned host memory)."""
    import cupy as cp

    hashed, dense = cross_device(inputs, spec)
    out = CrossOutput(hashed=_pinned(hashed.shape, np.int64), dense=_pinned(dense.shape, np.float32))
    stream = cp.cuda.get_current_stream()
    hashed.get(out=out.hashed, stream=stream)
    dense.get(out=out.dense, stream=stream)
    stream.synchronize()
    return out
