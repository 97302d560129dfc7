"""Numba CUDA backend: one fused kernel launch per batch, one thread per (user, item) pair.

Host inputs are copied to the device once each (counted in ``LAST_TRANSFER_BYTES``); inputs that
already live on the device (anything with ``__cuda_array_interface__``: Numba device arrays,
CuPy arrays, torch CUDA tensors) are used in place, and :func:`cross_device` keeps the outputs on
the device. Runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from kernels import _scalar
from kernels._resident import ResidentTables
from kernels.spec import CrossInputs, CrossOutput, CrossSpec

__all__ = ["LAST_TRANSFER_BYTES", "cross_device", "cross_numba_cuda"]

if not hasattr(np, "row_stack"):
    # numba-cuda 0.30 reads np.row_stack when it compiles its first kernel; NumPy 2.4 removed that
    # alias of np.vstack (the device image has numba-cuda 0.30.4 with numpy 2.5: every launch failed)
    np.row_stack = np.vstack  # type: ignore[attr-defined]

_hash = cuda.jit(device=True)(_scalar.cross_hash_u64)
LAST_TRANSFER_BYTES = {"h2d": 0, "d2h": 0}
_THREADS = 256


@cuda.jit
def _cross_kernel(user_rows, item_rows, user_cat, item_cat, user_dense, item_dense, pairs, buckets,
                  hashed, dense):  # type: ignore[no-untyped-def]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = user_rows.shape[0]
    n_pairs = pairs.shape[0]
    d = user_dense.shape[1]
    for b in range(start, n, stride):
        u = user_rows[b]
        i = item_rows[b]
        for p in range(n_pairs):
            hashed[b, p] = _hash(user_cat[u, pairs[p, 0]], item_cat[i, pairs[p, 1]], p, buckets)
        acc = np.float32(0.0)
        for k in range(d):
            prod = user_dense[u, k] * item_dense[i, k]
            dense[b, 1 + k] = prod
            acc += prod
        dense[b, 0] = acc


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


def cross_device(inputs: CrossInputs, spec: CrossSpec) -> tuple[Any, Any]:
    """Crossing with outputs left on the device: (hashed, dense) Numba device arrays."""
    n = int(inputs.user_rows.shape[0])
    args = [_on_device(inputs.user_rows, np.int64), _on_device(inputs.item_rows, np.int64),
            _on_device(inputs.user_cat, np.int64), _on_device(inputs.item_cat, np.int64),
            _on_device(inputs.user_dense, np.float32), _on_device(inputs.item_dense, np.float32),
            _on_device(spec.pairs_array(), np.int64)]
    hashed = cuda.device_array((n, spec.n_pairs), dtype=np.int64)
    dense = cuda.device_array((n, spec.n_dense_out), dtype=np.float32)
    if n:
        blocks = min(max(1, (n + _THREADS - 1) // _THREADS), 65535)
        _cross_kernel[blocks, _THREADS](*args, np.int64(spec.buckets), hashed, dense)
    return hashed, dense


def cross_numba_cuda(inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """Host in, host out (one copy in per table and index array, one copy out per output)."""
    LAST_TRANSFER_BYTES.update(h2d=0, d2h=0)
    hashed, dense = cross_device(inputs, spec)
    # pageable host memory: Numba allocates pinned buffers per call (cudaHostAlloc), which costs
    # more than it saves here (measured on an H100: 1M pairs 31 ms pageable, 51 ms pinned)
    out = CrossOutput(hashed=hashed.copy_to_host(), dense=dense.copy_to_host())
    LAST_TRANSFER_BYTES["d2h"] += out.hashed.nbytes + out.dense.nbytes
    return out
