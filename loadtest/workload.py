"""What the benchmarks share of load generation: request bodies, the load generator as a process,
metric scrapes.

Owns: the benchmarks' request bodies and their file, running ``loadtest.loadgen`` in its own
process (closed loop or open loop) and reading its result, and scraping counters from a server's
``/metrics`` page (read by :func:`serving.metrics.metric_values`). Must not touch: servers (the
benchmarks start them), the pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from serving.metrics import metric_values

__all__ = ["recall_bodies", "run_loadgen", "scrape", "write_bodies"]


def recall_bodies(n_users: int, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` recall requests (no candidates, k 20) for random known users."""
    rng = np.random.default_rng(seed)
    return [{"user_id": int(u), "k": 20} for u in rng.integers(0, n_users, n)]


def write_bodies(bodies: list[dict[str, Any]], directory: Path | None = None) -> Path:
    """Write one JSON body per line into ``directory`` (default: a new temporary one)."""
    path = Path(directory or tempfile.mkdtemp()) / "bodies.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in bodies))
    return path


def run_loadgen(url: str, bodies_file: Path, *, duration_s: float, concurrency: int, warmup_s: float = 1.5,
                rate: float | None = None, seed: int = 0, timings: bool = False) -> dict[str, Any]:
    """One ``loadtest.loadgen`` run in its own process; closed loop (with ``timings``: the
    mean of each server stage too), or open loop at ``rate``/s (``concurrency`` then caps the
    requests in flight). Returns its JSON summary."""
    cmd = [sys.executable, "-m", "loadtest.loadgen", "--url", url, "--bodies", str(bodies_file),
           "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    if rate is not None:
        cmd += ["--rate", f"{rate:.3f}", "--seed", str(seed)]
    elif timings:
        cmd.append("--timings")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + warmup_s + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def scrape(url: str, names: tuple[str, ...] = ()) -> dict[str, float]:
    """:func:`metric_values` of ``url``'s ``/metrics``."""
    import httpx

    return metric_values(httpx.get(f"{url}/metrics", timeout=10).text, names)
