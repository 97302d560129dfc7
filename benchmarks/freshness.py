"""``rankserve freshness``: how long a catalogue change takes to reach the answers, under load.

Owns: the freshness benchmark and its report. Must not touch: the server's internals.

The server runs on a copy of the model repository (the benchmark's changes never reach the
user's catalogue). Recall requests run closed loop at ``concurrency`` throughout, each answer
recorded with the time it arrived and the catalogue version it carries. ``changes`` catalogue
changes are written one after another through the change log, as ``rankserve items`` writes
them, in turn: block 5 random popular items (the items answers hold), unblock them, update one
item (the demo's price and rating; an imported data set's first numeric column, else its
popularity; re-embedded with the item tower), add a new item (embedded and put in the index).
The requests and changes are those of the data set ``settings.data``. A change's delay is
from the moment its file is in place to the arrival of the first answer carrying its version or
a later one. Alongside: the load's request rate and failures, which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from serving.config import Settings
from serving.pipeline.features import ITEM_CAT_FIELDS, ITEM_NUM_FIELDS, FeatureTables
from serving.repository.catalogue import ChangeLog

__all__ = ["add_arguments", "add_timing_arguments", "closed_loop", "first_answer_delays", "freshness_report",
           "load_figures", "publish", "repository_copy", "run_freshness", "spread_ms", "timed_changes"]


def repository_copy(repo: Path) -> Path:
    """A scratch copy of ``repo`` without heartbeats or catalogue changes."""
    dest = Path(tempfile.mkdtemp(prefix="rankserve-freshness-")) / "model_repository"
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".*", "catalogue"))
    return dest


async def closed_loop(url: str, bodies: list[dict[str, Any]], stop: asyncio.Event, tally: dict[str, int],
                      concurrency: int, on_answer: Callable[[float, dict[str, Any]], None]) -> None:
    """``concurrency`` requests in flight, cycling through ``bodies``, until ``stop`` is set; each
    answer goes to ``on_answer(arrival time, answer)``; ``tally`` counts ``ok`` and ``failed``."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(i: int) -> None:
            n = i
            while not stop.is_set():
                n += concurrency
                try:
                    r = await client.post(f"{url}/v1/rank", json=bodies[n % len(bodies)])
                except httpx.HTTPError:
                    tally["failed"] += 1
                    continue
                if r.status_code != 200:
                    tally["failed"] += 1
                    continue
                tally["ok"] += 1
                on_answer(time.monotonic(), r.json())

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


def first_answer_delays(written: list[tuple[int, float]], seen: list[tuple[float, int]]) -> list[float]:
    """Per change: seconds from its file in place to the first answer carrying it (or later)."""
    seen = sorted(seen)
    t = np.asarray([s[0] for s in seen])
    v = np.asarray([s[1] for s in seen])
    out = []
    for version, at in written:
        hits = np.nonzero((t >= at) & (v >= version))[0]
        out.append(float(t[hits[0]] - at) if hits.size else float("inf"))
    return out


async def timed_changes(url: str, bodies: list[dict[str, Any]], on_answer: Callable[[float, dict[str, Any]], None],
                        change: Callable[[int], Awaitable[None]], *, changes: int, gap_s: float, concurrency: int,
                        settle_s: float, warm: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Time ``changes`` changes under load: :func:`closed_loop` over ``bodies`` at ``concurrency``
    throughout, each answer to ``on_answer``; ``warm()`` (when given) and ``settle_s`` seconds first,
    then ``change(i)`` for each change, ``gap_s`` apart, then 1 s more. Returns the load's figures:
    ``requests`` and ``failed`` of the whole run, ``rps`` answered while the changes were made, and
    ``concurrency`` and ``gap_s``."""
    stop, tally = asyncio.Event(), {"ok": 0, "failed": 0}
    load = asyncio.create_task(closed_loop(url, bodies, stop, tally, concurrency, on_answer))
    try:
        if warm is not None:
            await warm()
        await asyncio.sleep(settle_s)
        t0, ok0 = time.monotonic(), tally["ok"]
        for i in range(changes):
            await change(i)
            await asyncio.sleep(gap_s)
        await asyncio.sleep(1.0)
        wall = time.monotonic() - t0
    finally:
        stop.set()
        await load
    return {"requests": tally["ok"] + tally["failed"], "failed": tally["failed"], "rps": (tally["ok"] - ok0) / wall,
            "concurrency": concurrency, "gap_s": gap_s}


def load_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``load`` part of a freshness report, from :func:`timed_changes`' figures."""
    return {"requests": raw["requests"], "failed": raw["failed"], "rps": round(raw["rps"], 1),
            "concurrency": raw["concurrency"]}


class _DemoChanges:
    """The demo's changes: its rows as ids, its serving columns (price and rating updated, a copy
    of an item at another price added)."""

    def __init__(self, settings: Settings, log: ChangeLog) -> None:
        self.base, self.log = FeatureTables.load(settings.marketplace_path), log
        self.popular = [int(x) for x in np.argsort(-self.base.popularity)[:2000]]

    def bodies(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        return [{"user_id": int(u), "k": 20} for u in rng.integers(0, self.base.n_users, n)]

    def update(self, item: int | str, rng: np.random.Generator) -> dict[str, Any]:
        return {"update": [{"item_id": item, "log_price": float(rng.normal()), "rating": float(rng.normal())}]}

    def add(self, item: int | str, i: int, rng: np.random.Generator) -> dict[str, Any]:
        return {"add": [_copy_of(self.base, int(item), price=float(rng.normal()))]}

    def append(self, kw: dict[str, Any]) -> int:
        return self.log.append(self.base, **kw).version


class _DataSetChanges:
    """An imported data set's changes in its schema's terms (as ``rankserve items`` writes them):
    its ids; an update of its first numeric column (else its popularity) to a value drawn from the
    column's own mean and spread; an added item with a new id, the vectors of an existing one and
    nulls where the import fills."""

    def __init__(self, settings: Settings, log: ChangeLog) -> None:
        from serving.data.store import DataSetStore

        ds = DataSetStore.of(settings).dataset(settings.data)
        version = ds.live_version()
        self.settings, self.log = settings, log
        self.tables, self.encoding = ds.tables(version), ds.encoding(version)["items"]
        ids = log.current(self.tables).tables.item_ids  # the catalogue as changed so far: new ids after its own
        self.next_id = int(ids.max()) + 1 if ids.dtype != object else 0
        rows = np.argsort(-self.tables.popularity, kind="stable")[:2000]
        self.popular: list[int | str] = self.tables.item_ids[rows].tolist()
        self.row_of = dict(zip(self.popular, rows.tolist(), strict=True))

    def bodies(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        from loadtest.workload import request_bodies

        return [{**b, "k": 20} for b in request_bodies(self.settings, n, seed=int(rng.integers(1 << 31)))]

    def update(self, item: int | str, rng: np.random.Generator) -> dict[str, Any] | None:
        from serving.data.encode import NumericStats

        spec = self.tables.schema.items
        if spec.numeric:
            column, stats = spec.numeric[0], NumericStats.from_json(self.encoding["numeric"][spec.numeric[0]])
            value = stats.mean + stats.std * float(rng.normal())
        elif spec.popularity is not None:
            column, value = spec.popularity, float(rng.integers(0, 1000))
        else:
            return None  # no column a number can change: the turn adds an item instead
        return {"update": self._rows(pa.table({spec.id: [item], column: [value]}), add=False)}

    def add(self, item: int | str, i: int, rng: np.random.Generator) -> dict[str, Any]:
        spec, t = self.tables.schema.items, self.tables
        new_id: int | str = f"freshness-{i}" if t.item_ids.dtype == object else self.next_id + i
        row = self.row_of[item]
        columns: dict[str, pa.Array] = {spec.id: pa.array([new_id])}
        for name in (*spec.categorical, *spec.numeric):
            columns[name] = pa.nulls(1)
        for name in spec.vectors:
            columns[name] = pa.array([t.item_vec[row, t.item_vec_slice(name)].tolist()])
        if spec.popularity is not None:
            columns[spec.popularity] = pa.array([1.0])
        return {"add": self._rows(pa.table(columns), add=True)}

    def _rows(self, table: pa.Table, *, add: bool) -> Any:
        from serving.data.changes import encode_item_rows
        from serving.data.read import RowsFile

        return encode_item_rows(RowsFile("freshness", table), self.tables, self.encoding, add=add)

    def append(self, kw: dict[str, Any]) -> int:
        return self.log.append_items(self.tables, **kw).version


async def _run(url: str, settings: Settings, *, changes: int, gap_s: float, concurrency: int) -> dict[str, Any]:
    from serving.config import DEMO_DATA

    log = ChangeLog(settings.model_repository)
    plan = _DemoChanges(settings, log) if settings.data == DEMO_DATA else _DataSetChanges(settings, log)
    rng = np.random.default_rng(0)
    seen: list[tuple[float, int]] = []
    bodies = plan.bodies(rng, 5000)
    popular = plan.popular
    written: list[tuple[int, float]] = []
    kinds: list[str] = []
    blocked: list[Any] = []

    async def warm() -> None:
        # a replica loads its item tower on the first change it sees (not at start-up, where importing
        # torch would slow every request): one change first, as a catalogue that changes has had
        await asyncio.to_thread(plan.append, {"block": [popular[-1]]})
        await asyncio.to_thread(plan.append, {"unblock": [popular[-1]]})

    async def change(i: int) -> None:
        nonlocal blocked
        kind = ("block", "unblock", "update", "add")[i % 4]
        item = popular[int(rng.integers(len(popular)))]
        kw = plan.update(item, rng) if kind == "update" else None
        if kind == "block":
            blocked = [popular[int(j)] for j in rng.choice(len(popular), 5, replace=False)]
            kw = {"block": blocked}
        elif kind == "unblock":
            kw = {"unblock": blocked}
        elif kw is None:
            kind, kw = "add", plan.add(item, i, rng)
        written.append((await asyncio.to_thread(plan.append, kw), time.monotonic()))
        kinds.append(kind)

    load = await timed_changes(url, bodies, lambda t, a: seen.append((t, int(a["catalogue_version"]))), change,
                               changes=changes, gap_s=gap_s, concurrency=concurrency, settle_s=8.0, warm=warm)
    return {"delays": first_answer_delays(written, seen), "kinds": kinds, **load}


def _copy_of(base: FeatureTables, item: int, *, price: float) -> dict[str, Any]:
    """A new item: ``item``'s features at another (standardised) price."""
    row: dict[str, Any] = {c: int(base.item_cat[item, j]) for j, c in enumerate(ITEM_CAT_FIELDS)}
    row.update({c: float(base.item_num[item, j]) for j, c in enumerate(ITEM_NUM_FIELDS)})
    row["log_price"] = price
    row["dense"] = [float(x) for x in base.item_dense[item]]
    return row


def freshness_report(raw: dict[str, Any], *, target_s: float = 2.0, unit: str = "") -> dict[str, Any]:
    d = np.asarray(raw["delays"])
    kinds = np.asarray(raw["kinds"])
    by_kind = {k: {"p50_s": round(float(np.median(d[kinds == k])), 3), "max_s": round(float(d[kinds == k].max()), 3)}
               for k in dict.fromkeys(raw["kinds"])}
    return {"changes": int(d.size), "p50_s": round(float(np.median(d)), 3), "by_kind": by_kind,
            "p90_s": round(float(np.quantile(d, 0.9)), 3), "max_s": round(float(d.max()), 3),
            "target_s": target_s, "meets_target": bool(d.max() <= target_s),
            "load": load_figures(raw), "gap_between_changes_s": raw["gap_s"], "unit": unit}


def publish(measure: Coroutine[Any, Any, dict[str, Any]], report: Callable[..., dict[str, Any]],
            summary: Callable[[dict[str, Any]], str], *, unit: str, out: Path | None) -> dict[str, Any]:
    """Run ``measure``, make its figures a report (``report(figures, unit=unit)``), print it (JSON,
    then its one-line ``summary``) and write it to ``out`` when given; returns the report."""
    rep = report(asyncio.run(measure), unit=unit)
    print(json.dumps(rep, indent=2))
    print(summary(rep))
    if out:
        Path(out).write_text(json.dumps(rep, indent=2) + "\n")
    return rep


def run_freshness(url: str, settings: Settings, args: argparse.Namespace, *, unit: str) -> dict[str, Any]:
    return publish(_run(url, settings, changes=args.changes, gap_s=args.gap_s, concurrency=args.concurrency),
                   freshness_report, _summary, unit=unit, out=args.out)


def spread_ms(stats: dict[str, Any]) -> str:
    """``p50 .. ms, p90 .. ms, max .. ms`` of a report's delays (kept in seconds)."""
    return ", ".join(f"{q} {stats[f'{q}_s'] * 1000:.0f} ms" for q in ("p50", "p90", "max"))


def _summary(rep: dict[str, Any]) -> str:
    return (f"freshness: {rep['changes']} changes under {rep['load']['rps']} req/s ({rep['load']['failed']} failed): "
            f"change -> first answer carrying it {spread_ms(rep)} (target <= {rep['target_s']:g} s: "
            f"{'met' if rep['meets_target'] else 'MISSED'})")


def add_timing_arguments(p: argparse.ArgumentParser, *, count: str, default: int, what: str, gap_s: float,
                         load: str) -> None:
    """The flags every freshness benchmark takes: how many ``--{count}`` to time (``what``), the
    seconds between them, and the requests in flight throughout (``load``)."""
    p.add_argument(f"--{count}", type=int, default=default, help=what)
    p.add_argument("--gap-s", type=float, default=gap_s, help=f"seconds between {count}")
    p.add_argument("--concurrency", type=int, default=8, help=f"{load} in flight throughout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_timing_arguments(p, count="changes", default=100, what="catalogue changes to time", gap_s=0.3,
                         load="recall requests")
    p.add_argument("--items", type=int, help="on the marketplace of this many items (built if need be)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
