"""A catalogue change's items in a data set's terms: the schema's ids and columns, encoded as the
import encoded the items.

Owns: checking an item file (Parquet, CSV, JSON or JSON lines: ``serving.data.read.read_rows``)
against the schema (an unknown column, a column an add needs and a row lacks, a wrong type or
width, a null or duplicate id: each refused naming the file, the column and the row) and
encoding its rows with the data version's stored encoding (``encoding.json``) through the
import's own functions (``serving.data.encode``): categorical values by the stored vocabularies
(a value they do not hold: the out-of-vocabulary code 0), numbers filled and standardised with the
stored fill, mean and standard deviation, vectors of the declared width, popularity as at import.
Also the ids a command line gives, in the schema's kind (:func:`parse_ids`). Must not touch: the
change log (``serving.repository.catalogue`` checks ids against the catalogue and writes), files
other than the one it reads.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.data.encode import (
    Column,
    NumericStats,
    encode_ids,
    encode_numeric,
    encode_popularity,
    encode_vector,
    first_row,
    id_array,
    lookup_codes,
    scalar_values,
)
from serving.data.read import RowsFile
from serving.data.tables import DataTables
from serving.errors import SchemaError, ValidationError

__all__ = ["GROUP_VALUE_KEY", "POPULARITY_KEY", "ItemRows", "encode_item_rows", "parse_ids"]

POPULARITY_KEY = "@popularity"  # a change row's encoded popularity (no column name starts with '@')
GROUP_VALUE_KEY = "@value."  # + a group: a change row's value of that group where the import never saw it
_INTEGER = r"^\s*[-+]?\d+\s*$"


@dataclass(frozen=True)
class ItemRows:
    """The encoded rows of one item file: ids (the schema's, as Python values), the item tables'
    rows, and which rows give each column (``given``: categorical, numeric and vector columns by
    name, the popularity under :data:`POPULARITY_KEY`). ``group_values``: an item group -> each
    row's value where the import's vocabulary does not hold it (its code 0), else None: the
    catalogue gives such a value a group code of its own, so a store that appears later is a
    store of its own to restrictions and diversity, while the models read it as unseen."""

    file: str
    id_column: str
    ids: tuple[int | str, ...]
    cat: np.ndarray
    num: np.ndarray
    vec: np.ndarray
    popularity: np.ndarray
    given: Mapping[str, np.ndarray]
    group_values: Mapping[str, Sequence[object]] = field(default_factory=dict)

    def rows(self, tables: DataTables) -> list[dict[str, Any]]:
        """Each row as a change row: the encoded value of every column it gives (vectors as lists)."""
        items = tables.schema.items
        out: list[dict[str, Any]] = []
        for r in range(len(self.ids)):
            row: dict[str, Any] = {}
            for j, name in enumerate(items.categorical):
                if self.given[name][r]:
                    row[name] = int(self.cat[r, j])
                    value = self.group_values[name][r] if name in self.group_values else None
                    if value is not None:
                        row[GROUP_VALUE_KEY + name] = value
            for j, name in enumerate(items.numeric):
                if self.given[name][r]:
                    row[name] = float(self.num[r, j])
            for name in items.vectors:
                if self.given[name][r]:
                    row[name] = self.vec[r, tables.item_vec_slice(name)].tolist()
            if self.given.get(POPULARITY_KEY, np.zeros(r + 1, bool))[r]:
                row[POPULARITY_KEY] = float(self.popularity[r])
            out.append(row)
        return out


def encode_item_rows(file: RowsFile, tables: DataTables, encoding: Mapping[str, Any], *, add: bool) -> ItemRows:
    """The rows of ``file`` checked against the schema of ``tables`` and encoded with ``encoding``
    (the items' part of the data version's ``encoding.json``). ``add``: every row gives every
    declared column (null where the import fills: a numeric or categorical value); else (an
    update) each row gives its id and the columns it changes.

    Raises:
        SchemaError: naming the file, the column and the row (see the module docstring).
    """
    spec, t = tables.schema.items, file.table
    col = lambda name: Column(file.name, name)  # noqa: E731 - where a refusal points
    unknown = [c for c in t.column_names if c not in spec.columns]
    if unknown:
        raise _at(file, unknown[0], f"is not a column of the items; the schema declares {list(spec.columns)}")
    _check_given(file, spec.columns if add else (spec.id,), "an added item gives every column the schema declares "
                 "(null where the import fills it)" if add else "an update names the item it changes")
    if t.num_rows == 0:
        raise SchemaError(f"{file.name}: holds no rows")
    ids = _ids(t.column(spec.id), col(spec.id), strings=tables.item_ids.dtype == object)
    n = len(ids)
    given = {name: file.gives(name) for name in (*spec.categorical, *spec.numeric, *spec.vectors)}
    if not add:
        changes = np.zeros(n, bool)
        for mask in given.values():
            changes |= mask
        if spec.popularity is not None:
            changes |= file.gives(spec.popularity)
        if not changes.all():
            row = int(np.flatnonzero(~changes)[0])
            raise SchemaError(f"{file.name}: row {row} changes no column (give the columns to change beside "
                              f"{spec.id!r})", field=spec.id)
    enc_cat, enc_num = encoding["categorical"], encoding["numeric"]
    cat = np.zeros((n, len(spec.categorical)), np.int64)
    group_values: dict[str, list[object]] = {}
    for j, name in enumerate(spec.categorical):
        if given[name].any():
            vocab = pa.array(enc_cat[name]["values"])
            values = scalar_values(t.column(name), col(name))
            cat[:, j] = lookup_codes(values, vocab)
            if name in spec.groups:
                group_values[name] = _unseen(values, cat[:, j], given[name], vocab.type)
    num = np.zeros((n, len(spec.numeric)), np.float32)
    for j, name in enumerate(spec.numeric):
        if given[name].any():
            num[:, j] = encode_numeric(t.column(name), col(name), None, stored=NumericStats.from_json(enc_num[name]))[0]
    vec = np.zeros((n, tables.item_vec.shape[1]), np.float32)
    for name, width in spec.vectors.items():
        if given[name].any():
            vec[:, tables.item_vec_slice(name)] = encode_vector(_placeheld(t.column(name), given[name], width), width,
                                                                col(name))
    popularity = np.zeros(n, np.float32)
    if spec.popularity is not None:
        given[POPULARITY_KEY] = file.gives(spec.popularity)
        if given[POPULARITY_KEY].any():
            popularity = encode_popularity(t.column(spec.popularity), col(spec.popularity), None,
                                           stored=NumericStats.from_json(encoding["popularity"]))[0]
    return ItemRows(file.name, spec.id, ids, cat, num, vec, popularity, given, group_values)


def parse_ids(values: Sequence[object], tables: DataTables, what: str) -> list[int | str]:
    """Ids a command line (or a caller) gives, in the schema's kind: text as given where the ids are
    strings; integers, or text of one, where they are integers.

    Raises:
        ValidationError: an id of the other kind, naming it.
    """
    strings = tables.item_ids.dtype == object
    out: list[int | str] = []
    for v in values:
        if strings and isinstance(v, str):
            out.append(v)
        elif not strings and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        elif not strings and isinstance(v, str) and re.match(_INTEGER, v):
            out.append(int(v))
        else:
            kind = "strings" if strings else "integers"
            raise ValidationError(f"{what}: item id {v!r} is not {'a string' if strings else 'an integer'} (the data "
                                  f"set's ids are {kind})", field=what)
    return out


def _at(file: RowsFile, column: str, message: str) -> SchemaError:
    rows = file.gives(column)
    at = f", row {int(np.flatnonzero(rows)[0])}" if file.given is not None and rows.any() else ""
    return SchemaError(f"{file.name}: column {column!r}{at} {message}", field=column)


def _check_given(file: RowsFile, columns: Sequence[str], why: str) -> None:
    """Every row gives each of ``columns``, else the first column and row that does not."""
    for name in columns:
        rows = file.gives(name)
        if not rows.all():
            at = f", row {int(np.flatnonzero(~rows)[0])}" if file.given is not None and rows.any() else ""
            raise SchemaError(f"{file.name}: column {name!r}{at} is missing: {why}", field=name)


def _ids(column: pa.ChunkedArray, where: Column, *, strings: bool) -> tuple[int | str, ...]:
    """The file's ids in the schema's kind (integers of a CSV read as text where ids are strings).

    Raises:
        SchemaError: a null, duplicate or non-integer id (where the ids are integers), naming the row.
    """
    arr = id_array(column, where)
    if strings and pa.types.is_integer(arr.type):
        arr = arr.cast(pa.string())
    elif not strings and pa.types.is_string(arr.type):
        ok = pc.fill_null(pc.match_substring_regex(arr, _INTEGER), True)
        if not pc.all(ok).as_py():
            row = first_row(pc.invert(ok))
            raise where.error(f"{arr[row].as_py()!r} is not an integer: the data set's ids are integers", row)
        arr = pc.utf8_trim_whitespace(arr).cast(pa.int64())
    values, _ = encode_ids(arr, where)
    return tuple(values.tolist())


def _unseen(values: pa.Array, codes: np.ndarray, given: np.ndarray, kind: pa.DataType) -> list[object]:
    """Each row's value where it is given, not null and out of the vocabulary (code 0), as the
    vocabulary's kind where it casts (``"7"`` where the values are integers); else None."""
    if not pa.types.is_null(kind) and values.type != kind:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = values.cast(kind)
    return [v if g and c == 0 else None for v, c, g in zip(values.to_pylist(), codes.tolist(), given.tolist(),
                                                              strict=True)]


def _placeheld(column: pa.ChunkedArray, given: np.ndarray, width: int) -> pa.Array | pa.ChunkedArray:
    """A vector column whose rows that do not give it (an update's JSON rows) hold zeros instead of null."""
    if given.all():
        return column
    values = column.to_pylist()
    return pa.array([v if g else [0.0] * width for v, g in zip(values, given, strict=True)])
