"""What the GPU check reads and measures: the machine (package versions, the GPU's memory and
utilisation, the device each Triton model instance says it runs on) and the pipeline (served scores
against the CPU model, throughput over batch sizes and candidates per request).

Owns: the readings behind "the GPU is really used" (``nvidia-smi`` queries, a background sampler,
torch's view of the device) and the parsing of Triton's log for the instances' devices; the
pipeline on the ``torch_exact`` recall index (no FAISS), the score check (Triton's scores and
embeddings against TorchScript on the CPU) and the sweep's figures per point (candidates/s, p50,
p99, each stage's share of the time). Must not touch: processes it did not start (the check
starts Triton), files beyond reading the repository, the tables and the Triton log it is given.

Every machine reading says where it came from; a reading that cannot be made is ``None`` with the
reason beside it, never a guess.

One sweep point = ``batch`` recall requests of ``candidates`` each, ranked as one batch by
:meth:`serving.pipeline.orchestration.RankPipeline.run_batch`, one batch at a time, back to back
for ``duration_s`` after a warm-up (each pipeline first runs every batch size twice, each point
then warms up again); every request of a batch has the batch's latency. Candidates/s counts
the rows ranked over the point's wall time. A request that failed or was answered degraded
counts as a failure, and a point with failures never makes the headline.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import get_crosser
from serving.config import Settings
from serving.index.torch_exact import TorchExactIndex
from serving.pipeline.assemble import create_pipeline
from serving.pipeline.features import RANKER_OUTPUT, TOWER_OUTPUT, FeatureTables, ranker_inputs
from serving.pipeline.orchestration import RankPipeline
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse
from serving.triton.caller import AsyncInferClient
from serving.triton.client import TritonClient
from serving.triton.inprocess import InProcessClient

__all__ = ["STAGES", "GpuSampler", "Point", "compute_apps", "gpu_memory_used_mib", "headline", "instance_devices",
           "make_pipeline", "measure_point", "nvidia_smi", "recall_requests", "score_check", "versions", "warm_up"]

_PACKAGES = ("torch", "numpy", "cupy-cuda13x", "cupy-cuda12x", "numba", "numba-cuda", "grpcio", "protobuf",
             "pydantic", "tritonclient", "nvidia-pytriton", "faiss-cpu", "faiss-gpu-cu12", "ray")
_RUNS_ON = re.compile(r"(?P<model>[\w.-]+) v(?P<version>\d+) runs on (?P<device>[\w:]+)")
STAGES = ("recall", "cross", "rank")
SCORE_TOLERANCE = 1e-5


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages the check cares about (``None``: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _smi(query: str, fields: tuple[str, ...]) -> list[dict[str, str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-{query}={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    rows = [dict(zip(fields, (c.strip() for c in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]
    return rows


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:  # "[N/A]" where a virtual machine hides a figure
        return None


def nvidia_smi() -> dict[str, Any] | None:
    """GPU 0 as ``nvidia-smi`` reports it now: name, memory used/total (MiB), utilisation (%)."""
    rows = _smi("gpu", ("name", "memory.used", "memory.total", "utilization.gpu"))
    if not rows:
        return None
    r = rows[0]
    return {"name": r.get("name"), "memory_used_mib": _number(r.get("memory.used")),
            "memory_total_mib": _number(r.get("memory.total")), "utilization_pct": _number(r.get("utilization.gpu")),
            "source": "nvidia-smi"}


def compute_apps() -> list[dict[str, Any]] | None:
    """Processes holding a CUDA context, as ``nvidia-smi`` lists them (``None``: no nvidia-smi)."""
    rows = _smi("compute-apps", ("pid", "process_name", "used_memory"))
    if rows is None:
        return None
    return [{"pid": r.get("pid"), "name": r.get("process_name"), "used_memory_mib": _number(r.get("used_memory"))}
            for r in rows]


def gpu_memory_used_mib() -> tuple[float | None, str]:
    """Memory in use on GPU 0 by every process (MiB) and where the figure came from: ``nvidia-smi``,
    else torch's ``cuda.mem_get_info`` (which needs a CUDA context in this process)."""
    smi = nvidia_smi()
    if smi is not None and smi["memory_used_mib"] is not None:
        return smi["memory_used_mib"], "nvidia-smi"
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            return (total - free) / 2**20, "torch.cuda.mem_get_info"
    except Exception as err:  # noqa: BLE001 - no reading is an answer too, with its reason
        return None, f"no reading: {err}"
    return None, "no reading: no nvidia-smi and torch sees no GPU"


def instance_devices(triton_log: str) -> dict[str, str]:
    """``{model: device}`` from the ``runs on`` line each model instance writes when it loads
    (``serving/triton/_model/model.py``); the last line of a model wins."""
    return {m.group("model"): m.group("device") for m in _RUNS_ON.finditer(triton_log)}


class GpuSampler:
    """Reads ``nvidia-smi`` every ``interval_s`` in a thread while the ``with`` body runs; keeps
    the highest memory use and utilisation seen, and how many readings were made."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.samples = 0
        self.max_memory_used_mib: float | None = None
        self.max_utilization_pct: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = nvidia_smi()
            if r is not None:
                self.samples += 1
                for key, attr in (("memory_used_mib", "max_memory_used_mib"), ("utilization_pct", "max_utilization_pct")):
                    v = r[key]
                    if v is not None and (getattr(self, attr) is None or v > getattr(self, attr)):
                        setattr(self, attr, v)
            self._stop.wait(self.interval_s)

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "max_memory_used_mib": self.max_memory_used_mib,
                "max_utilization_pct": self.max_utilization_pct, "interval_s": self.interval_s,
                "source": "nvidia-smi" if self.samples else "none (nvidia-smi absent or failing)"}

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def make_pipeline(settings: Settings, client: AsyncInferClient, *, device: str) -> RankPipeline:
    """The serving pipeline with exact torch recall on ``device`` over the live user tower's item
    embeddings (``torch_exact``), the crossing backend of ``settings`` and ``client`` for models."""
    registry = ModelRegistry(settings.model_repository)
    tower = settings.user_tower_model
    index = TorchExactIndex.from_version_dir(registry.version_dir(tower, registry.traffic(tower).live), device=device)
    return create_pipeline(settings, client, registry, index=index)


def recall_requests(n_users: int, n: int = 4096, seed: int = 0) -> list[RankRequest]:
    """``n`` recall requests (no candidates, k 20) for random known users."""
    users = np.random.default_rng(seed).integers(0, n_users, n)
    return [RankRequest.model_validate({"user_id": int(u), "k": 20}) for u in users]


@dataclass
class Point:
    """One measured point of the sweep."""

    way: str
    candidates: int
    batch: int
    batches: int
    requests: int
    failures: int
    wall_s: float
    rows: int
    latency_ms: list[float]
    stage_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms)
        total = float(lat.sum()) or 1.0
        shares = {s: self.stage_ms[s] / total for s in STAGES}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        return {"way": self.way, "candidates": self.candidates, "batch": self.batch, "batches": self.batches,
                "requests": self.requests, "failures": self.failures, "wall_s": round(self.wall_s, 3),
                "rps": self.requests / self.wall_s, "candidates_per_s": self.rows / self.wall_s,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "stage_share": {k: round(v, 4) for k, v in shares.items()}}


async def warm_up(pipeline: RankPipeline, requests: list[RankRequest], batches: list[int], rounds: int = 2) -> float:
    """Run ``rounds`` batches of every size in ``batches`` before any point is measured, so that
    TorchScript has seen each shape (it profiles, then compiles, per shape) and the GPU backends
    have allocated; returns the seconds it took."""
    t0 = time.perf_counter()
    for c in batches:
        for r in range(rounds):
            await pipeline.run_batch([pipeline.prepare(requests[(r * c + j) % len(requests)]) for j in range(c)])
    return time.perf_counter() - t0


async def measure_point(pipeline: RankPipeline, requests: list[RankRequest], *, way: str, batch: int,
                        duration_s: float, warmup_s: float = 0.0, min_batches: int = 3) -> Point:
    """Batches of ``batch`` requests back to back for ``duration_s`` (at least ``min_batches``),
    after a warm-up of two batches and at least ``warmup_s`` (the first batches compile, allocate
    and fill caches; TorchScript re-profiles its graph for new shapes)."""
    i = 0

    def next_batch() -> list[Any]:
        nonlocal i
        out = [pipeline.prepare(requests[(i + j) % len(requests)]) for j in range(batch)]
        i += batch
        return out

    t_warm = time.perf_counter()
    for n in range(1_000_000):
        if n >= 2 and time.perf_counter() - t_warm >= warmup_s:
            break
        await pipeline.run_batch(next_batch())
    point = Point(way, pipeline.settings.recall_n, batch, 0, 0, 0, 0.0, 0, [], dict.fromkeys(STAGES, 0.0))
    t0 = time.perf_counter()
    while point.batches < min_batches or time.perf_counter() - t0 < duration_s:
        prepared = next_batch()
        t1 = time.perf_counter()
        answers, stats = await pipeline.run_batch(prepared)
        point.latency_ms.append((time.perf_counter() - t1) * 1000)
        point.batches += 1
        point.requests += len(answers)
        point.failures += sum(not isinstance(a, RankResponse) or a.degraded for a in answers)
        point.rows += stats.rows
        for s in STAGES:
            point.stage_ms[s] += stats.stage_ms.get(s, 0.0)
    point.wall_s = time.perf_counter() - t0
    return point


def headline(points: list[dict[str, Any]], p99_target_ms: float) -> dict[str, Any] | None:
    """The point with the most candidates/s at p99 <= ``p99_target_ms`` (else the most overall),
    among points without failures; ``None`` when there is none."""
    clean = [p for p in points if p["failures"] == 0]
    if not clean:
        return None
    within = [p for p in clean if p["p99_ms"] <= p99_target_ms]
    best = max(within or clean, key=lambda p: p["candidates_per_s"])
    return {**best, "meets_p99_target": bool(within), "p99_target_ms": p99_target_ms}


def score_check(settings: Settings, triton_url: str, *, rows: int = 4096,
                gpu_client: InProcessClient | None = None) -> dict[str, Any]:
    """Triton's ranker scores and user tower embeddings for real feature rows against the same
    TorchScript versions run on the CPU in this process (and ``gpu_client``'s, when given): the
    largest absolute difference of each, and whether Triton's are all within ``SCORE_TOLERANCE``
    (``match``; ``inprocess_gpu_match`` likewise for ``gpu_client``), with the share of rows off."""
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    rng = np.random.default_rng(1)
    users = rng.integers(0, tables.n_users, rows)
    items = rng.integers(0, tables.n_items, rows)
    ranker, tower = settings.ranker_model, settings.user_tower_model
    v_ranker, v_tower = registry.traffic(ranker).live, registry.traffic(tower).live
    cases = [
        (ranker, v_ranker, RANKER_OUTPUT,
         ranker_inputs(tables, users, items, get_crosser("numpy"), registry.cross_spec(ranker, v_ranker)).tensors()),
        (tower, v_tower, TOWER_OUTPUT, tables.tower_inputs(users[:min(rows, 1024)])),
    ]
    cpu = InProcessClient(settings.model_repository, device="cpu")
    served = TritonClient(triton_url)
    out: dict[str, Any] = {"rows": rows, "tolerance": SCORE_TOLERANCE, "models": {}}
    try:
        for model, version, name, inputs in cases:
            want = cpu.infer_sync(model, inputs, [name], version=str(version))[name]
            got = served.infer(model, inputs, [name], version=str(version))[name]
            diffs = {"triton_max_abs_diff": _max_diff(got, want),
                     "triton_rows_off": _rows_off(got, want)}
            if gpu_client is not None:
                diffs["inprocess_gpu_max_abs_diff"] = _max_diff(
                    gpu_client.infer_sync(model, inputs, [name], version=str(version))[name], want)
            out["models"][model] = {"version": version, **diffs}
    finally:
        served.close()
    out["match"] = all(m["triton_max_abs_diff"] <= SCORE_TOLERANCE for m in out["models"].values())
    if gpu_client is not None:
        out["inprocess_gpu_match"] = all(m["inprocess_gpu_max_abs_diff"] <= SCORE_TOLERANCE
                                         for m in out["models"].values())
    return out


def _abs_diff(got: np.ndarray, want: np.ndarray) -> np.ndarray | None:
    """|got - want| per value, in ``want``'s shape; None when the sizes differ."""
    return None if got.size != want.size else np.abs(got.reshape(want.shape).astype(np.float64) - want)


def _rows_off(got: np.ndarray, want: np.ndarray) -> float:
    """The share of rows with any value beyond ``SCORE_TOLERANCE``."""
    d = _abs_diff(got, want)
    return 1.0 if d is None else round(float((d > SCORE_TOLERANCE).reshape(len(want), -1).any(axis=1).mean()), 4)


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    d = _abs_diff(got, want)
    return float("inf") if d is None else float(d.max())
