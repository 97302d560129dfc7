"""The torch exact index returns what exact inner-product search returns (FAISS ``IndexFlatIP``
where FAISS is installed, NumPy otherwise), chunked or not, and never imports FAISS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.index import torch_exact
from serving.index.torch_exact import TorchExactIndex

ROOT = Path(__file__).resolve().parents[2]


def _data(n: int = 3000, d: int = 16, q: int = 37) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return emb, rng.normal(size=(q, d)).astype(np.float32)


def test_matches_numpy_exact_search(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, q = _data()
    truth = np.argsort(-(q @ emb.T), axis=1, kind="stable")[:, :100]
    for max_scores in (1 << 26, 5000):  # one step, and query chunks of 1 row
        monkeypatch.setattr(torch_exact, "_MAX_SCORES", max_scores)
        scores, ids = TorchExactIndex(emb).search(q, 100)
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (37, 100)
        assert np.array_equal(ids, truth)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, truth, 1), rtol=1e-5, atol=1e-5)


def test_matches_faiss_flat_index() -> None:
    faiss = pytest.importorskip("faiss")
    emb, q = _data()
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    _, want = flat.search(q, 500)
    _, got = TorchExactIndex(emb).search(q, 500)
    assert np.mean([len(np.intersect1d(a, b)) / 500 for a, b in zip(want, got, strict=True)]) == 1.0


def test_k_is_clamped_and_empty_queries_answer_empty(tmp_path: Path) -> None:
    emb, q = _data(n=50)
    np.save(tmp_path / "item_emb.npy", emb)
    index = TorchExactIndex.from_version_dir(tmp_path)
    assert (index.kind, index.on_gpu, index.n_items, index.max_k) == ("torch_exact", False, 50, 50)
    assert index.search(q[:2], 10_000)[1].shape == (2, 50)
    s, i = index.search(q[:0], 5)
    assert s.shape == (0, 5) and i.shape == (0, 5)
    with pytest.raises(ValueError, match="non-empty"):
        TorchExactIndex(np.zeros((0, 4), np.float32))


def test_does_not_import_faiss() -> None:
    code = "import sys, serving.index.torch_exact; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_read_only_queries_are_searched_without_a_warning() -> None:
    emb, q = _data(n=200)
    q.setflags(write=False)  # as Triton's and torch's outputs arrive; warnings are errors in the suite
    assert TorchExactIndex(emb).search(q, 3)[1].shape == (37, 3)
