"""The ``popular`` source: the most popular items, overall or within a scope of the request.

Owns: its spec and finding its lists (from the catalogue's popularity orders). Must not touch:
filters, merging, other sources.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from serving.pipeline.sources.base import Batch, Draw, ScopedSpec

__all__ = ["Popular", "PopularSource"]


class Popular(ScopedSpec):
    """The most popular items, overall or within one value of an item group (a scope)."""

    kind: Literal["popular"]


class PopularSource:
    """Finds every popular list of a batch, each from the catalogue's orders."""

    kind: ClassVar[str] = "popular"
    spec: ClassVar[type[Popular]] = Popular

    async def draw(self, batch: Batch, draws: list[Draw[Popular]]) -> None:
        for d in draws:
            d.listed = batch.popular(d.ask, d.spec.within, batch.ask_for(d.spec.count))
