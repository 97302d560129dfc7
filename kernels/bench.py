"""Kernel benchmark (not a test): each backend's time and its share of the memory-bandwidth floor.

``python -m kernels.bench [--sizes 1000,10000,100000,1000000] [--out bench/results/kernels.json]``

The floor of a batch is the bytes that must move once (row indexes read, the user and item
features each pair reads, every output written) over this machine's measured copy bandwidth
(bytes read + written by a large copy: a parallel Numba loop on the CPU, CuPy device-to-device on
a GPU). The feature tables are read-only, as in serving, so GPU backends keep them on the device
and "host" mode moves only the row indexes in and the outputs out.
``floor%`` = floor time / measured time. GPU backends are timed two ways: host arrays in and out
(what serving does today) and device-resident inputs and outputs (the kernel alone).

A second table times the whole ranker input of the demo's layout (user and item columns, the
crosses, item numerics, dot and products) two ways, host in and out: one fused plan
(``Crosser.assemble``) against a crossing call followed by NumPy gathers and concatenations (what
``serving.pipeline.features.ranker_inputs`` does).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kernels import (
    Crosser,
    CrossInputs,
    CrossSpec,
    FeatureInputs,
    FeaturePlan,
    available_backends,
    get_crosser,
)
from kernels.spec import (
    DENSE_DOT,
    DENSE_PROD,
    SIDE_ITEM,
    SIDE_Q,
    cat_column,
    cat_cross,
    cross_with,
    dense_column,
    dense_vectors,
)

__all__ = ["main"]

SPEC = CrossSpec(pairs=((0, 0), (1, 3), (2, 2)), buckets=1 << 20, dense_dim=16)
N_USERS, N_ITEMS = 100_000, 50_000
N_ITEM_NUM = 3


def ranker_plan(spec: CrossSpec = SPEC) -> FeaturePlan:
    """The demo ranker's input layout over the bench tables (3 user and 4 item columns)."""
    cat = [cat_column(SIDE_Q, c) for c in range(3)] + [cat_column(SIDE_ITEM, c) for c in range(4)]
    cat += [cat_cross((SIDE_Q, u), (SIDE_ITEM, i), spec.buckets, p) for p, (u, i) in enumerate(spec.pairs)]
    dense = [dense_column(SIDE_ITEM, c) for c in range(N_ITEM_NUM)]
    dense += [dense_vectors(DENSE_DOT, 0, 0, spec.dense_dim), dense_vectors(DENSE_PROD, 0, 0, spec.dense_dim)]
    return FeaturePlan.of(cat, dense, [1000] * 3 + [5000] * 4 + [spec.buckets] * spec.n_pairs)


def _inputs(n: int, seed: int) -> CrossInputs:
    """Row indexes for ``n`` pairs over read-only tables (as serving holds them)."""
    rng = np.random.default_rng(seed)
    x = CrossInputs(
        rng.integers(0, N_USERS, n, dtype=np.int64), rng.integers(0, N_ITEMS, n, dtype=np.int64),
        rng.integers(0, 1000, (N_USERS, 3), dtype=np.int64), rng.integers(0, 5000, (N_ITEMS, 4), dtype=np.int64),
        rng.normal(size=(N_USERS, SPEC.dense_dim)).astype(np.float32),
        rng.normal(size=(N_ITEMS, SPEC.dense_dim)).astype(np.float32))
    for table in x[2:]:
        table.setflags(write=False)
    return x


def _ranker_inputs_in_steps(crosser: Crosser, x: CrossInputs, item_num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Today's ranker inputs: one crossing call, then the gathered columns concatenated around it."""
    out = crosser.cross(x, SPEC)
    cat = np.concatenate([x.user_cat[x.user_rows], x.item_cat[x.item_rows], out.hashed], axis=1)
    return cat, np.concatenate([item_num[x.item_rows], out.dense], axis=1)


def _ranker_rows(n: int, x: CrossInputs, names: list[str], repeats_s: float) -> list[dict[str, Any]]:
    """The ranker input of ``n`` pairs per backend: fused plan vs crossing call plus gathers."""
    item_num = np.random.default_rng(n).normal(size=(N_ITEMS, N_ITEM_NUM)).astype(np.float32)
    item_num.setflags(write=False)
    no_num = np.zeros((x.user_cat.shape[0], 0), np.float32)
    no_num.setflags(write=False)
    fx = FeatureInputs(x.user_rows, x.item_rows, x.user_cat, no_num, x.user_dense, x.item_cat, item_num, x.item_dense)
    plan, rows = ranker_plan(), []
    for name in names:
        crosser = get_crosser(name)
        sync = _sync(name)
        fused = _median_time(functools.partial(crosser.assemble, fx, plan), sync, min_time_s=repeats_s)
        steps = _median_time(functools.partial(_ranker_inputs_in_steps, crosser, x, item_num), sync,
                             min_time_s=repeats_s)
        rows.append({"backend": name, "pairs": n, "fused_ms": fused * 1e3, "cross_then_gather_ms": steps * 1e3,
                     "speedup": steps / fused})
    return rows


def _sync(name: str) -> Callable[[], None]:
    if name in {"cupy", "numba_cuda"}:
        import cupy as cp

        return cp.cuda.Device().synchronize  # type: ignore[no-any-return]
    return lambda: None


def bytes_per_pair(spec: CrossSpec = SPEC) -> int:
    """Bytes one pair must move: 2 row ids, the crossed ids of each side, both dense rows, outputs."""
    user_fields = len({u for u, _ in spec.pairs})
    item_fields = len({i for _, i in spec.pairs})
    read = 16 + 8 * (user_fields + item_fields) + 2 * 4 * spec.dense_dim
    write = 8 * spec.n_pairs + 4 * spec.n_dense_out
    return read + write


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], *, min_time_s: float = 0.3,
                 max_reps: int = 50) -> float:
    fn()
    sync()
    times: list[float] = []
    t_end = time.perf_counter() + min_time_s
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cpu_copy_bandwidth() -> float:
    """Bytes read + written per second by a large copy on all cores (Numba parallel loop)."""
    a = np.ones(256 * 1024 * 1024 // 8)
    b = np.empty_like(a)
    try:
        import numba

        @numba.njit(parallel=True)
        def copy(dst: np.ndarray, src: np.ndarray) -> None:
            for i in numba.prange(src.shape[0]):
                dst[i] = src[i]

        t = _median_time(lambda: copy(b, a), lambda: None)
    except ImportError:
        t = _median_time(lambda: np.copyto(b, a), lambda: None)
    return 2 * a.nbytes / t


def gpu_copy_bandwidth() -> float | None:
    try:
        import cupy as cp

        a = cp.ones(512 * 1024 * 1024 // 4, dtype=cp.float32)
        b = cp.empty_like(a)
        sync = cp.cuda.Device().synchronize
        t = _median_time(lambda: b.__setitem__(slice(None), a), sync)
        return 2 * a.nbytes / t
    except Exception:  # noqa: BLE001 - no CuPy or no GPU: no GPU figure
        return None


def run(sizes: list[int], repeats_s: float = 0.3) -> dict[str, Any]:
    backends = available_backends(allow_simulator=False)
    cpu_bw = cpu_copy_bandwidth()
    gpu_bw = gpu_copy_bandwidth() if {"cupy", "numba_cuda"} & set(backends) else None
    rows: list[dict[str, Any]] = []
    ranker: list[dict[str, Any]] = []
    for n in sizes:
        x = _inputs(n, seed=n)
        floor_bytes = n * bytes_per_pair()
        ref_t = None
        names = ["numpy", *[b for b in backends if b != "numpy"]]
        for name in names:
            fn = get_crosser(name).cross
            sync = _sync(name)
            t = _median_time(functools.partial(fn, x, SPEC), sync, min_time_s=repeats_s)
            if name == "numpy":
                ref_t = t
            bw = cpu_bw if name in {"numpy", "numba_cpu"} else gpu_bw
            row = {"backend": name, "mode": "host", "pairs": n, "time_ms": t * 1e3,
                   "gbytes_per_s": floor_bytes / t / 1e9, "floor_pct": 100 * (floor_bytes / bw) / t if bw else None,
                   "speedup_vs_numpy": (ref_t or t) / t}
            rows.append(row)
            if name in {"cupy", "numba_cuda"}:
                import cupy as cp

                dev = CrossInputs(*[cp.asarray(a) for a in x])
                if name == "cupy":
                    from kernels._cupy import assemble_device
                else:
                    from kernels._numba_cuda import assemble_device
                td = _median_time(functools.partial(cross_with, assemble_device, dev, SPEC), sync, min_time_s=repeats_s)
                rows.append({"backend": name, "mode": "device", "pairs": n, "time_ms": td * 1e3,
                             "gbytes_per_s": floor_bytes / td / 1e9,
                             "floor_pct": 100 * (floor_bytes / gpu_bw) / td if gpu_bw else None,
                             "speedup_vs_numpy": (ref_t or td) / td})
        ranker += _ranker_rows(n, x, names, repeats_s)
    return {"machine": platform.processor() or platform.machine(), "cpu_copy_gbytes_per_s": cpu_bw / 1e9,
            "gpu_copy_gbytes_per_s": gpu_bw / 1e9 if gpu_bw else None, "bytes_per_pair": bytes_per_pair(),
            "backends": backends, "rows": rows, "ranker_inputs": ranker}


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"copy bandwidth: CPU {report['cpu_copy_gbytes_per_s']:.1f} GB/s"
             + (f", GPU {report['gpu_copy_gbytes_per_s']:.0f} GB/s" if report["gpu_copy_gbytes_per_s"] else "")
             + f"; {report['bytes_per_pair']} bytes/pair must move",
             "", "| pairs | backend | mode | time ms | GB/s | % of floor | vs NumPy |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        fp = f"{r['floor_pct']:.1f}" if r["floor_pct"] is not None else "-"
        lines.append(f"| {r['pairs']:,} | {r['backend']} | {r['mode']} | {r['time_ms']:.3f} | "
                     f"{r['gbytes_per_s']:.2f} | {fp} | {r['speedup_vs_numpy']:.1f}x |")
    lines += ["", "ranker inputs (demo layout), host in and out:", "",
              "| pairs | backend | fused plan ms | crossing + gathers ms | fused speed-up |", "|---|---|---|---|---|"]
    for r in report.get("ranker_inputs", []):
        lines.append(f"| {r['pairs']:,} | {r['backend']} | {r['fused_ms']:.3f} | {r['cross_then_gather_ms']:.3f} | "
                     f"{r['speedup']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--out", type=Path, default=Path("bench/results/kernels.json"))
    a = p.parse_args(argv)
    report = run([int(s) for s in a.sizes.split(",") if s])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(to_markdown(report))
    big = max(r["pairs"] for r in report["rows"])
    best = min((r for r in report["rows"] if r["pairs"] == big and r["mode"] == "host"), key=lambda r: r["time_ms"])
    print(f"kernels: best={best['backend']} speedup_vs_numpy@{big}={best['speedup_vs_numpy']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
