"""Every available crossing backend against the NumPy reference (bit-exact hashes, allclose dense)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernels import BACKENDS, CrossInputs, CrossSpec, available_backends, cross_hash_scalar, get_crosser
from kernels._numpy import cross_numpy, hash_pairs_numpy
from kernels.dispatch import KernelBackendError
from tests.kernel_cases import SIZES, SPEC, make_inputs, run_on_cuda_simulator

ROOT = Path(__file__).resolve().parents[2]
BACKENDS_HERE = available_backends(allow_simulator=False)


def test_numpy_reference_equals_the_pure_python_spec() -> None:
    rng = np.random.default_rng()
    i64 = np.iinfo(np.int64)
    a = rng.integers(i64.min, i64.max, 400, dtype=np.int64, endpoint=True)
    b = rng.integers(i64.min, i64.max, 400, dtype=np.int64, endpoint=True)
    a[:3], b[:3] = [i64.min, i64.max, 0], [i64.max, -1, 0]
    for pair, buckets in ((0, 4093), (3, 2**31 - 1), (17, 1)):
        got = hash_pairs_numpy(a, b, pair, buckets)
        want = [cross_hash_scalar(int(x), int(y), pair, buckets) for x, y in zip(a, b, strict=True)]
        assert got.tolist() == want
        assert got.min() >= 0 and got.max() < buckets


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("n", SIZES)
def test_backend_matches_reference(backend: str, n: int) -> None:
    x = make_inputs(n, seed=int(np.random.default_rng().integers(1 << 31)))
    want = cross_numpy(x, SPEC)
    got = get_crosser(backend).cross(x, SPEC)
    assert got.hashed.dtype == np.int64 and got.dense.dtype == np.float32
    assert got.hashed.shape == (n, SPEC.n_pairs) and got.dense.shape == (n, SPEC.n_dense_out)
    assert np.array_equal(got.hashed, want.hashed)
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)


def test_reference_dense_is_the_contract() -> None:
    x = make_inputs(50, seed=3)
    out = cross_numpy(x, SPEC)
    u, v = x.user_dense[x.user_rows], x.item_dense[x.item_rows]
    np.testing.assert_allclose(out.dense[:, 1:], u * v, rtol=0, atol=0)
    np.testing.assert_allclose(out.dense[:, 0], (u.astype(np.float64) * v).sum(1), rtol=1e-5, atol=1e-5)


def test_auto_picks_the_first_available_in_priority_order() -> None:
    chosen = get_crosser("auto").backend
    assert chosen == BACKENDS_HERE[0]
    assert BACKENDS.index(chosen) == min(BACKENDS.index(b) for b in BACKENDS_HERE)


def test_unknown_and_unavailable_backends_raise() -> None:
    with pytest.raises(KernelBackendError, match="unknown crossing backend"):
        get_crosser("tpu")
    for name in set(BACKENDS) - set(available_backends()):
        with pytest.raises(KernelBackendError, match=name):
            get_crosser(name)


def test_spec_validates_and_round_trips() -> None:
    with pytest.raises(ValueError, match="buckets"):
        CrossSpec(pairs=((0, 0),), buckets=0, dense_dim=4)
    with pytest.raises(ValueError, match="pairs"):
        CrossSpec(pairs=(), buckets=5, dense_dim=4)
    assert CrossSpec.from_json(SPEC.to_json()) == SPEC


_SIM = """
import numpy as np
from kernels import get_crosser
from kernels._numpy import assemble_numpy, cross_numpy
from tests.kernel_cases import SPEC, make_feature_inputs, make_inputs, random_plan
c = get_crosser("numba_cuda")
for n, seed in ((0, 1), (1, 2), (37, 3), (300, 4)):
    x = make_inputs(n, seed, n_users=40, n_items=50)
    got, want = c.cross(x, SPEC), cross_numpy(x, SPEC)
    assert np.array_equal(got.hashed, want.hashed), n
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
    plan, y = random_plan(np.random.default_rng(seed)), make_feature_inputs(n, seed, n_items=50)
    got, want = c.assemble(y, plan), assemble_numpy(y, plan)
    assert np.array_equal(got.cat, want.cat), seed
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
print("sim-ok")
"""


def test_numba_cuda_kernel_on_the_cuda_simulator() -> None:
    """The crossing contract and random feature plans (tests/unit/test_assembly.py's cases)."""
    run_on_cuda_simulator(_SIM)


def test_cross_inputs_from_other_dtypes_are_converted() -> None:
    x = make_inputs(20, seed=5)
    y = CrossInputs(x.user_rows.astype(np.int32), x.item_rows.astype(np.int32), x.user_cat, x.item_cat,
                    x.user_dense, x.item_dense)
    for backend in BACKENDS_HERE:
        assert np.array_equal(get_crosser(backend).cross(y, SPEC).hashed, cross_numpy(x, SPEC).hashed)


def test_crossing_stage_compiles_the_served_table_layout_at_start_up() -> None:
    """Read-only tables are a layout of their own to Numba: the stage compiles it before the first
    request, so no request pays the ~1 s compile."""
    if "numba_cpu" not in BACKENDS_HERE:
        pytest.skip("numba is not installed")
    from kernels import _numba_cpu
    from serving.data.tables import NO_CONTEXT
    from serving.pipeline.crossing import CrossingStage
    from serving.pipeline.features import FeatureTables, cross_spec_plan

    rng = np.random.default_rng(0)
    tables = FeatureTables(rng.integers(0, 5, (30, 3)), rng.normal(size=(30, 8)).astype(np.float32),
                           rng.integers(0, 5, (40, 4)), rng.normal(size=(40, 3)).astype(np.float32),
                           rng.normal(size=(40, 8)).astype(np.float32))
    stage = CrossingStage(tables, "numba_cpu")
    compiled = len(_numba_cpu._assemble_kernel.signatures)
    spec = CrossSpec(pairs=((0, 1), (2, 3)), buckets=101, dense_dim=8)
    plan = cross_spec_plan(tables, spec)
    out = stage.inputs(tables, plan, rng.integers(0, 30, 64), [NO_CONTEXT] * 64, np.arange(64),
                       rng.integers(0, 40, 64))
    assert len(_numba_cpu._assemble_kernel.signatures) == compiled, "the first request compiled a new kernel"
    assert out.cat.shape == (64, 3 + 4 + 2)
