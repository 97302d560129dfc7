"""Recall stage: user tower embedding (Triton) then FAISS top-N, with a popularity fallback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from serving.pipeline.features import FeatureTables
from serving.triton.caller import ModelCaller

if TYPE_CHECKING:
    from serving.index.faiss_index import ItemIndex

__all__ = ["RecallStage"]


class RecallStage:
    """Finds candidates for users who gave none.

    Args:
        tables: feature tables (the user tower's inputs come from them).
        index: the FAISS index built from the item tower of the same user tower version.
        caller: Triton model caller.
        model: user tower model name in Triton; ``version``: its version, matching ``index``.
    """

    def __init__(self, tables: FeatureTables, index: ItemIndex, caller: ModelCaller, model: str, version: int) -> None:
        self.tables = tables
        self.index = index
        self.caller = caller
        self.model = model
        self.version = version
        pop = tables.item_num[:, 2]
        self._popular = np.argsort(-pop, kind="stable").astype(np.int64)
        self._popular_scores = pop[self._popular].astype(np.float32)

    async def embed(self, user_rows: np.ndarray, *, deadline: float) -> np.ndarray:
        """User embeddings float32 [len(user_rows), E] from the user tower in Triton."""
        out = await self.caller.infer(
            self.model,
            self.version,
            {"user_cat": self.tables.user_cat[user_rows], "user_dense": self.tables.user_dense[user_rows]},
            ["embedding"],
            deadline=deadline,
        )
        return out["embedding"]

    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items per query: (scores float32 [Q, n'], ids int64 [Q, n']); ids -1 pad."""
        return self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), n)

    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items (scores, ids): the recall of last resort."""
        return self._popular_scores[:n], self._popular[:n]
