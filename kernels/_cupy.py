"""CuPy backend: the fused assembly kernel as CUDA C in a ``RawKernel`` compiled by CuPy.

Host inputs are copied once; device inputs (CuPy arrays, or torch CUDA tensors / anything with
``__cuda_array_interface__`` or DLPack) stay on the device, and :func:`assemble_device` returns
CuPy arrays without a copy back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import spec
from kernels._resident import ResidentTables
from kernels.spec import FeatureInputs, FeatureOutput, FeaturePlan

__all__ = ["CUDA_SOURCE", "assemble_cupy", "assemble_device", "launch_args"]

CUDA_SOURCE = r"""
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ u64 fmix64(u64 x) {
    x ^= x >> 33; x *= %(MIX1)sULL;
    x ^= x >> 33; x *= %(MIX2)sULL;
    x ^= x >> 33;
    return x;
}

// One thread per row b: request q = req_of[b], item i = item_rows[b]; the plan's operations
// (kernels.spec.FeaturePlan: cat_ops rows of 7, dense_ops rows of 6) write its outputs.
extern "C" __global__ void rankserve_assemble(
        const i64* __restrict__ req_of, const i64* __restrict__ item_rows,
        const i64* __restrict__ q_cat, const float* __restrict__ q_num, const float* __restrict__ q_vec,
        const i64* __restrict__ item_cat, const float* __restrict__ item_num, const float* __restrict__ item_vec,
        const i64* __restrict__ cat_ops, const i64* __restrict__ dense_ops,
        const int n_cat, const int n_dense_ops, const int n_dense, const i64 n,
        const int w_qc, const int w_qn, const int w_qv, const int w_ic, const int w_in, const int w_iv,
        i64* __restrict__ cat, float* __restrict__ dense) {
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < n; b += (i64)blockDim.x * gridDim.x) {
        const i64 q = req_of[b];
        const i64 i = item_rows[b];
        const i64* qc = q_cat + q * w_qc;
        const i64* ic = item_cat + i * w_ic;
        for (int j = 0; j < n_cat; ++j) {
            const i64* op = cat_ops + 7 * j;
            const u64 a = (u64)(op[1] == %(SIDE_Q)s ? qc[op[2]] : ic[op[2]]);
            if (op[0] == %(CAT_COPY)s) {
                cat[b * n_cat + j] = (i64)a;
                continue;
            }
            const u64 c = (u64)(op[3] == %(SIDE_Q)s ? qc[op[4]] : ic[op[4]]);
            const u64 inner = fmix64(c + (u64)(op[6] + 1) * %(GOLDEN)sULL);
            cat[b * n_cat + j] = (i64)(fmix64(a ^ inner) %% (u64)op[5]);
        }
        const float* qn = q_num + q * w_qn;
        const float* in = item_num + i * w_in;
        const float* qv = q_vec + q * w_qv;
        const float* iv = item_vec + i * w_iv;
        float* row = dense + b * n_dense;
        for (int k = 0; k < n_dense_ops; ++k) {
            const i64* op = dense_ops + 6 * k;
            const i64 kind = op[0], a = op[2], c = op[3], width = op[4];
            float* out = row + op[5];
            if (kind == %(DENSE_NUM)s) {
                *out = op[1] == %(SIDE_Q)s ? qn[a] : in[a];
            } else if (kind == %(DENSE_DOT)s) {
                float acc = 0.0f;
                for (i64 d = 0; d < width; ++d) acc = __fadd_rn(acc, __fmul_rn(qv[a + d], iv[c + d]));
                *out = acc;
            } else {
                for (i64 d = 0; d < width; ++d) out[d] = __fmul_rn(qv[a + d], iv[c + d]);
            }
        }
    }
}
""" % {"MIX1": hex(spec.MIX1), "MIX2": hex(spec.MIX2), "GOLDEN": hex(spec.GOLDEN),  # noqa: UP031 - C braces
       "SIDE_Q": spec.SIDE_Q, "CAT_COPY": spec.CAT_COPY, "DENSE_NUM": spec.DENSE_NUM, "DENSE_DOT": spec.DENSE_DOT}

_KERNEL: Any = None
_THREADS = 256
# the dtype of each FeatureInputs field, in order
_DTYPES = (np.int64, np.int64, np.int64, np.float32, np.float32, np.int64, np.float32, np.float32)


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:
        import cupy as cp

        _KERNEL = cp.RawKernel(CUDA_SOURCE, "rankserve_assemble")
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


def assemble_device(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Assembly with device outputs: (cat int64, dense float32) CuPy arrays."""
    import cupy as cp

    plan.check(inputs)
    x = FeatureInputs(*[_dev(a, dtype) for a, dtype in zip(inputs, _DTYPES, strict=True)])
    n = int(x.req_of.shape[0])
    cat = cp.empty((n, plan.n_cat), dtype=cp.int64)
    dense = cp.empty((n, plan.n_dense), dtype=cp.float32)
    if n:
        blocks = min((n + _THREADS - 1) // _THREADS, 65535 * 4)
        ops = (_dev(plan.cat_ops, np.int64), _dev(plan.dense_ops, np.int64))
        _kernel()((blocks,), (_THREADS,), launch_args(x, ops, plan, cat, dense))
    return FeatureOutput(cat=cat, dense=dense)


def launch_args(x: FeatureInputs, ops: tuple[Any, Any], plan: FeaturePlan, cat: Any, dense: Any) -> tuple[Any, ...]:
    """The kernel's arguments in the order of its signature: the tables and the plan's operations
    (arrays of one kind: device, or host for a CPU build of the source), then the sizes."""
    sizes = (np.int32(plan.n_cat), np.int32(plan.dense_ops.shape[0]), np.int32(plan.n_dense),
             np.int64(x.req_of.shape[0]), *[np.int32(t.shape[1]) for t in x[2:]])
    return (*x, *ops, *sizes, cat, dense)


def _pinned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A page-locked host array: device-to-host copies into it run at full PCIe/NVLink speed."""
    import cupyx

    return cupyx.empty_pinned(shape, dtype=dtype)


def assemble_cupy(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Host in, host out (outputs copied into pinned host memory)."""
    import cupy as cp

    cat, dense = assemble_device(inputs, plan)
    out = FeatureOutput(cat=_pinned(cat.shape, np.int64), dense=_pinned(dense.shape, np.float32))
    stream = cp.cuda.get_current_stream()
    cat.get(out=out.cat, stream=stream)
    dense.get(out=out.dense, stream=stream)
    stream.synchronize()
    return out

