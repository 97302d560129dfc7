"""``rankserve bench``: one run, same data and models, fixed concurrency levels.

Owns: the benchmark's configurations, their floors and its report. Must not touch: serving code
(it measures what ships).

Configurations (each measured in this one run):

1. ``floor``          the same pipeline in-process (recall + features + crossing + model forward),
                      batched as the server batches (``c`` requests per batch), no serving hop;
2. ``framework``      an empty Ray Serve deployment over HTTP (what Ray costs per request here);
3. ``rankserve``      rankserve end to end over HTTP through Ray Serve and Triton, batching on;
4. ``rankserve_grpc`` the same deployment over gRPC (``rankserve.v1.Ranker/Rank``, Serve's gRPC proxy);
5. ``no_batching``    HTTP with batching off (one Triton call per request).

The load generator (``serving.tools.loadgen``) runs in its own process. Output: JSON, a markdown table,
and a last line ``ratios: vs_floor=.. vs_framework=.. batching_gain=.. grpc_vs_http=..`` at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import Settings
from serving.net import free_port
from serving.tools.workload import recall_bodies, run_loadgen, scrape, write_bodies

__all__ = ["run_bench"]

_BATCH_METRICS = ("rankserve_batch_requests_sum", "rankserve_batch_requests_count")


def _floor(settings: Settings, bodies: list[dict[str, Any]], concurrency: int, duration_s: float) -> dict[str, Any]:
    """In-process pipeline, ``concurrency`` requests per batch, back to back for ``duration_s``."""
    from serving.pipeline.assemble import create_pipeline
    from serving.repository.registry import ModelRegistry
    from serving.schemas import RankRequest
    from serving.triton.inprocess import InProcessClient

    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository),
                               ModelRegistry(settings.model_repository))
    reqs = [RankRequest.model_validate(b) for b in bodies]

    async def go() -> dict[str, Any]:
        lat: list[float] = []
        rows = served = 0
        i = 0
        for warm in (True, False):
            t_end = time.perf_counter() + (1.0 if warm else duration_s)
            t0 = time.perf_counter()
            while time.perf_counter() < t_end:
                batch = [pipeline.prepare(reqs[(i + j) % len(reqs)]) for j in range(concurrency)]
                i += concurrency
                t1 = time.perf_counter()
                out, stats = await pipeline.run_batch(batch)
                dt = (time.perf_counter() - t1) * 1000
                if not warm:
                    lat.extend([dt] * len(out))
                    rows += stats.rows
                    served += len(out)
            wall = time.perf_counter() - t0
        arr = np.asarray(lat)
        return {"concurrency": concurrency, "requests": served, "failures": 0, "rps": served / wall,
                "candidates_per_s": rows / wall, "p50_ms": float(np.percentile(arr, 50)),
                "p95_ms": float(np.percentile(arr, 95)), "p99_ms": float(np.percentile(arr, 99)),
                "mean_batch": float(concurrency)}

    return asyncio.run(go())


def _serve_point(url: str, bodies_file: Path, c: int, duration_s: float, recall_n: int,
                 with_metrics: bool, target: str | None = None) -> dict[str, Any]:
    """Load ``target`` (default: ``url``'s ranking endpoint, or ``url`` itself without metrics);
    the batch sizes formed meanwhile come from ``url``'s /metrics."""
    before = scrape(url, _BATCH_METRICS) if with_metrics else {}
    res = run_loadgen(target or (f"{url}/v1/rank" if with_metrics else url), bodies_file, concurrency=c,
                      duration_s=duration_s)
    if with_metrics:
        after = scrape(url, _BATCH_METRICS)
        n = after.get("rankserve_batch_requests_count", 0) - before.get("rankserve_batch_requests_count", 0)
        s = after.get("rankserve_batch_requests_sum", 0) - before.get("rankserve_batch_requests_sum", 0)
        res["mean_batch"] = s / n if n else 0.0
        res["candidates_per_s"] = res["rps"] * recall_n
    else:
        res["mean_batch"] = 1.0
        res["candidates_per_s"] = 0.0
    return res


def run_bench(settings: Settings, triton_url: str, *, levels: list[int], duration_s: float,
              out_dir: Path) -> dict[str, Any]:
    """Measure the four configurations at each concurrency level; write JSON and markdown."""
    from ray import serve

    from serving.app import build_app
    from serving.pipeline.features import FeatureTables
    from serving.ray_runtime import init_ray, start_serve
    from serving.tools.framework import EmptyDeployment

    out_dir.mkdir(parents=True, exist_ok=True)
    bodies = recall_bodies(FeatureTables.load(settings.marketplace_path).n_users, 4096)
    bodies_file = write_bodies(bodies)
    results: dict[str, list[dict[str, Any]]] = {"floor": [], "framework": [], "rankserve": [], "rankserve_grpc": [],
                                                "no_batching": []}

    for c in levels:
        results["floor"].append(_floor(settings, bodies, c, duration_s))
        print(f"floor c={c}: {results['floor'][-1]['rps']:.1f} req/s", flush=True)

    port, grpc_port = free_port(), free_port()
    init_ray(settings.ray_address)
    start_serve("127.0.0.1", port, grpc_port)
    url = f"http://127.0.0.1:{port}"
    try:
        serve.run(EmptyDeployment.bind(), name="framework", route_prefix="/empty")
        for c in levels:
            results["framework"].append(_serve_point(f"{url}/empty", bodies_file, c, duration_s, 0, False))
            print(f"framework c={c}: {results['framework'][-1]['rps']:.1f} req/s", flush=True)
        serve.delete("framework")
        for key, batching in (("rankserve", True), ("no_batching", False)):
            s = settings.model_copy(update={"batching": batching})
            serve.run(build_app(s, triton_url), name="rankserve", route_prefix="/")
            for c in levels:
                points = [(key, None)] + ([("rankserve_grpc", f"grpc://127.0.0.1:{grpc_port}")] if batching else [])
                for name, target in points:
                    results[name].append(_serve_point(url, bodies_file, c, duration_s, settings.recall_n, True,
                                                      target))
                    r = results[name][-1]
                    print(f"{name} c={c}: {r['rps']:.1f} req/s, batch {r['mean_batch']:.1f}, "
                          f"fail {r['failures']}", flush=True)
            serve.delete("rankserve")
    finally:
        serve.shutdown()

    ref = 32 if 32 in levels else levels[-1]
    at = {k: next(r for r in v if r["concurrency"] == ref) for k, v in results.items()}
    ratios = {
        "concurrency": ref,
        "vs_floor": at["rankserve"]["candidates_per_s"] / max(at["floor"]["candidates_per_s"], 1e-9),
        "vs_framework": at["rankserve"]["rps"] / max(at["framework"]["rps"], 1e-9),
        "batching_gain": at["rankserve"]["candidates_per_s"] / max(at["no_batching"]["candidates_per_s"], 1e-9),
        "grpc_vs_http": at["rankserve_grpc"]["rps"] / max(at["rankserve"]["rps"], 1e-9),
    }
    report = {"levels": levels, "duration_s": duration_s, "recall_n": settings.recall_n,
              "results": results, "ratios": ratios}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    md = _markdown(results, ratios)
    (out_dir / "bench.md").write_text(md)
    print(md)
    print(f"ratios: vs_floor={ratios['vs_floor']:.3f} vs_framework={ratios['vs_framework']:.3f} "
          f"batching_gain={ratios['batching_gain']:.3f} grpc_vs_http={ratios['grpc_vs_http']:.3f}")
    return report


def _markdown(results: dict[str, list[dict[str, Any]]], ratios: dict[str, float]) -> str:
    lines = ["| config | conc. | req/s | candidates/s | p50 ms | p95 ms | p99 ms | mean batch | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, rows in results.items():
        for r in rows:
            lines.append(f"| {key} | {r['concurrency']} | {r['rps']:.1f} | {r['candidates_per_s']:.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | "
                         f"{r['failures']} |")
    lines.append("")
    lines.append(f"At concurrency {ratios['concurrency']}: rankserve/floor (candidates/s) = {ratios['vs_floor']:.3f}, "
                 f"rankserve/framework (req/s) = {ratios['vs_framework']:.3f}, "
                 f"batching on/off (candidates/s) = {ratios['batching_gain']:.3f}, "
                 f"gRPC/HTTP (req/s) = {ratios['grpc_vs_http']:.3f}")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per point")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
