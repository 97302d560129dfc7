"""Exact inner-product item search with torch, on a GPU or the CPU: no FAISS.

Owns: the ``torch_exact`` item index (a :class:`serving.pipeline.recall.VectorIndex`): every
query scored against every item embedding, then ``torch.topk``. Must not touch: FAISS (this module
exists for machines without it), models, Triton, requests.

It is exact search, not an approximate index: recall@N against exact search is 1 by definition.
Used where FAISS is missing, e.g. the GPU check on a device image that has torch but no faiss
(``benchmarks.gpu.check``). Anything that reports on it says ``torch_exact``, never FAISS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["ITEM_EMBEDDINGS", "TorchExactIndex"]

# The item embeddings a user tower version carries (``item_emb.npy``), from which this index is built.
ITEM_EMBEDDINGS = "item_emb.npy"
# Largest score matrix (queries x items) one search step holds; larger batches go in query chunks.
_MAX_SCORES = 1 << 26


class TorchExactIndex:
    """Exact top-k by inner product over item embeddings held by torch on ``device``.

    Args:
        embeddings: float32 [N, E] item embeddings (row i is item id i).
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: embeddings that are not a non-empty 2-D array.
    """

    kind = "torch_exact"

    def __init__(self, embeddings: np.ndarray, *, device: str = "cpu") -> None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] < 1:
            raise ValueError(f"embeddings must be a non-empty [items, dim] array, got shape {emb.shape}")
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self._emb = torch.from_numpy(emb).to(self.device)
        self.catalogue_version = 0

    @classmethod
    def from_version_dir(cls, version_dir: Path, *, device: str = "cpu") -> TorchExactIndex:
        """The index of a user tower version, from its ``item_emb.npy``."""
        return cls(np.load(Path(version_dir) / ITEM_EMBEDDINGS), device=device)

    @property
    def n_items(self) -> int:
        return int(self._emb.shape[0])

    @property
    def max_k(self) -> int:
        return self.n_items

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, catalogue_version: int) -> None:
        """Set the vectors of items ``ids`` (row numbers; new ones follow on from ``n_items``)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self.n_items
        new = np.sort(ids[ids >= n])
        if new.size and not np.array_equal(new, np.arange(n, n + new.size)):
            raise ValueError(f"new item ids must follow on from {n}, got {new[:5].tolist()}")
        emb = torch.cat([self._emb, self._emb.new_zeros((new.size, self._emb.shape[1]))]) if new.size else self._emb.clone()
        emb[torch.from_numpy(ids).to(self.device)] = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(
            self.device)
        self._emb, self.catalogue_version = emb, catalogue_version  # one swap: a search sees old or new

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores float32 [Q, k'], ids int64 [Q, k']), k' = min(k, n_items), best first."""
        emb = self._emb  # the same matrix for the whole search, whatever upsert swaps in meanwhile
        k = max(1, min(int(k), emb.shape[0]))
        q = torch.from_numpy(np.array(queries, dtype=np.float32, order="C")).to(self.device)  # a copy: may be read-only
        step = max(1, _MAX_SCORES // emb.shape[0])
        scores, ids = [], []
        with torch.inference_mode():
            for start in range(0, q.shape[0], step):
                s, i = torch.topk(q[start:start + step] @ emb.T, k, dim=1)
                scores.append(s)
                ids.append(i)
            if not scores:
                return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
            out_s, out_i = torch.cat(scores).cpu().numpy(), torch.cat(ids).cpu().numpy()
        return out_s.astype(np.float32, copy=False), out_i.astype(np.int64, copy=False)
