"""``make import-bench``: how long a data set import takes, and its peak memory, beside reading the file alone.

Owns: the import benchmark. It writes a synthetic catalogue (by default 1,000,000 items with string
ids, three categorical, two numeric columns with 1% nulls, a 64-wide ``list<float>`` vector and a
popularity column), 100,000 users and 1,000,000 impressions as Parquet into a temporary folder,
then measures, each in a fresh process: the baseline, ``pyarrow.parquet.read_table`` of the items
file, the whole ``rankserve data import`` of the three files into a temporary data directory
(read, check, encode, write the version, fsync), and loading the version back
(``DataSet.tables()``: digests checked, arrays and id lookups built). Prints seconds and peak RSS
(``resource.getrusage(...).ru_maxrss``) of each; ``--out`` writes them as JSON. A benchmark, not
a test: the target is 1M items in at most 60 s on the 2-core development machine. Must not touch:
any data set but the temporary one, the server.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.data.schema import Schema

__all__ = ["main", "run_import_bench", "write_inputs"]

def _schema(width: int) -> Schema:
    """A schema like the example of ``serving.data.schema``, the vector ``width`` wide."""
    return Schema.model_validate({
        "items": {"id": "sku", "categorical": ["brand", "category", "store"], "numeric": ["price", "rating"],
                  "vectors": {"content": width}, "popularity": "sales_7d", "groups": ["store", "category"]},
        "users": {"id": "customer", "categorical": ["region", "tier"], "numeric": ["age"]},
        "context": {"categorical": ["device"]},
        "impressions": {"user": "customer", "item": "sku", "label": "clicked", "time": "ts"},
    })


def _with_nulls(rng: np.random.Generator, values: np.ndarray, share: float) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < share)


def write_inputs(folder: Path, *, items: int, users: int, impressions: int, width: int, seed: int = 0) -> dict[str, Path]:
    """The schema and the three Parquet files of the benchmark in ``folder``."""
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(items * width, dtype=np.float32)
    offsets = pa.array(np.arange(0, items * width + 1, width, dtype=np.int32))
    sku = pa.array([f"sku-{i:08d}" for i in range(items)])
    pq.write_table(pa.table({
        "sku": sku,
        "brand": pa.array(np.char.add("brand-", rng.integers(0, 5000, items).astype(str))),
        "category": rng.integers(1, 500, items),
        "store": pa.array(np.char.add("store-", rng.integers(0, 20000, items).astype(str))),
        "price": _with_nulls(rng, rng.lognormal(3, 1, items), 0.01),
        "rating": _with_nulls(rng, rng.uniform(1, 5, items), 0.01),
        "content": pa.ListArray.from_arrays(offsets, pa.array(flat)),
        "sales_7d": rng.poisson(5, items),
    }), folder / "items.parquet")
    pq.write_table(pa.table({
        "customer": np.arange(users, dtype=np.int64) * 3,
        "region": pa.array(np.char.add("r", rng.integers(0, 50, users).astype(str))),
        "tier": rng.integers(0, 4, users),
        "age": _with_nulls(rng, rng.integers(18, 90, users).astype(np.float64), 0.02),
    }), folder / "users.parquet")
    pq.write_table(pa.table({
        "customer": rng.integers(0, users + users // 100, impressions) * 3,  # about 1% unknown users
        "sku": sku.take(pa.array(rng.integers(0, items, impressions))),
        "clicked": (rng.random(impressions) < 0.05).astype(np.int8),
        "ts": np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 86400 * 30, impressions)),
        "device": pa.array(rng.choice(["ios", "android", "web"], impressions)),
    }), folder / "impressions.parquet")
    (folder / "schema.yaml").write_text(_schema(width).to_yaml())
    return {name: folder / f"{name}.{'yaml' if name == 'schema' else 'parquet'}"
            for name in ("schema", "items", "users", "impressions")}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _baseline(items: str) -> dict[str, float]:
    t0 = time.perf_counter()
    table = pq.read_table(items)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rows": table.num_rows}


def _import(files: dict[str, str], data_dir: str) -> dict[str, Any]:
    from serving.data.schema import load_schema
    from serving.data.store import DataSetStore

    t0 = time.perf_counter()
    report = DataSetStore(Path(data_dir)).dataset("bench").import_files(
        load_schema(Path(files["schema"])), Path(files["items"]), Path(files["users"]), Path(files["impressions"]))
    seconds = time.perf_counter() - t0
    lines = [line.replace(data_dir, "<temporary data dir>") for line in report.lines()]
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "lines": lines}


def _load(data_dir: str) -> dict[str, Any]:
    from serving.data.store import DataSetStore

    t0 = time.perf_counter()
    tables = DataSetStore(Path(data_dir)).dataset("bench").tables()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "items": tables.n_items}


def _fresh(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a process of its own (its peak memory is its own)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_import_bench(*, items: int, users: int, impressions: int, width: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rankserve-import-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = write_inputs(folder, items=items, users=users, impressions=impressions, width=width)
        generated_s = time.perf_counter() - t0
        baseline = _fresh(_baseline, str(files["items"]))
        imported = _fresh(_import, {k: str(v) for k, v in files.items()}, str(folder / "data"))
        loaded = _fresh(_load, str(folder / "data"))
        sizes = {k: v.stat().st_size for k, v in files.items()}
    return {"date": time.strftime("%Y-%m-%d"), "items": items, "users": users, "impressions": impressions,
            "width": width, "cpus": os.cpu_count(), "input_bytes": sizes, "generate_s": generated_s,
            "baseline_read_table": baseline, "import": imported, "load_tables": loaded}


def _print(rep: dict[str, Any]) -> None:
    base, imp = rep["baseline_read_table"], rep["import"]
    mb = rep["input_bytes"]["items"] / 1e6
    print(f"data import: {rep['items']:,} items ({rep['width']}-wide vector, {mb:.0f} MB Parquet), "
          f"{rep['users']:,} users, {rep['impressions']:,} impressions; {rep['cpus']} CPU(s)")
    print(f"  baseline  pyarrow.parquet.read_table(items)   {base['seconds']:7.2f} s   peak RSS {base['peak_rss_mb']:7.0f} MB")
    print(f"  import    rankserve data import (all 3 files)  {imp['seconds']:7.2f} s   peak RSS {imp['peak_rss_mb']:7.0f} MB")
    load = rep["load_tables"]
    print(f"  load      DataSet.tables() of the version      {load['seconds']:7.2f} s   peak RSS {load['peak_rss_mb']:7.0f} MB")
    for line in imp["lines"]:
        print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_import", description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--impressions", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=64, help="the items' vector width")
    p.add_argument("--out", type=Path, help="write the report here as JSON")
    args = p.parse_args(argv)
    rep = run_import_bench(items=args.items, users=args.users, impressions=args.impressions, width=args.width)
    _print(rep)
    if args.out:
        args.out.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
