"""``rankserve index-bench``: which item index a catalogue should use, by measurement.

Owns: the index comparison and its report. Must not touch: the server, the repository's files
(it reads the live user tower's item embeddings and tower; it writes nothing there).

For each candidate (exact, IVF-Flat, IVF-PQ, HNSW), built over the live user tower version's item
embeddings (of the data set ``settings.data``: the demo at a chosen size, or an imported one),
with its search parameter (``nprobe``, ``efSearch``) tuned to the lowest value whose recall@500
against exact search reaches ``--target-recall`` on tuning queries: recall@500 on other queries
(real user tower embeddings of other users), the latency of one query and of a batch of 32 (p50
and p99 over ``--repeats`` searches, FAISS on ``--threads`` threads, as a replica runs it), index
memory, build time, and whether it takes catalogue changes in place. The chosen index is the
smallest-latency one that meets every target and takes changes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import Settings
from serving.index.faiss_index import (
    ItemIndex,
    build_index,
    recall_at_k,
    save_index,
    set_search_threads,
    tower_queries,
)
from serving.repository.registry import ModelRegistry

__all__ = ["add_arguments", "compare_indexes", "run_index_bench"]


def _latency(index: ItemIndex, queries: np.ndarray, batch: int, repeats: int, k: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of searching ``batch`` queries for the top ``k``."""
    rng = np.random.default_rng(1)
    times = []
    for _ in range(repeats):
        q = queries[rng.choice(queries.shape[0], batch, replace=False)]
        t0 = time.perf_counter()
        index.search(q, k)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _memory_mib(index: ItemIndex) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        save_index(index, Path(tmp) / "i.faiss")
        return (Path(tmp) / "i.faiss").stat().st_size / 2**20


def compare_indexes(emb: np.ndarray, tune_q: np.ndarray, test_q: np.ndarray, *, kinds: list[str],
                    target_recall: float, repeats: int, threads: int, k: int = 500) -> list[dict[str, Any]]:
    rows = []
    for spec in kinds:  # "ivf", or "ivf@16384": IVF with that many lists (default 4 sqrt(n))
        kind, _, lists = spec.partition("@")
        set_search_threads(os.cpu_count() or 1)  # builds use every core, as rankserve build does
        t0 = time.perf_counter()
        index = build_index(emb, kind=kind, queries=tune_q, target_recall=target_recall, nlist=int(lists or 0) or None)
        build_s = time.perf_counter() - t0
        set_search_threads(threads)  # searches as a replica runs them
        p50_1, p99_1 = _latency(index, test_q, 1, repeats, k)
        p50_32, p99_32 = _latency(index, test_q, 32, max(20, repeats // 8), k)
        rows.append({"kind": spec, "search_param": index.nprobe, "recall_at_500": round(recall_at_k(index, emb, test_q, k), 4),
                     "p50_ms_1": round(p50_1, 2), "p99_ms_1": round(p99_1, 2), "p50_ms_32": round(p50_32, 2),
                     "p99_ms_32": round(p99_32, 2), "memory_mib": round(_memory_mib(index), 1),
                     "build_s": round(build_s, 1), "takes_changes": kind != "hnsw", "threads": threads})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _choose(rows: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, Any]:
    for r in rows:
        misses = [f"{m} {r[m]} > {t}" if m.startswith("p99") else f"{m} {r[m]} < {t}"
                  for m, t in targets.items() if (r[m] > t if m.startswith("p99") else r[m] < t)]
        if not r["takes_changes"]:
            misses.append("cannot replace vectors (catalogue updates)")
        r["misses"] = misses
    ok = [r for r in rows if not r["misses"]]
    best = min(ok or rows, key=lambda r: (len(r["misses"]), r["p99_ms_32"]))
    return {"kind": best["kind"], "meets_every_target": not best["misses"]}


def run_index_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    reg = ModelRegistry(settings.model_repository)
    d = reg.version_dir(settings.user_tower_model, reg.traffic(settings.user_tower_model).live)
    emb = np.load(d / "item_emb.npy").astype(np.float32)
    user_cat, user_dense = _user_inputs(settings, emb)
    tower = torch.jit.load(str(d / "model.pt"))
    tune_q = tower_queries(tower, user_cat, user_dense, n=256, seed=0)
    test_q = tower_queries(tower, user_cat, user_dense, n=1000, seed=1)
    kinds = [k for k in args.kinds.split(",") if k]
    rows = compare_indexes(emb, tune_q, test_q, kinds=kinds, target_recall=args.target_recall, repeats=args.repeats,
                           threads=args.threads)
    targets = {"recall_at_500": 0.95, "p99_ms_1": 5.0, "p99_ms_32": 20.0}
    report = {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "threads": args.threads, "targets": targets,
              "rows": rows, "chosen": _choose(rows, targets)}
    print(_markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _user_inputs(settings: Settings, item_emb: np.ndarray, most: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """The user tower's inputs of the data set's users: the demo's built ones; an imported data
    set's as serving assembles them (``serving.data.tower.tower_inputs``), for at most ``most``
    users drawn at random, each without a context."""
    from serving.config import DEMO_DATA

    if settings.data == DEMO_DATA:
        with np.load(settings.marketplace_path) as z:
            return z["user_cat"], z["user_dense"]
    from serving.data.tower import tower_inputs
    from serving.pipeline.assemble import load_tables

    tables = load_tables(settings)
    users = tables.n_users
    rows = np.random.default_rng(0).choice(users, min(most, users), replace=False)
    none = tables.encode_context(None)
    inputs = tower_inputs(tables, rows, [none] * rows.shape[0], item_emb if tables.schema.context.sequences else None)
    return inputs["user_cat"], inputs["user_dense"]


def _markdown(rep: dict[str, Any]) -> str:
    lines = [f"index comparison: {rep['items']:,} items x {rep['dim']} dims, FAISS on {rep['threads']} thread(s)",
             "| index | search param | recall@500 | p99 1 query ms | p99 batch 32 ms | memory MiB | build s | "
             "changes in place | misses |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['kind']} | {r['search_param']} | {r['recall_at_500']} | {r['p99_ms_1']} | {r['p99_ms_32']} "
                     f"| {r['memory_mib']} | {r['build_s']} | {'yes' if r['takes_changes'] else 'no'} | "
                     f"{'; '.join(r['misses']) or '-'} |")
    lines.append(f"chosen: {rep['chosen']['kind']} (meets every target: {rep['chosen']['meets_every_target']})")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, help="the demo marketplace of this many items (built if need be)")
    p.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw",
                   help="indexes to compare; ivf@N: IVF-Flat with N lists (default 4 sqrt(items))")
    p.add_argument("--target-recall", type=float, default=0.96, help="recall@500 the search parameter is tuned to")
    p.add_argument("--threads", type=int, default=1, help="FAISS threads (a replica's RANKSERVE_CPU_THREADS, default 1)")
    p.add_argument("--repeats", type=int, default=400, help="searches timed per point")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
