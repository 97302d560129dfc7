"""Joined impressions as a data set's own impressions: what ``rankserve log join NAME`` adds.

Owns: the mapping of joined rows (``serving.feedback.join``) onto the stored impressions' columns
(``user_row`` and ``item_row`` found among the data set's ids, ``label`` from one event type, the
served time in the stored time's type, each context column absent: null), the rows left out (an
item or user the data set does not know, such as a catalogue item added after the import), and
the call that writes them as a new version (:func:`add_joined`). Must not touch: how a version is
written (``serving.data.store``), the join.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.data.impressions import lenient_ids
from serving.data.store import DataSet
from serving.data.tables import DataTables
from serving.errors import SchemaError, SetupError

__all__ = ["Added", "add_joined", "as_impressions"]


@dataclass(frozen=True)
class Added:
    """What a join added to a data set."""

    data_set: str
    version: int
    base_version: int
    rows: int
    unknown_users: int
    unknown_items: int

    def line(self) -> str:
        left = (f"; left out {self.unknown_items:,} naming an item and {self.unknown_users:,} a user the data set "
                "does not know" if self.unknown_items or self.unknown_users else "")
        return (f"data set {self.data_set!r}: version {self.version} written (version {self.base_version} plus "
                f"{self.rows:,} joined impressions{left}); it is live")


def _id_rows(ids: np.ndarray, values: pa.Array) -> pa.Array:
    """Rows of ``values`` among ``ids`` (int64 or text ids), null where unknown."""
    known = pa.array(ids, pa.int64()) if ids.dtype.kind in "iu" else pa.array(ids.tolist(), pa.string())
    return pc.index_in(lenient_ids(values, known.type), value_set=known)


def _times(served: pa.ChunkedArray, like: pa.DataType) -> pa.Array:
    """The served times in the stored time's type: a timestamp or date as such, a number as epoch seconds."""
    ts = served.combine_chunks()
    if pa.types.is_timestamp(like) or pa.types.is_date(like):
        return ts.cast(like)  # a timestamp without a zone takes the UTC time
    seconds = pc.divide(ts.cast(pa.int64()).cast(pa.float64()), 1000.0)
    return seconds.cast(like) if pa.types.is_floating(like) else pc.floor(seconds).cast(like)


def as_impressions(joined: pa.Table, tables: DataTables, like: pa.Schema, *,
                   event: str = "click") -> tuple[pa.Table, int, int]:
    """``joined`` as rows of the stored impressions ``like``; with the rows left out for an unknown user and item."""
    users = _id_rows(tables.user_ids, joined.column("user_id").combine_chunks())
    items = _id_rows(tables.item_ids, joined.column("item_id").combine_chunks())
    user_known, item_known = pc.is_valid(users), pc.is_valid(items)
    keep = pc.and_(user_known, item_known)
    columns: dict[str, Any] = {}
    for f in like:
        if f.name == "user_row":
            columns[f.name] = users.cast(f.type)
        elif f.name == "item_row":
            columns[f.name] = items.cast(f.type)
        elif f.name == "label":
            columns[f.name] = joined.column(event).cast(f.type)
        elif f.name == "time":
            columns[f.name] = _times(joined.column("time"), f.type)
        else:  # a context field: the served context is not encoded here, so it is absent (0)
            columns[f.name] = pa.nulls(joined.num_rows, f.type)
    out = pa.table(columns, schema=like).filter(keep)
    unknown_users = joined.num_rows - int(pc.sum(user_known.cast(pa.int64())).as_py() or 0)
    unknown_items = joined.num_rows - int(pc.sum(item_known.cast(pa.int64())).as_py() or 0)
    return out, unknown_users, unknown_items


def add_joined(ds: DataSet, joined: pa.Table, source: dict[str, Any], *, event: str = "click") -> Added:
    """Add ``joined`` to the data set ``ds`` as a new live version (the live one's impressions plus these).

    Raises:
        SchemaError: nothing to add (no joined row, or none naming a known user and item): nothing written.
        SetupError: no live version, or it could not be written.
    """
    base = ds.live_version()
    if base is None:
        raise SetupError(f"data set {ds.name!r} has no version to add the joined impressions to",
                         hint=f"import it first (rankserve data import {ds.name} ...), or write them with --out")
    rows, unknown_users, unknown_items = as_impressions(joined, ds.tables(base), ds.impressions(base).schema,
                                                        event=event)
    if rows.num_rows == 0:
        why = "the join made no impression" if joined.num_rows == 0 else (
            f"all {joined.num_rows:,} joined impressions name an item ({unknown_items:,}) or a user "
            f"({unknown_users:,}) the data set does not know")
        raise SchemaError(f"data set {ds.name!r}: nothing to add: {why}; nothing written",
                          hint="serve more requests, or widen --since/--until")
    version = ds.append_impressions(rows, {**source, "unknown_users": unknown_users, "unknown_items": unknown_items},
                                    base=base)
    return Added(ds.name, version, base, rows.num_rows, unknown_users, unknown_items)
