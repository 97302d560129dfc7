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

from serving.data.tables import DataTables
from serving.errors import BackendUnavailableError

__all__ = ["GROUP_FIELDS", "Catalogue", "Room", "grown"]

GROUP_FIELDS = ("shop", "category")  # the demo's item groups (popular within, restrict, diversity)

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
        return self.used == table.shape[0] and _same_start(self.buf, table)


def _same_start(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` begin at the same address (views of one buffer from its first row)."""
    return bool(a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


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

    tables: DataTables
    blocked: np.ndarray
    version: int = 0
    rooms: dict[str, Room] = field(default_factory=dict, compare=False, repr=False)  # item tables' buffers
    n_blocked: int = field(init=False)

    @classmethod
    def initial(cls, tables: DataTables) -> Catalogue:
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
        """The ``group`` (one of the schema's item groups: the demo's ``shop`` or ``category``) code of
        each item of ``ids`` (all in this catalogue)."""
        return self.tables.item_groups[np.asarray(ids, dtype=np.int64), self.tables.group_col(group)]

    def group_counts(self) -> dict[str, int]:
        """How many distinct values each item group (the demo's shops and categories) has."""
        return {g: int(grouped.values.size) for g, grouped in self._orders.grouped.items()}

    def popular(self, n: int, group: str | None = None, value: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items (scores: log popularity, ids), overall or of the shop or
        category ``value`` (``group``); ties by id; blocked items included (filters drop them)."""
        pop = self.tables.popularity
        if group is None:
            ids = self._orders.by_pop[:n]
        else:
            ids = self._orders.grouped[group].members(value)[:n]
        return pop[ids].astype(np.float32), ids

    def content_nearest(self, seeds: np.ndarray, n: int,
                        among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each seed item, the ``n`` items (of ``among``, else of all) whose content vectors (the
        schema's first item vector) have the largest inner product with the seed's, best first:
        ``(scores, ids)``, each ``[len(seeds), n]``. Exact, over this catalogue (items a change
        added or updated count at once); blocked items and the seed itself are included (filters
        drop them). ~0.3 ms a seed at 50k items, ~6 ms at 1M, on one core."""
        from serving.index.faiss_index import exact_nearest  # FAISS only where a search runs

        first = next(iter(self.tables.schema.items.vectors), None)
        if first is None:
            raise BackendUnavailableError("the items have no vector: item-to-item by content is unavailable; "
                                          "use space: embedding")
        dense = self.tables.item_vec[:, self.tables.item_vec_slice(first)]
        queries = dense[np.asarray(seeds, dtype=np.int64)]
        if among is None:
            return exact_nearest(queries, dense, n)
        if among.size == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        scores, pos = exact_nearest(queries, dense[among], n)
        return scores, among[pos]

    def members(self, group: str, value: int) -> np.ndarray:
        """The item ids of the value ``value`` of the item group ``group``, most popular first."""
        return self._orders.grouped[group].members(value)

    def has_group(self, group: str, value: int) -> bool:
        """Some item of the catalogue is of that shop or category."""
        return self._orders.grouped[group].members(value).size > 0

    def warm(self, previous: Catalogue | None = None) -> Catalogue:
        """Compute the popularity orders now (a replica does it before swapping the catalogue in,
        not on the first request that asks); returns ``self``. With ``previous`` (the catalogue
        this one follows, its orders computed) only the items a change added, or whose popularity,
        shop or category it changed, are taken out and put in their new places: at 1M items that is
        milliseconds, where sorting every item again takes ~0.35 s on the change's way to the
        answers. The orders are the same either way."""
        if previous is not None and "_orders" in previous.__dict__:
            carried = _carry_orders(previous.__dict__["_orders"], previous.tables, self.tables)
            if carried is not None:
                self.__dict__["_orders"] = carried
        _ = self._orders
        return self

    @cached_property
    def _orders(self) -> _Orders:
        return _sorted_orders(self.tables)


# -- popularity orders ---------------------------------------------------------------------------
# An item's place is its popularity, highest first, ties by id: one uint64 key (the float32's
# order-preserving bits above the id), so a change's items go into a sorted array by binary search.

_MAX_MOVED = 1024  # items a change may move before the orders are sorted again whole


@dataclass(frozen=True)
class _Grouped:
    """Items of one group field by (group id, popularity key): ``order``, their ``keys``, the
    distinct group ids ``values`` and where each one's items start (``starts``, one more at the end)."""

    order: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    starts: np.ndarray

    def span(self, value: int) -> tuple[int, int]:
        j = int(np.searchsorted(self.values, value))
        if j < self.values.size and int(self.values[j]) == value:
            return int(self.starts[j]), int(self.starts[j + 1])
        return 0, 0

    def members(self, value: int) -> np.ndarray:
        lo, hi = self.span(value)
        return self.order[lo:hi]


@dataclass(frozen=True)
class _Orders:
    by_pop: np.ndarray  # item ids, most popular first
    keys: np.ndarray  # their keys, ascending
    grouped: dict[str, _Grouped]


def _pop_key(pop: np.ndarray, ids: np.ndarray) -> np.ndarray:
    x = -np.asarray(pop, dtype=np.float32) + np.float32(0.0)  # -0.0 -> 0.0: equal values, equal keys
    bits = x.view(np.uint32)
    bits = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    return (bits << np.uint64(32)) | np.asarray(ids, dtype=np.uint64)


def _sorted_orders(tables: DataTables) -> _Orders:
    n = tables.n_items
    if n >= 2**32:
        raise ValueError(f"{n} items: item ids must fit 32 bits")
    item_keys = _pop_key(tables.popularity, np.arange(n))
    by_pop = np.argsort(item_keys).astype(np.int64)
    grouped = {}
    for g in tables.schema.items.groups:
        col = tables.item_groups[:, tables.group_col(g)]
        order = by_pop[np.argsort(col[by_pop], kind="stable")]
        keys = col[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.empty(0, np.int64)
        grouped[g] = _Grouped(order, item_keys[order], keys[starts], np.append(starts, n).astype(np.int64))
    return _Orders(by_pop, item_keys[by_pop], grouped)


def _carry_orders(prev: _Orders, before: DataTables, tables: DataTables) -> _Orders | None:
    """``prev`` (the orders of ``before``) for ``tables``, the items that changed taken out and put
    in their new places; None when too many changed and sorting again is as cheap."""
    if tables is before:
        return prev
    n0, n = before.n_items, tables.n_items
    if n < n0 or n >= 2**32 or n - n0 > _MAX_MOVED:
        return None
    pop0, pop = before.popularity, tables.popularity
    cols = {g: tables.group_col(g) for g in tables.schema.items.groups}
    if all(_extends(getattr(tables, n), getattr(before, n)) for n in ("item_num", "item_groups", "popularity")):
        gone = np.empty(0, dtype=np.int64)  # items only added, into spare rows (``grown``): the rest as it was
    else:
        differs = pop[:n0] != pop0
        for c in cols.values():
            differs |= tables.item_groups[:n0, c] != before.item_groups[:, c]
        gone = np.flatnonzero(differs)
    moved = np.concatenate([gone, np.arange(n0, n)]).astype(np.int64)
    if moved.size > _MAX_MOVED:
        return None
    if moved.size == 0:
        return prev
    old_keys, new_keys = _pop_key(pop0[gone], gone), _pop_key(pop[moved], moved)
    drop = np.searchsorted(prev.keys, old_keys)  # keys are unique: exact places
    by_pop, keys = np.delete(prev.by_pop, drop), np.delete(prev.keys, drop)
    s = np.argsort(new_keys)
    at = np.searchsorted(keys, new_keys[s])
    grouped = {g: _carry_group(prev.grouped[g], before.item_groups[gone, c], old_keys,
                               tables.item_groups[moved, c], new_keys, moved)
               for g, c in cols.items()}
    return _Orders(np.insert(by_pop, at, moved[s]), np.insert(keys, at, new_keys[s]), grouped)


def _extends(table: np.ndarray, before: np.ndarray) -> bool:
    """``table`` starts with ``before``'s rows in the same memory (a buffer ``grown`` appended to;
    rows a view covers are never written again)."""
    return table.strides == before.strides and table.shape[1:] == before.shape[1:] and _same_start(table, before)


def _carry_group(prev: _Grouped, old_groups: np.ndarray, old_keys: np.ndarray, new_groups: np.ndarray,
                 new_keys: np.ndarray, moved: np.ndarray) -> _Grouped:
    """One group field's order with the moved items taken out (at their old group and key) and put
    in (at their new ones); groups left empty are dropped, new ones added."""
    drop = np.asarray([lo + int(np.searchsorted(prev.keys[lo:hi], k))
                       for (lo, hi), k in zip((prev.span(int(g)) for g in old_groups), old_keys, strict=True)],
                      dtype=np.int64)
    order, keys = np.delete(prev.order, drop), np.delete(prev.keys, drop)
    values = np.union1d(prev.values, new_groups)
    counts = np.zeros(values.size, dtype=np.int64)
    counts[np.searchsorted(values, prev.values)] = np.diff(prev.starts)
    np.subtract.at(counts, np.searchsorted(values, old_groups), 1)
    starts = np.r_[0, np.cumsum(counts)]
    j = np.searchsorted(values, new_groups)
    at = np.asarray([starts[a] + int(np.searchsorted(keys[starts[a]:starts[a + 1]], k))
                     for a, k in zip(j, new_keys, strict=True)], dtype=np.int64)
    s = np.lexsort((new_keys, new_groups, at))  # one gap may take several: by group, then key
    order, keys = np.insert(order, at[s], moved[s]), np.insert(keys, at[s], new_keys[s])
    np.add.at(counts, j, 1)
    keep = counts > 0
    return _Grouped(order, keys, values[keep], np.r_[0, np.cumsum(counts[keep])].astype(np.int64))
