"""Catalogue changes while the server runs: a versioned, atomic change log beside the repository.

Owns: the change log ``<repository>/catalogue/<version>.json`` (version 1, 2, ... each one change:
items blocked, unblocked, added or updated), its validation (a bad change is refused whole, and
nothing is written), and folding changes into a :class:`serving.pipeline.catalogue.Catalogue`.
Every replica applies new changes within a fraction of a second (``serving.repository.followers``);
a push of a user tower embeds the catalogue as changed so far. Must not touch: Triton, requests.

Item ids are row numbers: added items take the next ids, in the order of the change. Feature
values are in the units of the serving tables (``serving.pipeline.features``): the categorical
ids ``category``, ``shop``, ``brand``, ``price_bucket`` (>= 1), the standardised numbers
``log_price``, ``rating``, ``log_popularity``, and ``dense`` (the content vector).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    """One catalogue change; ``add`` and ``update`` rows are dicts of :data:`ITEM_FIELDS` (update
    rows also name their ``item_id``)."""

    version: int
    first_id: int  # the id of the first added item (the catalogue's size before this change)
    block: tuple[int, ...] = ()
    unblock: tuple[int, ...] = ()
    add: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()
    at: float = field(default_factory=time.time)
    since: int = -1  # a compacted change stands for every change after ``since`` up to ``version`` (-1: version - 1)

    def to_json(self) -> dict[str, Any]:
        out = {"version": self.version, "first_id": self.first_id, "at": self.at, "block": list(self.block),
               "unblock": list(self.unblock), "add": list(self.add), "update": list(self.update)}
        if self.since != self.version - 1:  # a compacted change: the changes it stands for
            out["since"] = self.since
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(int(d["version"]), int(d["first_id"]), tuple(d.get("block", ())), tuple(d.get("unblock", ())),
                   tuple(d.get("add", ())), tuple(d.get("update", ())), float(d.get("at", 0.0)),
                   int(d.get("since", d["version"] - 1)))

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
        if not isinstance(base, FeatureTables):  # the change format holds the demo's columns and row ids
            raise ValidationError("catalogue changes are taken for the demo's catalogue only: an imported data set's "
                                  "items change by importing it again", field="items")
        with self._lock():
            last = self.read(self.version) if self.version else None
            current = last.first_id + len(last.add) if last else base.n_items
            change = Change(self.version + 1, current, tuple(_ids(block, current, "block")),
                            tuple(_ids(unblock, current, "unblock")),
                            tuple(_rows(add, base, need_id=False)), tuple(_rows(update, base, need_id=True, n=current)))
            if not (change.block or change.unblock or change.add or change.update):
                raise ValidationError("the change is empty", field="items")
            atomic_write_text(self.dir / f"{change.version:06d}.json", json.dumps(change.to_json()))
        if len(self.versions()) > 2 * COMPACT_KEEP:
            self.compact()
        return change


def read_item_rows(path: str | Path) -> list[dict[str, Any]]:
    """Item rows from a JSON array (or ``{"items": [...]}``) or a JSON-lines file.

    Raises:
        ValidationError: the file is missing or does not parse, with the line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValidationError(f"cannot read {path}: {err.strerror}", field="file") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValidationError(f"{path} line {n}: not JSON ({err.msg})", field="file") from err
    if isinstance(data, dict):
        data = data.get("items", [data])
    if not isinstance(data, list):
        raise ValidationError(f"{path}: expected a JSON array of items", field="file")
    return data


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
            if i >= first.first_id:  # an item added by one of these changes: its row holds the update
                add[i - first.first_id].update(fields)
            else:
                updates.setdefault(i, {"item_id": i}).update(fields)
    return Change(changes[-1].version, first.first_id, tuple(sorted(i for i, b in state.items() if b)),
                  tuple(sorted(i for i, b in state.items() if not b)), tuple(add), tuple(updates.values()),
                  changes[-1].at, since=first.since)


def apply_change(cat: Catalogue, change: Change) -> Catalogue:
    """The catalogue after ``change`` (a new value; ``cat`` and its tables are not modified).

    Only the item tables a change touches are rewritten, and added items are appended into spare
    rows (``serving.pipeline.catalogue.grown``), so a change costs what it changes, not the size of
    the catalogue."""
    t = cat.tables
    rooms = dict(cat.rooms)
    if change.add or change.update:
        tables: dict[str, tuple[np.ndarray, Sequence[str]]] = {
            "item_cat": (t.item_cat, ITEM_CAT_FIELDS), "item_num": (t.item_num, ITEM_NUM_FIELDS)}
        new: dict[str, np.ndarray] = {}
        for name, (table, cols) in tables.items():
            updates: dict[int, np.ndarray] = {}
            for row in change.update:
                if any(c in row for c in cols):
                    i = row["item_id"]
                    cur = updates.setdefault(i, table[i].copy())
                    for j, c in enumerate(cols):
                        if c in row:
                            cur[j] = row[c]
            added = np.asarray([[r[c] for c in cols] for r in change.add], dtype=table.dtype).reshape(-1, len(cols))
            new[name] = _changed(table, name, rooms, added, updates)
        dense_updates = {row["item_id"]: np.asarray(row["dense"], dtype=np.float32)
                         for row in change.update if "dense" in row}
        added = np.asarray([r["dense"] for r in change.add], dtype=np.float32).reshape(-1, t.item_vec.shape[1])
        new["item_dense"] = _changed(t.item_vec, "item_dense", rooms, added, dense_updates)
        if not isinstance(t, FeatureTables):
            raise ValidationError("catalogue changes in these columns apply to the demo's tables only", field="items")
        t = t.with_items(new["item_cat"], new["item_num"], new["item_dense"])
    blocked = np.zeros(t.n_items, dtype=bool)
    blocked[: cat.blocked.size] = cat.blocked
    blocked[list(change.block)] = True
    blocked[list(change.unblock)] = False
    blocked.setflags(write=False)
    return Catalogue(t, blocked, change.version, rooms)


def _changed(table: np.ndarray, name: str, rooms: dict[str, Room], added: np.ndarray,
             updates: dict[int, np.ndarray]) -> np.ndarray:
    """``table`` with ``updates`` and ``added``; itself when neither (``rooms`` is updated)."""
    if not updates and not added.size:
        return table
    view, rooms[name] = grown(table, rooms.get(name), added, updates)
    return view
