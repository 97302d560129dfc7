"""The ``item_to_item`` source: the seed item's nearest items.

Owns: its spec and finding its lists: one index search with the seeds' own embeddings for every
``space: embedding`` draw of a batch, one exact search of the content vectors for every
``space: content`` draw. When the index's embeddings are unavailable, the seed's category's
popular items instead, flagged degraded. Must not touch: filters, merging, other sources.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from serving.pipeline.sources.base import DEGRADE_ON, Batch, CountedSpec, Draw, Listed, Truth

__all__ = ["ItemToItem", "ItemToItemSource"]

log = logging.getLogger(__name__)


class ItemToItem(CountedSpec):
    """The seed item's nearest items. ``embedding``: in the two-tower index, the seed's own item
    embedding as the query (trained for user-item affinity). ``content``: by inner product of the
    items' content vectors (``dense``), exact over the catalogue as it is now."""

    kind: Literal["item_to_item"]
    space: Literal["embedding", "content"] = Field(
        default="embedding", description="Which vectors 'nearest' is measured in: the two-tower item "
        "embeddings (the index) or the items' content vectors.")

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"item_id"})

    def admits(self, truth: Truth) -> np.ndarray:
        """The ``count`` items truly nearest the seed: truly similar items."""
        return truth.nearest_seed(self.count)


class ItemToItemSource:
    """Finds every item-to-item list of a batch: one search per space."""

    kind: ClassVar[str] = "item_to_item"
    spec: ClassVar[type[ItemToItem]] = ItemToItem

    async def draw(self, batch: Batch, draws: list[Draw[ItemToItem]]) -> None:
        seeded = [d for d in draws if d.ask.seed is not None]
        content = [d for d in seeded if d.spec.space == "content"]
        if content:
            scores, ids = batch.cat.content_nearest(_seeds(content), batch.ask_for(max(d.spec.count for d in content)))
            _fill(content, scores, ids, "content")
        embedded = [d for d in seeded if d.spec.space == "embedding"]
        if not embedded:
            return
        n = batch.ask_for(max(d.spec.count for d in embedded))
        recall = batch.recall
        try:
            scores, ids = recall.search(recall.vectors(_seeds(embedded)), n)
        except DEGRADE_ON as err:
            log.warning("item-to-item unavailable, recalling the seeds' categories' popular items: %s", err)
            for d in embedded:
                p = batch.popular(d.ask, "seed_category", n)
                d.listed = Listed(p.scores, p.ids, "popular", degraded=True)
            return
        _fill(embedded, scores, ids, recall.label)


def _seeds(draws: list[Draw[ItemToItem]]) -> np.ndarray:
    return np.asarray([d.ask.seed for d in draws], dtype=np.int64)


def _fill(draws: list[Draw[ItemToItem]], scores: np.ndarray, ids: np.ndarray, label: str) -> None:
    for d, sc, found in zip(draws, scores, ids, strict=True):
        d.listed = Listed(sc, found, label)
