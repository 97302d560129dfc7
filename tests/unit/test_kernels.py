"""Every available crossing backend against the NumPy reference (bit-exact hashes, allclose dense).

The Numba CUDA kernel also runs on the CUDA simulator (in a subprocess, since the simulator must be
switched on before Numba's CUDA module is imported), and the CuPy kernel's CUDA C source is
compiled for the host CPU, so both GPU kernels are checked on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from kernels import BACKENDS, CrossInputs, CrossSpec, available_backends, cross_hash_scalar, get_crosser
from kernels._device import ResidentTables, is_device_array, is_immutable_host_array
from kernels._numpy import cross_numpy, hash_pairs_numpy
from kernels.dispatch import BackendUnavailableError
from tests.kernel_cases import SIZES, SPEC, make_inputs

ROOT = Path(__file__).resolve().parents[2]
BACKENDS_HERE = available_backends(allow_simulator=False)
I64 = np.iinfo(np.int64)


def _seed(*parts: object) -> int:
    """A seed fixed per test case (reproducible) and different between cases."""
    return zlib.crc32(repr(parts).encode())


def _cases(n: int, seed: int) -> CrossInputs:
    """``make_inputs`` with the edge-id rows (int64 min/max, zero, negatives) among the first pairs."""
    x = make_inputs(n, seed)
    k = min(n, 4)
    x.user_rows[:k] = np.arange(k)
    x.item_rows[:k] = np.arange(k) % 3
    return x


def _assert_matches(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], why: str) -> None:
    hashed, dense = got
    assert hashed.dtype == np.int64 and dense.dtype == np.float32, why
    assert hashed.shape == want[0].shape and dense.shape == want[1].shape, why
    assert np.array_equal(hashed, want[0]), why
    np.testing.assert_allclose(dense, want[1], rtol=1e-5, atol=1e-5, err_msg=why)


def test_numpy_reference_equals_the_pure_python_spec() -> None:
    rng = np.random.default_rng(_seed("spec"))
    a = rng.integers(I64.min, I64.max, 400, dtype=np.int64, endpoint=True)
    b = rng.integers(I64.min, I64.max, 400, dtype=np.int64, endpoint=True)
    a[:5], b[:5] = [I64.min, I64.max, 0, -1, 0], [I64.max, -1, 0, I64.min, 0]
    for pair, buckets in ((0, 4093), (3, 2**31 - 1), (17, 1), (1, 2**20)):
        got = hash_pairs_numpy(a, b, pair, buckets)
        want = [cross_hash_scalar(int(x), int(y), pair, buckets) for x, y in zip(a, b, strict=True)]
        assert got.tolist() == want
        assert got.min() >= 0 and got.max() < buckets


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("n", SIZES)
def test_backend_matches_reference(backend: str, n: int) -> None:
    seed = _seed(backend, n)
    x = _cases(n, seed)
    got = get_crosser(backend).cross(x, SPEC)
    _assert_matches(got, cross_numpy(x, SPEC), f"backend={backend} n={n} seed={seed}")


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_backend_matches_reference_on_read_only_tables_and_other_dtypes(backend: str) -> None:
    """Serving's tables are read-only; rows may come as int32; one pair and one bucket."""
    x = _cases(257, _seed(backend, "ro"))
    for table in x[2:]:
        table.setflags(write=False)
    spec = CrossSpec(pairs=((2, 1),), buckets=1, dense_dim=SPEC.dense_dim)
    rows32 = x._replace(user_rows=x.user_rows.astype(np.int32), item_rows=x.item_rows.astype(np.int32))
    for s in (SPEC, spec):
        _assert_matches(get_crosser(backend).cross(rows32, s), cross_numpy(x, s), f"backend={backend} {s}")


def test_reference_dense_is_the_contract() -> None:
    x = make_inputs(50, seed=3)
    out = cross_numpy(x, SPEC)
    u, v = x.user_dense[x.user_rows], x.item_dense[x.item_rows]
    np.testing.assert_allclose(out.dense[:, 1:], u * v, rtol=0, atol=0)
    np.testing.assert_allclose(out.dense[:, 0], (u.astype(np.float64) * v).sum(1), rtol=1e-5, atol=1e-5)


def test_auto_picks_the_first_available_in_priority_order_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        chosen = get_crosser("auto")
        assert get_crosser("auto") is chosen
    assert chosen.backend == BACKENDS_HERE[0]
    assert BACKENDS.index(chosen.backend) == min(BACKENDS.index(b) for b in BACKENDS_HERE)
    said = [r.getMessage() for r in caplog.records if "feature crossing backend" in r.getMessage()]
    assert len(said) <= 1  # logged at the first choice in this process, never again
    assert all(chosen.backend in m for m in said)


def test_unknown_and_unavailable_backends_raise() -> None:
    with pytest.raises(BackendUnavailableError, match="unknown crossing backend 'tpu'"):
        get_crosser("tpu")
    for name in set(BACKENDS) - set(BACKENDS_HERE):
        with pytest.raises(BackendUnavailableError, match=name):
            get_crosser(name)


def test_forcing_cupy_without_a_gpu_raises_instead_of_falling_back() -> None:
    if "cupy" in BACKENDS_HERE:
        pytest.skip("CuPy and a GPU are available here")
    with pytest.raises(BackendUnavailableError, match="cupy: "):
        get_crosser("cupy")


def test_spec_validates_and_round_trips() -> None:
    with pytest.raises(ValueError, match="buckets"):
        CrossSpec(pairs=((0, 0),), buckets=0, dense_dim=4)
    with pytest.raises(ValueError, match="pairs"):
        CrossSpec(pairs=(), buckets=5, dense_dim=4)
    assert CrossSpec.from_json(SPEC.to_json()) == SPEC


def test_resident_tables_keep_one_copy_per_live_read_only_array() -> None:
    uploads: list[int] = []

    def upload(a: np.ndarray) -> np.ndarray:
        uploads.append(a.nbytes)
        return a.copy()

    cache = ResidentTables()
    writeable = np.arange(6, dtype=np.int64)
    assert cache.get(writeable, np.int64, upload) is None  # may change: copied per call by the caller
    assert cache.get(writeable[:], np.int64, upload) is None
    table = np.arange(6, dtype=np.int64)
    table.setflags(write=False)
    assert cache.get(table[:3], np.int64, upload) is not None  # read-only view of a read-only base
    view_of_writeable = writeable[:3]
    view_of_writeable.setflags(write=False)
    assert not is_immutable_host_array(view_of_writeable)  # its base can still change it
    first = cache.get(table, np.int64, upload)
    assert cache.get(table, np.int64, upload) is first and len(uploads) == 2
    assert cache.get(table, np.float32, upload).dtype == np.float32 and len(uploads) == 3
    n_before = len(cache)
    del table, first
    gc.collect()
    assert len(cache) == n_before - 1  # the host array died: its device copy is dropped
    assert not is_device_array(np.zeros(2)) and not is_device_array([1, 2])


_CUDA_HOST_PRELUDE = r"""
#include <stdint.h>
#define __device__
#define __forceinline__ static inline
#define __global__
#define __fmul_rn(a, b) ((a) * (b))
#define __fadd_rn(a, b) ((a) + (b))
struct rs_dim3 { unsigned x; };
static const struct rs_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
"""


def test_cupy_kernel_source_matches_reference_on_the_host(tmp_path: Path) -> None:
    """The CuPy RawKernel's CUDA C, built for the CPU as one thread: same hashes, same dense."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build the CUDA source for the host")
    from kernels._cupy import CUDA_SOURCE

    src = tmp_path / "cross.c"
    src.write_text(_CUDA_HOST_PRELUDE + CUDA_SOURCE.replace('extern "C" ', "").replace("__restrict__", "restrict"))
    lib_path = tmp_path / "cross.so"
    subprocess.run([compiler, "-std=c99", "-O2", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o",
                    str(lib_path)], check=True, capture_output=True)
    kernel = ctypes.CDLL(str(lib_path)).rankserve_cross
    for n in (0, 1, 7, 1013):
        x = _cases(n, _seed("c", n))
        want = cross_numpy(x, SPEC)
        hashed = np.zeros((n, SPEC.n_pairs), np.int64)
        dense = np.zeros((n, SPEC.n_dense_out), np.float32)
        arrays = [np.ascontiguousarray(a) for a in (*x, SPEC.pairs_array())]
        ptr = [ctypes.c_void_p(a.ctypes.data) for a in arrays]
        kernel(*ptr, ctypes.c_int(SPEC.n_pairs), ctypes.c_uint64(SPEC.buckets), ctypes.c_int64(n),
               ctypes.c_int(x.user_cat.shape[1]), ctypes.c_int(x.item_cat.shape[1]), ctypes.c_int(SPEC.dense_dim),
               ctypes.c_void_p(hashed.ctypes.data), ctypes.c_void_p(dense.ctypes.data))
        _assert_matches((hashed, dense), want, f"cuda-c-on-host n={n}")


_SIM = """
import gc
import numpy as np
from numba import cuda
from kernels import CrossInputs, get_crosser
from kernels import _numba_cuda
from kernels._numpy import cross_numpy
from tests.kernel_cases import SPEC, make_inputs

import numba
assert numba.config.ENABLE_CUDASIM and get_crosser("numba_cuda").backend == "numba_cuda"
cross = get_crosser("numba_cuda").cross
for n, seed in ((0, 1), (1, 2), (37, 3), (300, 4)):
    x = make_inputs(n, seed, n_users=40, n_items=50)
    k = min(n, 4)
    x.user_rows[:k], x.item_rows[:k] = np.arange(k), np.arange(k) % 3
    got, want = cross(x, SPEC), cross_numpy(x, SPEC)
    assert isinstance(got.hashed, np.ndarray) and got.hashed.shape == want.hashed.shape, n
    assert np.array_equal(got.hashed, want.hashed), n
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
    assert _numba_cuda.LAST_TRANSFER_BYTES["d2h"] == want.hashed.nbytes + want.dense.nbytes

# device inputs in, device outputs out, nothing copied from the host
x = make_inputs(64, 5, n_users=40, n_items=50)
want = cross_numpy(x, SPEC)
dev = CrossInputs(*[cuda.to_device(a) for a in x])
got = cross(dev, SPEC)
assert _numba_cuda.LAST_TRANSFER_BYTES == {"h2d": 0, "d2h": 0}, _numba_cuda.LAST_TRANSFER_BYTES
assert not isinstance(got.hashed, np.ndarray)
assert np.array_equal(got.hashed.copy_to_host(), want.hashed)
np.testing.assert_allclose(got.dense.copy_to_host(), want.dense, rtol=1e-5, atol=1e-5)
try:
    _numba_cuda.cross_device(dev._replace(user_dense=cuda.to_device(x.user_dense.astype(np.float64))), SPEC)
    raise SystemExit("a float64 device table was accepted")
except TypeError as err:
    assert "user_dense must be float32" in str(err), err

# read-only host tables are copied once and dropped with their host array
for t in x[2:]:
    t.setflags(write=False)
cross(x, SPEC)
assert _numba_cuda.LAST_TRANSFER_BYTES["h2d"] == sum(a.nbytes for a in x), _numba_cuda.LAST_TRANSFER_BYTES
got = cross(x, SPEC)
assert _numba_cuda.LAST_TRANSFER_BYTES["h2d"] == x.user_rows.nbytes + x.item_rows.nbytes
assert np.array_equal(got.hashed, want.hashed)
before = len(_numba_cuda._TABLES)
del x, dev, got, t
gc.collect()
assert len(_numba_cuda._TABLES) == before - 4, (before, len(_numba_cuda._TABLES))
print("sim-ok")
"""


def test_numba_cuda_kernel_on_the_cuda_simulator() -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", _SIM], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "sim-ok" in out.stdout, out.stderr[-3000:]
