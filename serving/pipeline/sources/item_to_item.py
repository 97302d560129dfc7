"""The ``item_to_item`` source: the seed item's nearest items.

Owns: its spec and finding its lists: one index search with the seeds' own embeddings for every
``space: embedding`` draw of a batch, one exact search of the content vectors for every
``space: content`` draw; a draw ``within`` a scope searches that scope's items exactly. When the
index's embeddings are unavailable, the popular items of the seed's category (or first item
group, or the scope) instead, flagged degraded. Must not touch: filters, merging, other sources.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from serving.pipeline.sources.base import DEGRADE_ON, Batch, Draw, Listed, ScopedSpec, Truth

__all__ = ["ItemToItem", "ItemToItemSource"]

log = logging.getLogger(__name__)


class ItemToItem(ScopedSpec):
    """The seed item's nearest items. ``embedding``: in the two-tower index, the seed's own item
    embedding as the query (trained for user-item affinity). ``content``: by inner product of the
    items' content vectors (``dense``), exact over the catalogue as it is now. ``within`` a scope:
    the nearest of that scope's items (exact)."""

    kind: Literal["item_to_item"]
    space: Literal["embedding", "content"] = Field(
        default="embedding", description="Which vectors 'nearest' is measured in: the two-tower item "
        "embeddings (the index) or the items' content vectors.")

    @property
    def key(self) -> tuple[str, ...]:
        return (self.kind, self.space, self.within)

    @property
    def needs(self) -> frozenset[str]:
        return super().needs | {"item_id"}

    def admits_everywhere(self, truth: Truth) -> np.ndarray:
        """The ``count`` items truly nearest the seed: truly similar items."""
        return truth.nearest_seed(self.count)


class ItemToItemSource:
    """Finds every item-to-item list of a batch: one search per space."""

    kind: ClassVar[str] = "item_to_item"
    spec: ClassVar[type[ItemToItem]] = ItemToItem

    async def draw(self, batch: Batch, draws: list[Draw[ItemToItem]]) -> None:
        seeded = [d for d in draws if d.ask.seed is not None]
        scoped = [d for d in seeded if d.spec.within != "all"]
        content = [d for d in seeded if d.spec.space == "content" and d.spec.within == "all"]
        if content:
            scores, ids = batch.cat.content_nearest(_seeds(content), batch.ask_for(max(d.spec.count for d in content)))
            _fill(content, scores, ids, "content")
        embedded = [d for d in seeded if d.spec.space == "embedding" and d.spec.within == "all"]
        recall = batch.recall
        try:
            if embedded:
                n = batch.ask_for(max(d.spec.count for d in embedded))
                scores, ids = recall.search(recall.vectors(_seeds(embedded)), n)
                _fill(embedded, scores, ids, recall.label)
            for d in scoped:
                n = batch.ask_for(d.spec.count)
                if d.spec.space == "content":
                    sc, found = batch.cat.content_nearest(_seeds([d]), n, batch.members(d.ask, d.spec.within))
                    d.listed = Listed(sc[0], found[0], "content")
                else:
                    d.listed = batch.nearest_within(d.ask, d.spec.within, recall.vectors(_seeds([d]))[0], n)
        except DEGRADE_ON as err:
            log.warning("item-to-item unavailable, recalling the seeds' categories' popular items: %s", err)
            groups = batch.cat.tables.schema.items.groups
            nearby = "seed:category" if "category" in groups else f"seed:{groups[0]}" if groups else "all"
            for d in embedded + [d for d in scoped if d.spec.space == "embedding"]:
                within = nearby if d.spec.within == "all" else d.spec.within
                p = batch.popular(d.ask, within, batch.ask_for(d.spec.count))
                d.listed = Listed(p.scores, p.ids, "popular", degraded=True)


def _seeds(draws: list[Draw[ItemToItem]]) -> np.ndarray:
    return np.asarray([d.ask.seed for d in draws], dtype=np.int64)


def _fill(draws: list[Draw[ItemToItem]], scores: np.ndarray, ids: np.ndarray, label: str) -> None:
    for d, sc, found in zip(draws, scores, ids, strict=True):
        d.listed = Listed(sc, found, label)
