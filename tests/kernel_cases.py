"""Shared inputs for the kernel tests (unit and gpu): fresh random tables with edge-case ids."""

from __future__ import annotations

import numpy as np

from kernels import CrossInputs, CrossSpec

SPEC = CrossSpec(pairs=((0, 0), (1, 3), (2, 2), (0, 3)), buckets=4093, dense_dim=16)
SIZES = [0, 1, 7, 1013, 100_000]


def make_inputs(n: int, seed: int, *, n_users: int = 300, n_items: int = 500, spec: CrossSpec = SPEC) -> CrossInputs:
    """Random tables whose ids include negatives, zero and the int64 extremes."""
    rng = np.random.default_rng(seed)
    i64 = np.iinfo(np.int64)
    user_cat = rng.integers(i64.min, i64.max, (n_users, 3), dtype=np.int64, endpoint=True)
    item_cat = rng.integers(-1000, 1000, (n_items, 4), dtype=np.int64)
    user_cat[:4] = [[i64.min, 0, -1], [i64.max, 1, 0], [0, -(2**40), i64.max], [-7, 7, i64.min]]
    item_cat[:3] = [[i64.max, i64.min, 0, -1], [0, 0, 0, 0], [-1, -1, -1, i64.max]]
    return CrossInputs(
        user_rows=rng.integers(0, n_users, n, dtype=np.int64),
        item_rows=rng.integers(0, n_items, n, dtype=np.int64),
        user_cat=user_cat, item_cat=item_cat,
        user_dense=rng.normal(size=(n_users, spec.dense_dim)).astype(np.float32),
        item_dense=rng.normal(size=(n_items, spec.dense_dim)).astype(np.float32),
    )


def run_on_cuda_simulator(code: str) -> None:
    """Run ``code`` in a fresh interpreter with Numba's CUDA simulator on; it must print ``sim-ok``.

    A process of its own: the simulator is chosen when numba.cuda is first imported.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", code], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "sim-ok" in out.stdout, out.stderr[-3000:]
