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

__all__ = ["GROUP_FIELDS", "Catalogue", "Room", "grown"]

GROUP_FIELDS = ("shop", "category")  # item fields a scenario groups by (popular within, restrict, diversity)
SPARE = 0.25  # rows a table's buffer keeps free for items added later, as a share of its rows


class Room:
    """A table's buffer with spare rows at the end: rows ``[:used]`` are the newest catalogue's
    table (a read-only view of ``buf``), the rest are free for the next change to append into.
    Older catalogues' views end before ``used`` and never see a write."""

    __slots__ = ("buf", "used")

    def __init__(self, buf: np.ndarray, used: int) -> None:
        self.buf, self.used = buf, used

    def holds(self, table: np.ndarray) -> bool:
        """Whether ``table`` is this buffer's newest view (so rows after it are free)."""
        return (self.used == table.shape[0] and
                self.buf.__array_interface__["data"][0] == table.__array_interface__["data"][0])


def grown(table: np.ndarray, room: Room | None, rows: np.ndarray,
          updates: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, Room]:
    """``table`` with ``updates`` (row -> new row) applied and ``rows`` appended, as a read-only view
    of a buffer with spare rows, and that buffer's :class:`Room`.

    Appending costs the new rows only while ``room`` holds ``table`` and has space: the rows go
    into its free part, which no existing view covers. Otherwise, and whenever rows are updated
    (copy on write: no reader's view, nor a GPU copy of one, may change), the table is copied into
    a new buffer with ``SPARE`` more rows. At 1M items, an add went from 150-800 ms (a copy of
    every item table) to well under a millisecond.
    """
    n, k = table.shape[0], rows.shape[0]
    if updates or room is None or not room.holds(table) or room.buf.shape[0] < n + k:
        buf = np.empty((int((n + k) * (1 + SPARE)) + 16, *table.shape[1:]), dtype=table.dtype)
        buf[:n] = table
        room = Room(buf, n)
        for i, row in (updates or {}).items():
            buf[i] = row
    room.buf[n:n + k] = rows
    room.used = n + k
    view = room.buf[:n + k]
    view.setflags(write=False)
    return view, room


@dataclass(frozen=True)
class Catalogue:
    """``tables`` with ``blocked`` (bool per item: never returned) at change ``version`` (0: none)."""

    tables: FeatureTables
    blocked: np.ndarray
    version: int = 0
    rooms: dict[str, Room] = field(default_factory=dict, compare=False, repr=False)  # item tables' buffers
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
