"""The GPU backends' cache of device-resident tables (kernels/_resident.py), with NumPy standing
in for the device copy, and the Numba CUDA backend on the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernels._resident import ResidentTables
from tests.kernel_cases import run_on_cuda_simulator

ROOT = Path(__file__).resolve().parents[2]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def test_only_read_only_host_arrays_of_the_dtype_are_eligible() -> None:
    a = np.zeros((4, 3), np.int64)
    assert not ResidentTables.eligible(a, np.int64)  # writable: may change between calls
    assert ResidentTables.eligible(_frozen(a), np.int64)
    assert not ResidentTables.eligible(a, np.float32)
    assert not ResidentTables.eligible([[1, 2]], np.int64)


def test_each_table_is_copied_once_and_views_of_it_share_the_copy() -> None:
    copies: list[np.ndarray] = []
    cache = ResidentTables(lambda a: copies.append(a.copy()) or copies[-1])
    t = _frozen(np.arange(12, dtype=np.int64).reshape(4, 3))
    first = cache.get(t)
    assert cache.get(t) is first and cache.get(t[:]) is first
    assert len(copies) == 1 and cache.copied_bytes == t.nbytes
    np.testing.assert_array_equal(first, t)
    # a view with other strides is other memory layout: its own (contiguous) copy
    col = cache.get(t[:, 1])
    np.testing.assert_array_equal(col, [1, 4, 7, 10])
    assert len(copies) == 2


def test_a_new_table_at_a_freed_address_is_never_answered_with_the_old_copy() -> None:
    cache = ResidentTables(np.copy)
    for value in range(50):
        # freed and reallocated every round: CPython's allocator hands back the same address
        t = _frozen(np.full((64, 8), value, dtype=np.int64))
        assert int(cache.get(t)[0, 0]) == value
        del t
    assert len(cache) <= 32


def test_least_recently_used_entries_are_evicted_beyond_the_bound() -> None:
    cache = ResidentTables(np.copy, max_entries=2)
    a, b, c = (_frozen(np.full(4, v, np.int64)) for v in (1, 2, 3))
    cache.get(a), cache.get(b), cache.get(a), cache.get(c)
    assert len(cache) == 2
    before = cache.copied_bytes
    cache.get(a)  # still resident (recently used)
    assert cache.copied_bytes == before
    cache.get(b)  # was evicted: copied again
    assert cache.copied_bytes == before + b.nbytes
    with pytest.raises(ValueError, match="max_entries"):
        ResidentTables(np.copy, max_entries=0)


_SIM = """
import numpy as np
from kernels import CrossInputs, get_crosser
from kernels._numpy import cross_numpy
from tests.kernel_cases import SPEC, make_inputs
c = get_crosser("numba_cuda")
for seed in range(6):
    x = make_inputs(64, seed, n_users=40, n_items=50)
    for a in x[2:]:
        a.flags.writeable = False  # tables as FeatureTables holds them: resident on the device
    got, want = c.cross(x, SPEC), cross_numpy(x, SPEC)
    assert np.array_equal(got.hashed, want.hashed), seed
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
    again = c.cross(x, SPEC)
    assert np.array_equal(again.hashed, want.hashed), seed
    del x, got, again
print("sim-ok")
"""


def test_numba_cuda_resident_tables_on_the_simulator_follow_new_tables() -> None:
    run_on_cuda_simulator(_SIM)
