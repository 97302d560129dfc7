"""The catalogue a batch is served with: feature tables, blocked items and the change version.

Owns: the :class:`Catalogue` value, and what it answers about its items: which may be returned,
the most popular ones overall or within a shop or category, and how many shops and categories
there are. A replica swaps it whole when a change arrives (``serving.repository.catalogue`` folds
changes into it), and each batch reads it once, so an answer's items and its
``catalogue_version`` always come from one catalogue. Must not touch: files, the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from serving.pipeline.features import ITEM_CAT_FIELDS, FeatureTables

__all__ = ["GROUP_FIELDS", "Catalogue"]

GROUP_FIELDS = ("shop", "category")  # item fields a scenario groups by (popular within, restrict, diversity)


@dataclass(frozen=True)
class Catalogue:
    """``tables`` with ``blocked`` (bool per item: never returned) at change ``version`` (0: none)."""

    tables: FeatureTables
    blocked: np.ndarray
    version: int = 0
    n_blocked: int = field(init=False)

    @classmethod
    def initial(cls, tables: FeatureTables) -> Catalogue:
        blocked = np.zeros(tables.n_items, dtype=bool)
        blocked.setflags(write=False)
        return cls(tables, blocked, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_blocked", int(self.blocked.sum()))

    def servable(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ``ids`` that may be returned: in this catalogue and not blocked (the item index
        may already hold items of a later change)."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < self.tables.n_items)
        ok[ok] = ~self.blocked[ids[ok]]
        return ok

    def group_of(self, ids: np.ndarray, group: str) -> np.ndarray:
        """The ``group`` (``shop`` or ``category``) id of each item of ``ids`` (all in this catalogue)."""
        return self.tables.item_cat[np.asarray(ids, dtype=np.int64), ITEM_CAT_FIELDS.index(group)]

    def group_counts(self) -> dict[str, int]:
        """How many distinct shops and categories the catalogue's items have."""
        return {g: int(self._grouped[g][1].size) for g in GROUP_FIELDS}

    def popular(self, n: int, group: str | None = None, value: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items (scores: log popularity, ids), overall or of the shop or
        category ``value`` (``group``); blocked items included (filters drop them)."""
        pop = self.tables.popularity
        if group is None:
            ids = self._by_popularity[:n]
        else:
            order, values, starts = self._grouped[group]
            j = int(np.searchsorted(values, value))
            ids = order[starts[j]: starts[j + 1]][:n] if j < values.size and values[j] == value else order[:0]
        return pop[ids].astype(np.float32), ids

    def has_group(self, group: str, value: int) -> bool:
        """Some item of the catalogue is of that shop or category."""
        values = self._grouped[group][1]
        j = int(np.searchsorted(values, value))
        return j < values.size and int(values[j]) == value

    def warm(self) -> Catalogue:
        """Compute the popularity orders now (a replica does it before swapping the catalogue in,
        not on the first request that asks); returns ``self``."""
        _ = self._grouped
        return self

    @cached_property
    def _by_popularity(self) -> np.ndarray:
        return np.argsort(-self.tables.popularity, kind="stable").astype(np.int64)

    @cached_property
    def _grouped(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per group field: items by (group id, popularity), the distinct group ids, where each starts."""
        out = {}
        for g in GROUP_FIELDS:
            keys = self.tables.item_cat[self._by_popularity, ITEM_CAT_FIELDS.index(g)]
            by = np.argsort(keys, kind="stable")
            values, starts = np.unique(keys[by], return_index=True)
            out[g] = (self._by_popularity[by], values, np.append(starts, keys.size).astype(np.int64))
        return out
