"""CuPy and Numba CUDA kernels on a real GPU against the NumPy reference, with device-resident
inputs (no host copies), and the FAISS index on the GPU against exact search."""

from __future__ import annotations

import importlib
import zlib

import numpy as np
import pytest

from kernels import CrossInputs, get_crosser
from kernels._numpy import cross_numpy
from kernels.dispatch import BackendUnavailableError, _load
from tests.kernel_cases import SIZES, SPEC, make_inputs

pytestmark = pytest.mark.gpu


def _backend(name: str) -> None:
    """Skip, with the reason, when this GPU machine lacks the backend (e.g. no CuPy installed)."""
    try:
        _load(name, allow_simulator=False)
    except BackendUnavailableError as err:
        pytest.skip(str(err))


def _cases(n: int, seed: int) -> CrossInputs:
    x = make_inputs(n, seed)
    k = min(n, 4)
    x.user_rows[:k], x.item_rows[:k] = np.arange(k), np.arange(k) % 3
    return x


def _check(hashed: np.ndarray, dense: np.ndarray, x: CrossInputs, why: str) -> None:
    want = cross_numpy(x, SPEC)
    assert hashed.dtype == np.int64 and dense.dtype == np.float32, why
    assert np.array_equal(hashed, want.hashed), why
    np.testing.assert_allclose(dense, want.dense, rtol=1e-5, atol=1e-5, err_msg=why)


@pytest.mark.parametrize("backend", ["cupy", "numba_cuda"])
@pytest.mark.parametrize("n", [*SIZES, 1_000_003])
def test_gpu_backend_matches_reference(backend: str, n: int) -> None:
    _backend(backend)
    seed = zlib.crc32(f"{backend}-{n}".encode())
    x = _cases(n, seed)
    got = get_crosser(backend).cross(x, SPEC)
    assert isinstance(got.hashed, np.ndarray) and isinstance(got.dense, np.ndarray)
    _check(got.hashed, got.dense, x, f"backend={backend} n={n} seed={seed}")


@pytest.mark.parametrize("backend", ["cupy", "numba_cuda"])
def test_read_only_tables_are_copied_once(backend: str) -> None:
    _backend(backend)
    module = importlib.import_module(f"kernels._{backend}")
    x = _cases(5000, seed=21)
    for table in x[2:]:
        table.setflags(write=False)
    cross = get_crosser(backend).cross
    cross(x, SPEC)
    got = cross(x, SPEC)
    assert module.LAST_TRANSFER_BYTES["h2d"] == x.user_rows.nbytes + x.item_rows.nbytes
    assert module.LAST_TRANSFER_BYTES["d2h"] == got.hashed.nbytes + got.dense.nbytes
    _check(got.hashed, got.dense, x, backend)


def test_cupy_device_inputs_give_device_outputs_without_host_copies() -> None:
    _backend("cupy")
    import cupy as cp

    from kernels import _cupy

    x = _cases(4099, seed=11)
    dev = CrossInputs(*[cp.asarray(a) for a in x])
    get_crosser("cupy").cross(dev, SPEC)  # the pairs table of SPEC is uploaded once per process
    out = get_crosser("cupy").cross(dev, SPEC)
    assert _cupy.LAST_TRANSFER_BYTES == {"h2d": 0, "d2h": 0}
    assert isinstance(out.hashed, cp.ndarray) and isinstance(out.dense, cp.ndarray)
    hashed, dense = _cupy.cross_device(dev, SPEC)
    assert isinstance(hashed, cp.ndarray)
    _check(cp.asnumpy(out.hashed), cp.asnumpy(out.dense), x, "cupy device")
    _check(hashed.get(), dense.get(), x, "cupy cross_device")


def test_numba_cuda_device_inputs_give_device_outputs_without_host_copies() -> None:
    _backend("numba_cuda")
    from numba import cuda

    from kernels import _numba_cuda

    x = _cases(2048, seed=12)
    dev = CrossInputs(*[cuda.to_device(a) for a in x])
    _numba_cuda.cross_device(dev, SPEC)
    out = get_crosser("numba_cuda").cross(dev, SPEC)
    assert _numba_cuda.LAST_TRANSFER_BYTES == {"h2d": 0, "d2h": 0}
    assert cuda.is_cuda_array(out.hashed)
    _check(out.hashed.copy_to_host(), out.dense.copy_to_host(), x, "numba device")
    cp = pytest.importorskip("cupy")
    out = _numba_cuda.cross_device(CrossInputs(*[cp.asarray(a) for a in x]), SPEC)
    assert _numba_cuda.LAST_TRANSFER_BYTES == {"h2d": 0, "d2h": 0}
    _check(out[0].copy_to_host(), out[1].copy_to_host(), x, "numba with cupy inputs")


def test_torch_cuda_tensors_in_and_out_without_host_copies() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here (CPU build)")
    x = _cases(2048, seed=13)
    tx = CrossInputs(*[torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in x])
    for backend in ("cupy", "numba_cuda"):
        try:
            _load(backend, allow_simulator=False)
        except BackendUnavailableError:
            continue
        module = importlib.import_module(f"kernels._{backend}")
        module.cross_device(tx, SPEC)
        hashed, dense = module.cross_device(tx, SPEC)
        assert module.LAST_TRANSFER_BYTES == {"h2d": 0, "d2h": 0}, backend
        # results go on to torch (the ranker's input) without a host copy
        th, td = torch.as_tensor(hashed, device="cuda"), torch.as_tensor(dense, device="cuda")
        assert th.is_cuda and td.shape == (2048, SPEC.n_dense_out)
        _check(th.cpu().numpy(), td.cpu().numpy(), x, f"torch via {backend}")


def test_faiss_gpu_index_matches_cpu_recall() -> None:
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss has no GPU support here (install the 'gpu' extra: faiss-gpu-cu12)")
    from serving.faiss_index import build_index, recall_at_k

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60_000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:300] + rng.normal(0, 0.05, (300, 32)).astype(np.float32)
    cpu = build_index(emb, kind="ivf", queries=q[:100])
    gpu = cpu.to_gpu()
    assert gpu.on_gpu
    r_cpu, r_gpu = recall_at_k(cpu, emb, q, 500), recall_at_k(gpu, emb, q, 500)
    assert r_gpu >= 0.95 and abs(r_gpu - r_cpu) < 0.01
