"""What the GPU check reads of the machine: package versions, the GPU's memory and utilisation, and
the device each Triton model instance says it runs on.

Owns: the readings behind "the GPU is really used" (``nvidia-smi`` queries, a background sampler,
torch's view of the device) and the parsing of Triton's log for the instances' devices.
Must not touch: processes it did not start, the pipeline, files other than the Triton log it is given.

Every reading says where it came from; a reading that cannot be made is ``None`` with the reason
beside it, never a guess.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import shutil
import subprocess
import threading
from typing import Any

__all__ = ["GpuSampler", "compute_apps", "gpu_memory_used_mib", "instance_devices", "nvidia_smi", "versions"]

_PACKAGES = ("torch", "numpy", "cupy-cuda13x", "cupy-cuda12x", "numba", "numba-cuda", "grpcio", "protobuf",
             "pydantic", "tritonclient", "nvidia-pytriton", "faiss-cpu", "faiss-gpu-cu12", "ray")
_RUNS_ON = re.compile(r"(?P<model>[\w.-]+) v(?P<version>\d+) runs on (?P<device>[\w:]+)")


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
