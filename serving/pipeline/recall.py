"""Recall stage: user tower embedding (Triton), then top-N from the item index, with a popularity fallback.

Owns: finding candidates for users who gave none. Must not touch: files (the index comes loaded),
FAISS itself (any :class:`VectorIndex` will do), the ranking model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from serving.pipeline.features import TOWER_OUTPUT, FeatureTables
from serving.triton.caller import ModelCaller

__all__ = ["ItemEmbedder", "RecallStage", "VectorIndex"]


class VectorIndex(Protocol):
    """What recall needs of an item index (``serving.index.faiss_index.ItemIndex`` is one)."""

    kind: str
    on_gpu: bool
    catalogue_version: int

    @property
    def n_items(self) -> int: ...

    @property
    def max_k(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, catalogue_version: int) -> None: ...


# (tables, item rows) -> item embeddings float32 [rows, E], with the item tower of one version
ItemEmbedder = Callable[[FeatureTables, np.ndarray], np.ndarray]


class RecallStage:
    """Finds candidates for users who gave none.

    Args:
        tables: feature tables (the user tower's inputs come from them).
        index: the item index built from the item tower of the same user tower version.
        caller: Triton model caller.
        model: user tower model name in Triton; ``version``: its version, matching ``index``.
        embed_items: the item tower of that version, for items a catalogue change adds or updates.
        label: what answers recalled here say they came from (``recall``): ``faiss``, or the
            kind of another index (``torch_exact``).
    """

    def __init__(self, tables: FeatureTables, index: VectorIndex, caller: ModelCaller, model: str, version: int,
                 embed_items: ItemEmbedder | None = None, *, label: str = "faiss") -> None:
        self.tables = tables
        self.index = index
        self.label = label
        self.caller = caller
        self.model = model
        self.version = version
        self.embed_items = embed_items
        pop = tables.popularity
        self._popular = np.argsort(-pop, kind="stable").astype(np.int64)
        self._popular_scores = pop[self._popular].astype(np.float32)

    async def embed(self, user_rows: np.ndarray, *, deadline: float) -> np.ndarray:
        """User embeddings float32 [len(user_rows), E] from the user tower in Triton."""
        out = await self.caller.infer(self.model, self.version, self.tables.tower_inputs(user_rows), [TOWER_OUTPUT],
                                      deadline=deadline)
        return out[TOWER_OUTPUT]

    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items per query, at most the index's ``max_k``: (scores float32 [Q, n'], ids
        int64 [Q, n']); ids -1 pad. Excludes beyond that limit leave fewer candidates, never an error."""
        return self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), min(n, self.index.max_k))

    def apply(self, tables: FeatureTables, rows: np.ndarray, catalogue_version: int) -> None:
        """Put the items ``rows`` of ``tables`` (added or updated by catalogue changes up to
        ``catalogue_version``) into the index, embedded with this version's item tower."""
        if rows.size:
            if self.embed_items is None:
                raise RuntimeError(f"{self.model} v{self.version} has no item tower to embed changed items with")
            self.index.upsert(rows, self.embed_items(tables, rows), catalogue_version)
        else:
            self.index.catalogue_version = catalogue_version

    def warm(self) -> None:
        """Load and run the item tower once, so the first catalogue change does not wait for it."""
        if self.embed_items is not None:
            self.embed_items(self.tables, np.zeros(1, dtype=np.int64))

    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items (scores, ids): the recall of last resort."""
        return self._popular_scores[:n], self._popular[:n]
