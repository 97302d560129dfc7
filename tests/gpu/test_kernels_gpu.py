"""CuPy and Numba CUDA kernels on a real GPU against the NumPy reference (the crossing contract and
random feature plans), with device-resident inputs (no host copies), and the FAISS index on the
GPU against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import CrossInputs, get_crosser
from kernels._numpy import assemble_numpy, cross_numpy
from kernels.spec import cross_with, plan_of_cross_spec
from tests.kernel_cases import SIZES, SPEC, make_feature_inputs, make_inputs, random_plan

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["cupy", "numba_cuda"])
@pytest.mark.parametrize("n", [*SIZES, 1_000_003])
def test_gpu_backend_matches_reference(backend: str, n: int) -> None:
    x = make_inputs(n, seed=int(np.random.default_rng().integers(1 << 31)))
    got = get_crosser(backend).cross(x, SPEC)
    want = cross_numpy(x, SPEC)
    assert np.array_equal(got.hashed, want.hashed)
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cupy", "numba_cuda"])
@pytest.mark.parametrize("n", [*SIZES, 1_000_003])
def test_gpu_backend_assembles_random_plans_as_the_reference(backend: str, n: int) -> None:
    seed = int(np.random.default_rng().integers(1 << 31))
    plan, x = random_plan(np.random.default_rng(seed)), make_feature_inputs(n, seed)
    got, want = get_crosser(backend).assemble(x, plan), assemble_numpy(x, plan)
    assert np.array_equal(got.cat, want.cat), seed
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)


def test_cupy_device_inputs_stay_on_device() -> None:
    cp = pytest.importorskip("cupy")
    from kernels._cupy import assemble_device

    x = make_inputs(4099, seed=11)
    dev = CrossInputs(*[cp.asarray(a) for a in x])
    hashed, dense = cross_with(assemble_device, dev, SPEC)
    assert isinstance(hashed, cp.ndarray) and isinstance(dense, cp.ndarray)
    want = cross_numpy(x, SPEC)
    assert np.array_equal(hashed.get(), want.hashed)
    np.testing.assert_allclose(dense.get(), want.dense, rtol=1e-5, atol=1e-5)


def test_numba_cuda_takes_cupy_and_torch_arrays_without_host_copies() -> None:
    cp = pytest.importorskip("cupy")
    from kernels import _numba_cuda

    x = make_inputs(2048, seed=12)
    want = cross_numpy(x, SPEC)
    _numba_cuda.LAST_TRANSFER_BYTES.update(h2d=0, d2h=0)
    hashed, dense = cross_with(_numba_cuda.assemble_device, CrossInputs(*[cp.asarray(a) for a in x]), SPEC)
    # only the plan's tiny operation tables may come from the host (once: then they stay resident)
    plan = plan_of_cross_spec(SPEC)
    assert _numba_cuda.LAST_TRANSFER_BYTES["h2d"] <= plan.cat_ops.nbytes + plan.dense_ops.nbytes
    assert np.array_equal(hashed.copy_to_host(), want.hashed)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        tx = CrossInputs(*[torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in x])
        h2, d2 = cross_with(_numba_cuda.assemble_device, tx, SPEC)
        assert np.array_equal(h2.copy_to_host(), want.hashed)
        from kernels._cupy import assemble_device as cupy_assemble_device

        h3, d3 = cross_with(cupy_assemble_device, tx, SPEC)
        assert np.array_equal(cp.asnumpy(h3), want.hashed)
        # results go on to torch (the ranker's input) through DLPack, no host copy
        t = torch.from_dlpack(d3)
        assert t.is_cuda and t.shape == (2048, SPEC.n_dense_out)


def test_faiss_gpu_index_matches_cpu_recall() -> None:
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss has no GPU support here (install the 'gpu' extra: faiss-gpu-cu12)")
    from serving.index.faiss_index import build_index, recall_at_k

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60_000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:300] + rng.normal(0, 0.05, (300, 32)).astype(np.float32)
    cpu = build_index(emb, kind="ivf", queries=q[:100])
    gpu = cpu.to_gpu()
    assert gpu.on_gpu
    r_cpu, r_gpu = recall_at_k(cpu, emb, q, 500), recall_at_k(gpu, emb, q, 500)
    assert r_gpu >= 0.95 and abs(r_gpu - r_cpu) < 0.01
