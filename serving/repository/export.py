"""Writing one model version into the repository, atomically.

Owns: the layout of a version directory (``model.pt`` or ``model.onnx``, ``model.py``, ``golden.npz``, ``meta.json``
and extra files such as the item index), the ranker's and the user tower's Triton signatures, and
the model's ``config.pbtxt`` when its signature changes. A version is written into a hidden
temporary directory and renamed into place, so Triton never sees half of one. Must not touch: traffic (``serving.repository.push`` moves it),
Triton's process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.files import fsync_dir, version_dirs
from serving.pipeline.features import RANKER_INPUTS, RANKER_OUTPUT, TOWER_INPUTS, TOWER_OUTPUT
from serving.triton.config import RUNNER, TensorSpec, model_config, read_config, signature, write_config
from serving.triton.digests import record_digests
from serving.triton.onnx import ONNX_FILE, TORCHSCRIPT_FILE, OnnxModel

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_PY", "RANKER_MAX_BATCH", "TOWER_MAX_BATCH", "export_version", "load_golden", "model_signature",
           "signatures"]

MODEL_PY = RUNNER
RANKER_MAX_BATCH = 8192
TOWER_MAX_BATCH = 1024


def signatures(n_cat: int, n_dense: int, dense_dim: int, emb_dim: int, user_cat: int = 3) -> dict[str, dict[str, Any]]:
    """The ranker's and the user tower's Triton signatures: ``cat`` INT64[n_cat], ``dense``
    FP32[n_dense] -> score; ``user_cat`` INT64[user_cat], ``user_dense`` FP32[dense_dim] -> embedding."""
    cat, dense = RANKER_INPUTS
    ucat, udense = TOWER_INPUTS
    return {
        "ranker": {"inputs": [TensorSpec(cat, "INT64", (n_cat,)), TensorSpec(dense, "FP32", (n_dense,))],
                   "outputs": [TensorSpec(RANKER_OUTPUT, "FP32", (1,))], "max_batch_size": RANKER_MAX_BATCH},
        "user_tower": {"inputs": [TensorSpec(ucat, "INT64", (user_cat,)), TensorSpec(udense, "FP32", (dense_dim,))],
                       "outputs": [TensorSpec(TOWER_OUTPUT, "FP32", (emb_dim,))], "max_batch_size": TOWER_MAX_BATCH},
    }


def model_signature(name: str, golden: dict[str, np.ndarray]) -> dict[str, Any]:
    """The signature of model ``name`` (``ranker`` or ``user_tower``) its golden tensors imply."""
    if name == "ranker":
        return signatures(golden[RANKER_INPUTS[0]].shape[1], golden[RANKER_INPUTS[1]].shape[1], 1, 1)["ranker"]
    return signatures(1, 1, golden[TOWER_INPUTS[1]].shape[1], golden[TOWER_OUTPUT].shape[1],
                      golden[TOWER_INPUTS[0]].shape[1])["user_tower"]


def load_golden(version_dir: Path) -> dict[str, np.ndarray]:
    """The golden inputs and reference outputs of a version (or an artifact), by tensor name."""
    with np.load(Path(version_dir) / "golden.npz") as z:
        return {k: z[k] for k in z.files}


def export_version(
    repo: Path,
    name: str,
    scripted: torch.jit.ScriptModule | OnnxModel,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    golden_inputs: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    max_batch_size: int,
    version: int | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> int:
    """Write a new version of ``name`` atomically and (re)write its config if the signature changed.

    The golden outputs are computed here by running ``scripted`` on ``golden_inputs``. The config
    is written with CPU instances; the kind is decided where Triton starts
    (``serving.triton.config.apply_instance_settings``).

    Returns:
        The version number written.

    Raises:
        FileExistsError: ``version`` already exists.
        ValueError: a golden input disagrees with its spec.
    """
    import torch

    repo = Path(repo)
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(version_dirs(model_dir))
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    if version in existing:
        raise FileExistsError(f"{name} version {version} already exists")
    for spec in inputs:
        arr = golden_inputs[spec.name]
        if arr.dtype != spec.numpy_dtype or tuple(arr.shape[1:]) != spec.dims:
            raise ValueError(f"golden input {spec.name!r} is {arr.dtype}{arr.shape}, expected {spec.dtype}{spec.dims}")
    with torch.inference_mode():
        out = scripted(*[torch.from_numpy(np.ascontiguousarray(golden_inputs[s.name])) for s in inputs])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    golden = {s.name: np.ascontiguousarray(golden_inputs[s.name]) for s in inputs}
    golden.update({s.name: o.detach().cpu().numpy() for s, o in zip(outputs, outs, strict=True)})
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        if isinstance(scripted, OnnxModel):
            scripted.save(tmp / ONNX_FILE)
        else:
            torch.jit.save(scripted, str(tmp / TORCHSCRIPT_FILE))
        shutil.copy(MODEL_PY, tmp / "model.py")
        np.savez(tmp / "golden.npz", **golden)
        full_meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "inputs": [asdict(s) for s in inputs], "outputs": [asdict(s) for s in outputs]}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str))
        for fname, src in (extra_files or {}).items():
            shutil.copy(src, tmp / fname)
        record_digests(tmp)  # what Triton may load from this version, checked before every load
        tmp.rename(model_dir / str(version))
        fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cfg = model_config(name, inputs, outputs, max_batch_size=max_batch_size)
    if not (model_dir / "config.pbtxt").exists() or signature(read_config(repo, name)) != signature(cfg):
        write_config(repo, cfg)
    return version
