"""Reading a data set's input files: Parquet or CSV, chosen by the file's extension, or a folder
of Parquet files (as Spark, Hive and Dask write a table: ``part-*.parquet``, read in the order of
their paths, ``key=value`` folders as columns, names starting with ``_`` or ``.`` skipped); a
catalogue change's item files also as JSON (an array of objects) or JSON lines.

Owns: pyarrow's readers (``pyarrow.parquet``, ``pyarrow.csv``), the extensions they take, the
JSON rows of an item file turned into Arrow columns (:func:`read_rows`: which columns each row
gives), and turning what they refuse (a missing file, one that does not parse, a missing column,
values of mixed types) into a :class:`~serving.errors.SchemaError` that names the file. Reads only
the columns asked for (a Parquet file's others are never loaded). Must not touch: encoding
(``serving.data.encode``), the data set store, anything it does not read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.errors import RankserveError, SchemaError

__all__ = ["EXTENSIONS", "JSON_EXTENSIONS", "RowsFile", "file_kind", "parquet_parts", "read_json_rows", "read_rows",
           "read_table"]

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".csv.bz2": "csv"}
JSON_EXTENSIONS = (".json", ".jsonl", ".ndjson")  # item files of a catalogue change only


@dataclass(frozen=True)
class RowsFile:
    """Every column of one item file, and which rows give each column (None: every row gives
    every column, as in Parquet and CSV; a JSON row gives the keys it holds)."""

    name: str
    table: pa.Table
    given: Mapping[str, np.ndarray] | None = None

    def gives(self, column: str) -> np.ndarray:
        """bool [rows]: the rows that give ``column`` (a value, null included)."""
        if self.given is None:
            return np.full(self.table.num_rows, column in self.table.column_names)
        return self.given.get(column, np.zeros(self.table.num_rows, bool))


def parquet_parts(folder: Path) -> list[Path]:
    """The Parquet files of a table written as a folder, in the order they are read (by path);
    files and folders whose names start with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are not part of it."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".parquet", ".pq"))
                  and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts))


def file_kind(path: Path) -> str:
    """``parquet`` or ``csv``, by the file's extension; ``parquet`` for a folder.

    Raises:
        SchemaError: the extension is neither.
    """
    if path.is_dir():
        return "parquet"
    name = path.name.lower()
    for ext, kind in sorted(EXTENSIONS.items(), key=lambda e: -len(e[0])):
        if name.endswith(ext):
            return kind
    raise SchemaError(f"{path.name}: unknown file type: give a Parquet ({', '.join(_exts('parquet'))}) or a CSV "
                      f"({', '.join(_exts('csv'))}) file, or a folder of Parquet files")


def _exts(kind: str) -> list[str]:
    return [e for e, k in EXTENSIONS.items() if k == kind]


def read_table(path: Path, columns: Sequence[str], *, optional: Sequence[str] = (),
               ids: Sequence[str] = ()) -> pa.Table:
    """The columns ``columns`` (each required) and those of ``optional`` that the file holds, in
    that order, of the Parquet or CSV file ``path``. CSV has no types: its columns of ``ids`` are
    read as text, and are integers only when every id is written as one (``00123`` stays text).

    Raises:
        SchemaError: the file cannot be read or parsed, or lacks a column of ``columns``.
    """
    path = Path(path)
    kind, names = _header(path)
    missing = [c for c in dict.fromkeys(columns) if c not in names]
    if missing:
        raise SchemaError(f"{path.name}: column {missing[0]!r} is missing (the schema declares it); the file has "
                          f"{_shown(names)}", field=missing[0])
    wanted = list(dict.fromkeys([*columns, *(c for c in optional if c in names)]))
    text = [c for c in dict.fromkeys(ids) if c in wanted] if kind == "csv" and not path.is_dir() else []
    try:
        table = _read(path, kind, wanted, text)
    except (OSError, pa.ArrowException) as err:
        raise SchemaError(f"{path.name}: cannot read it as {kind.upper()}: {_first_line(err)}") from err
    for name in text:
        table = table.set_column(table.column_names.index(name), name, _integers_if_all(table.column(name)))
    return table.select(wanted)


_CANONICAL_INTEGER = r"^(0|-?[1-9][0-9]{0,17})$"  # as an integer id prints: no leading zero, no '+', no space


def _integers_if_all(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A CSV column of ids read as text: int64 when every id (nulls aside) is an integer as it prints."""
    if column.null_count == len(column):
        return column
    ok = pc.match_substring_regex(column, _CANONICAL_INTEGER)
    return column.cast(pa.int64()) if pc.all(pc.fill_null(ok, True)).as_py() else column


def read_rows(path: Path, *, ids: Sequence[str] = ()) -> RowsFile:
    """Every column of a Parquet, CSV, JSON (an array of objects, or ``{"items": [...]}``) or
    JSON-lines file, by its extension.

    Raises:
        SchemaError: the file is missing or does not parse, its rows are not objects, or a column
            holds values of mixed types (naming the column and the row).
    """
    path = Path(path)
    if not path.name.lower().endswith(JSON_EXTENSIONS):
        return RowsFile(path.name, read_table(path, _header(path)[1], ids=ids))
    rows = read_json_rows(path)
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SchemaError(f"{path.name}: row {n}: expected an object of columns, got {type(row).__name__}")
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {c: _json_column(path.name, c, [row.get(c) for row in rows]) for c in names}
    given = {c: np.fromiter((c in row for row in rows), bool, len(rows)) for c in names}
    return RowsFile(path.name, pa.table(columns) if names else pa.table({}), given)


def read_json_rows(path: Path, error: type[RankserveError] = SchemaError) -> list[Any]:
    """The rows of a JSON array (or ``{"items": [...]}``) or a JSON-lines file.

    Raises:
        error: the file is missing or does not parse (naming the line), or holds no array.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {path}: {getattr(err, 'strerror', None) or err}", field="file") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise error(f"{path} line {n}: not JSON ({err.msg})", field="file") from err
    if isinstance(data, dict):
        data = data.get("items", [data])
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON array of items", field="file")
    return data


def _json_column(file: str, name: str, values: list[Any]) -> pa.Array:
    """One column of JSON rows as Arrow (integers and numbers together are numbers).

    Raises:
        SchemaError: values of mixed types, naming the first row whose type differs from the first value's.
    """
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError) as err:
        kinds = [_json_kind(v) for v in values]
        first = next((k for k in kinds if k is not None), None)
        row = next((i for i, k in enumerate(kinds) if k is not None and k != first), 0)
        raise SchemaError(f"{file}: column {name!r}, row {row}: {values[row]!r} is not of the type of the column's "
                          f"first value ({first}): {_first_line(err)}", field=name) from err


def _json_kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else "list" if isinstance(value, list) else type(value).__name__


def _header(path: Path) -> tuple[str, list[str]]:
    """The file's kind and its columns' names.

    Raises:
        SchemaError: an unknown extension, no such file, or a header that does not read.
    """
    kind = file_kind(path)
    if path.is_dir():
        if not parquet_parts(path):
            raise SchemaError(f"{path}: a folder with no Parquet file (*.parquet) in it")
    elif not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        return kind, _column_names(path, kind)
    except (OSError, pa.ArrowException) as err:
        raise SchemaError(f"{path.name}: cannot read it as {kind.upper()}: {_first_line(err)}") from err


def _column_names(path: Path, kind: str) -> list[str]:
    if path.is_dir():
        return _folder_names(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pyarrow.csv as pacsv

    with pacsv.open_csv(path) as reader:  # reads the header and the first block only
        return list(reader.schema.names)


def _folder_names(path: Path) -> list[str]:
    """The columns of a folder's parts (and of its ``key=value`` folders).

    Raises:
        SchemaError: two parts hold different columns (the folder is not one table).
    """
    import pyarrow.parquet as pq

    parts = parquet_parts(path)
    first = set(pq.read_schema(parts[0]).names)
    for part in parts[1:]:
        names = set(pq.read_schema(part).names)
        if names != first:
            raise SchemaError(f"{path.name}: its parts are not one table: {part.relative_to(path)} has "
                              f"{_shown(sorted(names))}; {parts[0].relative_to(path)} has {_shown(sorted(first))}")
    return list(_folder(path).schema.names)


def _folder(path: Path) -> Any:
    """The folder's Parquet files as one ``pyarrow.dataset`` (``key=value`` folders as columns)."""
    import pyarrow.dataset as pds

    return pds.dataset([str(p) for p in parquet_parts(path)], format="parquet",
                       partitioning=pds.partitioning(flavor="hive"), partition_base_dir=str(path))


def _read(path: Path, kind: str, columns: list[str], text: Sequence[str] = ()) -> pa.Table:
    if path.is_dir():
        return _folder(path).to_table(columns=columns)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns)
    import pyarrow.csv as pacsv

    # an empty cell is a missing value, in a text column too (as in Parquet written from a data frame)
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        include_columns=columns, strings_can_be_null=True, column_types={c: pa.string() for c in text}))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _shown(names: Sequence[str], limit: int = 12) -> str:
    head = ", ".join(repr(n) for n in names[:limit])
    return f"{len(names)} columns: {head}{', ...' if len(names) > limit else ''}" if names else "no columns"
