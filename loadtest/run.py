"""``python -m loadtest.run``: a bounded, headless locust run against a running rankserve, then a
report (``summary.json``, ``summary.md``) and plots (PNG).

    python -m loadtest.run --host http://127.0.0.1:8000 --shape step --duration-s 60
    python -m loadtest.run --protocol grpc --grpc-target 127.0.0.1:9000 ...   # the gRPC API

Locust runs as its own process (it monkey-patches with gevent and cannot share a process with
Ray). While it runs, the server's ``/metrics`` is sampled every second for the batch sizes the
server actually forms. Exits non-zero when any request failed or locust failed.

Owns: running locust as its own process, sampling the server's metrics meanwhile, the report and
its plots. Must not touch: the server (loopback targets only, and only through its API).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serving.metrics import metric_values
from serving.net import is_loopback

__all__ = ["main", "parse_batch_metrics"]

HERE = Path(__file__).resolve().parent


def parse_batch_metrics(text: str) -> dict[str, float]:
    """Sums and counts of the batch-size histograms and the queue depth from Prometheus text."""
    return metric_values(text, ("rankserve_batch_requests_sum", "rankserve_batch_requests_count",
                                "rankserve_batch_candidates_sum", "rankserve_queue_depth", "rankserve_shed_total",
                                "rankserve_degraded_total"))


def _sample_metrics(host: str, stop: threading.Event, rows: list[dict[str, float]]) -> None:
    import urllib.request

    t0 = time.time()
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"{host}/metrics", timeout=2) as r:
                m = parse_batch_metrics(r.read().decode())
        except OSError:
            continue
        rows.append({"t": time.time() - t0, **m})


def _batch_series(rows: list[dict[str, float]]) -> list[tuple[float, float, float]]:
    """(t, mean requests per batch, mean candidates per batch) over each sampling interval."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        n = b.get("rankserve_batch_requests_count", 0) - a.get("rankserve_batch_requests_count", 0)
        if n > 0:
            out.append((b["t"], (b["rankserve_batch_requests_sum"] - a["rankserve_batch_requests_sum"]) / n,
                        (b["rankserve_batch_candidates_sum"] - a["rankserve_batch_candidates_sum"]) / n))
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _plots(out: Path, history: list[dict[str, str]], batches: list[tuple[float, float, float]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [r for r in history if r.get("Name") == "Aggregated" and r.get("User Count")]
    t0 = float(agg[0]["Timestamp"]) if agg else 0.0
    ts = [float(r["Timestamp"]) - t0 for r in agg]
    users = [float(r["User Count"]) for r in agg]
    rps = [float(r["Requests/s"] or 0) for r in agg]
    fails = [float(r["Failures/s"] or 0) for r in agg]

    def pct(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "", "N/A") else float("nan") for r in agg]

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("50%", "95%", "99%"):
        axes[0].plot(users, pct(key), "o-", ms=3, label=f"p{key[:-1]}")
        axes[1].plot(rps, pct(key), "o", ms=3, label=f"p{key[:-1]}")
    axes[0].set(xlabel="offered load (concurrent users)", ylabel="latency (ms)", title="latency vs offered load")
    axes[1].set(xlabel="achieved requests/s", ylabel="latency (ms)", title="latency vs throughput")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    files.append("latency.png")
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.plot(ts, rps, label="requests/s")
    ax.plot(ts, fails, label="failures/s", color="red")
    ax2 = ax.twinx()
    ax2.plot(ts, users, "--", color="gray", label="users")
    ax.set(xlabel="time (s)", ylabel="per second", title="throughput and failures over time")
    ax2.set_ylabel("users")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    files.append("throughput.png")
    fig, ax = plt.subplots(figsize=(11, 3.5))
    if batches:
        ax.plot([b[0] for b in batches], [b[1] for b in batches], label="requests per batch")
        ax3 = ax.twinx()
        ax3.plot([b[0] for b in batches], [b[2] for b in batches], color="green", label="candidates per batch")
        ax3.set_ylabel("candidates per batch")
    ax.set(xlabel="time (s)", ylabel="requests per batch", title="batch size formed by the server")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "batch_size.png", dpi=100)
    files.append("batch_size.png")
    plt.close("all")
    return files


def _summary(stats: list[dict[str, str]], batches: list[tuple[float, float, float]]) -> dict[str, Any]:
    kinds = {}
    for r in stats:
        if not r.get("Name"):
            continue
        kinds[r["Name"]] = {
            "requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
            "rps": round(float(r["Requests/s"]), 2), "p50_ms": float(r["50%"] or 0),
            "p95_ms": float(r["95%"] or 0), "p99_ms": float(r["99%"] or 0),
        }
    mean_batch = sum(b[1] for b in batches) / len(batches) if batches else 0.0
    return {"by_kind": kinds, "aggregated": kinds.get("Aggregated", {}), "mean_batch_requests": round(mean_batch, 2)}


def _markdown(s: dict[str, Any]) -> str:
    lines = ["| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for name, k in s["by_kind"].items():
        lines.append(f"| {name} | {k['requests']} | {k['failures']} | {k['rps']} | {k['p50_ms']:.0f} | "
                     f"{k['p95_ms']:.0f} | {k['p99_ms']:.0f} |")
    lines.append(f"\nmean batch formed by the server: {s['mean_batch_requests']} requests")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="http://127.0.0.1:8000")
    p.add_argument("--shape", default="step", choices=["constant", "step", "spike"])
    p.add_argument("--users", type=int, default=8, help="users of the constant shape")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--data", type=Path, default=Path(".rankserve/data/marketplace.npz"),
                   help="the server's tables, for the id ranges (else 20000 users / 50000 items)")
    p.add_argument("--out", type=Path, default=None, help="default: loadtest/results/<timestamp>")
    p.add_argument("--protocol", default="http", choices=["http", "grpc"],
                   help="grpc: load rankserve.v1.Ranker/Rank at --grpc-target (metrics still come from --host)")
    p.add_argument("--grpc-target", default="127.0.0.1:9000", help="host:port of the gRPC API")
    a = p.parse_args(argv)
    for target in (a.host, f"grpc://{a.grpc_target}"):
        if not is_loopback(target):
            print(f"refusing {target}: load tests only target loopback addresses", file=sys.stderr)
            return 2
    import urllib.request

    try:
        with urllib.request.urlopen(f"{a.host}/readyz", timeout=5) as r:
            if r.status != 200:
                raise OSError(f"readyz answered {r.status}")
    except OSError as err:
        print(f"rankserve is not ready at {a.host} ({err}); start it with `make serve`", file=sys.stderr)
        return 2
    out = a.out or HERE / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    n_users, n_items = 20000, 50000
    if a.data.is_file():
        import numpy as np

        with np.load(a.data) as z:
            n_users, n_items = int(z["user_cat"].shape[0]), int(z["item_cat"].shape[0])
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--host", a.host,
           "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
           "--only-summary", "--exit-code-on-error", "1", "--stop-timeout", "5", "--loglevel", "WARNING",
           "--shape", a.shape, "--shape-duration-s", str(a.duration_s), "--shape-users", str(a.users),
           "--n-users", str(n_users), "--n-items", str(n_items), "--grpc-target", a.grpc_target,
           "RankingGrpcUser" if a.protocol == "grpc" else "RankingUser"]
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    sampler = threading.Thread(target=_sample_metrics, args=(a.host, stop, samples), daemon=True)
    sampler.start()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, timeout=a.duration_s + 120, capture_output=True, text=True,
                              check=False)
        code = proc.returncode
        (out / "locust.log").write_text(proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired:
        code = 124
    finally:
        stop.set()
        sampler.join(timeout=3)
    batches = _batch_series(samples)
    summary = _summary(_read_csv(out / "locust_stats.csv"), batches)
    summary.update({"protocol": a.protocol, "shape": a.shape, "duration_s": a.duration_s, "locust_exit_code": code,
                    "plots": _plots(out, _read_csv(out / "locust_stats_history.csv"), batches)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = _markdown(summary)
    (out / "summary.md").write_text(md + "\n")
    print(md)
    print(f"report: {out}")
    failures = summary["aggregated"].get("failures", 0)
    requests = summary["aggregated"].get("requests", 0)
    return 0 if code == 0 and failures == 0 and requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
