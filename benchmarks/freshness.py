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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.config import Settings
from serving.pipeline.features import ITEM_CAT_FIELDS, ITEM_NUM_FIELDS, FeatureTables
from serving.repository.catalogue import ChangeLog

__all__ = ["add_arguments", "closed_loop", "first_answer_delays", "freshness_report", "publish", "repository_copy",
           "run_freshness"]


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


async def _run(url: str, settings: Settings, *, changes: int, gap_s: float, concurrency: int) -> dict[str, Any]:
    base = FeatureTables.load(settings.marketplace_path)
    log = ChangeLog(settings.model_repository)
    rng = np.random.default_rng(0)
    users = rng.integers(0, base.n_users, 5000)
    stop, tally = asyncio.Event(), {"ok": 0, "failed": 0}
    seen: list[tuple[float, int]] = []
    bodies = [{"user_id": int(u), "k": 20} for u in users]
    load = asyncio.create_task(closed_loop(url, bodies, stop, tally, concurrency,
                                           lambda t, a: seen.append((t, int(a["catalogue_version"])))))
    popular = np.argsort(-base.popularity)[:2000]
    # a replica loads its item tower on the first change it sees (not at start-up, where importing
    # torch would slow every request): one change first, as a catalogue that changes has had
    await asyncio.to_thread(log.append, base, block=[int(popular[-1])])
    await asyncio.to_thread(log.append, base, unblock=[int(popular[-1])])
    await asyncio.sleep(8.0)
    written: list[tuple[int, float]] = []
    kinds: list[str] = []
    blocked: list[int] = []
    t0, ok0 = time.monotonic(), tally["ok"]
    for i in range(changes):
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
        change = await asyncio.to_thread(log.append, base, **kw)
        written.append((change.version, time.monotonic()))
        kinds.append(kind)
        await asyncio.sleep(gap_s)
    await asyncio.sleep(1.0)
    wall = time.monotonic() - t0
    stop.set()
    await load
    return {"delays": first_answer_delays(written, seen), "kinds": kinds, "requests": tally["ok"] + tally["failed"], "failed": tally["failed"],
            "rps": (tally["ok"] - ok0) / wall, "concurrency": concurrency, "gap_s": gap_s}


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
            "load": {"requests": raw["requests"], "failed": raw["failed"], "rps": round(raw["rps"], 1),
                     "concurrency": raw["concurrency"]},
            "gap_between_changes_s": raw["gap_s"], "unit": unit}


def publish(rep: dict[str, Any], summary: str, out: Path | None) -> None:
    """Print a report (JSON, then its one-line summary) and write it to ``out`` when given."""
    print(json.dumps(rep, indent=2))
    print(summary)
    if out:
        Path(out).write_text(json.dumps(rep, indent=2) + "\n")


def run_freshness(url: str, settings: Settings, args: argparse.Namespace, *, unit: str) -> dict[str, Any]:
    raw = asyncio.run(_run(url, settings, changes=args.changes, gap_s=args.gap_s, concurrency=args.concurrency))
    rep = freshness_report(raw, unit=unit)
    publish(rep, f"freshness: {rep['changes']} changes under {rep['load']['rps']} req/s ({rep['load']['failed']} failed): "
            f"change -> first answer carrying it p50 {rep['p50_s'] * 1000:.0f} ms, p90 {rep['p90_s'] * 1000:.0f} ms, "
            f"max {rep['max_s'] * 1000:.0f} ms (target <= {rep['target_s']:g} s: "
            f"{'met' if rep['meets_target'] else 'MISSED'})", args.out)
    return rep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--changes", type=int, default=100, help="catalogue changes to time")
    p.add_argument("--gap-s", type=float, default=0.3, help="seconds between changes")
    p.add_argument("--concurrency", type=int, default=8, help="recall requests in flight throughout")
    p.add_argument("--items", type=int, help="on the marketplace of this many items (built if need be)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
