"""Kernel benchmark (not a test): each backend's time and its share of the memory-bandwidth floor.

``python -m kernels.bench [--sizes 1000,10000,100000,1000000] [--out bench/results/kernels.json]``

The floor of a batch is the bytes that must move once (row indexes read, the user and item
features each pair reads, every output written) over this machine's measured copy bandwidth
(bytes read + written by a large copy: a parallel Numba loop on the CPU, CuPy device-to-device on
a GPU). The feature tables are read-only, as in serving, so GPU backends keep them on the device
and "host" mode moves only the row indexes in and the outputs out.
``% of floor`` = floor time / measured time. GPU backends are timed two ways: ``host`` (host row
indexes in, host outputs out: what serving does, transfers included) and ``device``
(device-resident inputs and outputs: the kernel alone, no host<->device transfer).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kernels import CrossInputs, CrossSpec, available_backends, get_crosser

__all__ = ["main"]

SPEC = CrossSpec(pairs=((0, 0), (1, 3), (2, 2)), buckets=1 << 20, dense_dim=16)
N_USERS, N_ITEMS = 100_000, 50_000
GPU_BACKENDS = {"cupy": "kernels._cupy", "numba_cuda": "kernels._numba_cuda"}


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


def bytes_per_pair(spec: CrossSpec = SPEC) -> int:
    """Bytes one pair must move: 2 row ids, the crossed ids of each side, both dense rows, outputs."""
    user_fields = len({u for u, _ in spec.pairs})
    item_fields = len({i for _, i in spec.pairs})
    read = 16 + 8 * (user_fields + item_fields) + 2 * 4 * spec.dense_dim
    write = 8 * spec.n_pairs + 4 * spec.n_dense_out
    return read + write


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], *, min_time_s: float = 0.3,
                 max_reps: int = 50) -> float:
    """Median wall time of ``fn`` (then ``sync``) after one warm-up call: >= 3 runs, up to ``min_time_s``."""
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


def cpu_copy_bandwidth() -> tuple[float, float]:
    """Bytes read + written per second by a 256 MiB copy: (all cores, one NumPy copy).

    The all-cores figure (a parallel Numba loop) is the floor's bandwidth, since the fused kernel
    runs on all cores; the single NumPy copy is reported beside it.
    """
    a = np.ones(256 * 1024 * 1024 // 8)
    b = np.empty_like(a)
    t_numpy = _median_time(lambda: np.copyto(b, a), _no_sync)
    try:
        import numba

        @numba.njit(parallel=True)
        def copy(dst: np.ndarray, src: np.ndarray) -> None:
            for i in numba.prange(src.shape[0]):
                dst[i] = src[i]

        t_par = min(_median_time(lambda: copy(b, a), _no_sync), t_numpy)
    except ImportError:
        t_par = t_numpy
    return 2 * a.nbytes / t_par, 2 * a.nbytes / t_numpy


def _no_sync() -> None:
    return None


def _gpu_sync(backend: str) -> Callable[[], None]:
    if backend == "cupy":
        import cupy as cp

        return cp.cuda.Device().synchronize
    from numba import cuda

    return cuda.synchronize


def gpu_copy_bandwidth() -> float | None:
    """Bytes read + written per second by a 2 GiB device-to-device copy (CuPy, else Numba), or None."""
    try:
        import cupy as cp

        a = cp.ones(1024 * 1024 * 1024 // 4, dtype=cp.float32)
        b = cp.empty_like(a)
        t = _median_time(lambda: b.__setitem__(slice(None), a), cp.cuda.Device().synchronize)
        return 2 * a.nbytes / t
    except Exception:  # noqa: BLE001 - no CuPy or no GPU: try Numba
        pass
    try:
        from numba import cuda

        da = cuda.to_device(np.ones(512 * 1024 * 1024 // 4, dtype=np.float32))
        db = cuda.device_array_like(da)
        t = _median_time(lambda: db.copy_to_device(da), cuda.synchronize)
        return 2 * da.nbytes / t
    except Exception:  # noqa: BLE001 - no GPU: no GPU figure
        return None


def _device_inputs(x: CrossInputs, backend: str) -> CrossInputs:
    if backend == "cupy":
        import cupy as cp

        return CrossInputs(*[cp.asarray(np.ascontiguousarray(a)) for a in x])
    from numba import cuda

    return CrossInputs(*[cuda.to_device(np.ascontiguousarray(a)) for a in x])


def _row(name: str, mode: str, n: int, t: float, ref_t: float, bw: float | None) -> dict[str, Any]:
    floor_bytes = n * bytes_per_pair()
    return {"backend": name, "mode": mode, "pairs": n, "time_ms": t * 1e3, "numpy_ms": ref_t * 1e3,
            "gbytes_per_s": floor_bytes / t / 1e9,
            "floor_pct": 100 * (floor_bytes / bw) / t if bw else None, "speedup_vs_numpy": ref_t / t}


def run(sizes: list[int], repeats_s: float = 0.3) -> dict[str, Any]:
    """Time every backend available here on each batch size; returns the report (JSON-able)."""
    backends = available_backends(allow_simulator=False)
    cpu_bw, cpu_numpy_bw = cpu_copy_bandwidth()
    gpu = [b for b in backends if b in GPU_BACKENDS]
    gpu_bw = gpu_copy_bandwidth() if gpu else None
    rows: list[dict[str, Any]] = []
    for n in sizes:
        x = _inputs(n, seed=n)
        ref_t = _median_time(partial(get_crosser("numpy").cross, x, SPEC), _no_sync, min_time_s=repeats_s)
        for name in ["numpy", *[b for b in backends if b != "numpy"]]:
            fn, sync = get_crosser(name).cross, _no_sync
            if name in GPU_BACKENDS:
                sync = _gpu_sync(name)
            t = ref_t if name == "numpy" else _median_time(partial(fn, x, SPEC), sync, min_time_s=repeats_s)
            rows.append(_row(name, "host", n, t, ref_t, gpu_bw if name in GPU_BACKENDS else cpu_bw))
            if name in GPU_BACKENDS:
                # device-resident inputs and outputs: the kernel alone, no host<->device transfer
                module = importlib.import_module(GPU_BACKENDS[name])
                dev = _device_inputs(x, name)
                td = _median_time(partial(module.cross_device, dev, SPEC), sync, min_time_s=repeats_s)
                rows.append(_row(name, "device", n, td, ref_t, gpu_bw))
    return {"machine": platform.processor() or platform.machine(), "cpu_copy_gbytes_per_s": cpu_bw / 1e9,
            "cpu_copy_numpy_gbytes_per_s": cpu_numpy_bw / 1e9,
            "gpu_copy_gbytes_per_s": gpu_bw / 1e9 if gpu_bw else None, "bytes_per_pair": bytes_per_pair(),
            "backends": backends, "rows": rows}


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (one row per size, backend and mode)."""
    lines = [f"copy bandwidth: CPU {report['cpu_copy_gbytes_per_s']:.1f} GB/s all cores "
             f"({report['cpu_copy_numpy_gbytes_per_s']:.1f} GB/s one NumPy copy)"
             + (f", GPU {report['gpu_copy_gbytes_per_s']:.0f} GB/s" if report["gpu_copy_gbytes_per_s"] else "")
             + f"; {report['bytes_per_pair']} bytes/pair must move", "",
             "| pairs | backend | mode | time ms | NumPy ms | GB/s | % of floor | vs NumPy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        fp = f"{r['floor_pct']:.1f}" if r["floor_pct"] is not None else "-"
        lines.append(f"| {r['pairs']:,} | {r['backend']} | {r['mode']} | {r['time_ms']:.3f} | {r['numpy_ms']:.3f} | "
                     f"{r['gbytes_per_s']:.2f} | {fp} | {r['speedup_vs_numpy']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run, write the JSON report, print the table and a one-line summary."""
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
