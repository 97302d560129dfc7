"""Data sets on disk: each one's write-once versions, its live pointer and its model repository.

Owns: ``<data_dir>/datasets/<name>/`` (``serving.config.dataset_dir``): ``versions/<NNNNNN>/`` holding
``schema.yaml`` (the schema as imported), ``tables.npz`` (the encoded items and users, the cold
row included), ``ids.parquet`` (columns ``item_id`` and ``user_id`` in row order, of the schema's
id type; the shorter column ends in nulls: ``manifest.json`` has the counts), ``encoding.json``
(vocabularies, fills, means and standard deviations, counts), ``impressions.parquet`` and
``manifest.json`` (sizes, counts, the sha256 of each file, when, from which files); and
``live.json`` (``serving.files.write_state``), the version a reader takes. An import reads and
encodes everything before it writes anything, writes the version into a hidden folder beside
``versions/`` (every file fsynced, made read-only), renames it into place under a lock (the
number is the next one; a version folder is never written again) and then moves ``live.json``:
a refused or failed import leaves no version and no pointer change. :meth:`DataSet.append_impressions`
writes a version the same way from the live one (its files copied, ``base_version`` in the
manifest) with impressions added (those the served log's join labelled). A version's files are checked
against the manifest's sha256 before they are loaded. The demo's model repository is
``Settings.model_repository``; every other data set's is ``<name>/model_repository/``. Must not
touch: the model repository's content, serving, training.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from serving.config import DATA_NAME_PATTERN, DEMO_DATA, dataset_dir
from serving.data.encode import EncodedEntity, Fill, encode_entity
from serving.data.impressions import EncodedImpressions, encode_impressions, impression_columns
from serving.data.read import parquet_parts, read_table
from serving.data.schema import Schema, parse_schema
from serving.data.tables import DataTables
from serving.errors import ConfigError, IntegrityError, SchemaError, SetupError
from serving.files import file_sha256, fsync_dir, pid_alive, read_state, write_state

if TYPE_CHECKING:
    from serving.config import Settings

__all__ = ["DataSet", "DataSetStore", "FileRows", "ImportReport"]

_VERSIONS, _LIVE, _LOCK, _TEMP = "versions", "live.json", ".lock", ".import-"
SCHEMA, TABLES, IDS, ENCODING, IMPRESSIONS, MANIFEST = ("schema.yaml", "tables.npz", "ids.parquet", "encoding.json",
                                                       "impressions.parquet", "manifest.json")
_ARRAYS = ("item_cat", "item_num", "item_vec", "user_cat", "user_num", "user_vec", "popularity")


@dataclass(frozen=True)
class FileRows:
    """One input file: its rows read and kept."""

    role: str  # items, users, impressions
    path: Path
    rows_read: int
    rows_kept: int

    def line(self) -> str:
        return f"{self.path.name}: {self.rows_read:,} rows read, {self.rows_kept:,} kept"


@dataclass(frozen=True)
class ImportReport:
    """What an import did; :meth:`lines` is what ``rankserve data import`` prints."""

    name: str
    version: int
    folder: Path
    files: tuple[FileRows, ...]
    fills: tuple[Fill, ...]
    notes: tuple[str, ...]
    unknown_users: int
    unknown_items: int

    @property
    def impressions_dropped(self) -> int:
        imp = self.files[-1]
        return imp.rows_read - imp.rows_kept

    def lines(self) -> list[str]:
        out = [f.line() for f in self.files]
        if self.impressions_dropped:
            out.append(f"{self.files[-1].path.name}: {self.impressions_dropped:,} impression(s) dropped: "
                       f"{self.unknown_users:,} name an unknown user, {self.unknown_items:,} an unknown item")
        out += [f.line() for f in self.fills] + list(self.notes)
        out.append(f"data set {self.name!r}: version {self.version} written to {self.folder}; it is live")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"data_set": self.name, "version": self.version, "folder": str(self.folder),
                "files": [{"role": f.role, "path": str(f.path), "rows_read": f.rows_read, "rows_kept": f.rows_kept}
                          for f in self.files],
                "fills": [{"column": f.where, "nulls": f.nulls, "value": f.value, "kind": f.kind} for f in self.fills],
                "unknown_users": self.unknown_users, "unknown_items": self.unknown_items}


class DataSetStore:
    """Every data set under ``<data_dir>/datasets/``.

    Args:
        data_dir: ``Settings.data_dir``.
        demo_model_repository: the demo's model repository (``Settings.model_repository``); None:
            ``<data_dir>/datasets/demo/model_repository`` like any other.
    """

    def __init__(self, data_dir: Path, *, demo_model_repository: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = dataset_dir(self.data_dir, DEMO_DATA).parent  # the folder of every data set's folder
        self.demo_model_repository = demo_model_repository

    @classmethod
    def of(cls, settings: Settings) -> DataSetStore:
        return cls(settings.data_dir, demo_model_repository=settings.for_data(DEMO_DATA).model_repository)

    def names(self) -> list[str]:
        """The data sets that have a folder (imported at least once, or being imported)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and re.match(DATA_NAME_PATTERN, p.name))

    def dataset(self, name: str) -> DataSet:
        """The data set ``name`` (it need not exist yet: an import makes it).

        Raises:
            ConfigError: ``name`` is not a data set name.
        """
        if not re.match(DATA_NAME_PATTERN, name):
            raise ConfigError(f"data set name {name!r} is invalid: expected lower-case letters, digits, '_' and '-' "
                              "(at most 48, starting with a letter)")
        repo = self.demo_model_repository if name == DEMO_DATA and self.demo_model_repository else None
        return DataSet(name, dataset_dir(self.data_dir, name), repo)

    def listing(self) -> list[dict[str, Any]]:
        return [self.dataset(n).listing() for n in self.names()]


class DataSet:
    """One data set's folder: its versions, the live one, and its model repository."""

    def __init__(self, name: str, root: Path, model_repository: Path | None = None) -> None:
        self.name = name
        self.root = root
        self.model_repository = model_repository or root / "model_repository"

    def versions(self) -> list[int]:
        folder = self.root / _VERSIONS
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def version_dir(self, version: int) -> Path:
        return self.root / _VERSIONS / f"{version:06d}"

    def live_version(self) -> int | None:
        """The version ``live.json`` names (None: never imported). A damaged pointer falls back on its last good copy."""
        try:
            return read_state(self.root / _LIVE, lambda text: int(json.loads(text)["version"]))
        except ValueError as err:
            raise SetupError(f"data set {self.name!r}: {err}", hint="import it again (rankserve data import)") from err

    def _resolve(self, version: int | None) -> Path:
        v = self.live_version() if version is None else version
        if v is None:
            raise SetupError(f"data set {self.name!r} has no version under {self.root}",
                             hint=f"import one: rankserve data import {self.name} --schema ... --items ... "
                                  "--users ... --impressions ...")
        folder = self.version_dir(v)
        if not (folder / MANIFEST).is_file():
            raise SetupError(f"data set {self.name!r} has no version {v} (no {folder / MANIFEST})",
                             hint=f"its versions: {self.versions() or 'none'}")
        return folder

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        return dict(json.loads((self._resolve(version) / MANIFEST).read_text()))

    def _verified(self, version: int | None, *names: str) -> Path:
        """The version's folder, once ``names`` match the sha256 its manifest recorded.

        Raises:
            IntegrityError: a file differs from what was written, or is missing.
        """
        folder = self._resolve(version)
        try:
            recorded = {name: str(meta["sha256"]) for name, meta in
                        json.loads((folder / MANIFEST).read_text())["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise IntegrityError(f"data set {self.name!r}: {folder / MANIFEST} does not read ({err}): the version is "
                                 "not loaded", hint="import the data set again (a new version)") from err
        for name in names:
            path = folder / name
            if not path.is_file() or file_sha256(path) != recorded.get(name):
                raise IntegrityError(f"data set {self.name!r}: {path} differs from what the import wrote "
                                     "(sha256 mismatch, or missing): it is not loaded",
                                     hint="import the data set again (a new version)")
        return folder

    def schema(self, version: int | None = None) -> Schema:
        folder = self._verified(version, SCHEMA)
        return parse_schema((folder / SCHEMA).read_text(), str(folder / SCHEMA))

    def encoding(self, version: int | None = None) -> dict[str, Any]:
        return dict(json.loads((self._verified(version, ENCODING) / ENCODING).read_text()))

    def impressions(self, version: int | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self._verified(version, IMPRESSIONS) / IMPRESSIONS)

    def click_rate(self, version: int | None = None) -> float | None:
        """The mean label of the version's impressions (``None``: none, or the file does not read).
        Only the label column is read, unverified: a figure for a screen, not for serving."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            labels = pq.read_table(self._resolve(version) / IMPRESSIONS, columns=["label"]).column("label")
        except (OSError, KeyError, pa.ArrowException):
            return None
        return float(pc.mean(labels.cast(pa.float64())).as_py()) if len(labels) else None

    def tables(self, version: int | None = None) -> DataTables:
        """The version's encoded tables in memory (default: the live version).

        Raises:
            SetupError: no such version. IntegrityError: a file differs from what was written.
        """
        import pyarrow.parquet as pq

        folder = self._verified(version, SCHEMA, TABLES, IDS, ENCODING)
        schema = parse_schema((folder / SCHEMA).read_text(), str(folder / SCHEMA))
        enc = json.loads((folder / ENCODING).read_text())
        with np.load(folder / TABLES, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _ARRAYS}
        ids = pq.read_table(folder / IDS)
        item_ids = _ids(ids.column("item_id").slice(0, enc["items"]["rows"]))
        user_ids = _ids(ids.column("user_id").slice(0, enc["users"]["rows"]))
        return DataTables(schema, item_ids=item_ids, user_ids=user_ids, vocab=_vocab(schema, enc),
                          context_numeric=_context_numeric(enc), context_held=frozenset(enc["impressions"]["context"]),
                          **arrays)

    def listing(self) -> dict[str, Any]:
        """Its versions (number, when, rows, bytes), the live one, where it lives."""
        rows = []
        for v in self.versions():
            try:
                m = json.loads((self.version_dir(v) / MANIFEST).read_text())
            except (OSError, ValueError):
                rows.append({"version": v, "damaged": True})
                continue
            rows.append({"version": v, "created": m["created"], **m["rows"],
                         "bytes": sum(f["bytes"] for f in m["files"].values())})
        return {"name": self.name, "live": self.live_version(), "versions": rows, "folder": str(self.root),
                "model_repository": str(self.model_repository)}

    def import_files(self, schema: Schema, items: Path, users: Path, impressions: Path) -> ImportReport:
        """Read, check and encode the three files whole, then write them as the next version and make it live.

        Raises:
            SchemaError: a file or column refused (nothing written).
            SetupError: the version could not be written (nothing left of it, the live version unchanged).
        """
        items, users, impressions = Path(items), Path(users), Path(impressions)
        item_enc = encode_entity(read_table(items, schema.items.columns, ids=[schema.items.id]), schema.items,
                                 file=items.name, side="item")
        user_enc = encode_entity(read_table(users, schema.users.columns, ids=[schema.users.id]), schema.users,
                                 file=users.name, side="user")
        required, optional = impression_columns(schema)
        imp_ids = [schema.impressions.user, schema.impressions.item]
        imp = encode_impressions(read_table(impressions, required, optional=optional, ids=imp_ids), schema, item_enc, user_enc,
                                 file=impressions.name, items_file=items.name, users_file=users.name)
        sources = {"items": items, "users": users, "impressions": impressions}
        with self._lock():
            version = max(self.versions(), default=0) + 1
            folder = self._write(version, schema, item_enc, user_enc, imp, sources)
            write_state(self.root / _LIVE, json.dumps({"version": version}))
        files = (FileRows("items", items, item_enc.rows, item_enc.rows),
                 FileRows("users", users, user_enc.rows, user_enc.rows),
                 FileRows("impressions", impressions, imp.rows_read, imp.rows_kept))
        return ImportReport(self.name, version, folder, files, item_enc.fills + user_enc.fills + imp.fills,
                            item_enc.notes + user_enc.notes + imp.notes, imp.unknown_users, imp.unknown_items)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One import of this data set at a time; what a crashed one left is removed first."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _write_error(self.root, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for stale in self.root.glob(f"{_TEMP}*"):
                pid = stale.name[len(_TEMP):].split("-")[0]
                if pid.isdigit() and not pid_alive(int(pid)):
                    shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            os.close(fd)

    def _write(self, version: int, schema: Schema, items: EncodedEntity, users: EncodedEntity,
               imp: EncodedImpressions, sources: dict[str, Path]) -> Path:
        """The version of an import (see the module docstring)."""
        return self._commit(version, lambda tmp: _write_files(tmp, schema, items, users, imp),
                            rows={"items": items.rows, "users": users.rows, "impressions": imp.rows_kept},
                            sources={role: _source_facts(p) for role, p in sources.items()})

    def _commit(self, version: int, write_files: Callable[[Path], None], **manifest_fields: Any) -> Path:
        """``write_files`` into a hidden folder, the manifest beside them, then the folder renamed into place."""
        final = self.version_dir(version)
        tmp = self.root / f"{_TEMP}{os.getpid()}-{version:06d}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_files(tmp)
            manifest = {"data_set": self.name, "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        **manifest_fields,
                        "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                                  for p in sorted(tmp.iterdir())}}
            _durable(tmp / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2)))
            fsync_dir(tmp)
            final.parent.mkdir(exist_ok=True)
            if final.exists():  # never over a version: the lock makes this a sign of a hand-made folder
                raise FileExistsError(f"{final} exists")
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(self.root, err) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def append_impressions(self, rows: pa.Table, source: dict[str, Any], *, base: int) -> int:
        """A new version: the live version's schema, tables, ids and encoding, and its impressions
        followed by ``rows`` (of exactly the stored impressions' columns and types); made live.
        Written like an import (hidden folder, renamed into place, then the pointer moved).

        Args:
            rows: the impressions to add, already encoded (``user_row``, ``item_row``, ``label``, ...).
            source: what they came from, kept in the manifest (``sources``).
            base: the live version ``rows`` were encoded against.

        Returns:
            The new version's number.

        Raises:
            SetupError: the live version is no longer ``base`` (imported since), or the version could not be
                written (nothing left of it).
            IntegrityError: a file of the live version differs from what was written.
            SchemaError: ``rows`` are empty or not of the stored impressions' columns and types.
        """
        import pyarrow.parquet as pq

        with self._lock():
            if self.live_version() != base:
                raise SetupError(f"data set {self.name!r}: its live version moved from {base} to "
                                 f"{self.live_version()} meanwhile; nothing written", hint="run it again")
            folder = self._verified(base, SCHEMA, TABLES, IDS, ENCODING, IMPRESSIONS)
            old = pq.read_table(folder / IMPRESSIONS)
            if rows.num_rows == 0 or rows.schema != old.schema:
                raise SchemaError(f"data set {self.name!r}: impressions to add must be rows of {old.schema.names} "
                                  f"({old.schema.types}), got {rows.num_rows} of {rows.schema.names}")
            manifest = json.loads((folder / MANIFEST).read_text())
            both = pa.concat_tables([old, rows])

            def write_files(tmp: Path) -> None:
                for name in (SCHEMA, TABLES, IDS, ENCODING):
                    _durable(tmp / name, functools.partial(shutil.copyfile, folder / name))
                _durable(tmp / IMPRESSIONS, lambda path: pq.write_table(both, path))

            version = max(self.versions(), default=0) + 1
            self._commit(version, write_files, rows={**manifest["rows"], "impressions": both.num_rows},
                         base_version=base, sources={"appended": {**source, "rows": rows.num_rows}})
            write_state(self.root / _LIVE, json.dumps({"version": version}))
        return version


def _source_facts(path: Path) -> dict[str, Any]:
    """What the manifest records of an input: its path, bytes and sha256; for a folder of Parquet
    files, their count, total bytes and the sha256 of each part's relative name and sha256."""
    if not path.is_dir():
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    import hashlib

    parts = parquet_parts(path)
    h = hashlib.sha256()
    for part in parts:
        h.update(f"{part.relative_to(path).as_posix()}\0{file_sha256(part)}\n".encode())
    return {"path": str(path.resolve()), "files": len(parts), "bytes": sum(p.stat().st_size for p in parts),
            "sha256": h.hexdigest()}


def _write_error(root: Path, err: OSError) -> SetupError:
    return SetupError(f"cannot write the data set under {root}: {err.strerror or err}",
                      hint="check the free disk space, and that RANKSERVE_DATA_DIR is a folder this user may write")


def _durable(path: Path, write: Callable[[Path], object]) -> None:
    """``write(path)``, then the file fsynced and made read-only."""
    write(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o444)


def _write_files(folder: Path, schema: Schema, items: EncodedEntity, users: EncodedEntity,
                 imp: EncodedImpressions) -> None:
    """Every file of a version but its manifest."""
    import pyarrow.parquet as pq

    cold = lambda a: np.concatenate([a, np.zeros((1, *a.shape[1:]), a.dtype)])  # noqa: E731 - the cold-start user
    arrays = {"item_cat": items.cat, "item_num": items.num, "item_vec": items.vec, "user_cat": cold(users.cat),
              "user_num": cold(users.num), "user_vec": cold(users.vec),
              "popularity": items.popularity if items.popularity is not None else np.zeros(items.rows, np.float32)}
    _durable(folder / TABLES, lambda path: np.savez(path, **arrays))
    n = max(items.rows, users.rows)
    pad = lambda ids: pa.concat_arrays([ids, pa.nulls(n - len(ids), ids.type)])  # noqa: E731
    ids = pa.table({"item_id": pad(items.id_values), "user_id": pad(users.id_values)})
    _durable(folder / IDS, lambda path: pq.write_table(ids, path))
    _durable(folder / IMPRESSIONS, lambda path: pq.write_table(imp.table, path))
    _durable(folder / SCHEMA, lambda path: path.write_text(schema.to_yaml()))
    encoding = {"format": 1, "items": items.encoding, "users": users.encoding, "impressions": imp.encoding}
    _durable(folder / ENCODING, lambda path: path.write_text(json.dumps(encoding, indent=1, default=_json_value)))


def _json_value(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _ids(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64, copy=False)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _vocab(schema: Schema, enc: dict[str, Any]) -> dict[str, dict[object, int]]:
    """``item.brand``, ``user.region``, ``context.device`` -> value -> code (a context field the
    impressions did not hold: an empty vocabulary, every value 0)."""
    out: dict[str, dict[object, int]] = {}
    for side in ("item", "user"):
        for column, meta in enc[f"{side}s"]["categorical"].items():
            out[f"{side}.{column}"] = {v: i for i, v in enumerate(meta["values"], 1)}
    context = enc["impressions"]["context"]
    for field in schema.context.categorical:
        out[f"context.{field}"] = {v: i for i, v in enumerate(context.get(field, {}).get("values", []), 1)}
    return out


def _context_numeric(enc: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    return {f: (m["fill"], m["mean"], m["std"]) for f, m in enc["impressions"]["context"].items()
            if m["kind"] == "numeric"}
