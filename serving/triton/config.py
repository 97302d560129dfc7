"""Triton model configuration (``config.pbtxt``) as the protobuf message, never as a template.

Owns: the one table of tensor dtypes, building a model's config from its tensor specs, reading
and atomically writing ``config.pbtxt``, and the start-up rewrite of the instance kind and torch
threads (``Settings.triton_kind``, ``Settings.triton_torch_threads``).
Must not touch: version directories (``serving.repository.export`` writes those) or processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.files import atomic_write_text

__all__ = [
    "DTYPES",
    "TORCH_THREADS_PARAMETER",
    "TensorSpec",
    "apply_instance_settings",
    "dtype_name",
    "model_config",
    "read_config",
    "resolve_kind",
    "signature",
    "write_config",
]

# Triton dtype name (without ``TYPE_``) -> numpy dtype: the one table of them.
DTYPES: dict[str, type[np.generic]] = {
    "INT64": np.int64, "FP32": np.float32, "INT32": np.int32, "FP64": np.float64, "BOOL": np.bool_,
}
# config.pbtxt parameter read by the python-backend model (serving/triton/_model/model.py).
TORCH_THREADS_PARAMETER = "torch_threads"
RUNNER = Path(__file__).resolve().parent / "_model" / "model.py"  # each version's model.py
_KIND = model_config_pb2.ModelInstanceGroup


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Triton dtype name (``INT64``, ``FP32``), dims without batch."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))

    @classmethod
    def from_config(cls, tensor: Any) -> TensorSpec:
        """The spec of a ``ModelInput``/``ModelOutput`` message."""
        return cls(tensor.name, dtype_name(tensor.data_type), tuple(tensor.dims))

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(DTYPES[self.dtype])


def dtype_name(code: int) -> str:
    """``INT64`` for ``TYPE_INT64``'s enum value."""
    return str(model_config_pb2.DataType.Name(code)).removeprefix("TYPE_")


def resolve_kind(kind: str) -> Literal["cpu", "gpu"]:
    """``cpu`` or ``gpu`` for a setting of ``auto``, ``cpu`` or ``gpu`` (auto: GPU when torch sees one)."""
    if kind not in {"auto", "cpu", "gpu"}:
        raise ValueError(f"kind must be auto, cpu or gpu, got {kind!r}")
    if kind != "auto":
        return "gpu" if kind == "gpu" else "cpu"
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    kind: str = "cpu",
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
    cfg = model_config_pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for spec, target in [(s, cfg.input) for s in inputs] + [(s, cfg.output) for s in outputs]:
        t = target.add()
        t.name = spec.name
        t.data_type = model_config_pb2.DataType.Value(f"TYPE_{spec.dtype}")
        t.dims.extend(spec.dims)
    group = cfg.instance_group.add()
    group.count = instance_count
    group.kind = _KIND.KIND_GPU if resolve_kind(kind) == "gpu" else _KIND.KIND_CPU
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


def write_config(repo: Path, config: model_config_pb2.ModelConfig) -> Path:
    """Atomically write ``repo/<name>/config.pbtxt``."""
    model_dir = Path(repo) / config.name
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    atomic_write_text(path, text_format.MessageToString(config))
    return path


def read_config(repo: Path, name: str) -> model_config_pb2.ModelConfig:
    """Parse ``repo/<name>/config.pbtxt``."""
    return text_format.Parse((Path(repo) / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def signature(cfg: model_config_pb2.ModelConfig) -> tuple[Any, ...]:
    """What a version must agree with: input and output names, dtypes, dims, and the batch bound."""
    return (tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.input),
            tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.output), cfg.max_batch_size)


def apply_instance_settings(repo: Path, models: Sequence[str], *, kind: str, torch_threads: int) -> list[str]:
    """Give every instance group of ``models`` the resolved ``kind`` and set the torch threads
    parameter, rewriting only configs that differ. Called before rankserve starts Triton, so the
    instance kind is decided where Triton runs, not when the model was exported.

    Returns:
        The models whose ``config.pbtxt`` was rewritten.
    """
    want = _KIND.KIND_GPU if resolve_kind(kind) == "gpu" else _KIND.KIND_CPU
    changed = []
    for name in models:
        cfg = read_config(repo, name)
        before = cfg.SerializeToString(deterministic=True)
        if not cfg.instance_group:
            cfg.instance_group.add(count=1)
        for group in cfg.instance_group:
            group.kind = want
        cfg.parameters[TORCH_THREADS_PARAMETER].string_value = str(torch_threads)
        if cfg.SerializeToString(deterministic=True) != before:
            write_config(repo, cfg)
            changed.append(name)
    return changed
