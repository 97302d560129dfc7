"""The one module that imports FAISS: build, save, load (GPU when present) and search the item index.

Owns: the item index file format (``items.faiss`` and its ``.json`` sidecar) and its search, and
exact inner-product search over a plain table (``exact_nearest``: item-to-item by content).
Must not touch: models, Triton, requests.

Exact ``IndexFlatIP`` for small catalogues, IVF-Flat above ``EXACT_MAX_ITEMS`` with ``nprobe``
tuned at build time to a recall target against exact search (IVF-PQ and HNSW can be built too, to
compare; ``benchmarks.index_bench`` measured IVF-Flat the one that meets the targets at 1M
items and takes catalogue changes). GPU resources are created at load, inside the process that
searches, and never pickled.

Catalogue changes reach a loaded index through :meth:`ItemIndex.upsert` (item ids are row
numbers: new items take the next ids), under a lock that searches take too. The sidecar records
the catalogue version whose items the index holds.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from serving.errors import ConfigError
from serving.terminal import task

__all__ = ["EXACT_MAX_ITEMS", "KINDS", "ItemIndex", "build_index", "exact_nearest", "load_index", "recall_at_k",
           "save_index", "set_search_threads", "tower_queries"]

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 20_000
TUNE_K = 500
GPU_MAX_K = 2048  # faiss-gpu's largest k (and nprobe) per search


def set_search_threads(n: int) -> None:
    """OpenMP threads of FAISS in this process (searches of a whole batch run on them)."""
    faiss.omp_set_num_threads(n)


def exact_nearest(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` with the largest inner product with each query, best first:
    ``(scores, ids)``, each ``[len(queries), k]``. Exact, with no index to keep (FAISS's
    brute-force search: BLAS and a heap per query), so ``base`` may change between calls."""
    k = min(k, base.shape[0])
    scores, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                            np.ascontiguousarray(base, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, ids.astype(np.int64)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


KINDS = ("flat", "ivf", "ivfpq", "hnsw")


class ItemIndex:
    """An inner-product item index with its search parameters.

    Attributes:
        kind: one of :data:`KINDS`; ``nprobe``: IVF lists searched (HNSW: ``efSearch``);
        ``on_gpu``: moved to a GPU; ``catalogue_version``: the catalogue change its items are at.
    """

    def __init__(self, index: Any, *, kind: str, nprobe: int = 1, on_gpu: bool = False,
                 catalogue_version: int = 0) -> None:
        self.index = index
        self.kind = kind
        self.nprobe = nprobe
        self.on_gpu = on_gpu
        self.catalogue_version = catalogue_version
        self._gpu_res: Any = None
        self._cpu: Any = None  # on a GPU: the host copy that changes are made to
        self._lock = threading.Lock()  # FAISS does not search and add at once safely
        self._apply_nprobe()

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_k(self) -> int:
        """The largest k one search can ask for (faiss-gpu stops at 2048)."""
        return min(self.n_items, GPU_MAX_K) if self.on_gpu else self.n_items

    def _apply_nprobe(self) -> None:
        if self.kind in ("ivf", "ivfpq"):
            if self.on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", self.nprobe)
            else:
                faiss.extract_index_ivf(self.index).nprobe = self.nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.nprobe

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = int(nprobe)
        self._apply_nprobe()

    def to_gpu(self) -> ItemIndex:
        """A copy on GPU 0 (same kind and nprobe); changes go to the host copy and are copied over."""
        res = faiss.StandardGpuResources()
        gpu = ItemIndex(faiss.index_cpu_to_gpu(res, 0, self.index), kind=self.kind, nprobe=self.nprobe, on_gpu=True,
                        catalogue_version=self.catalogue_version)
        gpu._gpu_res = res  # keep the resources alive with the index
        gpu._cpu = self.index
        return gpu

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores float32 [Q, k'], ids int64 [Q, k']), k' = min(k, max_k); ids -1 pad."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            k = max(1, min(int(k), self.max_k))
            scores, ids = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, catalogue_version: int) -> None:
        """Set the vectors of items ``ids`` (existing ones replaced, ids ``n_items``, ``n_items + 1``, ...
        added) and record ``catalogue_version``.

        Raises:
            ValueError: new ids that do not follow on, or an index kind that cannot remove (HNSW).
        """
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        host = self._cpu if self.on_gpu else self.index
        n = int(host.ntotal)
        new = np.sort(ids[ids >= n])
        if new.size and not np.array_equal(new, np.arange(n, n + new.size)):
            raise ValueError(f"new item ids must follow on from {n}, got {new[:5].tolist()}")
        if self.kind == "hnsw" and (ids < n).any():
            raise ValueError("an HNSW index cannot replace vectors; rebuild it")
        if self.kind == "flat":
            updated = _flat_upserted(host, ids, vectors)
        else:
            updated = host  # IVF: remove and add in place, on the host copy
        with self._lock:
            if self.kind == "hnsw":  # only additions, in id order (HNSW numbers them itself)
                updated.add(vectors[np.argsort(ids)])
            elif self.kind != "flat":
                old = ids[ids < n]
                if old.size:
                    updated.remove_ids(faiss.IDSelectorBatch(old))
                updated.add_with_ids(vectors, ids)
            if self.on_gpu:
                self._cpu = updated
                self.index = faiss.index_cpu_to_gpu(self._gpu_res, 0, updated)
            else:
                self.index = updated
            self._apply_nprobe()
            self.catalogue_version = catalogue_version

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("ItemIndex holds FAISS (and maybe GPU) handles: load it inside the process that uses it")


def _flat_upserted(flat: Any, ids: np.ndarray, vectors: np.ndarray) -> Any:
    """A new exact index: ``flat``'s vectors with rows ``ids`` set (ids are row numbers)."""
    n = int(flat.ntotal)
    top = max(n, int(ids.max()) + 1)
    emb = np.zeros((top, flat.d), dtype=np.float32)
    emb[:n] = flat.reconstruct_n(0, n)
    emb[ids] = vectors
    return _exact(emb)


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
                queries: np.ndarray | None = None, target_recall: float = 0.97, seed: int = 0,
                catalogue_version: int = 0) -> ItemIndex:
    """Build an inner-product index over item embeddings (row i is item i).

    Args:
        kind: one of :data:`KINDS`, or ``auto`` (flat up to ``EXACT_MAX_ITEMS`` items, else IVF-Flat).
        queries: queries used to tune ``nprobe``/``efSearch`` (default: perturbed item embeddings).
        target_recall: recall@500 against exact search that the search parameter must reach.
        catalogue_version: the catalogue change ``emb`` embeds.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ITEMS else "ivf"
    if kind == "flat":
        return ItemIndex(_exact(emb), kind="flat", catalogue_version=catalogue_version)
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
    with task(f"FAISS index ({kind})", total=3) as bar:
        bar.describe(f"FAISS index ({kind}): training")
        raw = _trained(kind, emb, nlist or int(4 * np.sqrt(n)), seed)
        bar.advance()
        if queries is None:
            rng = np.random.default_rng(seed)
            queries = emb[rng.choice(n, min(256, n), replace=False)] + rng.normal(0, 0.05, (min(256, n), d))
            queries = queries.astype(np.float32)
        index = ItemIndex(raw, kind=kind, nprobe=1, catalogue_version=catalogue_version)
        if kind == "hnsw":  # efSearch: candidates kept while searching (at least k)
            steps = [512, 768, 1024, 1536, 2048]
        else:
            lists = int(faiss.extract_index_ivf(raw).nlist)
            steps = [p for p in nprobe_steps(lists) if p < lists] + [lists]
        for p in steps:
            bar.describe(f"FAISS index ({kind}): search parameter {p}")
            index.set_nprobe(p)
            if recall_at_k(index, emb, queries, TUNE_K) >= target_recall:
                break
        bar.advance(2)
    log.info("%s index: %d items, search parameter %d", kind, n, index.nprobe)
    return index


def nprobe_steps(lists: int) -> list[int]:
    """IVF lists to search, tried in turn until recall reaches its target: 4, 6, 8, 12, 16, 24, ...
    (each about 1.5x the last, so the one chosen costs at most ~1.5x the least that would do),
    up to ``lists``."""
    out, p = [], 4
    while p < lists:
        out += [p, p * 3 // 2]
        p *= 2
    return [q for q in out if q < lists]


def _trained(kind: str, emb: np.ndarray, nlist: int, seed: int) -> Any:
    """An untuned index of ``kind`` holding ``emb`` (ids are row numbers)."""
    d = emb.shape[1]
    raw: Any
    if kind == "hnsw":
        raw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        raw.hnsw.efConstruction = 80
        raw.add(emb)
        return raw
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf":
        raw = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:  # 8-bit codes of 2 dims each: 4x smaller than IVF-Flat
        raw = faiss.IndexIVFPQ(quantizer, d, nlist, d // 2, 8, faiss.METRIC_INNER_PRODUCT)
    raw.cp.seed = seed
    raw.train(emb)
    raw.add(emb)
    return raw


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
    faiss.write_index(index._cpu if index.on_gpu else index.index, str(path))
    Path(f"{path}.json").write_text(json.dumps({"kind": index.kind, "nprobe": index.nprobe,
                                                "catalogue_version": index.catalogue_version}))


def load_index(path: Path, *, use_gpu: bool | str = "auto") -> ItemIndex:
    """Load an index; move it to the GPU when ``use_gpu`` is ``on``/True, or ``auto`` and one is present."""
    side = Path(f"{path}.json")
    params: dict[str, Any] = json.loads(side.read_text()) if side.is_file() else {"kind": "flat", "nprobe": 1}
    index = ItemIndex(faiss.read_index(str(path)), kind=str(params["kind"]), nprobe=int(params["nprobe"]),
                      catalogue_version=int(params.get("catalogue_version", 0)))
    want = use_gpu in (True, "on") or (use_gpu == "auto" and gpu_available())
    if want:
        if not gpu_available():
            raise ConfigError("RANKSERVE_FAISS_GPU=on, but faiss has no GPU support or no GPU is visible")
        index = index.to_gpu()
        log.info("FAISS index on GPU")
    return index
