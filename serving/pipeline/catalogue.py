"""The catalogue a batch is served with: feature tables, blocked items and the change version.

Owns: the :class:`Catalogue` value. A replica swaps it whole when a change arrives
(``serving.repository.catalogue`` folds changes into it), and each batch reads it once, so an
answer's items and its ``catalogue_version`` always come from one catalogue. Must not touch:
files, the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.pipeline.features import FeatureTables

__all__ = ["Catalogue"]


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
