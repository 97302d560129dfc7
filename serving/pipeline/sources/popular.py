"""The ``popular`` source: the most popular items, overall or within a scope of the request.

Owns: its spec and finding its lists (from the catalogue's popularity orders). Must not touch:
filters, merging, other sources.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from serving.pipeline.sources.base import Batch, CountedSpec, Draw, Scope, Truth, scope_needs

__all__ = ["Popular", "PopularSource"]


class Popular(CountedSpec):
    """The most popular items, overall or within one value of an item group (a scope)."""

    kind: Literal["popular"]
    within: Literal["all"] | Scope = "all"

    @property
    def key(self) -> tuple[str, ...]:
        return (self.kind, self.within)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset() if self.within == "all" else frozenset({scope_needs(self.within)})

    def admits(self, truth: Truth) -> np.ndarray:
        """Any item overall; within a scope, that scope's items."""
        return truth.everything() if self.within == "all" else truth.within(self.within)


class PopularSource:
    """Finds every popular list of a batch, each from the catalogue's orders."""

    kind: ClassVar[str] = "popular"
    spec: ClassVar[type[Popular]] = Popular

    async def draw(self, batch: Batch, draws: list[Draw[Popular]]) -> None:
        for d in draws:
            d.listed = batch.popular(d.ask, d.spec.within, batch.ask_for(d.spec.count))
