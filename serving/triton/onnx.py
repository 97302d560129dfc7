"""ONNX models run with onnxruntime, called as a TorchScript module is.

Owns: opening a version's or an artifact's ``model.onnx`` (providers: CUDA first where this
onnxruntime has it, then the CPU), its inputs' widths, calling it on torch tensors (each output
[B, k]), and which backend serves a version. Must not touch: Triton (a version's runner,
``serving/triton/_model/model.py``, opens ``model.onnx`` itself), the repository's files.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ONNX_FILE", "TORCHSCRIPT_FILE", "OnnxModel", "backend_of"]

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"


def backend_of(version_dir: Path) -> str:
    """``onnx`` for a version (or artifact) holding ``model.onnx``, else ``torchscript``."""
    return "onnx" if (Path(version_dir) / ONNX_FILE).is_file() else "torchscript"


class OnnxModel:
    """``model.onnx`` in an onnxruntime session, called with positional torch tensors named ``order``.

    Raises:
        ValueError: ``order`` names an input the model lacks (onnxruntime's errors otherwise).
    """

    def __init__(self, path: Path, order: Sequence[str], *, device: str = "cpu") -> None:
        import onnxruntime as ort

        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else []
        providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), providers=providers)
        have = [i.name for i in self.session.get_inputs()]
        missing = [n for n in order if n not in have]
        if missing or len(have) != len(order):
            raise ValueError(f"model.onnx has inputs {have}; a ranker's are {list(order)}")
        self.order = list(order)

    def eval(self) -> OnnxModel:
        return self

    def widths(self) -> dict[str, int | None]:
        """Each input's last dimension (None where the model leaves it free)."""
        return {i.name: i.shape[-1] if isinstance(i.shape[-1], int) else None for i in self.session.get_inputs()}

    def save(self, path: Path) -> None:
        """Copy the model to ``path``."""
        shutil.copy(self.path, path)

    def __call__(self, *tensors: Any) -> Any:
        import torch

        feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(self.order, tensors, strict=True)}
        outs = [torch.from_numpy(np.asarray(o).reshape(np.asarray(o).shape[0], -1)) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)
