"""``rankserve bench``: one run, same data and models, fixed concurrency levels, every millisecond attributed.

Owns: the benchmark's configurations, their floors and its report. Must not touch: serving code
(it measures what ships).

Configurations (each measured in this one run, 500 recalled candidates per request):

1. ``floor``          the same pipeline in-process with torch (recall + features + crossing + model
                      forward), ``c`` requests per batch, no serving hop;
2. ``triton_floor``   the same pipeline in-process calling the real Triton over gRPC, no Ray;
3. ``framework``      an empty Serve deployment through the same ingress (what the ingress and Serve
                      cost per request);
4. ``rankserve``      rankserve end to end over HTTP through the ingress and Triton, batching on;
5. ``rankserve_grpc`` the same deployment over gRPC (``rankserve.v1.Ranker/Rank``);
6. ``no_batching``    HTTP with batching off (one Triton call per request).

The data set is ``settings.data`` (``--data``): the demo, or an imported one (its tables, its own
repository's live models and scenarios, requests in its schema's ids with contexts from its
impressions: ``loadtest.workload.request_bodies``). The load generator (``loadtest.loadgen``)
runs in its own process. A per-stage table splits
each request's mean latency into queue, recall, cross, rank (the server's own ``timings_ms``) and
ingress and other (what the client saw beyond the server's total), at the lowest and highest
concurrency, beside the floors' stage times. Output: JSON, markdown, a plot (``bench.png``:
throughput and p99 against concurrency, one line per configuration, floors dashed) and a last line
``ratios: vs_floor=.. vs_triton_floor=.. vs_framework=.. batching_gain=.. grpc_vs_http=.. p50_c1_ms=..``
(at concurrency 32, the last at 1). ``python -m benchmarks.bench --plot bench.json`` draws a
report's plot again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import plot_bench, redraw
from loadtest.workload import request_bodies, run_loadgen, write_bodies
from serving.config import DEMO_DATA, Settings
from serving.metrics import metric_sum, metric_values
from serving.net import QUIET_PORTS, free_port
from serving.triton.caller import AsyncInferClient
from serving.triton.client import TritonEndpoint

__all__ = ["main", "run_bench", "run_log_cost"]

_BATCH_METRICS = ("rankserve_batch_requests_sum", "rankserve_batch_requests_count", "rankserve_batch_candidates_sum")
STAGES = ("queue", "recall", "cross", "rank")


def _pipeline_floor(settings: Settings, client: AsyncInferClient, bodies: list[dict[str, Any]],
                    levels: list[int], duration_s: float) -> list[dict[str, Any]]:
    """The pipeline in this process on ``client``: at each level ``c``, batches of ``c`` requests
    back to back for ``duration_s`` (after 1 s of warm-up); latency is the batch's."""
    from serving.pipeline.assemble import create_pipeline
    from serving.repository.registry import ModelRegistry
    from serving.repository.scenarios import use_live_scenarios
    from serving.schemas import RankRequest

    reqs = [RankRequest.model_validate(b) for b in bodies]

    async def level(pipeline: Any, c: int) -> dict[str, Any]:
        lat: list[float] = []
        stage: dict[str, list[float]] = {s: [] for s in STAGES[1:]}
        rows = served = i = 0
        wall = 0.0
        for warm in (True, False):
            t0 = time.perf_counter()
            t_end = t0 + (1.0 if warm else duration_s)
            while time.perf_counter() < t_end:
                batch = [pipeline.prepare(reqs[(i + j) % len(reqs)]) for j in range(c)]
                i += c
                t1 = time.perf_counter()
                out, stats = await pipeline.run_batch(batch)
                if not warm:
                    lat.extend([(time.perf_counter() - t1) * 1000] * len(out))
                    rows += stats.rows
                    served += len(out)
                    for s in stage:
                        stage[s].append(stats.stage_ms[s])
            wall = time.perf_counter() - t0
        arr = np.asarray(lat)
        return {"concurrency": c, "requests": served, "failures": 0, "rps": served / wall,
                "candidates_per_s": rows / wall, "p50_ms": float(np.percentile(arr, 50)),
                "p95_ms": float(np.percentile(arr, 95)), "p99_ms": float(np.percentile(arr, 99)),
                "mean_batch": float(c),
                "stage_ms": {"client": float(arr.mean()), "queue": 0.0, **{s: float(np.mean(v)) for s, v in stage.items()}}}

    async def go() -> list[dict[str, Any]]:
        registry = ModelRegistry(settings.model_repository)
        pipeline = create_pipeline(settings, client, registry)
        use_live_scenarios(pipeline, registry)  # the floor runs the scenarios the server runs
        try:
            return [await level(pipeline, c) for c in levels]
        finally:
            await client.close()

    return asyncio.run(go())


def _server_counts(url: str) -> dict[str, float]:
    """From ``url``'s /metrics: the batch counters, the requests it answered (status 200), and what
    it serves (the catalogue's items, the live ranker's version)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {**metric_values(text, _BATCH_METRICS), "answered": metric_sum(text, "rankserve_requests_total", status="200"),
            "catalogue_items": metric_sum(text, "rankserve_catalogue_items"),
            "ranker_version": metric_sum(text, "rankserve_model_version", model="ranker")}


def _served_point(url: str, bodies_file: Path, c: int, duration_s: float, recall_n: int,
                  target: str | None = None) -> dict[str, Any]:
    """Load rankserve at ``target`` (default: ``url``'s /v1/rank); batch sizes, the requests the
    server answered (warm-up included) and what it serves from ``url``'s /metrics."""
    before = _server_counts(url)
    res = run_loadgen(target or f"{url}/v1/rank", bodies_file, concurrency=c, duration_s=duration_s, timings=True)
    after = _server_counts(url)
    n = after.get("rankserve_batch_requests_count", 0) - before.get("rankserve_batch_requests_count", 0)
    s = after.get("rankserve_batch_requests_sum", 0) - before.get("rankserve_batch_requests_sum", 0)
    res["mean_batch"] = s / n if n else 0.0
    rows = after.get("rankserve_batch_candidates_sum", 0) - before.get("rankserve_batch_candidates_sum", 0)
    # the candidates the server scored per request (a scenario's merged sources may give fewer than recall_n)
    res["candidates_per_s"] = res["rps"] * (rows / s if s else recall_n)
    res["server"] = {"answered": int(after["answered"] - before["answered"]),
                     "catalogue_items": int(after["catalogue_items"]), "ranker_version": int(after["ranker_version"])}
    return res


def _serve_configs(settings: Settings, triton: TritonEndpoint, bodies_file: Path, levels: list[int],
                   duration_s: float, results: dict[str, list[dict[str, Any]]]) -> None:
    """The framework floor and rankserve (HTTP, gRPC, batching off) through ``settings.ingress``."""
    from ray import serve

    from benchmarks.framework import EmptyDeployment
    from serving.app import build_app
    from serving.ray_runtime import Ingress, init_ray, shutdown_ray, start_serve

    ingress = Ingress.from_settings(settings, port=free_port(QUIET_PORTS), grpc_port=free_port(QUIET_PORTS))
    init_ray(settings.ray_address, ingress=ingress)
    url = f"http://127.0.0.1:{ingress.port}"
    try:
        start_serve(ingress)
        serve.run(EmptyDeployment.bind(), name="framework", route_prefix="/empty")
        for c in levels:
            res = run_loadgen(f"{url}/empty", bodies_file, concurrency=c, duration_s=duration_s)
            results["framework"].append({**res, "mean_batch": 1.0, "candidates_per_s": 0.0})
            print(f"framework c={c}: {res['rps']:.1f} req/s", flush=True)
        serve.delete("framework")
        for key, batching in (("rankserve", True), ("no_batching", False)):
            serve.run(build_app(settings.model_copy(update={"batching": batching}), triton), name="rankserve",
                      route_prefix="/")
            for c in levels:
                points = [(key, None)] + ([("rankserve_grpc", f"grpc://127.0.0.1:{ingress.grpc_port}")]
                                          if batching else [])
                for name, target in points:
                    r = _served_point(url, bodies_file, c, duration_s, settings.recall_n, target)
                    results[name].append(r)
                    print(f"{name} c={c}: {r['rps']:.1f} req/s, batch {r['mean_batch']:.1f}, "
                          f"fail {r['failures']}", flush=True)
            serve.delete("rankserve")
    finally:
        shutdown_ray()


def run_bench(settings: Settings, triton: TritonEndpoint, *, levels: list[int], duration_s: float,
              out_dir: Path) -> dict[str, Any]:
    """Measure every configuration at each concurrency level; write JSON and markdown."""
    from serving.triton.client import AsyncTritonClient
    from serving.triton.inprocess import InProcessClient

    out_dir.mkdir(parents=True, exist_ok=True)
    quality = _quality(settings) if settings.data == DEMO_DATA else _trained_quality(settings)
    bodies = request_bodies(settings, 4096)
    bodies_file = write_bodies(bodies)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in ("floor", "triton_floor", "framework", "rankserve",
                                                                "rankserve_grpc", "no_batching")}
    results["floor"] = _pipeline_floor(settings, InProcessClient(settings.model_repository), bodies, levels, duration_s)
    results["triton_floor"] = _pipeline_floor(settings, AsyncTritonClient.for_url(triton.url, settings.triton_shared_memory, triton.key),
                                              bodies, levels, duration_s)
    for key in ("floor", "triton_floor"):
        print(key, " ".join(f"c={r['concurrency']}: {r['rps']:.1f} req/s" for r in results[key]), flush=True)
    _serve_configs(settings, triton, bodies_file, levels, duration_s, results)
    ratios = _ratios(results, levels)
    report = {"data_set": settings.data, "levels": levels, "duration_s": duration_s, "recall_n": settings.recall_n,
              "ingress": settings.ingress, "quality": quality, "results": results, "ratios": ratios}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    md = _markdown(results, ratios) + "\n" + _stage_table(results, [levels[0], levels[-1]])
    (out_dir / "bench.md").write_text(md)
    plot_bench(report, out_dir / "bench.png")
    print(md)
    print(f"plot: {out_dir / 'bench.png'}")
    print("ratios: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items() if k != "concurrency"))
    return report


def run_log_cost(settings: Settings, triton: TritonEndpoint, *, levels: list[int], duration_s: float,
                 out_dir: Path, rounds: int = 3) -> dict[str, Any]:
    """The cost of the served log: rankserve over HTTP with the log on, then off, ``rounds`` times
    (alternating, so drift of the machine falls on both alike), every concurrency level each time,
    in one run. ``log_cost`` at each level: the median over the rounds of 1 - (req/s with the log
    on) / (req/s with it off), with its range; and the server's CPU per request with the log on and
    off (``log_cpu_cost``: 1 - off / on, medians over the rounds), steadier on a shared machine. The log goes to a scratch folder. Writes ``log-cost.json`` and
    ``log-cost.md``; the last line is ``log_cost: c=..: ..``."""
    import tempfile

    import httpx
    from ray import serve

    from serving.app import build_app
    from serving.ray_runtime import Ingress, init_ray, shutdown_ray, start_serve

    out_dir.mkdir(parents=True, exist_ok=True)
    bodies_file = write_bodies(request_bodies(settings, 4096))
    ingress = Ingress.from_settings(settings, port=free_port(QUIET_PORTS), grpc_port=free_port(QUIET_PORTS))
    url = f"http://127.0.0.1:{ingress.port}"
    points: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    init_ray(settings.ray_address, ingress=ingress)
    try:
        start_serve(ingress)
        with tempfile.TemporaryDirectory(prefix="rankserve-log-cost-") as scratch:
            for n in range(rounds):
                for key in ("on", "off"):
                    app = settings.model_copy(update={"log_enabled": key == "on", "log_dir": Path(scratch)})
                    serve.run(build_app(app, triton), name="rankserve", route_prefix="/")
                    for c in levels:
                        cpu0 = _server_cpu_s()
                        r = _served_point(url, bodies_file, c, duration_s, settings.recall_n)
                        time.sleep(1.5)  # the writer's flush interval: the rows of this point are written
                        r["server_cpu_ms_per_request"] = (_server_cpu_s() - cpu0) * 1000 / max(r["requests"], 1)
                        r["served_rows_written"] = metric_sum(httpx.get(f"{url}/metrics", timeout=10).text,
                                                              "rankserve_log_written_total", stream="served")
                        points[key].append({**r, "round": n})
                        print(f"log {key} round {n} c={c}: {r['rps']:.1f} req/s, fail {r['failures']}, served rows "
                              f"written {r['served_rows_written']:.0f}", flush=True)
                    serve.delete("rankserve")
    finally:
        shutdown_ray()
    cost, spread = {}, {}
    for c in levels:  # each round's on against its off: the machine's drift between rounds cancels
        pairs = [1 - on["rps"] / max(off["rps"], 1e-9) for on, off in zip(
            [r for r in points["on"] if r["concurrency"] == c], [r for r in points["off"] if r["concurrency"] == c],
            strict=True)]
        cost[c], spread[c] = float(np.median(pairs)), (min(pairs), max(pairs))
    cpu = {c: {k: float(np.median([r["server_cpu_ms_per_request"] for r in points[k] if r["concurrency"] == c]))
               for k in points} for c in levels}
    cpu_cost = {c: 1 - v["off"] / max(v["on"], 1e-9) for c, v in cpu.items()}
    report = {"data_set": settings.data, "levels": levels, "duration_s": duration_s, "rounds": rounds,
              "results": points, "log_cost": cost,
              "log_cost_range": spread, "server_cpu_ms_per_request": cpu, "log_cpu_cost": cpu_cost}
    (out_dir / "log-cost.json").write_text(json.dumps(report, indent=2))
    md = _markdown({f"log_{k}": v for k, v in points.items()}, {"concurrency": levels[-1]} | {
        f"log_cost_c{c}": v for c, v in cost.items()} | {f"log_cpu_cost_c{c}": v for c, v in cpu_cost.items()})
    (out_dir / "log-cost.md").write_text(md)
    print(md)
    for c, v in cpu.items():
        print(f"server CPU per request at c={c}: {v['on']:.2f} ms with the log, {v['off']:.2f} ms without "
              f"(log_cpu_cost {cpu_cost[c]:.3f})")
    print("log_cost: " + " ".join(f"c={c}: {v:.3f} (rounds {spread[c][0]:.3f} to {spread[c][1]:.3f})"
                                  for c, v in cost.items()))
    return report


def _server_cpu_s() -> float:
    """CPU seconds used so far by the server this process started: its Ray Serve replicas, HAProxy,
    the embedded Triton and its python-backend stubs (the load generator and Ray's own daemons
    aside). On a shared machine this is steadier than throughput: other work slows the server
    without adding to its CPU per request."""
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if any(part in cmd for part in ("ServeReplica:rankserve", "haproxy", "tritonserver",
                                            "triton_python_backend_stub")):
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _quality(settings: Settings) -> dict[str, Any]:
    """The marketplace's quality, recomputed from the served artifacts (beside what the build
    recorded), so that each benchmark says what its catalogue and models are."""
    from training.build import recompute_quality

    data = settings.marketplace_path.parent
    quality = recompute_quality(data, settings.model_repository)
    recorded = json.loads((data / "build.json").read_text())["quality"]
    keys = ("auc_fraction", "log_loss", "ece", "recall_at_500", "index_kind", "index_nprobe", "index_mib", "ndcg_at_20")
    print(f"quality of the served artifacts ({recorded['n_items']:,} items, {recorded['n_users']:,} users): "
          + ", ".join(f"{k} {quality[k]} (build: {recorded.get(k)})" for k in keys), flush=True)
    return {**quality, "n_items": recorded["n_items"], "n_users": recorded["n_users"]}


def _trained_quality(settings: Settings) -> dict[str, Any]:
    """An imported data set's quality: what ``rankserve train`` measured on its holdout for the
    live ranker version (recorded in the version's meta.json), with the data set's size."""
    from serving.data.store import DataSetStore
    from serving.repository.registry import ModelRegistry

    registry = ModelRegistry(settings.model_repository)
    version = registry.traffic(settings.ranker_model).live
    meta = registry.meta(settings.ranker_model, version)
    tables = DataSetStore.of(settings).dataset(settings.data).tables()
    quality = {**meta.get("quality", {}), "n_items": tables.n_items, "n_users": tables.n_users}
    keys = ("auc", "log_loss", "ece", "recall_at_500", "ndcg_at_20")
    print(f"quality of data set {settings.data}'s {settings.ranker_model} v{version} as rankserve train measured it "
          f"(data version {meta.get('data_version')}: {tables.n_items:,} items, {tables.n_users:,} users): "
          + ", ".join(f"{k} {quality.get(k)}" for k in keys), flush=True)
    return {**quality, "ranker_version": version, "data_version": meta.get("data_version")}


def _ratios(results: dict[str, list[dict[str, Any]]], levels: list[int]) -> dict[str, float]:
    ref = 32 if 32 in levels else levels[-1]
    at = {k: next(r for r in v if r["concurrency"] == ref) for k, v in results.items()}
    one = next(r for r in results["rankserve"] if r["concurrency"] == levels[0])
    return {
        "concurrency": ref,
        "vs_floor": at["rankserve"]["candidates_per_s"] / max(at["floor"]["candidates_per_s"], 1e-9),
        "vs_triton_floor": at["rankserve"]["candidates_per_s"] / max(at["triton_floor"]["candidates_per_s"], 1e-9),
        "vs_framework": at["rankserve"]["rps"] / max(at["framework"]["rps"], 1e-9),
        "batching_gain": at["rankserve"]["candidates_per_s"] / max(at["no_batching"]["candidates_per_s"], 1e-9),
        "grpc_vs_http": at["rankserve_grpc"]["rps"] / max(at["rankserve"]["rps"], 1e-9),
        "p50_c1_ms": float(one["p50_ms"]),
    }


def _markdown(results: dict[str, list[dict[str, Any]]], ratios: dict[str, float]) -> str:
    lines = ["| config | conc. | req/s | candidates/s | p50 ms | p95 ms | p99 ms | mean batch | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, rows in results.items():
        for r in rows:
            lines.append(f"| {key} | {r['concurrency']} | {r['rps']:.1f} | {r['candidates_per_s']:.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | "
                         f"{r['failures']} |")
    lines += ["", f"At concurrency {ratios['concurrency']}: " + ", ".join(
        f"{k} = {v:.3f}" for k, v in ratios.items() if k != "concurrency")]
    return "\n".join(lines) + "\n"


def _stage_table(results: dict[str, list[dict[str, Any]]], levels: list[int]) -> str:
    """Mean ms per request by stage; ``ingress+other`` = client mean minus the server's own total."""
    lines = ["| config | conc. | client mean ms | queue | recall | cross | rank | server total | ingress+other |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in ("floor", "triton_floor", "rankserve", "rankserve_grpc", "no_batching"):
        for r in results[key]:
            st = r.get("stage_ms") or {}
            if r["concurrency"] not in levels or not st:
                continue
            total = st.get("total", sum(st.get(s, 0.0) for s in STAGES))
            lines.append(f"| {key} | {r['concurrency']} | {st.get('client', 0):.2f} | "
                         + " | ".join(f"{st.get(s, 0.0):.2f}" for s in STAGES)
                         + f" | {total:.2f} | {st.get('client', 0) - total:.2f} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per point")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    p.add_argument("--items", type=int, help="the demo marketplace of this many items (built first if need be, "
                                          "into its own folders; default: the demo's; not with another --data)")
    p.add_argument("--users", type=int, help="its users (default: the demo's)")
    p.add_argument("--log-cost", action="store_true", help="only the cost of the served log: rankserve with the "
                                                           "log on and off, alternating, at each level")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench --plot bench.json [--out bench.png]``: draw a report's plot again."""
    return redraw("python -m benchmarks.bench", main.__doc__, plot_bench, "bench.json", argv)


if __name__ == "__main__":
    sys.exit(main())
