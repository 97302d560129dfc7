"""The pictures ``rankserve bench``, ``rankserve capacity`` and ``make loop-bench`` draw beside their tables.

Owns: the plots (throughput and p99 against concurrency, one line per configuration with the
floors dashed; latency against offered rate with the p99 target and the chosen capacity marked;
online CTR over time of the loop bench's static and learning runs, the drift and promotions marked),
drawn headless with matplotlib from the tools' own JSON reports, so a committed report can be
drawn again (``python -m benchmarks.bench --plot docs/bench-cpu.json``). Must not touch: how
anything is measured.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["BENCH_LABELS", "plot_bench", "plot_capacity", "plot_loop", "redraw"]

# configuration -> (legend label, is a floor: drawn dashed)
BENCH_LABELS: dict[str, tuple[str, bool]] = {
    "floor": ("floor: the pipeline in-process, torch", True),
    "triton_floor": ("Triton floor: in-process, real Triton, no Ray", True),
    "framework": ("framework: empty Serve deployment, same ingress", True),
    "rankserve": ("rankserve HTTP, batching on", False),
    "rankserve_grpc": ("rankserve gRPC, batching on", False),
    "no_batching": ("rankserve HTTP, batching off", False),
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_bench(report: dict[str, Any], path: Path | None = None) -> Any:
    """Throughput (req/s) and p99 (ms) against concurrency, one line per configuration of a
    ``bench.json`` report, floors dashed; written to ``path`` (PNG) when given. Returns the figure."""
    plt = _pyplot()
    fig, (rps_ax, p99_ax) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for key, rows in report["results"].items():
        if not rows:
            continue
        label, floor = BENCH_LABELS.get(key, (key, False))
        conc = [r["concurrency"] for r in rows]
        style = {"linestyle": "--" if floor else "-", "marker": "o", "label": label, "gid": key}
        rps_ax.plot(conc, [r["rps"] for r in rows], **style)
        p99_ax.plot(conc, [r["p99_ms"] for r in rows], **style)
    for ax, what in ((rps_ax, "throughput, requests/s"), (p99_ax, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["levels"], [str(c) for c in report["levels"]])
        ax.set_xlabel("concurrency (clients in a closed loop)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    p99_ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"rankserve bench: {report.get('recall_n', '?')} recalled candidates per request, "
                 f"{report.get('ingress', '?')} ingress, {report.get('duration_s', '?'):g} s per point "
                 "(dashed: floors)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_capacity(rep: dict[str, Any], path: Path | None = None) -> Any:
    """p50/p95/p99 of every open-loop step against its offered rate, the p99 target and the chosen
    capacity marked, steps that missed the target crossed; written to ``path`` when given."""
    plt = _pyplot()
    steps = sorted(rep["steps"], key=lambda s: s["offered_rps"])
    target, capacity = rep["target"]["p99_ms"], rep["capacity_rps"]
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    x = [s["offered_rps"] for s in steps]
    for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
        ax.plot(x, [s[key] for s in steps], linestyle=style, color="tab:blue", alpha=0.4 if key != "p99_ms" else 1,
                label=key.removesuffix("_ms"), gid=key)
    met = [s for s in steps if s["verdict"] is None]
    missed = [s for s in steps if s["verdict"] is not None]
    ax.scatter([s["offered_rps"] for s in met], [s["p99_ms"] for s in met], color="tab:green", zorder=3,
               label="step met the target", gid="met")
    ax.scatter([s["offered_rps"] for s in missed], [s["p99_ms"] for s in missed], color="tab:red", marker="x",
               s=60, zorder=3, label="step missed it", gid="missed")
    ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, gid="target")
    ax.annotate(f"p99 target {target:g} ms", (x[0], target), textcoords="offset points", xytext=(0, 4),
                color="tab:red", fontsize=9)
    if capacity > 0:
        ax.axvline(capacity, color="tab:green", linewidth=1.5, gid="capacity")
        ax.annotate(f"capacity {capacity:g} req/s", (capacity, target), textcoords="offset points",
                    xytext=(-6, -14), ha="right", color="tab:green", fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, requests/s (open loop, Poisson arrivals)")
    ax.set_ylabel("latency from scheduled arrival, ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"rankserve capacity: {capacity:g} req/s at p99 <= {target:g} ms "
                 f"({rep['target']['max_error_share']:.1%} failures at most)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_loop(rep: dict[str, Any], path: Path | None = None) -> Any:
    """Online CTR over time of the loop bench's runs (static, learning), the drift and each
    promotion of the learning run marked; written to ``path`` when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    labels = {"static": "static model", "learn": "rankserve learn running"}
    for name, curve in rep["curves"].items():
        ax.plot(curve["t_s"], curve["ctr"], marker="o", markersize=3, label=labels.get(name, name), gid=name)
    ax.axvline(rep["plan"]["drift_at_s"], color="grey", linestyle="--", label="tastes drift")
    start = rep["runs"]["learn"].get("started")
    for ln in rep.get("learn_steps", []):
        if ln["step"] == "promote" and ln["ok"] and start is not None:
            ax.axvline(datetime.fromisoformat(ln["time"]).timestamp() - start, color="green", alpha=0.5, linewidth=1)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("online CTR (clicks / items shown)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("make loop-bench: online CTR, tastes drifting (green: a fine-tuned ranker promoted)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def redraw(prog: str, doc: str | None, plot: Callable[[dict[str, Any], Path], Any], what: str,
           argv: list[str] | None) -> int:
    """``python -m <prog> --plot report.json [--out report.png]``: draw a committed report's plot again."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--plot", type=Path, required=True, help=f"a {what} report")
    p.add_argument("--out", type=Path, help="the PNG to write (default: beside the report, .png)")
    a = p.parse_args(argv)
    out = a.out or a.plot.with_suffix(".png")
    plot(json.loads(a.plot.read_text()), out)
    print(out)
    return 0
