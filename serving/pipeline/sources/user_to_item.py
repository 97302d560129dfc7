"""The ``user_to_item`` source: the user's nearest items in the two-tower index.

Owns: its spec and finding its lists: one user-tower call and one index search for every
user-to-item draw of a batch; a draw ``within`` a scope searches that scope's items exactly
instead. When the user tower fails, the most popular items (of the scope) instead, flagged
degraded. Must not touch: filters, merging, other sources.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np

from serving.pipeline.sources.base import DEGRADE_ON, Batch, Draw, Listed, ScopedSpec

__all__ = ["UserToItem", "UserToItemSource"]

log = logging.getLogger(__name__)


class UserToItem(ScopedSpec):
    """The user's nearest items in the two-tower index (the user tower's embedding as the query),
    over the catalogue or within a scope (``within: request:store``: the store's items nearest the user)."""

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
            anywhere = [q for q, d in enumerate(draws) if d.spec.within == "all"]
            if anywhere:
                scores, ids = recall.search(emb[anywhere], n)
                for q, sc, found in zip(anywhere, scores, ids, strict=True):
                    draws[q].listed = Listed(sc, found, recall.label)
            for q, d in enumerate(draws):
                if d.spec.within != "all":
                    d.listed = batch.nearest_within(d.ask, d.spec.within, emb[q], n)
        except DEGRADE_ON as err:
            log.warning("user tower failed, recalling popular items for %d requests: %s", len(draws), err)
            for d in draws:
                p = batch.popular(d.ask, d.spec.within, n)
                d.listed = Listed(p.scores, p.ids, "popular", degraded=True)
