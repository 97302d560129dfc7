"""Shared inputs for the kernel tests (unit and gpu): fresh random tables with edge-case ids, and
random feature plans."""

from __future__ import annotations

import numpy as np

from kernels import CrossInputs, CrossSpec, FeatureInputs, FeaturePlan
from kernels.spec import (
    DENSE_NUM,
    SIDE_ITEM,
    SIDE_Q,
    CatOp,
    DenseOp,
    cat_column,
    cat_cross,
    dense_column,
    dense_vectors,
)

SPEC = CrossSpec(pairs=((0, 0), (1, 3), (2, 2), (0, 3)), buckets=4093, dense_dim=16)
SIZES = [0, 1, 7, 1013, 100_000]
# the columns of each table of make_feature_inputs
WIDTHS = {"q_cat": 5, "q_num": 3, "q_vec": 24, "item_cat": 4, "item_num": 2, "item_vec": 12}


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


def random_plan(rng: np.random.Generator, widths: dict[str, int] = WIDTHS) -> FeaturePlan:
    """A plan of every kind of operation in random order: copies and crosses of both sides (crosses
    of two request columns and of two item columns too), numeric columns, dots and products of
    vector slices that start anywhere."""
    side = {SIDE_Q: "q", SIDE_ITEM: "item"}
    cat: list[CatOp] = []
    for _ in range(int(rng.integers(1, 9))):
        a, b = (int(s) for s in rng.integers(0, 2, 2))
        ref_a = (a, int(rng.integers(widths[f"{side[a]}_cat"])))
        ref_b = (b, int(rng.integers(widths[f"{side[b]}_cat"])))
        cat.append(cat_column(*ref_a) if rng.random() < 0.4
                   else cat_cross(ref_a, ref_b, int(rng.choice([1, 97, 4093, 2**31 - 1], p=[0.1, 0.3, 0.3, 0.3])), len(cat)))
    dense: list[DenseOp] = []
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(0, 3))
        if kind == DENSE_NUM:
            s = int(rng.integers(0, 2))
            dense.append(dense_column(s, int(rng.integers(widths[f"{side[s]}_num"]))))
        else:
            width = int(rng.integers(1, 9))
            dense.append(dense_vectors(kind, int(rng.integers(widths["q_vec"] - width + 1)),
                                       int(rng.integers(widths["item_vec"] - width + 1)), width))
    return FeaturePlan.of(cat, dense, [op[5] or 10 for op in cat])


def make_feature_inputs(n: int, seed: int, *, n_requests: int = 40, n_items: int = 500,
                        widths: dict[str, int] = WIDTHS) -> FeatureInputs:
    """Random request and item tables (ids with the int64 extremes) and ``n`` rows over them."""
    rng = np.random.default_rng(seed)
    i64 = np.iinfo(np.int64)

    def ids(rows: int, cols: int) -> np.ndarray:
        a = rng.integers(i64.min, i64.max, (rows, cols), dtype=np.int64, endpoint=True)
        a[:2] = [[i64.min] * cols, [i64.max] * cols]
        a[2::5] = rng.integers(-3, 4, a[2::5].shape)
        return a

    def floats(rows: int, cols: int) -> np.ndarray:
        return rng.normal(size=(rows, cols)).astype(np.float32)

    return FeatureInputs(
        req_of=rng.integers(0, n_requests, n, dtype=np.int64), item_rows=rng.integers(0, n_items, n, dtype=np.int64),
        q_cat=ids(n_requests, widths["q_cat"]), q_num=floats(n_requests, widths["q_num"]),
        q_vec=floats(n_requests, widths["q_vec"]), item_cat=ids(n_items, widths["item_cat"]),
        item_num=floats(n_items, widths["item_num"]), item_vec=floats(n_items, widths["item_vec"]))
