"""Reading a data set's input files: Parquet or CSV, chosen by the file's extension.

Owns: pyarrow's readers (``pyarrow.parquet``, ``pyarrow.csv``), the extensions they take, and
turning what they refuse (a missing file, one that does not parse, a missing column) into a
:class:`~serving.errors.SchemaError` that names the file. Reads only the columns asked for (a
Parquet file's others are never loaded). Must not touch: encoding (``serving.data.encode``), the
data set store, anything it does not read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from serving.errors import SchemaError

__all__ = ["EXTENSIONS", "file_kind", "read_table"]

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".csv.bz2": "csv"}


def file_kind(path: Path) -> str:
    """``parquet`` or ``csv``, by the file's extension.

    Raises:
        SchemaError: the extension is neither.
    """
    name = path.name.lower()
    for ext, kind in sorted(EXTENSIONS.items(), key=lambda e: -len(e[0])):
        if name.endswith(ext):
            return kind
    raise SchemaError(f"{path.name}: unknown file type: give a Parquet ({', '.join(_exts('parquet'))}) or a CSV "
                      f"({', '.join(_exts('csv'))}) file")


def _exts(kind: str) -> list[str]:
    return [e for e, k in EXTENSIONS.items() if k == kind]


def read_table(path: Path, columns: Sequence[str], *, optional: Sequence[str] = ()) -> pa.Table:
    """The columns ``columns`` (each required) and those of ``optional`` that the file holds, in
    that order, of the Parquet or CSV file ``path``.

    Raises:
        SchemaError: the file cannot be read or parsed, or lacks a column of ``columns``.
    """
    path = Path(path)
    kind = file_kind(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        names = _column_names(path, kind)
    except (OSError, pa.ArrowException) as err:
        raise SchemaError(f"{path.name}: cannot read it as {kind.upper()}: {_first_line(err)}") from err
    missing = [c for c in dict.fromkeys(columns) if c not in names]
    if missing:
        raise SchemaError(f"{path.name}: column {missing[0]!r} is missing (the schema declares it); the file has "
                          f"{_shown(names)}", field=missing[0])
    wanted = list(dict.fromkeys([*columns, *(c for c in optional if c in names)]))
    try:
        table = _read(path, kind, wanted)
    except (OSError, pa.ArrowException) as err:
        raise SchemaError(f"{path.name}: cannot read it as {kind.upper()}: {_first_line(err)}") from err
    return table.select(wanted)


def _column_names(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pyarrow.csv as pacsv

    with pacsv.open_csv(path) as reader:  # reads the header and the first block only
        return list(reader.schema.names)


def _read(path: Path, kind: str, columns: list[str]) -> pa.Table:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns)
    import pyarrow.csv as pacsv

    # an empty cell is a missing value, in a text column too (as in Parquet written from a data frame)
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _shown(names: Sequence[str], limit: int = 12) -> str:
    head = ", ".join(repr(n) for n in names[:limit])
    return f"{len(names)} columns: {head}{', ...' if len(names) > limit else ''}" if names else "no columns"
