"""A ranker artifact that declares its features instead of carrying golden rows.

Owns: reading such an artifact (``model.pt``, TorchScript, or ``model.onnx``, and ``features.yaml``,
nothing else), resolving the
declaration against the data set, assembling real rows of the data set's impressions with the
serving path's own assembly (``serving.data.assembly.feature_table``), the checks on those rows
(the model takes the declared widths; scores finite and in [0, 1], of shape [B, 1] or [B]), and
the signature and golden rows the version is written with. Must not touch: the repository's files
(``serving.repository.push`` writes the version), Triton, traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels import FeaturePlan, get_crosser
from serving.data.assembly import feature_table
from serving.data.features import FeatureSpec, load_features, resolve
from serving.data.tables import DataTables
from serving.errors import PushRefusedError, RankserveError
from serving.pipeline.crossing import FEATURES_YAML
from serving.pipeline.features import RANKER_INPUTS, RANKER_OUTPUT
from serving.repository.export import model_signature
from serving.repository.validate import Artifact
from serving.triton.config import model_config, read_config, signature
from serving.triton.onnx import ONNX_FILE, TORCHSCRIPT_FILE, OnnxModel, backend_of

__all__ = ["REAL_ROWS", "DeclaredRanker", "is_declared", "load_declared"]

REAL_ROWS = 256  # impressions the model is run on (and golden rows recorded from)


@dataclass(frozen=True)
class DeclaredRanker:
    """A declared ranker checked on real rows: the artifact to write, its declaration and plan."""

    artifact: Artifact
    spec: FeatureSpec
    plan: FeaturePlan
    checks: dict[str, Any]


def is_declared(path: Path) -> bool:
    """Whether ``path`` is a declared ranker artifact: a model and ``features.yaml``, no golden rows."""
    return (path / FEATURES_YAML).is_file() and not (path / "golden.npz").is_file()


def load_declared(repo: Path, model: str, path: Path, tables: DataTables, impressions: pa.Table, *,
                  data_set: str, rows: int = REAL_ROWS) -> DeclaredRanker:
    """Load and check the declared ranker at ``path`` for ``model`` on ``rows`` real impressions.

    Raises:
        PushRefusedError: with the reason (a missing file, a declaration that does not resolve, a
            model that fails on the declared widths, scores NaN or outside [0, 1], widths other
            than an existing model's), before anything is written.
    """
    if not path.is_dir():
        raise PushRefusedError(f"artifact {path} is not a directory", field="artifact")
    if not (path / TORCHSCRIPT_FILE).is_file() and not (path / ONNX_FILE).is_file():
        raise PushRefusedError(f"artifact is missing its model: {TORCHSCRIPT_FILE} (TorchScript) or {ONNX_FILE}",
                               field="artifact")
    try:
        spec = load_features(path / FEATURES_YAML)
        plan = resolve(spec, tables)
    except RankserveError as err:
        raise PushRefusedError(f"{FEATURES_YAML} does not fit data set {data_set}: {err}", field="artifact") from err
    backend = backend_of(path)
    module = _load(path, backend)
    golden = real_rows(tables, impressions, spec, rows)
    widths = f"cat {golden[RANKER_INPUTS[0]].shape[1]}, dense {golden[RANKER_INPUTS[1]].shape[1]}"
    if isinstance(module, OnnxModel):
        declared = {n: golden[n].shape[1] for n in RANKER_INPUTS}
        if any(w is not None and w != declared[n] for n, w in module.widths().items()):
            raise PushRefusedError(f"the declared widths ({widths}) differ from {ONNX_FILE}'s inputs "
                                   f"{module.widths()}", field="artifact")
    module, scores = _scores(module, golden, widths, data_set)
    sig = _signature(repo, model, golden, widths)
    meta = {"data_set": data_set, "features": spec.model_dump(), "backend": backend}
    art = Artifact(path, module, meta, golden, tuple(sig["inputs"]), tuple(sig["outputs"]), sig["max_batch_size"])
    checks = {"rows_checked": int(scores.shape[0]), "score_range": [float(scores.min()), float(scores.max())],
              "widths": widths}
    return DeclaredRanker(art, spec, plan, checks)


def _load(path: Path, backend: str) -> Any:
    """The artifact's model: a TorchScript module, or an ONNX model in onnxruntime (CPU)."""
    import torch

    name = ONNX_FILE if backend == "onnx" else TORCHSCRIPT_FILE
    try:
        if backend == "onnx":
            return OnnxModel(path / ONNX_FILE, RANKER_INPUTS)
        return torch.jit.load(str(path / TORCHSCRIPT_FILE), map_location="cpu").eval()
    except Exception as err:  # torch and onnxruntime raise many kinds on bad files
        raise PushRefusedError(f"{name} does not load: {err}".splitlines()[0], field="artifact") from err


def real_rows(tables: DataTables, impressions: pa.Table, spec: FeatureSpec, rows: int) -> dict[str, np.ndarray]:
    """The ranker inputs of ``rows`` impressions drawn (seeded) from the data set's, as serving assembles them."""
    if impressions.num_rows == 0:
        raise PushRefusedError("the data set has no impressions to check the model on")
    take = np.sort(np.random.default_rng(0).choice(impressions.num_rows, min(rows, impressions.num_rows),
                                                   replace=False))
    table = feature_table(tables, impressions.take(pa.array(take)), spec, get_crosser("numpy"))
    n = table.num_rows
    cat = pc.list_flatten(table.column("cat")).to_numpy().astype(np.int64).reshape(n, -1)
    dense = pc.list_flatten(table.column("dense")).to_numpy().astype(np.float32).reshape(n, -1)
    return {RANKER_INPUTS[0]: np.ascontiguousarray(cat), RANKER_INPUTS[1]: np.ascontiguousarray(dense)}


def _scores(module: Any, golden: dict[str, np.ndarray], widths: str, data_set: str) -> tuple[Any, np.ndarray]:
    """Run ``module`` on the real rows; a model giving [B] is wrapped to give [B, 1], as Triton serves it."""
    import torch

    try:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(golden[n]) for n in RANKER_INPUTS])
    except Exception as err:
        raise PushRefusedError(f"model fails on real rows of {data_set} with the declared widths ({widths}): "
                               f"{err}".splitlines()[0]) from err
    n = golden[RANKER_INPUTS[0]].shape[0]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) not in ((n, 1), (n,)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PushRefusedError(f"model gives {shape} on {n} rows; a ranker gives one score a row, [B, 1] or [B]")
    scores = out.detach().numpy().reshape(n)
    if not np.isfinite(scores).all():
        raise PushRefusedError(f"model gives NaN or inf on real rows of {data_set}")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise PushRefusedError(f"scores out of [0, 1] on real rows of {data_set}: "
                               f"[{scores.min():.3g}, {scores.max():.3g}]")
    return (module if out.dim() == 2 or isinstance(module, OnnxModel) else _as_column(module)), scores


def _signature(repo: Path, model: str, golden: dict[str, np.ndarray], widths: str) -> dict[str, Any]:
    """The version's signature; a further version of an existing model must keep the model's."""
    sig = model_signature("ranker", {**golden, RANKER_OUTPUT: np.zeros((1, 1), np.float32)})
    if (repo / model / "config.pbtxt").is_file():
        have = read_config(repo, model)
        if signature(have) != signature(_config(model, sig)):
            dims = {t.name: list(t.dims) for t in have.input}
            raise PushRefusedError(f"the declared widths ({widths}) "
                                   f"differ from {model}'s inputs {dims}; a new declaration is a new ranker: push "
                                   "it under a new name with --create", field="artifact")
    return sig


def _config(model: str, sig: dict[str, Any]) -> Any:
    return model_config(model, sig["inputs"], sig["outputs"], max_batch_size=sig["max_batch_size"])


def _as_column(module: Any) -> Any:
    """``module`` giving [B] scores, wrapped (TorchScript) to give [B, 1]."""
    import torch

    class Column(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
            return self.inner(cat, dense).reshape(-1, 1)

    return torch.jit.script(Column(module))
