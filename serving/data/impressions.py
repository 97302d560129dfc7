"""Encoding the impressions (the training log) against the encoded items and users.

Owns: which columns of the impressions file are read (user, item, label, the time when declared,
and the context fields: each under ``impressions.context``'s column or, when the file has one, a
column of its own name), their checks and encoding: users and items matched to rows (an integer
names the string id it prints as; text where the table's ids are integers is refused; an unknown
id is counted and its row dropped), the label (0/1), the time (timestamps, dates or numbers, never
null), categorical context (its own vocabulary, from the impressions), numeric context (filled
with the median, standardised), the item groups (the items' vocabulary) and sequences (item rows,
unknown ids dropped, the last ``max_len`` kept; a sequence the file has no column of: the items
each impression's user clicked before it). Vectorised like ``serving.data.encode``, whose error
form it shares. Must not touch: files, the items and users tables (it reads their encoding only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.data.encode import (
    Column,
    EncodedEntity,
    Fill,
    bool_mask,
    encode_categorical,
    encode_numeric,
    first_row,
    first_value_row,
    id_array,
    lookup_codes,
    scalar_values,
)
from serving.data.schema import Schema
from serving.errors import SchemaError

__all__ = ["EncodedImpressions", "encode_impressions", "encode_sequence", "impression_columns", "lenient_ids"]


@dataclass(frozen=True)
class EncodedImpressions:
    """The impressions as stored: ``user_row``, ``item_row`` (int32), ``label`` (int8), ``time`` when
    declared, and ``context.<field>`` per context field the file holds; rows naming an unknown user
    or item dropped."""

    table: pa.Table
    rows_read: int
    unknown_users: int  # rows whose user is not in the users table (or null)
    unknown_items: int
    encoding: dict[str, Any]  # the context's vocabularies and numeric stats, the counts
    fills: tuple[Fill, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def rows_kept(self) -> int:
        return self.table.num_rows


def _context_columns(schema: Schema) -> dict[str, tuple[str, bool]]:
    """Context field -> (its column in the impressions, whether the schema names it explicitly)."""
    named = schema.impressions.context
    return {f: (named.get(f, f), f in named) for f in schema.context_fields}


def impression_columns(schema: Schema) -> tuple[list[str], list[str]]:
    """The impressions' columns: those the file must hold, and those it may (context of a field's own name)."""
    imp = schema.impressions
    required = [imp.user, imp.item, imp.label, *([imp.time] if imp.time else [])]
    columns = _context_columns(schema)
    required += [c for c, explicit in columns.values() if explicit]
    optional = [c for c, explicit in columns.values() if not explicit]
    return list(dict.fromkeys(required)), [c for c in dict.fromkeys(optional) if c not in required]


def _rows(column: pa.ChunkedArray, where: Column, table: EncodedEntity, table_where: str) -> pa.Array:
    """Rows of ``table`` the ids of ``column`` name (null: unknown, or a null id).

    Raises:
        SchemaError: the column's ids are of another type than the table's.
    """
    ids = id_array(column, where)
    if pa.types.is_integer(ids.type) and pa.types.is_string(table.id_values.type):
        ids = ids.cast(pa.string())  # 123 names the id "123"
    if ids.type != table.id_values.type and not pa.types.is_null(column.type):
        kinds = {True: "integers", False: "strings"}
        raise where.error(f"holds {kinds[pa.types.is_integer(ids.type)]}, while the ids of {table_where} are "
                          f"{kinds[pa.types.is_integer(table.id_values.type)]}", first_value_row(ids))
    if pa.types.is_null(column.type):
        return pa.nulls(len(ids), pa.int32())
    return pc.index_in(ids, value_set=table.id_values)


def _required(column: pa.ChunkedArray, where: Column, accepts: Callable[[pa.DataType], bool], what: str) -> pa.Array:
    """A column every impression needs a value in, of a type ``accepts`` takes (``what``: what it holds).

    Raises:
        SchemaError: another type, or a null (at its first row).
    """
    arr = column.combine_chunks()
    if not accepts(arr.type):
        raise where.wrong_type(arr, what)
    if arr.null_count:
        raise where.error(f"a null: {what}", first_row(pc.is_null(arr)))
    return arr


_LABEL_TEXT = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def _labels(column: pa.ChunkedArray, where: Column) -> np.ndarray:
    """0/1 labels of integers, numbers, booleans or text (``0``, ``1``, ``true``, ``false``, any case:
    a CSV column that mixes them is read as text).

    Raises:
        SchemaError: another type, a null, or a value other than 0 and 1 (at its first row).
    """
    arr = _required(column, where, lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)
                    or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
                    "a label is 0 or 1")
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        x = np.fromiter((_LABEL_TEXT.get(v.strip().lower(), np.nan) for v in arr.to_pylist()), np.float64, len(arr))
    else:
        x = arr.cast(pa.float64()).to_numpy()
    bad = np.flatnonzero((x != 0) & (x != 1))
    if bad.size:
        row = int(bad[0])
        raise where.error(f"the label is {arr[row].as_py()!r}: a label is 0 or 1", row)
    return x.astype(np.int8)


_TIME_KINDS = (pa.timestamp("us", tz="UTC"), pa.timestamp("us"))  # ISO 8601 text with a zone offset, or without


def _times(column: pa.ChunkedArray, where: Column) -> pa.Array:
    """Times as timestamps, dates or numbers; ISO 8601 text (a Parquet column of strings) as
    timestamps, UTC where it gives a zone offset.

    Raises:
        SchemaError: another type, a null, or text that is not a time (at its first row).
    """
    arr = _required(column, where, lambda t: pa.types.is_temporal(t) or pa.types.is_integer(t)
                    or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
                    "a time is a timestamp, a date, a number or ISO 8601 text")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return arr
    for kind in _TIME_KINDS:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return arr.cast(kind)
    for row, value in enumerate(arr.to_pylist()):
        if not any(_reads_as(value, kind) for kind in _TIME_KINDS):
            raise where.error(f"{value!r} is not a time (ISO 8601: 2026-11-01T10:00:00Z, 2026-11-01 10:00:00)", row)
    raise where.error("mixes times with a zone offset and times without one", 0)


def _reads_as(value: str, kind: pa.DataType) -> bool:
    try:
        pa.array([value]).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def lenient_ids(values: pa.Array, like: pa.DataType) -> pa.Array:
    """``values`` as ids of type ``like`` (int64 or string); a value that cannot be one becomes null."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(like):
        ok = (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
              or pa.types.is_integer(values.type))
        return values.cast(pa.string()) if ok else pa.nulls(len(values), pa.string())
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        whole = pc.match_substring_regex(values, r"^\s*[-+]?\d{1,18}\s*$")
        return pc.if_else(whole, pc.utf8_trim_whitespace(values), None).cast(pa.int64())
    if pa.types.is_floating(values.type):
        whole = pc.and_(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), 2.0 ** 62))
        return pc.if_else(whole, values, None).cast(pa.int64())
    return pa.nulls(len(values), pa.int64())


def encode_sequence(column: pa.ChunkedArray | pa.Array, items: EncodedEntity, max_len: int,
                    where: Column) -> tuple[pa.Array, int]:
    """A column of item-id lists (or, in CSV, text of ids split by commas, semicolons or spaces) as
    lists of item rows (int32): unknown ids dropped, the last ``max_len`` kept; with the count of
    ids dropped as unknown. A null list is an empty one.

    Raises:
        SchemaError: the column holds neither lists nor text.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        stripped = pc.replace_substring_regex(arr, r"^[\s\[]+|[\s\]]+$", "")
        arr = pc.if_else(pc.equal(stripped, ""), None, pc.split_pattern_regex(stripped, r"[,;\s]+"))
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)):
        raise where.wrong_type(arr, "a sequence is a list of item ids (in CSV: text of ids)")
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy()
    rows = pc.index_in(lenient_ids(flat, items.id_values.type), value_set=items.id_values)
    known = bool_mask(pc.is_valid(rows))
    kept_rows = rows.filter(pa.array(known)).to_numpy().astype(np.int32)
    kept_parents = parents[known]
    lengths = np.bincount(kept_parents, minlength=len(arr))
    ends = np.cumsum(lengths)
    from_end = ends[kept_parents] - 1 - np.arange(len(kept_rows))
    latest = from_end < max_len
    offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, max_len))]).astype(np.int32)
    out = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(kept_rows[latest], pa.int32()))
    return out, int(len(flat) - known.sum())


class _Clicks:
    """The impressions' clicks, in time order per user: what a request's sequence of recently
    viewed items stands for when the impressions hold no column of it."""

    def __init__(self, user_rows: pa.Array, item_rows: pa.Array, labels: pa.Array, time: pa.Array | None,
                 time_column: str | None) -> None:
        self.user_rows, self.item_rows, self.labels, self.time = user_rows, item_rows, labels, time
        self.order = f"by {time_column!r}" if time_column else "in the file's order, as no time is declared"

    def before(self, max_len: int) -> tuple[pa.ListArray, int]:
        """Per impression, the rows of the last ``max_len`` items its user clicked strictly before
        it (an earlier time; without a time, an earlier row), oldest first; with the number of
        impressions whose list is not empty. A click on an unknown item, or by an unknown user, is
        left out."""
        all_users = pc.fill_null(self.user_rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        items = pc.fill_null(self.item_rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        n = len(all_users)
        time = np.arange(n) if self.time is None else _sortable(self.time)
        order = np.lexsort((np.arange(n), time, all_users))  # by user, then time, then row
        users, time = all_users[order], time[order]
        clicked = (self.labels.to_numpy(zero_copy_only=False)[order] == 1) & (users >= 0) & (items[order] >= 0)
        before = np.concatenate([[0], np.cumsum(clicked)])  # clicks at sorted positions < i
        new_user = np.concatenate([[True], users[1:] != users[:-1]])
        new_time = new_user | np.concatenate([[True], time[1:] != time[:-1]])
        user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
        time_start = np.maximum.accumulate(np.where(new_time, np.arange(n), 0))
        hi = before[time_start]  # clicks of earlier times (the same time is not before)
        lo = np.maximum(before[user_start], hi - max_len)
        lo_rows, hi_rows = np.empty(n, np.int64), np.empty(n, np.int64)
        lo_rows[order], hi_rows[order] = lo, hi
        lengths = hi_rows - lo_rows
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - lo_rows, lengths)
        clicked_items = items[order][clicked].astype(np.int32)
        rows = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(clicked_items[flat], pa.int32()))
        return rows, int((lengths > 0).sum())


def _sortable(time: pa.Array) -> np.ndarray:
    """Times (timestamps, dates or numbers) as numbers in the same order, equal times equal."""
    return pc.rank(time, sort_keys="ascending", tiebreaker="dense").to_numpy(zero_copy_only=False)


def encode_impressions(table: pa.Table, schema: Schema, items: EncodedEntity, users: EncodedEntity, *,
                       file: str, items_file: str, users_file: str) -> EncodedImpressions:
    """The impressions checked whole, encoded, and the rows naming unknown users or items dropped.

    Raises:
        SchemaError: an empty file, a column refused (ids of another type than the table's, a label
            not 0/1, a null or non-time time, a context column of the wrong type), or no impression
            left once the unknown ones are dropped.
    """
    imp = schema.impressions
    if table.num_rows == 0:
        raise SchemaError(f"{file}: holds no rows")
    col = lambda name: Column(file, name)  # noqa: E731
    user_rows = _rows(table.column(imp.user), col(imp.user), users, f"{users_file} (column {schema.users.id!r})")
    item_rows = _rows(table.column(imp.item), col(imp.item), items, f"{items_file} (column {schema.items.id!r})")
    columns: dict[str, pa.Array] = {"user_row": user_rows, "item_row": item_rows,
                                    "label": pa.array(_labels(table.column(imp.label), col(imp.label)))}
    if imp.time:
        columns["time"] = _times(table.column(imp.time), col(imp.time))
    clicks = _Clicks(user_rows, item_rows, columns["label"], columns.get("time"), imp.time)
    context, fills, notes = _encode_context(table, schema, items, file, clicks)
    columns.update({f"context.{f}": values for f, (values, _) in context.items()})
    user_known = bool_mask(pc.is_valid(user_rows))
    item_known = bool_mask(pc.is_valid(item_rows))
    keep = user_known & item_known
    if not keep.any():
        raise SchemaError(f"{file}: no impression names both a known user ({imp.user!r} in {users_file}) and a "
                          f"known item ({imp.item!r} in {items_file})")
    out = pa.table(columns).filter(pa.array(keep))
    out = out.set_column(0, "user_row", out.column("user_row").cast(pa.int32()))
    out = out.set_column(1, "item_row", out.column("item_row").cast(pa.int32()))
    unknown_users, unknown_items = int((~user_known).sum()), int((~item_known).sum())
    encoding = {"rows_read": table.num_rows, "rows_kept": out.num_rows, "unknown_users": unknown_users,
                "unknown_items": unknown_items, "context": {f: meta for f, (_, meta) in context.items()}}
    return EncodedImpressions(out, table.num_rows, unknown_users, unknown_items, encoding, fills, notes)


def _encode_context(table: pa.Table, schema: Schema, items: EncodedEntity, file: str,
                    clicks: _Clicks) -> tuple[dict[str, tuple[pa.Array, dict[str, Any]]], tuple[Fill, ...], tuple[str, ...]]:
    """Each context field the file holds (a sequence it lacks: the clicks before each impression):
    its encoded column and what its encoding keeps."""
    out: dict[str, tuple[pa.Array, dict[str, Any]]] = {}
    fills, notes = [], []
    ctx = schema.context
    for field, (name, _) in _context_columns(schema).items():
        if name not in table.column_names and field in ctx.sequences:
            rows, held = clicks.before(ctx.sequences[field].max_len)
            out[field] = rows, {"kind": "sequence", "column": None, "derived": "clicks_before", "unknown_ids": 0}
            notes.append(f"context.{field}: the impressions have no column {name!r}: each impression's is the items "
                         f"its user clicked before it ({clicks.order}), the last {ctx.sequences[field].max_len}; "
                         f"{held:,} impression(s) have some")
            continue
        if name not in table.column_names:
            if field not in schema.items.groups:
                notes.append(f"context.{field}: the impressions have no column {name!r}: the default models learn "
                             "nothing from it, and serving reads a request's value of it as absent (import "
                             "impressions with that column to use it)")
            continue
        where, column = Column(file, name), table.column(name)
        if field in ctx.categorical:
            codes, vocab, nulls = encode_categorical(column, where)
            out[field] = pa.array(codes), {"kind": "categorical", "column": name, "values": vocab, "nulls": nulls}
        elif field in ctx.numeric:
            values, stats = encode_numeric(column, where, None)
            out[field] = pa.array(values.astype(np.float32)), {"kind": "numeric", "column": name, **stats.to_json()}
            if stats.nulls:
                fills.append(Fill(f"context.{field}", stats.nulls, stats.fill, stats.fill_kind))
        elif field in ctx.sequences:
            rows, dropped = encode_sequence(column, items, ctx.sequences[field].max_len, where)
            out[field] = rows, {"kind": "sequence", "column": name, "unknown_ids": dropped}
            if dropped:
                notes.append(f"context.{field}: {dropped:,} unknown item id(s) dropped from the sequences")
        else:  # an item group: the items' own vocabulary
            values = pa.array(items.encoding["categorical"][field]["values"])
            codes = lookup_codes(scalar_values(column, where), values)
            out[field] = pa.array(codes), {"kind": "group", "column": name, "unseen": int((codes == 0).sum())}
    return out, tuple(fills), tuple(notes)

