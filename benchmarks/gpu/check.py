"""``make gpu-check``: the GPU evidence (the kernels, Triton and the pipeline on a real GPU) in one
device call of about 5 minutes, and the wheels that call carries to the bare device image.

Usage. Here, on the CPU machine with the venv: ``python -m benchmarks.gpu.check prepare``
downloads the wheels the bare device image lacks into ``.whl/`` and prints the one ``device`` call
to make; ``python -m benchmarks.gpu.check --dry-run`` runs this whole script with every GPU step
skipped, saying so. There, on the device machine (bare image, wheels installed into ``/tmp/site``
by that call): ``python3 -m benchmarks.gpu.check --out "$OUT"`` (``make gpu-check`` runs it with
``ARGS``). Then copy ``gpu-check.{log,json,md}`` into ``docs/gpu/`` and commit them.

Owns: the check's steps, its time budget, its report files (``gpu-check.log``, ``.json``, ``.md``;
their wording is ``benchmarks.gpu.report``'s) and the last line it prints::

    gpu-check: triton=KIND_GPU scores_match=true pipeline_inprocess_cand_per_s=.. pipeline_triton_cand_per_s=.. p99_ms=..

and the carry: which wheels travel (``CARRY``), downloading them for the device's Python and
platform, slimming the ``nvidia-pytriton`` wheel to the device's Python, checking what travels
against the 64 MiB limit, and the device call's command line. Must not touch: the user's demo data
or model repository (it builds into a work dir of its own), FAISS or Ray (the device image has
neither; the report says whether either was imported), the repository's tracked files (``prepare``
writes only the ignored wheel folder, ``.whl/``, and a download cache).

Steps: the environment (versions, GPU, crossing backend); the demo build without FAISS
(``training.build.build(index=False)``); ``pytest tests/gpu``; ``python -m kernels.bench``;
Triton (``TritonProcess``, ``kind="gpu"``) with the served scores checked against TorchScript on the
CPU within 1e-5 and the GPU's memory and utilisation read while it serves; then the pipeline
(``benchmarks.gpu.probe``) at 500 and 2,000 candidates per request and batch sizes 1 to 64,
through Triton over gRPC and in-process (torch on the GPU, CuPy crossing), both with exact recall
on the GPU by torch (``torch_exact``: not FAISS). ``p99_ms`` on the last line is the p99 of the
Triton headline point: the most candidates/s at p99 <= ``--p99-target-ms`` (else the most overall).
A failed step is reported and the others still run; points that do not fit the time budget are
skipped with a line each.

What the device image lacks: pydantic (settings and request schemas), tritonclient and its JSON
parser, the ``tritonserver`` binary (nvidia-pytriton). grpcio and protobuf travel too, since
tritonclient 2.73's generated code refuses grpcio < 1.81.1 and its protobuf gencode is 6.x, and the
image's versions of both are not on record. The versions are the ones installed here, where the
tests run. ``nvidia-pytriton`` (55 MB) is slimmed to the device's Python: the python-backend stubs
for other Pythons and the libpython 3.13 only the 3.13 stub links are left out (about 16 MB);
everything else, ``RECORD`` included, is the wheel's own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gpu import probe
from benchmarks.gpu.report import final_line, markdown
from serving.config import REPO_ROOT, Settings

__all__ = ["CARRY", "DEVICE_PYTHON", "LIMIT_BYTES", "device_command", "main", "prepare", "pytest_counts",
           "slim_pytriton", "travelling_bytes"]

log = logging.getLogger(__name__)

GOAL_CAND_PER_S = 5_000_000
CANDIDATES = (500, 2000)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
DRY_BATCHES = (1, 8)
_RESERVE_S = 20.0  # kept for stopping Triton and writing the report
DEVICE_PYTHON = "3.12"
LIMIT_BYTES = 64 * 2**20
CARRY = ("nvidia-pytriton", "tritonclient", "python-rapidjson", "grpcio", "protobuf", "pydantic", "pydantic-core",
         "typing-inspection", "annotated-types", "typing-extensions")
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# Seconds: the check's own budget, the device call's limit (pip install, Triton's stop and the
# report fit in the difference), and what a device machine takes to start.
CHECK_BUDGET_S = 270
CALL_TIMEOUT_S = 360
_STUBS = re.compile(r"^pytriton/tritonserver/python_backend_stubs/(?P<py>\d+\.\d+)/")
_LIBPYTHON = re.compile(r"^nvidia_pytriton\.libs/libpython3-[0-9a-f]+\.(?P<minor>\d+)\.so")


def pins() -> list[str]:
    """``name==version`` of each carried distribution, as installed in this environment."""
    out = []
    for name in CARRY:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as err:
            raise SystemExit(f"gpu-check prepare: {name} is not installed here; run it with the venv's python") from err
    return out


def download(cache: Path, requirements: list[str]) -> list[Path]:
    """``pip download`` exactly ``requirements`` (no dependencies) for CPython 3.12 on manylinux x86_64."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(cache)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + requirements, check=True)
    wheels = []
    for req in requirements:
        name, version = req.split("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if len(found) != 1:
            raise SystemExit(f"gpu-check prepare: expected one wheel of {req} in {cache}, found {found}")
        wheels.append(found[0])
    return wheels


def slim_pytriton(src: Path, dst: Path, python: str = DEVICE_PYTHON) -> list[str]:
    """Copy the ``nvidia-pytriton`` wheel without the stubs of other Pythons and the bundled
    libpython of another minor version; ``RECORD`` loses their lines. Returns what was left out."""
    minor = python.split(".")[1]
    dropped: list[str] = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            stub, lib = _STUBS.match(info.filename), _LIBPYTHON.match(info.filename)
            if (stub and stub.group("py") != python) or (lib and lib.group("minor") != minor):
                dropped.append(info.filename)
        for info in zin.infolist():
            if info.filename in dropped:
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                gone = set(dropped)
                data = "".join(ln for ln in data.decode().splitlines(keepends=True)
                               if ln.split(",", 1)[0] not in gone).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)  # keeps modes (executables)
    return dropped


def travelling_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides the carried paths: tracked and untracked files
    that git does not ignore, and ``shared/`` where the checkout has one."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    files = {root / f for f in out.split("\0") if f}
    if (root / "shared").is_dir():
        files |= {p for p in (root / "shared").rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def device_command(budget_s: float = CHECK_BUDGET_S, dest: str = ".whl") -> str:
    """The device call's command: install the carried wheels into /tmp/site, then the check,
    its report written under ``$OUT``."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
            f"{dest}/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1; "
            f"python3 -m benchmarks.gpu.check --out \"$OUT\" --budget-s {budget_s:.0f}")


def _ignored(root: Path, dest: Path) -> bool:
    sample = dest.relative_to(root) / "probe.whl"
    return subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(sample)], check=False).returncode == 0


def prepare(root: Path, dest: Path, *, budget_s: float = CHECK_BUDGET_S, cache: Path | None = None) -> int:
    """Fill ``dest`` with the carried wheels, check the size of what travels, print the device call."""
    if not _ignored(root, dest):
        print(f"gpu-check prepare: {dest} is not ignored by git; add /{dest.name}/ to .gitignore first", file=sys.stderr)
        return 1
    cache = cache or Path(tempfile.gettempdir()) / "rankserve-gpu-wheels"
    wheels = download(cache, pins())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for whl in wheels:
        if whl.name.startswith("nvidia_pytriton-"):
            dropped = slim_pytriton(whl, dest / whl.name)
            print(f"nvidia-pytriton slimmed to Python {DEVICE_PYTHON}: {len(dropped)} files left out "
                  f"({(whl.stat().st_size - (dest / whl.name).stat().st_size) / 2**20:.1f} MiB)")
        else:
            shutil.copy2(whl, dest / whl.name)
    carried = sum(p.stat().st_size for p in dest.iterdir())
    tree = travelling_bytes(root)
    total = carried + tree
    for p in sorted(dest.iterdir()):
        print(f"  {p.stat().st_size / 2**20:6.2f} MiB  {p.name}")
    print(f"carry: wheels {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB), measured in {root}")
    if total > LIMIT_BYTES:
        print("gpu-check prepare: over the device call's limit; nothing to run", file=sys.stderr)
        return 1
    command = device_command(budget_s, dest.name)
    call = {"command": command, "carry": [dest.name], "timeout_s": CALL_TIMEOUT_S}
    print("device call (the `run` tool; the device sends the checkout the session started in, so run "
          "`prepare` there):")
    print(json.dumps(call, indent=2))
    print(f"command: {len(command)} characters (limit 2000). Expected: about {(budget_s + 30) / 60:.1f} min (pip "
          f"install about 30 s, then the check's own budget of {budget_s:.0f} s), plus 1-2 min for the machine's "
          f"start. With the {CALL_TIMEOUT_S} s limit, a start and two runs fit in the 15 min of device time: rerun "
          "at once if needed, else give the machine back. Afterwards copy gpu-check.log, .json and .md from the "
          "returned files into docs/gpu/ and commit them.")
    return 0


class _Log:
    """Lines to the console and the log file; long outputs to the file only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        path.write_text("")
        self._f = path.open("a")  # appends, as the logging handler on the same file does

    def line(self, text: str) -> None:
        print(text, flush=True)
        self._f.write(text + "\n")
        self._f.flush()

    def block(self, title: str, text: str) -> None:
        self._f.write(f"----- {title} -----\n{text.rstrip()}\n----- end of {title} -----\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


@dataclass
class _Run:
    """One run of the check: its options, log, budget and report so far."""

    args: argparse.Namespace
    log: _Log
    settings: Settings
    dry: bool
    started: float = field(default_factory=time.monotonic)
    report: dict[str, Any] = field(default_factory=dict)
    points_left: int = 0

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def skip(self, step: str, why: str) -> None:
        self.report.setdefault("skipped", []).append({"step": step, "why": why})
        self.log.line(f"skip: {step}: {why}")

    def point_duration(self) -> float | None:
        """Seconds to measure the next sweep point for, within what is left; ``None``: no time."""
        share = (self.left_s() - _RESERVE_S) / max(1, self.points_left)
        self.points_left = max(0, self.points_left - 1)
        duration = min(self.args.duration_s, share / 1.7)  # the rest: a warm-up of half as long, set-up
        return duration if duration >= 0.2 else None


def pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": n, "skipped": n, ...}`` from pytest's closing summary line."""
    lines = [ln for ln in text.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if not lines:
        return {}
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)",
                                              lines[-1])}


def _step_timeout(run: _Run, cap_s: float = 120.0) -> float:
    """A fixed step's limit: at most ``cap_s``, and never the time the Triton steps need."""
    return max(30.0, min(cap_s, run.left_s() - 120.0))


def _subprocess(run: _Run, title: str, cmd: list[str], timeout_s: float) -> tuple[int, str]:
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as err:
        partial = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (err.stdout, err.stderr) if x)
        code, text = 124, f"timed out after {timeout_s:.0f} s\n{partial}"
    run.log.block(f"{title} ({' '.join(cmd[1:])}, exit {code}, {time.monotonic() - t0:.1f} s)", text)
    return code, text


def _environment(run: _Run) -> None:
    import sysconfig

    from kernels import KernelBackendError, get_crosser, gpu_unavailable_reason

    env: dict[str, Any] = {"versions": probe.versions(), "numba_gpu": gpu_unavailable_reason() or "visible"}
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    env["libpython_for_triton_stub"] = {"libdir": libdir, "soname": soname,
                                        "present": bool(libdir and soname and (Path(libdir) / soname).exists())}
    import torch

    env["torch_cuda"] = torch.version.cuda
    if not run.dry:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["nvidia_smi"] = probe.nvidia_smi()
    backend = "auto"
    if run.dry:
        run.skip("cupy crossing", "dry run: CuPy needs a GPU; the fastest CPU backend crosses instead")
    else:
        try:
            get_crosser("cupy")
            backend = "cupy"
        except KernelBackendError as err:
            run.skip("cupy crossing", f"{err}; the fastest available backend crosses instead")
    env["cross_backend"] = backend
    run.settings = run.settings.model_copy(update={"cross_backend": backend})
    run.report["environment"] = env
    run.log.line(f"environment: python {env['versions']['python']}, torch {env['versions']['torch']} "
                 f"(cuda {env['torch_cuda']}), numpy {env['versions']['numpy']}, gpu {env.get('gpu', 'none (dry run)')}, "
                 f"libpython for the Triton stub {'found' if env['libpython_for_triton_stub']['present'] else 'MISSING'}")


def _build(run: _Run) -> None:
    from training.build import build

    t0 = time.monotonic()
    s = run.settings
    summary = build(s.marketplace_path.parent, s.model_repository, items=run.args.items, users=run.args.users,
                    force=True, index=False)
    run.report["build"] = {**summary, "wall_s": round(time.monotonic() - t0, 1)}
    q = summary["quality"]
    run.log.line(f"build (no FAISS): {q['n_users']} users, {q['n_items']} items, ranker AUC {q['auc']}, "
                 f"{time.monotonic() - t0:.0f} s; recall@500: {q['index_kind']}")


def _gpu_tests(run: _Run) -> None:
    from kernels import gpu_unavailable_reason

    if run.dry:
        run.skip("gpu_tests", f"dry run: pytest tests/gpu needs a GPU ({gpu_unavailable_reason()})")
        return
    code, text = _subprocess(run, "pytest tests/gpu", [sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                                                       "no:cacheprovider", "tests/gpu"], timeout_s=_step_timeout(run))
    counts = pytest_counts(text)
    run.report["gpu_tests"] = {"exit": code, "counts": counts, "summary": text.strip().splitlines()[-1:]}
    run.log.line(f"gpu tests: exit {code}, {counts}")


def _kernel_bench(run: _Run) -> None:
    sizes = "1000" if run.dry else run.args.kernel_sizes
    if run.dry:
        run.skip("kernel_bench GPU rows", "dry run: no CuPy or Numba CUDA backend; CPU backends at 1,000 pairs only")
    out = Path(run.args.work_dir) / "kernels.json"
    code, text = _subprocess(run, "kernel bench", [sys.executable, "-m", "kernels.bench", "--sizes", sizes,
                                                   "--out", str(out)], timeout_s=_step_timeout(run))
    best = next((ln for ln in reversed(text.splitlines()) if ln.startswith("kernels:")), None)
    run.report["kernel_bench"] = {"exit": code, "best": best,
                                  "report": json.loads(out.read_text()) if code == 0 and out.is_file() else None}
    run.log.line(f"kernel bench: exit {code}, {best}")


def _sweep(run: _Run, way: str, make_client: Callable[[], Any]) -> list[dict[str, Any]]:
    """Every (candidates, batch) point of one way that fits the budget, one line each."""
    batches = [int(b) for b in run.args.batches.split(",")] if run.args.batches else (
        list(DRY_BATCHES) if run.dry else list(BATCHES))
    points: list[dict[str, Any]] = []

    async def go() -> None:
        for n in CANDIDATES:
            client = make_client()
            try:
                pipeline = probe.make_pipeline(run.settings.model_copy(update={"recall_n": n}), client,
                                               device=run.device)
                requests = probe.recall_requests(pipeline.catalogue.tables.n_users)
                warm_s = await probe.warm_up(pipeline, requests, batches)
                run.log.line(f"{way} n={n}: pipeline warmed up on every batch size in {warm_s:.1f} s")
                for c in batches:
                    duration = run.point_duration()
                    if duration is None:
                        run.skip(f"{way} {n} candidates batch {c}", f"time budget ({run.left_s():.0f} s left)")
                        continue
                    p = (await probe.measure_point(pipeline, requests, way=way, batch=c, duration_s=duration,
                                             warmup_s=duration / 2)).to_json()
                    points.append(p)
                    run.log.line(f"{way} n={n} batch={c}: {p['candidates_per_s']:,.0f} cand/s, p50 {p['p50_ms']:.2f} ms, "
                                 f"p99 {p['p99_ms']:.2f} ms, shares {p['stage_share']}, failures {p['failures']}")
            finally:
                await client.close()

    asyncio.run(go())
    return points


def _triton(run: _Run) -> None:
    from serving.triton.client import AsyncTritonClient
    from serving.triton.inprocess import InProcessClient
    from serving.triton.process import TritonProcess

    s = run.settings
    info: dict[str, Any] = {"kind_requested": "cpu" if run.dry else "gpu"}
    run.report["triton"] = info
    if run.dry:
        run.skip("triton KIND_GPU", "dry run: no GPU; Triton runs KIND_CPU instances instead")
        run.skip("gpu usage", "dry run: no GPU memory or utilisation to read")
        run.skip("torch_exact recall on the GPU", "dry run: exact search with torch runs on the CPU")
        run.skip("in-process GPU scores vs CPU", "dry run: no GPU model to compare")
    else:
        info["memory_before_mib"] = probe.gpu_memory_used_mib()
    triton = TritonProcess(s.model_repository, runtime_dir=s.triton_runtime_dir, binary=s.triton_bin,
                           kind=info["kind_requested"], torch_threads=s.triton_torch_threads,
                           ready_timeout_s=max(60.0, min(150.0, run.left_s() - 60.0)))
    t0 = time.monotonic()
    try:
        with triton:
            info["start_s"] = round(time.monotonic() - t0, 1)
            _triton_readings(run, triton, info)
            gpu_client = None if run.dry else InProcessClient(s.model_repository, device="cuda")
            info["score_check"] = probe.score_check(s, triton.grpc_url, gpu_client=gpu_client)
            run.log.line(f"score check: match={info['score_check']['match']} {info['score_check']['models']}")
            sampler = None if run.dry else probe.GpuSampler()
            with sampler or nullcontext():
                run.report.setdefault("pipelines", {})["triton"] = {
                    "client": "AsyncTritonClient over gRPC", "points": _sweep(
                        run, "triton", lambda: AsyncTritonClient.for_url(triton.grpc_url, s.triton_shared_memory))}
            if sampler is not None:
                info["gpu_during_sweep"] = sampler.summary()
    finally:
        run.log.block("Triton log (tail)", triton.log_tail(80))
    info["gpu_used"] = None if run.dry else _gpu_used(info)
    run.log.line(f"triton: instances {info.get('instance_kinds')}, devices {info.get('instance_devices')}, "
                 f"gpu used {info['gpu_used']}")


def _triton_readings(run: _Run, triton: Any, info: dict[str, Any]) -> None:
    from tritonclient.grpc import model_config_pb2

    from serving.triton.config import read_config

    name = model_config_pb2.ModelInstanceGroup.Kind.Name
    kinds = {m: [name(g.kind) for g in read_config(run.settings.model_repository, m).instance_group]
             for m in triton.models}
    info["instance_kinds"] = {m: k[0] if len(set(k)) == 1 else k for m, k in kinds.items()}
    info["instance_devices"] = probe.instance_devices(triton.log_path.read_text(errors="replace"))
    if not run.dry:
        info["memory_loaded_mib"] = probe.gpu_memory_used_mib()
        info["compute_apps"] = probe.compute_apps()


def _gpu_used(info: dict[str, Any]) -> bool:
    """Both models' instances say they run on CUDA, and the GPU shows it: Triton's processes hold
    a CUDA context, device memory grew by 64 MiB or more when they loaded, or utilisation rose."""
    devices = info.get("instance_devices") or {}
    on_cuda = bool(devices) and all(d.startswith("cuda") for d in devices.values())
    before, after = (info.get("memory_before_mib") or (None,))[0], (info.get("memory_loaded_mib") or (None,))[0]
    grew = before is not None and after is not None and after - before >= 64
    apps = any("triton" in (a.get("name") or "") for a in info.get("compute_apps") or [])
    busy = ((info.get("gpu_during_sweep") or {}).get("max_utilization_pct") or 0) > 0
    return on_cuda and (grew or apps or busy)


def _inprocess(run: _Run) -> None:
    from serving.triton.inprocess import InProcessClient

    if run.dry:
        run.skip("in-process TorchScript on the GPU", "dry run: the in-process models run on the CPU")

    # as many torch threads as each Triton instance has: the two ways compare like for like, and a
    # CPU shared with other work does not stall torch's thread pool (two threads on two busy cores
    # ran the in-process dry run over 30x slower here)
    threads = run.settings.triton_torch_threads
    run.report.setdefault("pipelines", {})["inprocess"] = {
        "client": f"InProcessClient (TorchScript on {run.device}, {threads} torch thread(s))",
        "points": _sweep(run, "inprocess", lambda: InProcessClient(run.settings.model_repository, device=run.device,
                                                                   num_threads=threads))}


_STEPS: tuple[tuple[str, Callable[[_Run], None]], ...] = (
    ("environment", _environment), ("build", _build), ("gpu_tests", _gpu_tests), ("kernel_bench", _kernel_bench),
    ("triton", _triton), ("inprocess", _inprocess))


def _run_steps(run: _Run) -> None:
    n_batches = len(run.args.batches.split(",")) if run.args.batches else len(DRY_BATCHES if run.dry else BATCHES)
    run.points_left = 2 * len(CANDIDATES) * n_batches
    for name, step in _STEPS:
        try:
            step(run)
        except Exception as err:  # noqa: BLE001 - one failed step is reported; the others still run
            run.report.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"
            run.log.line(f"error: {name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            run.log.block(f"{name} traceback", traceback.format_exc())
            if name == "build":
                run.log.line("error: nothing else can run without the build")
                return


def _finish(run: _Run) -> str:
    run.report["imports"] = {name: name in sys.modules for name in ("faiss", "ray")}
    run.report["wall_s"] = round(time.monotonic() - run.started, 1)
    line = final_line(run.report, dry=run.dry, p99_target_ms=run.args.p99_target_ms)
    run.report["final_line"] = line
    out = Path(run.args.out)
    (out / "gpu-check.json").write_text(json.dumps(run.report, indent=2, default=str))
    (out / "gpu-check.md").write_text(markdown(run.report, goal_cand_per_s=GOAL_CAND_PER_S,
                                               p99_target_ms=run.args.p99_target_ms))
    run.log.line(f"imports: faiss {run.report['imports']['faiss']}, ray {run.report['imports']['ray']}; "
                 f"wall {run.report['wall_s']} s; wrote gpu-check.{{log,json,md}} into --out")
    run.log.line(line)
    return line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=("run", "prepare"), default="run",
                   help="run the check (default), or prepare the device call's wheels here")
    p.add_argument("--dry-run", action="store_true", help="on a machine without a GPU: GPU steps skipped, saying so")
    p.add_argument("--out", type=Path, help="report folder (default docs/gpu; dry run: bench/results/gpu-check-dry-run)")
    p.add_argument("--work-dir", type=Path,
                   help="where the demo data and models are built (default: a new temp dir, removed at the end)")
    p.add_argument("--items", type=int, help="items of the marketplace built (as rankserve build; default the demo's)")
    p.add_argument("--users", type=int, help="users of the marketplace built (default the demo's)")
    p.add_argument("--budget-s", type=float, default=float(CHECK_BUDGET_S),
                   help="the check's own time budget; sweep points adapt")
    p.add_argument("--duration-s", type=float, help="measured seconds per sweep point (default 3; dry run 0.5)")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,2,4,8,16,32,64; dry run 1,8)")
    p.add_argument("--kernel-sizes", default="1000,10000,100000,1000000", help="pairs per kernel bench row")
    p.add_argument("--p99-target-ms", type=float, default=15.0, help="p99 the headline points must meet")
    p.add_argument("--dest", type=Path, default=Path(".whl"), help="prepare: wheel folder in the repository root")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.action == "prepare":
        return prepare(REPO_ROOT, REPO_ROOT / args.dest, budget_s=args.budget_s)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: torch sees no GPU here; on a machine without one, run with --dry-run", file=sys.stderr)
            return 2
    args.duration_s = args.duration_s or (0.5 if args.dry_run else 3.0)
    args.out = args.out or REPO_ROOT / ("bench/results/gpu-check-dry-run" if args.dry_run else "docs/gpu")
    own_work_dir = args.work_dir is None  # a temp dir of its own goes at the end; a given one stays
    args.work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="rankserve-gpu-check-"))
    out_log = _Log(Path(args.out) / "gpu-check.log")
    logging.basicConfig(level=logging.INFO, handlers=[logging.FileHandler(out_log.path)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(data_dir=args.work_dir / "rankserve", model_repository=args.work_dir / "model_repository",
                                 default_timeout_ms=30000, max_timeout_ms=30000, triton_timeout_s=30.0)
    run = _Run(args, out_log, settings, args.dry_run)
    run.report.update({"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "budget_s": args.budget_s, "work_dir": str(args.work_dir), "recall": "torch_exact"})
    run.log.line(f"gpu-check{' (dry run)' if run.dry else ''}: work dir {args.work_dir}, budget {args.budget_s:.0f} s")
    try:
        _run_steps(run)
        line = _finish(run)
    finally:
        out_log.close()
        if own_work_dir:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0 if "scores_match=true" in line and not run.report.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
