"""Catalogue changes while the server runs: a versioned, atomic change log beside the repository.

Owns: the change log ``<repository>/catalogue/<version>.json`` (version 1, 2, ... each one change:
items blocked, unblocked, added or updated), its validation (a bad change is refused whole, and
nothing is written), and folding changes into a :class:`serving.pipeline.catalogue.Catalogue`.
Every replica applies new changes within a fraction of a second (``serving.repository.followers``);
a push of a user tower embeds the catalogue as changed so far. Must not touch: Triton, requests.

A change names items by row: added items take the next rows, in the order of the change. The
demo's rows are its ids; its feature values are in the units of the serving tables
(``serving.pipeline.features``): the categorical ids ``category``, ``shop``, ``brand``,
``price_bucket`` (>= 1), the standardised numbers ``log_price``, ``rating``, ``log_popularity``,
and ``dense`` (the content vector). An imported data set's change (:meth:`ChangeLog.append_items`)
takes the schema's ids and its columns encoded as the import encoded them
(``serving.data.changes``); it records the added items' ids (``ids``), so that every replica's id
lookup grows with its tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.data.changes import GROUP_VALUE_KEY, POPULARITY_KEY, ItemRows
from serving.data.read import read_json_rows
from serving.data.tables import DataTables
from serving.errors import ValidationError
from serving.files import atomic_write_text, report_damage
from serving.pipeline.catalogue import Catalogue, Room, grown
from serving.pipeline.features import ITEM_CAT_FIELDS, ITEM_NUM_FIELDS, FeatureTables

__all__ = ["COMPACT_KEEP", "ITEM_FIELDS", "Change", "ChangeLog", "CompactedError", "apply_change", "fold_changes",
           "read_item_rows"]

ITEM_FIELDS = (*ITEM_CAT_FIELDS, *ITEM_NUM_FIELDS, "dense")
_DIR = "catalogue"
COMPACT_KEEP = 100  # changes left as they are when the log is compacted (it is, past twice as many)


class CompactedError(ValueError):
    """A compacted change covers the version a reader has: it must start from the built catalogue."""


@dataclass(frozen=True)
class Change:
    """One catalogue change; ``add`` and ``update`` rows are dicts of :data:`ITEM_FIELDS` (the
    demo's) or of an imported data set's encoded columns and :data:`~serving.data.changes.POPULARITY_KEY`;
    update rows also name their row, ``item_id``."""

    version: int
    first_id: int  # the id of the first added item (the catalogue's size before this change)
    block: tuple[int, ...] = ()
    unblock: tuple[int, ...] = ()
    add: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()
    at: float = field(default_factory=time.time)
    since: int = -1  # a compacted change stands for every change after ``since`` up to ``version`` (-1: version - 1)
    ids: tuple[int | str, ...] = ()  # an imported data set's: the ids of the added items (the demo's are their rows)

    def to_json(self) -> dict[str, Any]:
        out = {"version": self.version, "first_id": self.first_id, "at": self.at, "block": list(self.block),
               "unblock": list(self.unblock), "add": list(self.add), "update": list(self.update)}
        if self.since != self.version - 1:  # a compacted change: the changes it stands for
            out["since"] = self.since
        if self.ids:
            out["ids"] = list(self.ids)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(int(d["version"]), int(d["first_id"]), tuple(d.get("block", ())), tuple(d.get("unblock", ())),
                   tuple(d.get("add", ())), tuple(d.get("update", ())), float(d.get("at", 0.0)),
                   int(d.get("since", d["version"] - 1)), tuple(d.get("ids", ())))

    def __post_init__(self) -> None:
        if self.since < 0:
            object.__setattr__(self, "since", self.version - 1)

    @property
    def first_version(self) -> int:
        """The first change this one stands for (itself, unless it was compacted)."""
        return self.since + 1

    @property
    def added_ids(self) -> tuple[int, ...]:
        return tuple(range(self.first_id, self.first_id + len(self.add)))

    @property
    def embedded(self) -> tuple[int, ...]:
        """Items whose embedding this change sets: the added and the updated ones."""
        return (*self.added_ids, *(int(r["item_id"]) for r in self.update))


class ChangeLog:
    """The change log of one repository."""

    def __init__(self, repo: Path) -> None:
        self.dir = Path(repo) / _DIR

    def versions(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.dir.glob("*.json") if p.stem.isdigit())

    @property
    def version(self) -> int:
        """The latest change's version (0: none yet)."""
        v = self.versions()
        return v[-1] if v else 0

    def read(self, version: int) -> Change:
        return Change.from_json(json.loads((self.dir / f"{version:06d}.json").read_text()))

    def since(self, version: int) -> list[Change]:
        """The changes after ``version``, oldest first.

        Raises:
            CompactedError: a compacted change covers ``version`` (it stands for changes before
                and after it): start again from the built catalogue.
        """
        out = []
        for v in self.versions():
            if v <= version:
                continue
            try:
                out.append(self.read(v))
            except (OSError, ValueError, KeyError, TypeError) as err:  # damaged: stop before it, keep what came
                report_damage(f"catalogue change {v} cannot be read ({err or 'empty'}); changes from {v} on wait "
                              "until it is fixed")
                break
        if out and out[0].first_version <= version:
            raise CompactedError(f"changes {out[0].first_version}..{out[0].version} were compacted; version "
                                 f"{version} lies inside them")
        return out

    def current(self, base: DataTables) -> Catalogue:
        """The catalogue ``base`` (the built tables) after every change so far."""
        return self.follow(Catalogue.initial(base))

    def embedded_since(self, version: int, upto: int) -> np.ndarray:
        """Items whose embedding changed after ``version``, up to change ``upto`` (sorted ids; a
        compacted change that covers ``version`` gives all it stands for: embedding an item again
        costs time, not correctness)."""
        changes = [self.read(v) for v in self.versions() if v > version]
        ids = {i for c in changes if c.version <= upto for i in c.embedded}
        return np.asarray(sorted(ids), dtype=np.int64)

    def follow(self, cat: Catalogue) -> Catalogue:
        """``cat`` after the changes it has not seen."""
        for change in self.since(cat.version):
            cat = apply_change(cat, change)
        return cat

    def compact(self, *, keep: int = COMPACT_KEEP) -> Change | None:
        """Fold every change but the latest ``keep`` into one (the log stays short however long a
        catalogue lives); returns the folded change, None when there was nothing to fold. Applying
        the folded change to the built catalogue gives what applying each one did. A replica whose
        catalogue lies inside the folded range starts again from the built catalogue
        (:class:`CompactedError`); ``keep`` makes that rare (replicas lag by a poll)."""
        with self._lock():
            versions = self.versions()
            if len(versions) <= keep + 1:
                return None
            folded_versions = versions[: len(versions) - keep]
            changes = [self.read(v) for v in folded_versions]
            folded = fold_changes(changes)
            atomic_write_text(self.dir / f"{folded.version:06d}.json", json.dumps(folded.to_json()))
            for v in folded_versions[:-1]:
                (self.dir / f"{v:06d}.json").unlink(missing_ok=True)
            return folded

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)  # changes queue up: none is lost, none is numbered twice
            yield

    def append(self, base: DataTables, *, block: Sequence[int] = (), unblock: Sequence[int] = (),
               add: Sequence[dict[str, Any]] = (), update: Sequence[dict[str, Any]] = ()) -> Change:
        """Validate a change against the catalogue as changed so far and write it as the next version.

        Raises:
            ValidationError: naming the first problem (unknown or duplicate ids, wrong columns, NaN);
                nothing is written.
        """
        if not isinstance(base, FeatureTables):  # this form holds the demo's columns and row ids
            raise ValidationError("an imported data set's catalogue changes in its schema's ids and columns "
                                  "(ChangeLog.append_items)", field="items")
        def change() -> Change:
            last = self.read(self.version) if self.version else None
            current = last.first_id + len(last.add) if last else base.n_items
            return Change(self.version + 1, current, tuple(_ids(block, current, "block")),
                          tuple(_ids(unblock, current, "unblock")),
                          tuple(_rows(add, base, need_id=False)), tuple(_rows(update, base, need_id=True, n=current)))

        return self._write(change)

    def append_items(self, base: DataTables, *, block: Sequence[int | str] = (), unblock: Sequence[int | str] = (),
                     add: ItemRows | None = None, update: ItemRows | None = None) -> Change:
        """:meth:`append` in an imported data set's terms: ids are the schema's (``serving.data.changes.parse_ids``),
        rows come encoded (``serving.data.changes.encode_item_rows``). Checked against the catalogue
        as changed so far.

        Raises:
            ValidationError: an unknown or duplicate id to block or unblock, an add of an id the
                catalogue holds or an update of one it does not (naming the file, column and row);
                nothing is written.
        """
        def change() -> Change:
            tables = self.current(base).tables
            add_rows = _new_items(add, tables) if add is not None else []
            update_rows = _updated_items(update, tables) if update is not None else []
            return Change(self.version + 1, tables.n_items, tuple(_known(block, tables, "block")),
                          tuple(_known(unblock, tables, "unblock")), tuple(add_rows), tuple(update_rows),
                          ids=add.ids if add is not None else ())

        return self._write(change)

    def _write(self, make: Callable[[], Change]) -> Change:
        """The change ``make`` validates against the log as it stands, under the lock, written as
        the next version (the log compacted when it has grown long)."""
        with self._lock():
            change = make()
            if not (change.block or change.unblock or change.add or change.update):
                raise ValidationError("the change is empty", field="items")
            atomic_write_text(self.dir / f"{change.version:06d}.json", json.dumps(change.to_json()))
        if len(self.versions()) > 2 * COMPACT_KEEP:
            self.compact()
        return change


def _known(ids: Sequence[int | str], tables: DataTables, what: str) -> list[int]:
    """The rows of ``ids`` (the schema's), each known and named once."""
    rows, known = tables.item_rows(list(ids))
    if not known.all():
        raise ValidationError(f"{what}: unknown item id(s) {[i for i, k in zip(ids, known, strict=True) if not k][:5]}",
                              field=what)
    if len(set(rows.tolist())) != len(rows):
        raise ValidationError(f"{what}: duplicate item ids", field=what)
    return [int(r) for r in rows]


def _new_items(items: ItemRows, tables: DataTables) -> list[dict[str, Any]]:
    _, known = tables.item_rows(list(items.ids))
    if known.any():
        r = int(np.flatnonzero(known)[0])
        raise ValidationError(f"{items.file}: column {items.id_column!r}, row {r}: the item {items.ids[r]!r} is in "
                              "the catalogue already (add takes new items; update changes one)", field="items")
    return items.rows(tables)


def _updated_items(items: ItemRows, tables: DataTables) -> list[dict[str, Any]]:
    rows, known = tables.item_rows(list(items.ids))
    if not known.all():
        r = int(np.flatnonzero(~known)[0])
        raise ValidationError(f"{items.file}: column {items.id_column!r}, row {r}: no item {items.ids[r]!r} in the "
                              "catalogue (update changes items it holds; add takes new ones)", field="items")
    return [{"item_id": int(i), **row} for i, row in zip(rows, items.rows(tables), strict=True)]


def read_item_rows(path: str | Path) -> list[dict[str, Any]]:
    """Item rows from a JSON array (or ``{"items": [...]}``) or a JSON-lines file.

    Raises:
        ValidationError: the file is missing or does not parse, with the line.
    """
    return read_json_rows(Path(path), ValidationError)


def _ids(ids: Sequence[Any], n_items: int, what: str) -> list[int]:
    out = []
    for raw in ids:
        if isinstance(raw, bool) or not isinstance(raw, int) and not (isinstance(raw, str) and raw.isdigit()):
            raise ValidationError(f"{what}: item id {raw!r} is not an integer", field=what)
        out.append(int(raw))
    bad = [i for i in out if not 0 <= i < n_items]
    if bad:
        raise ValidationError(f"{what}: unknown item id(s) {bad[:5]} (ids are 0..{n_items - 1})", field=what)
    if len(set(out)) != len(out):
        raise ValidationError(f"{what}: duplicate item ids", field=what)
    return out


def _rows(rows: Sequence[dict[str, Any]], base: DataTables, *, need_id: bool, n: int = 0) -> list[dict[str, Any]]:
    """Rows with exactly the item columns (all of them to add; some, and ``item_id``, to update)."""
    out, seen = [], set()
    for k, row in enumerate(rows):
        where = f"row {k + 1}"
        if not isinstance(row, dict):
            raise ValidationError(f"{where}: expected an object of item columns", field="items")
        if not need_id and "item_id" in row:
            raise ValidationError(f"{where}: new items take the next ids; drop item_id", field="items")
        cols = set(row) - {"item_id"}
        unknown = cols - set(ITEM_FIELDS)
        if unknown:
            raise ValidationError(f"{where}: unknown column(s) {sorted(unknown)}; columns are {list(ITEM_FIELDS)}",
                                  field="items")
        if not need_id and cols != set(ITEM_FIELDS):
            raise ValidationError(f"{where}: a new item needs every column; missing {sorted(set(ITEM_FIELDS) - cols)}",
                                  field="items")
        typed = _typed(row, base, where)
        if need_id:
            if "item_id" not in row:
                raise ValidationError(f"{where}: an update names its item_id", field="items")
            (item,) = _ids([row["item_id"]], n, "update")
            if item in seen:
                raise ValidationError(f"{where}: duplicate item id {item}", field="items")
            seen.add(item)
            typed["item_id"] = item
        out.append(typed)
    return out


def _typed(row: dict[str, Any], base: DataTables, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in ITEM_CAT_FIELDS:
        if col in row:
            v = row[col]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"{where}: {col} must be an integer id >= 1, got {v!r}", field="items")
            out[col] = int(v)
    for col in ITEM_NUM_FIELDS:
        if col in row:
            out[col] = _finite(row[col], f"{where}: {col}")
    if "dense" in row:
        d = row["dense"]
        if not isinstance(d, list) or len(d) != base.item_vec.shape[1]:
            raise ValidationError(f"{where}: dense must be a list of {base.item_vec.shape[1]} numbers", field="items")
        out["dense"] = [_finite(x, f"{where}: dense") for x in d]
    return out


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValidationError(f"{what} must be a finite number, got {v!r}", field="items")
    return float(v)


def fold_changes(changes: Sequence[Change]) -> Change:
    """One change that does what ``changes`` (consecutive, oldest first) do, in order: the items
    they add (with the updates made to them since folded in), the updates of older items (later
    values winning), and each touched item's last block or unblock."""
    first = changes[0]
    add = [dict(r) for c in changes for r in c.add]
    updates: dict[int, dict[str, Any]] = {}
    state: dict[int, bool] = {}
    for c in changes:
        for i in c.block:
            state[int(i)] = True
        for i in c.unblock:
            state[int(i)] = False
        for row in c.update:
            i = int(row["item_id"])
            fields = {k: v for k, v in row.items() if k != "item_id"}
            # an item added by one of these changes: its row holds the update
            target = add[i - first.first_id] if i >= first.first_id else updates.setdefault(i, {"item_id": i})
            for k in fields:  # a group value given again: an unseen value given before no longer holds
                target.pop(GROUP_VALUE_KEY + k, None)
            target.update(fields)
    return Change(changes[-1].version, first.first_id, tuple(sorted(i for i, b in state.items() if b)),
                  tuple(sorted(i for i, b in state.items() if not b)), tuple(add), tuple(updates.values()),
                  changes[-1].at, since=first.since, ids=tuple(i for c in changes for i in c.ids))


def apply_change(cat: Catalogue, change: Change) -> Catalogue:
    """The catalogue after ``change`` (a new value; ``cat`` and its tables are not modified).

    Only the item tables a change touches are rewritten, and added items are appended into spare
    rows (``serving.pipeline.catalogue.grown``), so a change costs what it changes, not the size of
    the catalogue."""
    t = cat.tables
    rooms = dict(cat.rooms)
    if change.add or change.update:
        t = _changed_tables(t, change, rooms)
    blocked = np.zeros(t.n_items, dtype=bool)
    blocked[: cat.blocked.size] = cat.blocked
    blocked[list(change.block)] = True
    blocked[list(change.unblock)] = False
    blocked.setflags(write=False)
    return Catalogue(t, blocked, change.version, rooms)


def _changed_tables(t: DataTables, change: Change, rooms: dict[str, Room]) -> DataTables:
    """``t`` with the rows ``change`` adds and updates (``rooms`` is updated). The demo's rows name
    its columns and ``dense``; a data set's, its schema's columns and :data:`POPULARITY_KEY`."""
    demo = isinstance(t, FeatureTables)
    spec = t.schema.items
    vectors = {"dense": slice(0, t.item_vec.shape[1])} if demo else {v: t.item_vec_slice(v) for v in spec.vectors}
    new = {"item_cat": _column_changes(t.item_cat, spec.categorical, change, "item_cat", rooms),
           "item_num": _column_changes(t.item_num, spec.numeric, change, "item_num", rooms)}
    dense_updates: dict[int, np.ndarray] = {}
    for row in change.update:
        if any(v in row for v in vectors):
            cur = dense_updates.setdefault(row["item_id"], t.item_vec[row["item_id"]].copy())
            for v, cols in vectors.items():
                if v in row:
                    cur[cols] = row[v]
    added = np.zeros((len(change.add), t.item_vec.shape[1]), dtype=np.float32)
    for k, r in enumerate(change.add):
        for v, cols in vectors.items():
            added[k, cols] = r[v]
    new["item_dense"] = _changed(t.item_vec, "item_dense", rooms, added, dense_updates)
    groups, group_vocab = _group_changes(t, change, rooms)
    if isinstance(t, FeatureTables):
        return t.with_items(new["item_cat"], new["item_num"], new["item_dense"], item_groups=groups)
    pop_updates = {row["item_id"]: np.asarray(row[POPULARITY_KEY], np.float32) for row in change.update if POPULARITY_KEY in row}
    pop = _changed(t.popularity, "popularity", rooms,
                   np.asarray([r.get(POPULARITY_KEY, 0.0) for r in change.add], dtype=np.float32), pop_updates)
    ids = _changed(t.item_ids, "item_ids", rooms, np.asarray(list(change.ids), dtype=t.item_ids.dtype), {})
    return t.with_item_tables(ids, new["item_cat"], new["item_num"], new["item_dense"], pop, appended=True,
                              item_groups=groups, group_vocab=group_vocab)


def _group_changes(t: DataTables, change: Change,
                   rooms: dict[str, Room]) -> tuple[np.ndarray, dict[str, dict[object, int]] | None]:
    """The item groups' codes with the rows ``change`` adds and updates, and the group vocabularies
    (None: unchanged). A row's group value that the import never saw (given as
    ``GROUP_VALUE_KEY + group``, its model code 0) gets a code of its own, the next free one, in
    the order of the log: every replica that applies the same log gives the same codes."""
    names = t.schema.items.groups
    vocab: dict[str, dict[object, int]] | None = None  # copied at the first new value
    free: dict[str, int] = {}

    def code(row: dict[str, Any], g: str) -> int:
        nonlocal vocab
        raw = row.get(GROUP_VALUE_KEY + g)
        if raw is None:
            return int(row[g])
        held = (t.group_vocab if vocab is None else vocab)[g]
        if raw in held:
            return int(held[raw])
        if vocab is None:
            vocab = {name: dict(values) for name, values in t.group_vocab.items()}
        if g not in free:
            free[g] = max(vocab[g].values(), default=0) + 1
        vocab[g][raw], free[g] = free[g], free[g] + 1
        return vocab[g][raw]

    updates: dict[int, np.ndarray] = {}
    for row in change.update:
        for j, g in enumerate(names):
            if g in row:
                updates.setdefault(row["item_id"], t.item_groups[row["item_id"]].copy())[j] = code(row, g)
    added = np.asarray([[code(r, g) for g in names] for r in change.add], dtype=np.int64).reshape(-1, len(names))
    return _changed(t.item_groups, "item_groups", rooms, added, updates), vocab


def _column_changes(table: np.ndarray, cols: Sequence[str], change: Change, name: str,
                    rooms: dict[str, Room]) -> np.ndarray:
    """One item table (``cols`` its columns) with the rows ``change`` adds and the values it updates."""
    updates: dict[int, np.ndarray] = {}
    for row in change.update:
        if any(c in row for c in cols):
            i = row["item_id"]
            cur = updates.setdefault(i, table[i].copy())
            for j, c in enumerate(cols):
                if c in row:
                    cur[j] = row[c]
    added = np.asarray([[r[c] for c in cols] for r in change.add], dtype=table.dtype).reshape(-1, len(cols))
    return _changed(table, name, rooms, added, updates)


def _changed(table: np.ndarray, name: str, rooms: dict[str, Room], added: np.ndarray,
             updates: dict[int, np.ndarray]) -> np.ndarray:
    """``table`` with ``updates`` and ``added``; itself when neither (``rooms`` is updated)."""
    if not updates and not added.shape[0]:  # rows, of any width (a schema may declare no vector)
        return table
    view, rooms[name] = grown(table, rooms.get(name), added, updates)
    return view
