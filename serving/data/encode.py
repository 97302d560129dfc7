"""Encoding an items or users table under its schema: Arrow columns in, NumPy arrays out.

Owns: the checks of one declared column and its encoding, vectorised with pyarrow compute and
NumPy (no Python loop over rows): ids (integers or strings, unique, never null; a duplicate
names the id and both rows), categorical columns (values of any scalar type -> codes 1, 2, ... in
sorted order of the values, nulls and unseen values -> 0), numeric columns (nulls and NaN filled
with the declared ``fill`` or the median, then standardised with the mean and standard deviation
kept), vectors (list columns, or in CSV text such as ``"0.1 0.2"`` or ``"[0.1, 0.2]"``, of exactly
the declared width, finite) and popularity (``log1p``, standardised). Every refusal is a
:class:`~serving.errors.SchemaError` that reads ``"items.parquet: column 'price', row 1234: ..."``
(rows counted from 0, the header not counted). Must not touch: files (``serving.data.read``,
``serving.data.store``), impressions (``serving.data.impressions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.data.schema import EntitySpec, ItemSpec
from serving.errors import SchemaError

__all__ = ["Column", "EncodedEntity", "Fill", "IdKind", "NumericStats", "bool_mask", "encode_categorical", "encode_entity",
           "encode_ids", "encode_numeric", "encode_popularity", "encode_vector", "first_row", "first_value_row", "id_array", "id_kind", "lookup_codes",
           "scalar_values"]

IdKind = Literal["int64", "string"]
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(inf|infinity|nan)\s*$"


@dataclass(frozen=True)
class Column:
    """Where a column comes from, for error messages: the file's name and the column's."""

    file: str
    name: str

    def error(self, message: str, row: int | None = None) -> SchemaError:
        at = f", row {row}" if row is not None else ""
        return SchemaError(f"{self.file}: column {self.name!r}{at}: {message}", field=self.name)

    def wrong_type(self, values: pa.Array | pa.ChunkedArray, expected: str) -> SchemaError:
        """A refusal of the column's type, at its first value (``expected``: what the column should hold)."""
        return self.error(f"a value of type {values.type}: {expected}", first_value_row(values))


@dataclass(frozen=True)
class Fill:
    """What the nulls of one numeric column became."""

    where: str  # "items.price"
    nulls: int
    value: float
    kind: Literal["declared", "median"]

    def line(self) -> str:
        what = "the declared fill" if self.kind == "declared" else "the median"
        return f"{self.where}: {self.nulls:,} null(s) filled with {what} {self.value:g}"


@dataclass(frozen=True)
class NumericStats:
    """A numeric column's fill and standardisation: ``(value - mean) / std``."""

    fill: float
    fill_kind: Literal["declared", "median"]
    nulls: int
    mean: float
    std: float

    def to_json(self) -> dict[str, Any]:
        return {"fill": self.fill, "fill_kind": self.fill_kind, "nulls": self.nulls, "mean": self.mean,
                "std": self.std}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NumericStats:
        """What :meth:`to_json` wrote (other keys ignored)."""
        kind: Literal["declared", "median"] = "declared" if d["fill_kind"] == "declared" else "median"
        return cls(float(d["fill"]), kind, int(d["nulls"]), float(d["mean"]), float(d["std"]))


@dataclass(frozen=True)
class EncodedEntity:
    """One encoded table (items or users), rows in file order."""

    ids: np.ndarray  # int64, or object (str)
    id_values: pa.Array  # the same ids as Arrow (the impressions are matched against them)
    cat: np.ndarray  # int64 [n, categorical]
    num: np.ndarray  # float32 [n, numeric]
    vec: np.ndarray  # float32 [n, sum of widths]
    popularity: np.ndarray | None  # float32 [n] (items with a popularity column)
    encoding: dict[str, Any]  # vocabularies, fills, mean/std: what encoding.json keeps
    fills: tuple[Fill, ...] = ()
    notes: tuple[str, ...] = field(default=())  # other lines the import prints (categorical nulls)

    @property
    def rows(self) -> int:
        return len(self.ids)


def id_kind(values: np.ndarray) -> IdKind:
    return "string" if values.dtype == object else "int64"


def id_array(column: pa.ChunkedArray | pa.Array, where: Column) -> pa.Array:
    """An id column as one Arrow array of int64 or strings (nulls kept): integers, integral
    floats (a pandas integer column with missing values) and strings are ids.

    Raises:
        SchemaError: any other type, or a float that is not a whole number.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = arr.type
    if pa.types.is_integer(kind):
        if pa.types.is_uint64(kind) and len(arr) and (pc.max(arr).as_py() or 0) > np.iinfo(np.int64).max:
            raise where.error("ids must fit a signed 64-bit integer", first_row(pc.greater(arr, np.iinfo(np.int64).max)))
        return arr.cast(pa.int64())
    if pa.types.is_floating(kind):
        whole = pc.equal(pc.floor(arr), arr)
        if not pc.all(pc.fill_null(whole, True)).as_py():
            row = first_row(pc.invert(pc.fill_null(whole, True)))
            raise where.error(f"{arr[row].as_py()!r} is not a whole number: ids are integers or strings", row)
        return arr.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return arr.cast(pa.string())
    raise where.wrong_type(arr, "ids are integers or strings")


def encode_ids(column: pa.ChunkedArray, where: Column) -> tuple[np.ndarray, pa.Array]:
    """The ids of a table in row order (int64, or object holding ``str``) and as Arrow.

    Raises:
        SchemaError: a null id, an id of another type, or an id given twice (naming both rows).
    """
    arr = id_array(column, where)
    if arr.null_count:
        raise where.error("the id is null: every row needs an id", first_row(pc.is_null(arr)))
    if pa.types.is_integer(arr.type):
        values = arr.to_numpy()
        keys = values
    else:
        values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
        keys = pc.dictionary_encode(arr).indices.to_numpy()
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    same = np.flatnonzero(ranked[1:] == ranked[:-1])
    if same.size:
        second = order[same + 1]
        i = int(np.argmin(second))
        row_a, row_b = int(order[same[i]]), int(second[i])
        raise where.error(f"the id {values[row_a]!r} is in rows {row_a} and {row_b}: ids must be unique", row_b)
    return values, arr


def first_row(mask: pa.Array | pa.ChunkedArray) -> int:
    """The first row where ``mask`` is true (it is somewhere)."""
    return int(np.flatnonzero(bool_mask(mask))[0])


def first_value_row(values: pa.Array | pa.ChunkedArray) -> int | None:
    """The first row that is not null (None: every row is)."""
    valid = bool_mask(pc.is_valid(values))
    return int(np.flatnonzero(valid)[0]) if valid.any() else None


def bool_mask(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as NumPy (null: false)."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def scalar_values(column: pa.ChunkedArray | pa.Array, where: Column) -> pa.Array:
    """A categorical column as one array of comparable scalars (dates and times as ISO text, NaN as null).

    Raises:
        SchemaError: lists, structs, binary and other non-scalar types.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = arr.type
    if pa.types.is_temporal(kind):
        return arr.cast(pa.string())
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_nan(arr), pa.scalar(None, kind), arr)
    if pa.types.is_large_string(kind):
        return arr.cast(pa.string())
    if (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_boolean(kind)
            or pa.types.is_null(kind)):
        return arr
    raise where.wrong_type(arr, "a categorical column holds strings, integers, numbers, booleans, dates or times")


def encode_categorical(column: pa.ChunkedArray | pa.Array, where: Column) -> tuple[np.ndarray, list[Any], int]:
    """Codes (int64; 0 for nulls), the vocabulary (code ``i`` is ``vocabulary[i - 1]``, sorted) and the null count.

    Raises:
        SchemaError: the column's type is not a scalar one.
    """
    arr = scalar_values(column, where)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.int64), [], len(arr)
    vocab = pc.unique(arr.drop_null())
    vocab = vocab.take(pc.sort_indices(vocab))
    return lookup_codes(arr, vocab), vocab.to_pylist(), arr.null_count


def lookup_codes(values: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """Codes of ``values`` in ``vocabulary`` (1-based; a value it does not hold, or a null, -> 0)."""
    if len(vocabulary) == 0:
        return np.zeros(len(values), np.int64)
    if values.type != vocabulary.type:
        try:
            values = values.cast(vocabulary.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. text against a vocabulary of integers
            return np.zeros(len(values), np.int64)
    idx = pc.index_in(values, value_set=vocabulary)
    return pc.fill_null(pc.add(idx.cast(pa.int64()), 1), 0).to_numpy().astype(np.int64, copy=False)


def _numbers(column: pa.ChunkedArray | pa.Array, where: Column, what: str = "a numeric column") -> pa.Array:
    """A column as float64, NaN as null. Text that reads as numbers is taken (a CSV column).

    Raises:
        SchemaError: another type, or text that is not a number (naming its row).
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = arr.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        row = _not_a_number(arr)
        if row is not None:
            raise where.error(f"{arr[row].as_py()!r} is not a number ({what} holds numbers)", row)
        arr = pc.utf8_trim_whitespace(arr)
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
              or pa.types.is_boolean(kind) or pa.types.is_null(kind)):
        raise where.wrong_type(arr, f"{what} holds numbers")
    out = arr.cast(pa.float64())
    return pc.if_else(pc.is_nan(out), pa.scalar(None, pa.float64()), out)


def _not_a_number(text: pa.Array) -> int | None:
    """The first row of a text column that does not read as a number (None: all do, or are null)."""
    ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER, ignore_case=True), True)
    return None if pc.all(ok).as_py() else first_row(pc.invert(ok))


def encode_numeric(column: pa.ChunkedArray | pa.Array, where: Column, fill: float | None,
                   *, standardise: bool = True, fill_key: str | None = None,
                   stored: NumericStats | None = None) -> tuple[np.ndarray, NumericStats]:
    """The column as float64, nulls filled (``fill``, else the median of the others), standardised
    (unless ``standardise`` is off), with what was done. ``fill_key``: where the schema declares
    fills for it (said when every row is null). ``stored``: the import's fill, mean and standard
    deviation, taken as they are (rows a catalogue change adds are encoded as the import's were).

    Raises:
        SchemaError: not numbers, an infinite value, or no value at all and no declared fill.
    """
    arr = _numbers(column, where)
    nulls = arr.null_count
    if stored is not None:
        fill = stored.fill
    kind: Literal["declared", "median"] = "declared" if fill is not None else "median"
    if stored is not None:
        kind = stored.fill_kind
    if fill is not None:
        value = float(fill)
    else:
        if nulls == len(arr):
            raise where.error("every row is null: there is no median to fill the nulls with"
                              + (f"; declare a fill under {fill_key}" if fill_key else ""))
        value = float(np.median(arr.drop_null().to_numpy()))
    x = pc.fill_null(arr, value).to_numpy().astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise where.error(f"{x[row]} is not a finite number", row)
    mean, std = (float(x.mean()), float(x.std())) if standardise and len(x) else (0.0, 1.0)
    if stored is not None and standardise:
        mean, std = stored.mean, stored.std
    if not np.isfinite(std) or std <= 0:
        std = 1.0
    stats = NumericStats(value, kind, nulls, mean, std)
    return (x - mean) / std if standardise else x, stats


def encode_vector(column: pa.ChunkedArray | pa.Array, width: int, where: Column) -> np.ndarray:
    """A vector column as float32 ``[n, width]``: lists of numbers, or text of numbers split by
    commas, semicolons or spaces (brackets allowed). Chunk by chunk, into one array: a column of
    numbers is never copied whole nor widened to float64.

    Raises:
        SchemaError: another type, a null vector or value, a vector of another width, a value
            that is not a finite number.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise where.wrong_type(column, f"a vector column holds lists of {width} numbers (in CSV: text of numbers)")
    out = np.empty((len(column), width), np.float32)
    at = 0
    for chunk in chunks:
        out[at:at + len(chunk)] = _vector_chunk(chunk, width, where, at)
        at += len(chunk)
    return out


def _vector_chunk(arr: pa.Array, width: int, where: Column, first: int) -> np.ndarray:
    """One chunk of :func:`encode_vector` (``first``: the row of its first vector in the file)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern_regex(pc.replace_substring_regex(arr, r"^[\s\[]+|[\s\]]+$", ""), r"[,;\s]+")
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy()
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = int(bad[0])
        got = "a null vector" if lengths[row] < 0 else f"{lengths[row]} value(s)"
        raise where.error(f"{got}, the schema declares a width of {width}", first + row)
    flat = pc.list_flatten(arr)
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        i = _not_a_number(flat)
        if i is not None:
            raise where.error(f"value {i % width} of the vector, {flat[i].as_py()!r}, is not a number",
                              first + i // width)
        flat = pc.utf8_trim_whitespace(flat)
    elif not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type)):
        raise where.wrong_type(arr, f"a vector column holds lists of {width} numbers")
    x = flat.cast(pa.float32()).to_numpy(zero_copy_only=False)  # a null value comes back as NaN
    ok = np.isfinite(x)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        value = "null" if flat[i].as_py() is None else str(x[i])
        raise where.error(f"value {i % width} of the vector is {value}: vectors hold finite numbers",
                          first + i // width)
    return x.reshape(len(arr), width)


def encode_entity(table: pa.Table, spec: EntitySpec, *, file: str, side: str) -> EncodedEntity:
    """Every declared column of an items (``side="item"``) or users table, checked and encoded.

    Raises:
        SchemaError: an empty table, or any column refused (see the module docstring).
    """
    if table.num_rows == 0:
        raise SchemaError(f"{file}: holds no rows")
    col = lambda name: Column(file, name)  # noqa: E731 - the one place that names a column's origin
    ids, id_values = encode_ids(table.column(spec.id), col(spec.id))
    n = len(ids)
    enc: dict[str, Any] = {"rows": n, "id": {"column": spec.id, "type": id_kind(ids)}, "categorical": {},
                           "numeric": {}, "vectors": dict(spec.vectors), "popularity": None}
    cat = np.zeros((n, len(spec.categorical)), np.int64)
    notes = []
    for j, name in enumerate(spec.categorical):
        cat[:, j], vocab, nulls = encode_categorical(table.column(name), col(name))
        enc["categorical"][name] = {"values": vocab, "nulls": nulls}
        if nulls:
            notes.append(f"{side}s.{name}: {nulls:,} null(s) take the out-of-vocabulary code 0")
    num = np.zeros((n, len(spec.numeric)), np.float32)
    fills = []
    for j, name in enumerate(spec.numeric):
        num[:, j], stats = encode_numeric(table.column(name), col(name), spec.fill.get(name),
                                          fill_key=f"{side}s.fill")
        enc["numeric"][name] = stats.to_json()
        if stats.nulls:
            fills.append(Fill(f"{side}s.{name}", stats.nulls, stats.fill, stats.fill_kind))
    widths = list(spec.vectors.values())
    vec = np.zeros((n, sum(widths)), np.float32)
    at = 0
    for name, width in spec.vectors.items():
        vec[:, at:at + width] = encode_vector(table.column(name), width, col(name))
        at += width
    popularity = None
    if isinstance(spec, ItemSpec) and spec.popularity is not None:
        popularity, stats = encode_popularity(table.column(spec.popularity), col(spec.popularity),
                                        spec.fill.get(spec.popularity))
        enc["popularity"] = {"column": spec.popularity, **stats.to_json()}
        if stats.nulls and spec.popularity not in spec.numeric:  # a numeric one said so already
            fills.append(Fill(f"{side}s.{spec.popularity}", stats.nulls, stats.fill, stats.fill_kind))
    return EncodedEntity(ids, id_values, cat, num, vec, popularity, enc, tuple(fills), tuple(notes))


def encode_popularity(column: pa.ChunkedArray | pa.Array, where: Column, fill: float | None, *,
                      stored: NumericStats | None = None) -> tuple[np.ndarray, NumericStats]:
    """``log1p`` of the popularity column, standardised; its stats are those of the ``log1p`` values
    (the fill is the raw value). ``stored``: the import's (as :func:`encode_numeric`).

    Raises:
        SchemaError: as :func:`encode_numeric`, and a negative value.
    """
    raw, stats = encode_numeric(column, where, fill, standardise=False, stored=stored)
    negative = np.flatnonzero(raw < 0)
    if negative.size:
        row = int(negative[0])
        raise where.error(f"popularity must be >= 0, got {raw[row]:g}", row)
    logged = np.log1p(raw)
    mean, std = (stored.mean, stored.std) if stored is not None else (float(logged.mean()), float(logged.std()))
    std = std if np.isfinite(std) and std > 0 else 1.0
    out = ((logged - mean) / std).astype(np.float32)
    return out, NumericStats(stats.fill, stats.fill_kind, stats.nulls, mean, std)
