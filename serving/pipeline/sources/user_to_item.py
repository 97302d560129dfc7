"""The ``user_to_item`` source: the user's nearest items in the two-tower index.

Owns: its spec and finding its lists: one user-tower call and one index search for every
user-to-item draw of a batch. When the user tower fails, the most popular items instead, flagged
degraded. Must not touch: filters, merging, other sources.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np

from serving.pipeline.sources.base import DEGRADE_ON, Batch, CountedSpec, Draw, Listed

__all__ = ["UserToItem", "UserToItemSource"]

log = logging.getLogger(__name__)


class UserToItem(CountedSpec):
    """The user's nearest items in the two-tower index (the user tower's embedding as the query)."""

    kind: Literal["user_to_item"]


class UserToItemSource:
    """Finds every user-to-item list of a batch with one user-tower call and one index search."""

    kind: ClassVar[str] = "user_to_item"
    spec: ClassVar[type[UserToItem]] = UserToItem

    async def draw(self, batch: Batch, draws: list[Draw[UserToItem]]) -> None:
        n = batch.ask_for(max(d.spec.count for d in draws))
        rows = np.asarray([d.ask.user_row for d in draws], dtype=np.int64)
        recall = batch.recall
        try:
            # one call serves them all: it may take until the latest deadline; each request's own
            # deadline is enforced where it waits (serving.service), not by the batch
            emb = await recall.embed(rows, deadline=max(d.ask.deadline for d in draws),
                                     contexts=[d.ask.context for d in draws])
            scores, ids = recall.search(emb, n)
        except DEGRADE_ON as err:
            log.warning("user tower failed, recalling popular items for %d requests: %s", len(draws), err)
            s1, i1 = batch.cat.popular(n)
            for d in draws:
                d.listed = Listed(s1, i1, "popular", degraded=True)
            return
        for d, sc, found in zip(draws, scores, ids, strict=True):
            d.listed = Listed(sc, found, recall.label)
