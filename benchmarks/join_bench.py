"""How long the join of the served log with the events takes: DuckDB against a pandas baseline.

Owns: a synthetic served log and events written as Parquet files of the log's schemas (several
replicas' files, clicks within and after the attribution window, duplicates, unmatched events),
the timing of :func:`serving.feedback.join.join_logs` (DuckDB, from the files) and of the same
join in pandas (from the same files, in the same run), the check that both give the same labels
and counts, and the report. Must not touch: any data set, the server.

Run it as ``python -m benchmarks.join_bench [--items N] [--events N] [--repeats N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.feedback.join import EVENTS_COLUMNS, SERVED_COLUMNS, join_logs

__all__ = ["main", "pandas_join", "write_log"]

_TIME = pa.timestamp("ms", tz="UTC")
_ITEM = pa.struct([("item_id", pa.string()), ("position", pa.int32()), ("score", pa.float32())])
_T0_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
WINDOW_S = 1800.0


def write_log(root: Path, *, items: int, events: int, per_answer: int = 20, files: int = 8, seed: int = 0) -> None:
    """``items`` served items (answers of ``per_answer`` items over ``files`` files) and ``events`` events."""
    rng = np.random.default_rng(seed)
    answers = items // per_answer
    t_ms = _T0_MS + np.sort(rng.integers(0, 3_600_000, answers))
    item_ids = rng.integers(0, 50_000, (answers, per_answer)).astype(str)
    scores = rng.random((answers, per_answer), dtype=np.float32)
    offsets = pa.array(np.arange(0, answers * per_answer + 1, per_answer, dtype=np.int32))
    values = pa.StructArray.from_arrays([pa.array(item_ids.ravel()),
                                         pa.array(np.tile(np.arange(per_answer, dtype=np.int32), answers)),
                                         pa.array(scores.ravel())], fields=list(_ITEM))
    served = pa.table({"request_id": pa.array([f"r{i}" for i in range(answers)]),
                       "time": pa.array(t_ms, pa.int64()).cast(_TIME),
                       "user_id": pa.array(rng.integers(0, 20_000, answers).astype(str)),
                       "context": pa.array(["{}"] * answers), "scenario": pa.array(["home"] * answers),
                       "scenario_version": pa.array(np.ones(answers, np.int64)),
                       "model": pa.array(["ranker"] * answers), "model_version": pa.array(np.ones(answers, np.int64)),
                       "role": pa.array(np.where(rng.random(answers) < 0.1, "canary", "live")),
                       "catalogue_version": pa.array(np.ones(answers, np.int64)),
                       "items": pa.ListArray.from_arrays(offsets, values),
                       "degraded": pa.array(np.zeros(answers, bool)), "recall": pa.array(["ann"] * answers),
                       "replica": pa.array(["bench"] * answers)})
    a = rng.integers(0, answers, events)
    pos = rng.integers(0, per_answer, events)
    ev_items = item_ids[a, pos].astype(object)
    unmatched = rng.random(events) < 0.05
    ev_items[unmatched] = "not-shown"
    delay_s = np.where(rng.random(events) < 0.05, WINDOW_S + 60, rng.integers(1, 600, events))
    ev = pa.table({"request_id": pa.array([f"r{i}" for i in a]), "item_id": pa.array(ev_items.tolist(), pa.string()),
                   "type": pa.array(rng.choice(["click", "click", "click", "cart", "order"], events)),
                   "time": pa.array(t_ms[a] + delay_s * 1000, pa.int64()).cast(_TIME)})
    ev = ev.append_column("received", ev.column("time")).append_column("replica", pa.array(["bench"] * events))
    ev = pa.concat_tables([ev, ev.slice(0, events // 100)])  # 1% posted twice
    for kind, table in (("served", served), ("events", ev)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(table.num_rows), files)):
            pq.write_table(table.take(pa.array(part)), root / kind / f"{kind}-bench.{i}-20260301T000000Z-{i:06d}.parquet")


def pandas_join(root: Path, window_s: float = WINDOW_S) -> tuple[pd.DataFrame, dict[str, int]]:
    """The same join in pandas (no window: the whole log): the impressions with their click label, and the counts."""
    served = pd.concat([pq.read_table(p, columns=list(SERVED_COLUMNS)).to_pandas()
                        for p in sorted((root / "served").glob("[!.]*.parquet"))], ignore_index=True)
    events = pd.concat([pq.read_table(p, columns=list(EVENTS_COLUMNS)).to_pandas()
                        for p in sorted((root / "events").glob("[!.]*.parquet"))], ignore_index=True)
    shown = served.drop(columns="items").join(served["items"].explode().rename("item"))
    shown = pd.concat([shown.drop(columns="item").reset_index(drop=True),
                       pd.json_normalize(shown["item"].tolist())], axis=1)
    n_events = len(events)
    events = events.groupby(["request_id", "item_id", "type"], as_index=False)["time"].min()
    keys = shown.groupby(["request_id", "item_id"], as_index=False)["time"].min().rename(columns={"time": "served"})
    ev = events.merge(keys, on=["request_id", "item_id"], how="left")
    delay = (ev["time"] - ev["served"]).dt.total_seconds()
    ok = ev["served"].notna() & (delay <= window_s)
    clicks = ev[ok & (ev["type"] == "click")][["request_id", "item_id"]].drop_duplicates().assign(click=1)
    out = shown.merge(clicks, on=["request_id", "item_id"], how="left").fillna({"click": 0})
    counts = {"impressions": len(out), "joined": int(ok.sum()), "late": int((ev["served"].notna() & ~ok).sum()),
              "unmatched": int(ev["served"].isna().sum()), "duplicates": n_events - len(events)}
    return out, counts


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    seconds, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return seconds, result


def run(items: int, events: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="join-bench-") as tmp:
        root = Path(tmp)
        write_log(root, items=items, events=events)
        duck_s, duck = _timed(lambda: join_logs(root, None, attribution_window_s=WINDOW_S), repeats)
        pandas_s, (frame, counts) = _timed(lambda: pandas_join(root), repeats)
    c = duck.counts
    same = (c.impressions, c.joined, c.late, c.unmatched, c.duplicates) == tuple(
        counts[k] for k in ("impressions", "joined", "late", "unmatched", "duplicates")) \
        and int(pa.compute.sum(duck.table.column("click")).as_py()) == int(frame["click"].sum())
    return {"served_items": items, "events": events, "repeats": repeats, "counts": c.to_json(), "same_result": same,
            "duckdb_s": {"median": statistics.median(duck_s), "all": duck_s},
            "pandas_s": {"median": statistics.median(pandas_s), "all": pandas_s},
            "speedup": statistics.median(pandas_s) / statistics.median(duck_s),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "duckdb": __import__("duckdb").__version__, "pandas": pd.__version__}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.join_bench", description=__doc__)
    p.add_argument("--items", type=int, default=1_000_000, help="served items (default 1,000,000)")
    p.add_argument("--events", type=int, default=50_000, help="events (default 50,000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (default 3; the median is reported)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.items, args.events, args.repeats)
    print(f"join of {args.items:,} served items and {args.events:,} events: DuckDB {result['duckdb_s']['median']:.2f} s,"
          f" pandas {result['pandas_s']['median']:.2f} s ({result['speedup']:.1f}x); same result: "
          f"{result['same_result']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["same_result"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
