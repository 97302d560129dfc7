"""One Parquet stream of rows, written off the request path.

Owns: :class:`ParquetStream`: a bounded buffer that callers offer rows to without waiting, a
background thread that turns them into Arrow tables and writes them, the files (written under a
hidden name, ``.<name>.tmp``, renamed into place when closed, so a reader globbing ``*.parquet``
only ever sees whole files), their rotation by size and by age, and the drain that writes what is
left and closes the file. Must not touch: what a row holds (the caller's ``to_table`` says), the
request path, metrics (the caller's callbacks count).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from serving.files import fsync_dir

__all__ = ["ParquetStream", "file_name"]

log = logging.getLogger("rankserve")

Row = TypeVar("Row")
_BATCH_ROWS = 4096  # rows that wake the writer before its flush interval is up


def file_name(kind: str, replica: str, opened: datetime, seq: int) -> str:
    """``<kind>-<replica>-<UTC yyyymmddTHHMMSSZ>-<seq:06d>.parquet``."""
    return f"{kind}-{replica}-{opened.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{seq:06d}.parquet"


def _close_at_exit(ref: weakref.ref[ParquetStream[Any]]) -> None:
    stream = ref()
    if stream is not None:
        stream.close()


class _OpenFile:
    """One file being written: a hidden name until :meth:`close` renames it into place."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema) -> None:
        self.final = folder / name
        self.tmp = folder / f".{name}.tmp"
        self.opened = time.monotonic()
        self.rows = 0
        self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    @property
    def size(self) -> int:
        return self.tmp.stat().st_size

    def close(self) -> Path:
        """Write the footer, make the file durable, rename it into place."""
        self._writer.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final


class ParquetStream(Generic[Row]):
    """Rows of one kind from one replica, into ``folder`` as Parquet files.

    Args:
        folder: where the files go (made if absent).
        kind: the files' first name part (``served``, ``events``).
        replica: this replica's name in file names (unique per process).
        schema: the files' schema; ``to_table`` builds tables of it.
        to_table: rows to one Arrow table (run on the writer's thread).
        capacity_rows: rows the buffer holds; :meth:`offer` refuses beyond it.
        rotate_bytes: a file is closed once it reaches this size...
        rotate_s: ...or this age.
        flush_s: longest time an offered row waits in memory before it is written.
        on_written: called with the number of rows of each table written.
        on_dropped: called with the number of rows refused or lost to a write error.
    """

    def __init__(self, folder: Path, kind: str, replica: str, schema: pa.Schema,
                 to_table: Callable[[Sequence[Row]], pa.Table], *, capacity_rows: int, rotate_bytes: int,
                 rotate_s: float, flush_s: float = 1.0, on_written: Callable[[int], None] = lambda n: None,
                 on_dropped: Callable[[int], None] = lambda n: None) -> None:
        if capacity_rows < 1 or rotate_bytes < 1 or rotate_s <= 0 or flush_s <= 0:
            raise ValueError(f"capacity_rows and rotate_bytes must be >= 1, rotate_s and flush_s > 0; got "
                             f"{capacity_rows}, {rotate_bytes}, {rotate_s}, {flush_s}")
        self.folder, self.kind, self.replica, self.schema = folder, kind, replica, schema
        self._to_table = to_table
        self.capacity_rows, self.rotate_bytes, self.rotate_s, self.flush_s = capacity_rows, rotate_bytes, rotate_s, flush_s
        self._on_written, self._on_dropped = on_written, on_dropped
        self._cond = threading.Condition()
        self._pending: list[Row] = []
        self._closing = False
        self._file: _OpenFile | None = None
        self._seq = 0
        self.closed_files: list[Path] = []  # every file this stream renamed into place, oldest first
        folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"rankserve-log-{kind}", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))  # a process exiting without close()

    # -- the caller's side (any thread, never waits for the disk) --------------------------------------------
    def offer(self, rows: Sequence[Row]) -> bool:
        """Take all of ``rows`` for writing, or none of them (False: the buffer has no room for them,
        or the stream is closed; they are counted as dropped)."""
        with self._cond:
            if self._closing or len(self._pending) + len(rows) > self.capacity_rows:
                fits = False
            else:
                self._pending.extend(rows)
                fits = True
                if len(self._pending) >= _BATCH_ROWS:
                    self._cond.notify()
        if not fits:
            self._on_dropped(len(rows))
        return fits

    @property
    def pending(self) -> int:
        """Rows offered and not yet written."""
        return len(self._pending)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write every row offered so far, close the file (renamed into place) and stop the thread.
        Rows offered afterwards are refused. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning(json.dumps({"event": "log_close_timeout", "stream": self.kind, "pending": self.pending}))

    # -- the writer's thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self._wait_s())
                rows, self._pending = self._pending, []
                closing = self._closing
            if rows:
                self._write(rows)
            if closing:
                self._close_file()
                return
            if self._file is not None and time.monotonic() - self._file.opened >= self.rotate_s:
                self._close_file()

    def _wait_s(self) -> float:
        if self._file is None:
            return self.flush_s
        return max(0.0, min(self.flush_s, self._file.opened + self.rotate_s - time.monotonic()))

    def _write(self, rows: list[Row]) -> None:
        try:
            table = self._to_table(rows)
            if self._file is None:
                name = file_name(self.kind, self.replica, datetime.now(timezone.utc), self._seq)
                self._seq += 1
                self._file = _OpenFile(self.folder, name, self.schema)
            self._file.write(table)
        except (OSError, pa.ArrowException, ValueError, TypeError) as err:
            self._on_dropped(len(rows))
            log.error(json.dumps({"event": "log_write_failed", "stream": self.kind, "rows": len(rows),
                                  "error": repr(err)}))
            return
        self._on_written(len(rows))
        if self._file.size >= self.rotate_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            self.closed_files.append(f.close())
        except (OSError, pa.ArrowException) as err:
            log.error(json.dumps({"event": "log_close_failed", "stream": self.kind, "file": str(f.tmp),
                                  "rows": f.rows, "error": repr(err)}))
