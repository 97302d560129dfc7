"""Triton model configuration (``config.pbtxt``) from the protobuf message, and version export.

``config.pbtxt`` is generated from ``model_config_pb2.ModelConfig`` with ``text_format``; versions
are written into a hidden temporary directory and renamed into place, so Triton never sees a
half-written version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

if TYPE_CHECKING:
    import torch

__all__ = [
    "TensorSpec",
    "export_version",
    "gpu_present",
    "list_versions",
    "load_golden",
    "model_config",
    "read_config",
    "write_config",
]

MODEL_PY = Path(__file__).resolve().parent / "_model" / "model.py"
_NP = {"INT64": np.int64, "FP32": np.float32, "INT32": np.int32, "FP64": np.float64, "BOOL": np.bool_}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Triton dtype name (``INT64``, ``FP32``), dims without batch."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _NP:
            raise ValueError(f"dtype must be one of {sorted(_NP)}, got {self.dtype!r}")
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))


def gpu_present() -> bool:
    """Whether Triton instances should be KIND_GPU (``RANKSERVE_TRITON_KIND`` overrides)."""
    kind = os.environ.get("RANKSERVE_TRITON_KIND", "auto").lower()
    if kind in {"cpu", "gpu"}:
        return kind == "gpu"
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    kind: str = "auto",
    instance_count: int = 1,
    max_queue_delay_us: int = 200,
    preferred_batch_sizes: Sequence[int] = (),
    warmup_batch_sizes: Sequence[int] = (1, 512),
) -> model_config_pb2.ModelConfig:
    """A python-backend model config with dynamic batching, warm-up and all versions available.

    Warm-up: Triton runs each version twice on zeros at each of ``warmup_batch_sizes`` (capped at
    ``max_batch_size``) before it reports the version ready. Without it the first requests pay
    TorchScript's profiling runs (measured here: 48 ms for 500 ranker rows, then 8, then 2.6).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size}")
    if kind not in {"auto", "cpu", "gpu"}:
        raise ValueError(f"kind must be auto, cpu or gpu, got {kind!r}")
    gpu = gpu_present() if kind == "auto" else kind == "gpu"
    cfg = model_config_pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for spec, target in [(s, cfg.input) for s in inputs] + [(s, cfg.output) for s in outputs]:
        t = target.add()
        t.name = spec.name
        t.data_type = model_config_pb2.DataType.Value(f"TYPE_{spec.dtype}")
        t.dims.extend(spec.dims)
    group = cfg.instance_group.add()
    group.count = instance_count
    group.kind = (model_config_pb2.ModelInstanceGroup.KIND_GPU if gpu
                  else model_config_pb2.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
    cfg.version_policy.all.SetInParent()
    for n in sorted({min(int(b), max_batch_size) for b in warmup_batch_sizes}):
        warm = cfg.model_warmup.add(name=f"zeros_batch_{n}", batch_size=n, count=2)
        for spec in inputs:  # zeros are valid ids for every embedding table
            sample = warm.inputs[spec.name]
            sample.data_type = model_config_pb2.DataType.Value(f"TYPE_{spec.dtype}")
            sample.dims.extend(spec.dims)
            sample.zero_data = True
    return cfg


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_config(repo: Path, config: model_config_pb2.ModelConfig) -> Path:
    """Atomically write ``repo/<name>/config.pbtxt``."""
    model_dir = Path(repo) / config.name
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    _atomic_write(path, text_format.MessageToString(config))
    return path


def read_config(repo: Path, name: str) -> model_config_pb2.ModelConfig:
    """Parse ``repo/<name>/config.pbtxt``."""
    return text_format.Parse((Path(repo) / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def list_versions(repo: Path, name: str) -> list[int]:
    d = Path(repo) / name
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def load_golden(version_dir: Path) -> dict[str, np.ndarray]:
    with np.load(Path(version_dir) / "golden.npz") as z:
        return {k: z[k] for k in z.files}


def _signature(cfg: model_config_pb2.ModelConfig) -> tuple[Any, ...]:
    return (tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.input),
            tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.output), cfg.max_batch_size)


def export_version(
    repo: Path,
    name: str,
    scripted: torch.jit.ScriptModule,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    golden_inputs: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    max_batch_size: int,
    version: int | None = None,
    kind: str = "auto",
    extra_files: Mapping[str, Path] | None = None,
) -> int:
    """Write a new version of ``name`` atomically and (re)write its config if the signature changed.

    The golden outputs are computed here by running ``scripted`` on ``golden_inputs``.

    Returns:
        The version number written.

    Raises:
        FileExistsError: ``version`` already exists.
    """
    import torch

    repo = Path(repo)
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = list_versions(repo, name)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    if version in existing:
        raise FileExistsError(f"{name} version {version} already exists")
    for spec in inputs:
        arr = golden_inputs[spec.name]
        if arr.dtype != _NP[spec.dtype] or tuple(arr.shape[1:]) != spec.dims:
            raise ValueError(f"golden input {spec.name!r} is {arr.dtype}{arr.shape}, expected {spec.dtype}{spec.dims}")
    with torch.inference_mode():
        out = scripted(*[torch.from_numpy(np.ascontiguousarray(golden_inputs[s.name])) for s in inputs])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    golden = {s.name: np.ascontiguousarray(golden_inputs[s.name]) for s in inputs}
    golden.update({s.name: o.detach().cpu().numpy() for s, o in zip(outputs, outs, strict=True)})
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        torch.jit.save(scripted, str(tmp / "model.pt"))
        shutil.copy(MODEL_PY, tmp / "model.py")
        np.savez(tmp / "golden.npz", **golden)
        full_meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "inputs": [asdict(s) for s in inputs], "outputs": [asdict(s) for s in outputs]}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str))
        for fname, src in (extra_files or {}).items():
            shutil.copy(src, tmp / fname)
        os.rename(tmp, model_dir / str(version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cfg = model_config(name, inputs, outputs, max_batch_size=max_batch_size, kind=kind)
    cfg_path = model_dir / "config.pbtxt"
    if not cfg_path.exists() or _signature(read_config(repo, name)) != _signature(cfg):
        write_config(repo, cfg)
    return version
