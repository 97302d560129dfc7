"""Runs the repository's TorchScript models in this process, with the Triton client's interface.

Owns: the in-process stand-in for Triton's inference call. Must not touch: serving (never used
by a replica).

Used for the benchmark's floor (the same pipeline with no serving hop) and to check that served
scores equal the model's own scores. Not a stand-in for Triton in serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.triton.config import read_config
from serving.triton.onnx import ONNX_FILE, TORCHSCRIPT_FILE, OnnxModel, backend_of

__all__ = ["InProcessClient"]


class InProcessClient:
    """``infer`` runs ``model_repository/<model>/<version>/model.pt`` with torch (``model.onnx``
    with onnxruntime), in-process.

    Args:
        repo: the model repository.
        num_threads: torch intra-op threads of this process (default: torch's).
        device: where the models run (``cpu``, ``cuda``); inputs and outputs stay NumPy on the host.
    """

    def __init__(self, repo: Path, *, num_threads: int | None = None, device: str = "cpu") -> None:
        self.repo = Path(repo)
        self.device = torch.device(device)
        self._models: dict[tuple[str, str], tuple[Any, list[str]]] = {}
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def _model(self, model: str, version: str) -> tuple[Any, list[str]]:
        key = (model, version)
        if key not in self._models:
            if not version:
                version = str(max(int(p.name) for p in (self.repo / model).iterdir() if p.name.isdigit()))
            names = [t.name for t in read_config(self.repo, model).input]
            folder = self.repo / model / version
            module: Any = (OnnxModel(folder / ONNX_FILE, names, device=str(self.device)) if backend_of(folder) == "onnx"
                           else torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location=self.device))
            module.eval()
            self._models[key] = (module, names)
        return self._models[key]

    def infer_sync(
        self, model: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *, version: str = ""
    ) -> dict[str, np.ndarray]:
        module, names = self._model(model, version)
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in names])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.cpu().numpy() for name, o in zip(output_names, outs, strict=True)}

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        *,
        version: str = "",
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        return self.infer_sync(model, inputs, output_names, version=version)

    async def close(self) -> None:
        """Nothing to release: the modules stay with this object."""
