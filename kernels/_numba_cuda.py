"""Numba CUDA backend: one fused kernel launch per batch, one thread per row.

Host inputs are copied to the device once each (counted in ``LAST_TRANSFER_BYTES``); inputs that
already live on the device (anything with ``__cuda_array_interface__``: Numba device arrays,
CuPy arrays, torch CUDA tensors) are used in place, and :func:`assemble_device` keeps the outputs
on the device. Runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from kernels import _scalar
from kernels._resident import ResidentTables
from kernels.spec import FeatureInputs, FeatureOutput, FeaturePlan

__all__ = ["LAST_TRANSFER_BYTES", "assemble_device", "assemble_numba_cuda"]

if not hasattr(np, "row_stack"):
    # numba-cuda 0.30 reads np.row_stack when it compiles its first kernel; NumPy 2.4 removed that
    # alias of np.vstack (the device image has numba-cuda 0.30.4 with numpy 2.5: every launch failed)
    np.row_stack = np.vstack  # type: ignore[attr-defined]

_row = cuda.jit(device=True)(_scalar.row_function(cuda.jit(device=True)(_scalar.cross_hash_u64)))
LAST_TRANSFER_BYTES = {"h2d": 0, "d2h": 0}
_THREADS = 256
# the dtype of each FeatureInputs field, in order
_DTYPES = (np.int64, np.int64, np.int64, np.float32, np.float32, np.int64, np.float32, np.float32)


@cuda.jit
def _assemble_kernel(req_of, item_rows, q_cat, q_num, q_vec, item_cat, item_num, item_vec, cat_ops,  # type: ignore[no-untyped-def]
                     dense_ops, cat, dense):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for b in range(start, req_of.shape[0], stride):
        _row(b, req_of, item_rows, q_cat, q_num, q_vec, item_cat, item_num, item_vec, cat_ops, dense_ops, cat, dense)


_RESIDENT = ResidentTables(cuda.to_device)


def _on_device(a: Any, dtype: Any) -> Any:
    """Device view of ``a``. Read-only host arrays (the feature tables) are copied once and kept."""
    if ResidentTables.eligible(a, dtype):
        before = _RESIDENT.copied_bytes
        dev = _RESIDENT.get(a)
        LAST_TRANSFER_BYTES["h2d"] += _RESIDENT.copied_bytes - before
        return dev
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    host = np.ascontiguousarray(a, dtype=dtype)
    LAST_TRANSFER_BYTES["h2d"] += host.nbytes
    return cuda.to_device(host)


def assemble_device(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Assembly with outputs left on the device: (cat, dense) Numba device arrays."""
    plan.check(inputs)
    n = int(inputs.req_of.shape[0])
    args = [_on_device(a, dtype) for a, dtype in zip(inputs, _DTYPES, strict=True)]
    ops = [_on_device(plan.cat_ops, np.int64), _on_device(plan.dense_ops, np.int64)]
    cat = cuda.device_array((n, plan.n_cat), dtype=np.int64)
    dense = cuda.device_array((n, plan.n_dense), dtype=np.float32)
    if n:
        blocks = min(max(1, (n + _THREADS - 1) // _THREADS), 65535)
        _assemble_kernel[blocks, _THREADS](*args, *ops, cat, dense)
    return FeatureOutput(cat=cat, dense=dense)


def assemble_numba_cuda(inputs: FeatureInputs, plan: FeaturePlan) -> FeatureOutput:
    """Host in, host out (one copy in per table and index array, one copy out per output)."""
    LAST_TRANSFER_BYTES.update(h2d=0, d2h=0)
    cat, dense = assemble_device(inputs, plan)
    # pageable host memory: Numba allocates pinned buffers per call (cudaHostAlloc), which costs
    # more than it saves here (measured on an H100: 1M pairs 31 ms pageable, 51 ms pinned)
    out = FeatureOutput(cat=cat.copy_to_host(), dense=dense.copy_to_host())
    LAST_TRANSFER_BYTES["d2h"] += out.cat.nbytes + out.dense.nbytes
    return out

