"""The one module that imports FAISS: build, save, load (GPU when present) and search the item index.

Owns: the item index file format (``items.faiss`` and its ``.json`` sidecar) and its search.
Must not touch: models, Triton, requests.

Exact ``IndexFlatIP`` for small catalogues, IVF-Flat above ``EXACT_MAX_ITEMS`` with ``nprobe``
tuned at build time to a recall target against exact search. GPU resources are created at load,
inside the process that searches, and never pickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from serving.errors import ConfigError
from serving.terminal import task

__all__ = ["EXACT_MAX_ITEMS", "ItemIndex", "build_index", "load_index", "recall_at_k", "save_index",
           "set_search_threads", "tower_queries"]

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 20_000
TUNE_K = 500
GPU_MAX_K = 2048  # faiss-gpu's largest k (and nprobe) per search


def set_search_threads(n: int) -> None:
    """OpenMP threads of FAISS in this process (searches of a whole batch run on them)."""
    faiss.omp_set_num_threads(n)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ItemIndex:
    """An inner-product item index with its search parameters.

    Attributes:
        kind: ``flat`` or ``ivf``; ``nprobe``: IVF lists searched; ``on_gpu``: moved to a GPU.
    """

    def __init__(self, index: Any, *, kind: str, nprobe: int = 1, on_gpu: bool = False) -> None:
        self.index = index
        self.kind = kind
        self.nprobe = nprobe
        self.on_gpu = on_gpu
        self._gpu_res: Any = None
        self._apply_nprobe()

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_k(self) -> int:
        """The largest k one search can ask for (faiss-gpu stops at 2048)."""
        return min(self.n_items, GPU_MAX_K) if self.on_gpu else self.n_items

    def _apply_nprobe(self) -> None:
        if self.kind == "ivf":
            if self.on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", self.nprobe)
            else:
                faiss.extract_index_ivf(self.index).nprobe = self.nprobe

    def to_gpu(self) -> ItemIndex:
        """A copy on GPU 0 (same kind and nprobe)."""
        res = faiss.StandardGpuResources()
        gpu = ItemIndex(faiss.index_cpu_to_gpu(res, 0, self.index), kind=self.kind, nprobe=self.nprobe, on_gpu=True)
        gpu._gpu_res = res  # keep the resources alive with the index
        return gpu

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores float32 [Q, k'], ids int64 [Q, k']), k' = min(k, max_k); ids -1 pad."""
        k = max(1, min(int(k), self.max_k))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("ItemIndex holds FAISS (and maybe GPU) handles: load it inside the process that uses it")


def _exact(emb: np.ndarray) -> Any:
    idx = faiss.IndexFlatIP(emb.shape[1])
    idx.add(emb)
    return idx


def recall_at_k(ann: ItemIndex, emb: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of exact top-``k`` ids (``IndexFlatIP`` over ``emb``) that the ANN index returns."""
    k = min(k, emb.shape[0])
    _, truth = _exact(emb).search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, got = ann.search(queries, k)
    hits = sum(len(np.intersect1d(t, g[g >= 0])) for t, g in zip(truth, got, strict=True))
    return hits / float(truth.size)


def build_index(emb: np.ndarray, *, kind: str = "auto", nlist: int | None = None,
                queries: np.ndarray | None = None, target_recall: float = 0.97, seed: int = 0) -> ItemIndex:
    """Build an inner-product index over item embeddings.

    Args:
        kind: ``flat``, ``ivf`` or ``auto`` (flat up to ``EXACT_MAX_ITEMS`` items).
        queries: queries used to tune ``nprobe`` (default: perturbed item embeddings).
        target_recall: recall@500 against exact search that ``nprobe`` must reach.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ITEMS else "ivf"
    if kind == "flat":
        return ItemIndex(_exact(emb), kind="flat")
    if kind != "ivf":
        raise ValueError(f"kind must be auto, flat or ivf, got {kind!r}")
    nlist = nlist or int(4 * np.sqrt(n))
    tries = (4, 8, 16, 32, 64, 128, 256, nlist)
    with task("FAISS index", total=2 + len(tries)) as bar:
        bar.describe("FAISS index: k-means")
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        ivf.train(emb)
        bar.advance()
        ivf.add(emb)
        bar.advance()
        if queries is None:
            rng = np.random.default_rng(seed)
            queries = emb[rng.choice(n, min(256, n), replace=False)] + rng.normal(0, 0.05, (min(256, n), d))
            queries = queries.astype(np.float32)
        index = ItemIndex(ivf, kind="ivf", nprobe=1)
        for nprobe in tries:
            bar.describe(f"FAISS index: nprobe {min(nprobe, nlist)}")
            index.nprobe = min(nprobe, nlist)
            index._apply_nprobe()
            bar.advance()
            if recall_at_k(index, emb, queries, TUNE_K) >= target_recall:
                break
    log.info("IVF index: %d items, nlist %d, nprobe %d", n, nlist, index.nprobe)
    return index


def tower_queries(tower: Any, user_cat: np.ndarray, user_dense: np.ndarray, *, n: int = 256,
                  seed: int = 0) -> np.ndarray:
    """User-tower embeddings of ``n`` random users: realistic queries to tune and measure recall."""
    import torch

    rows = np.random.default_rng(seed).choice(user_cat.shape[0], min(n, user_cat.shape[0]), replace=False)
    with torch.inference_mode():
        out = tower(torch.from_numpy(np.ascontiguousarray(user_cat[rows])),
                    torch.from_numpy(np.ascontiguousarray(user_dense[rows])))
    return out.numpy().astype(np.float32)


def save_index(index: ItemIndex, path: Path) -> None:
    """Write the index and a ``<path>.json`` sidecar with its search parameters."""
    faiss.write_index(index.index, str(path))
    Path(f"{path}.json").write_text(json.dumps({"kind": index.kind, "nprobe": index.nprobe}))


def load_index(path: Path, *, use_gpu: bool | str = "auto") -> ItemIndex:
    """Load an index; move it to the GPU when ``use_gpu`` is ``on``/True, or ``auto`` and one is present."""
    side = Path(f"{path}.json")
    params: dict[str, Any] = json.loads(side.read_text()) if side.is_file() else {"kind": "flat", "nprobe": 1}
    index = ItemIndex(faiss.read_index(str(path)), kind=str(params["kind"]), nprobe=int(params["nprobe"]))
    want = use_gpu in (True, "on") or (use_gpu == "auto" and gpu_available())
    if want:
        if not gpu_available():
            raise ConfigError("RANKSERVE_FAISS_GPU=on, but faiss has no GPU support or no GPU is visible")
        index = index.to_gpu()
        log.info("FAISS index on GPU")
    return index
