"""The fused assembly kernel (``kernels.spec.FeaturePlan``): the NumPy reference against the
pure-Python definition, every available backend against the reference on random plans, the plan's
checks and JSON round trip, and the CuPy kernel's CUDA C source run on the CPU (the Numba CUDA
kernel runs these plans on the simulator in tests/unit/test_kernels.py)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kernels import FeatureInputs, FeaturePlan, available_backends, cross_hash_scalar, get_crosser
from kernels._numpy import assemble_numpy
from kernels.spec import (
    CAT_COPY,
    DENSE_DOT,
    DENSE_NUM,
    DENSE_PROD,
    SIDE_ITEM,
    SIDE_Q,
    cat_column,
    cat_cross,
    dense_column,
    dense_vectors,
)
from tests.kernel_cases import SIZES, make_feature_inputs, random_plan

BACKENDS_HERE = available_backends(allow_simulator=False)


def _row_by_definition(x: FeatureInputs, plan: FeaturePlan, b: int) -> tuple[list[int], list[float]]:
    """Row ``b`` computed one operation at a time from the plan's documented meaning."""
    q, i = int(x.req_of[b]), int(x.item_rows[b])
    tables = {SIDE_Q: (x.q_cat, x.q_num, q), SIDE_ITEM: (x.item_cat, x.item_num, i)}
    cat = []
    for kind, a_side, a_col, b_side, b_col, buckets, salt in plan.cat_ops.tolist():
        a = int(tables[a_side][0][tables[a_side][2], a_col])
        c = int(tables[b_side][0][tables[b_side][2], b_col])
        cat.append(a if kind == CAT_COPY else cross_hash_scalar(a, c, salt, buckets))
    dense: list[float] = []
    for kind, side, a, c, width, _ in plan.dense_ops.tolist():
        if kind == DENSE_NUM:
            dense.append(float(tables[side][1][tables[side][2], a]))
            continue
        prod = x.q_vec[q, a:a + width].astype(np.float64) * x.item_vec[i, c:c + width]
        dense.extend([float(prod.sum())] if kind == DENSE_DOT else prod.tolist())
    return cat, dense


def test_reference_is_the_definition() -> None:
    rng = np.random.default_rng()
    for seed in rng.integers(1 << 31, size=20):
        plan, x = random_plan(np.random.default_rng(seed)), make_feature_inputs(30, int(seed))
        out = assemble_numpy(x, plan)
        for b in range(30):
            cat, dense = _row_by_definition(x, plan, b)
            assert out.cat[b].tolist() == cat, (seed, b)
            np.testing.assert_allclose(out.dense[b], dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("n", SIZES)
def test_backend_matches_reference_on_random_plans(backend: str, n: int) -> None:
    seed = int(np.random.default_rng().integers(1 << 31))
    plan, x = random_plan(np.random.default_rng(seed)), make_feature_inputs(n, seed)
    want = assemble_numpy(x, plan)
    got = get_crosser(backend).assemble(x, plan)
    assert got.cat.dtype == np.int64 and got.dense.dtype == np.float32
    assert got.cat.shape == (n, plan.n_cat) and got.dense.shape == (n, plan.n_dense)
    assert np.array_equal(got.cat, want.cat), seed
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)


def test_plan_outputs_follow_each_other() -> None:
    plan = FeaturePlan.of([cat_column(SIDE_ITEM, 2), cat_cross((SIDE_Q, 0), (SIDE_Q, 1), 11, 0)],
                          [dense_column(SIDE_Q, 1), dense_vectors(DENSE_PROD, 2, 0, 5),
                           dense_vectors(DENSE_DOT, 0, 3, 4), dense_column(SIDE_ITEM, 0)], [7, 11])
    assert plan.n_cat == 2 and plan.n_dense == 1 + 5 + 1 + 1
    assert plan.dense_ops[:, 5].tolist() == [0, 1, 6, 7]
    assert plan.widths() == {"q_cat": 2, "item_cat": 3, "q_num": 2, "item_num": 1, "q_vec": 7, "item_vec": 7}
    assert FeaturePlan.from_json(plan.to_json()) == plan
    assert not plan.cat_ops.flags.writeable and not plan.dense_ops.flags.writeable


def test_plan_round_trips_through_json() -> None:
    rng = np.random.default_rng()
    for _ in range(20):
        plan = random_plan(rng)
        again = FeaturePlan.from_json(plan.to_json())
        assert again == plan and hash(again) == hash(plan)
        assert np.array_equal(again.dense_ops, plan.dense_ops) and np.array_equal(again.cat_ops, plan.cat_ops)


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d["cat_ops"][0].__setitem__(5, 0), "buckets"),
    (lambda d: d["cat_ops"][0].__setitem__(0, 7), "unknown kind"),
    (lambda d: d["cat_ops"][0].__setitem__(1, 2), "unknown kind or side"),
    (lambda d: d["dense_ops"][1].__setitem__(5, 3), "expected 1"),
    (lambda d: d["dense_ops"][0].__setitem__(4, 2), "width"),
    (lambda d: d["dense_ops"][1].__setitem__(4, 0), "width"),
    (lambda d: d["cardinalities"].pop(), "one per cat op"),
    (lambda d: d["cardinalities"].__setitem__(0, 0), "cardinalities"),
    (lambda d: d["cat_ops"][0].__setitem__(2, -1), ">= 0"),
    (lambda d: d.__setitem__("cat_ops", [[0, 0, 0]]), "one row of 7"),
    (lambda d: d.__setitem__("ops", []), "unknown plan keys"),
    (lambda d: d.__setitem__("means", [[0, 0, 0]]), "width"),
])
def test_plan_refuses_what_no_kernel_can_run(change, match) -> None:  # type: ignore[no-untyped-def]
    plan = FeaturePlan.of([cat_cross((SIDE_Q, 0), (SIDE_ITEM, 1), 11, 0)],
                          [dense_column(SIDE_ITEM, 0), dense_vectors(DENSE_PROD, 0, 0, 3)], [11])
    d = plan.to_dict()
    change(d)
    with pytest.raises(ValueError, match=match):
        FeaturePlan.from_dict(d)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_inputs_narrower_than_the_plan_are_refused(backend: str) -> None:
    x = make_feature_inputs(5, seed=1)
    plan = FeaturePlan.of([cat_column(SIDE_ITEM, x.item_cat.shape[1])], [], [3])
    with pytest.raises(ValueError, match="item_cat has 4 columns; the plan reads 5"):
        get_crosser(backend).assemble(x, plan)
    plan = FeaturePlan.of([], [dense_vectors(DENSE_DOT, 0, 0, x.q_vec.shape[1] + 1)], [])
    with pytest.raises(ValueError, match="q_vec has 24 columns; the plan reads 25"):
        get_crosser(backend).assemble(x, plan)
    with pytest.raises(ValueError, match="req_of has 5 rows, item_rows 4"):
        get_crosser(backend).assemble(x._replace(item_rows=x.item_rows[:4]), plan)


# The CUDA C of the CuPy backend, compiled for the CPU: one block of one thread walks every row
# through the kernel's grid-stride loop. Rounding intrinsics map to plain float arithmetic (the
# compiler is told not to contract a*b+c into an FMA, as __fmul_rn/__fadd_rn forbid on the GPU).
_HOST_SHIM = """
struct rankserve_dim3 { unsigned x; };
static rankserve_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
"""


def _cuda_source_on_the_host(tmp: Path) -> ctypes.CDLL:
    from kernels._cupy import CUDA_SOURCE

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) to build the CuPy kernel's source for the CPU")
    (tmp / "assemble.cpp").write_text(_HOST_SHIM + CUDA_SOURCE)
    subprocess.run([cxx, "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(tmp / "assemble.so"),
                    str(tmp / "assemble.cpp")], check=True, capture_output=True, timeout=120)
    return ctypes.CDLL(str(tmp / "assemble.so"))


def _run_host_kernel(lib: ctypes.CDLL, x: FeatureInputs, plan: FeaturePlan) -> tuple[np.ndarray, np.ndarray]:
    from kernels._cupy import launch_args

    dtypes = (np.int64, np.int64, np.int64, np.float32, np.float32, np.int64, np.float32, np.float32)
    x = FeatureInputs(*[np.ascontiguousarray(a, dtype=d) for a, d in zip(x, dtypes, strict=True)])
    cat = np.zeros((x.req_of.shape[0], plan.n_cat), np.int64)
    dense = np.zeros((x.req_of.shape[0], plan.n_dense), np.float32)
    c_types = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64}
    args = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else c_types[type(a)](int(a))
            for a in launch_args(x, (plan.cat_ops, plan.dense_ops), plan, cat, dense)]
    lib.rankserve_assemble(*args)
    return cat, dense


def test_cupy_kernel_source_matches_reference_on_the_cpu(tmp_path: Path) -> None:
    lib = _cuda_source_on_the_host(tmp_path)
    rng = np.random.default_rng()
    for seed in rng.integers(1 << 31, size=10):
        plan, x = random_plan(np.random.default_rng(seed)), make_feature_inputs(257, int(seed))
        cat, dense = _run_host_kernel(lib, x, plan)
        want = assemble_numpy(x, plan)
        assert np.array_equal(cat, want.cat), seed
        np.testing.assert_allclose(dense, want.dense, rtol=1e-5, atol=1e-5)
