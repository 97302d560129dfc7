"""``rankserve freshness``: how long a catalogue change takes to reach the answers, under load.

Owns: the freshness benchmark and its report. Must not touch: the server's internals.

The server runs on a copy of the model repository (the benchmark's changes never reach the
user's catalogue). Recall requests run closed loop at ``concurrency`` throughout, each answer
recorded with the time it arrived and the catalogue version it carries. ``changes`` catalogue
changes are written one after another through the change log, as ``rankserve items`` writes
them, in turn: block 5 random popular items (the items answers hold), unblock them, update one
item's price and rating (re-embedded with the item tower), add a new item (embedded and put in
the index). A change's delay is
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


async def _run(url: str, settings: Settings, *, changes: int, gap_s: float, concurrency: int) -> dict[str, Any]:
    base = FeatureTables.load(settings.marketplace_path)
    log = ChangeLog(settings.model_repository)
    rng = np.random.default_rng(0)
    users = rng.integers(0, base.n_users, 5000)
    seen: list[tuple[float, int]] = []
    bodies = [{"user_id": int(u), "k": 20} for u in users]
    popular = np.argsort(-base.popularity)[:2000]
    written: list[tuple[int, float]] = []
    kinds: list[str] = []
    blocked: list[int] = []

    async def warm() -> None:
        # a replica loads its item tower on the first change it sees (not at start-up, where importing
        # torch would slow every request): one change first, as a catalogue that changes has had
        await asyncio.to_thread(log.append, base, block=[int(popular[-1])])
        await asyncio.to_thread(log.append, base, unblock=[int(popular[-1])])

    async def change(i: int) -> None:
        nonlocal blocked
        kind = ("block", "unblock", "update", "add")[i % 4]
        item = int(rng.choice(popular))
        if kind == "block":
            blocked = [int(x) for x in rng.choice(popular, 5, replace=False)]
            kw: dict[str, Any] = {"block": blocked}
        elif kind == "unblock":
            kw = {"unblock": blocked}
        elif kind == "update":
            kw = {"update": [{"item_id": item, "log_price": float(rng.normal()), "rating": float(rng.normal())}]}
        else:
            kw = {"add": [_copy_of(base, item, price=float(rng.normal()))]}
        written.append(((await asyncio.to_thread(log.append, base, **kw)).version, time.monotonic()))
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
