"""DuckDB, the embedded engine the served log and the events are joined with.

Owns: the DuckDB connection (:func:`connect`), which files of a log folder a reader takes (every
whole ``*.parquet``, never a dot file: a writer's file being written), and the check of each file
before a query reads it (:func:`readable_files`): a file whose Parquet footer does not read, or
that lacks a column the reader needs, is *damaged*; it is left out and named, so that one torn
file never stops a join, and the caller decides whether that is a refusal (``rankserve log join``
refuses) or a count (the ``learn`` loop). Must not touch: what the queries compute (``join``),
writing any file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

__all__ = ["LogFiles", "connect", "parquet_files", "readable_files"]


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection (``threads``: its worker threads; None: DuckDB's default, one per core)."""
    con = duckdb.connect(":memory:")
    if threads is not None:
        con.execute(f"SET threads TO {int(threads)}")
    return con


def parquet_files(folder: Path) -> list[Path]:
    """The whole Parquet files of ``folder`` in name order (a missing folder: none); dot files are a
    writer's files being written, never read."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".") and p.is_file())


@dataclass(frozen=True)
class LogFiles:
    """One log folder's files: those a query may read, and the damaged ones with why."""

    folder: Path
    files: tuple[Path, ...]
    damaged: tuple[tuple[Path, str], ...] = ()
    rows: int = 0

    def describe_damaged(self) -> str:
        return "; ".join(f"{path.name}: {why}" for path, why in self.damaged)


def readable_files(folder: Path, columns: Sequence[str]) -> LogFiles:
    """The files of ``folder`` whose footer reads and whose schema holds ``columns``; the others as damaged.

    Only footers are read here (a few kB a file), so checking every file costs little.
    """
    good: list[Path] = []
    damaged: list[tuple[Path, str]] = []
    rows = 0
    for path in parquet_files(folder):
        try:
            meta = pq.ParquetFile(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a torn or foreign file
            damaged.append((path, f"not a readable Parquet file ({type(err).__name__}: {err})"))
            continue
        names = set(meta.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            damaged.append((path, f"lacks the column(s) {', '.join(missing)}"))
            continue
        good.append(path)
        rows += meta.metadata.num_rows
    return LogFiles(folder, tuple(good), tuple(damaged), rows)
