"""Validation of a push artifact before anything goes live.

Owns: the checks an artifact must pass (it loads; its signature matches ``config.pbtxt``; golden
inputs give the exported outputs; no NaN or inf and scores in [0, 1] on real feature rows; a user
tower's item embeddings fit the catalogue). Must not touch: the repository's files or Triton.

An *artifact* is a directory holding what one version needs:

* ``model.pt``    TorchScript module (positional inputs in ``config.pbtxt`` order);
* ``golden.npz``  golden inputs and the reference outputs they must give (by tensor name);
* ``meta.json``   metadata; a ranker records the crossing spec it was trained with (``cross_spec``);
* ``item_tower.pt`` (user tower only) the item tower trained with it (TorchScript:
  ``(item_cat, item_num, item_dense) -> embedding``). The push embeds the catalogue as changed so
  far with it and builds the version's item index, so user tower and index always move together,
  and replicas embed items added or updated later with the same tower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernels import CrossSpec
from serving.data.tables import DataTables
from serving.data.tower import tower_inputs
from serving.errors import PushRefusedError, RankserveError
from serving.index.item_tower import ITEM_TOWER_FILE
from serving.pipeline.crossing import FEATURES_YAML, CrossingStage, version_plan
from serving.pipeline.features import TOWER_OUTPUT
from serving.repository.export import load_golden
from serving.repository.registry import ModelRegistry
from serving.triton.config import TensorSpec, read_config

__all__ = ["GOLDEN_ATOL", "GOLDEN_RTOL", "Artifact", "load_artifact", "validate_artifact"]

GOLDEN_RTOL, GOLDEN_ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Artifact:
    """An artifact loaded once: its TorchScript module, metadata, golden tensors and the model's specs."""

    path: Path
    module: Any  # torch.jit.ScriptModule
    meta: dict[str, Any]
    golden: dict[str, np.ndarray]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    @property
    def is_user_tower(self) -> bool:
        """Whether the model gives user embeddings (its output is the tower's)."""
        return [o.name for o in self.outputs] == [TOWER_OUTPUT]

    @property
    def item_tower_path(self) -> Path | None:
        """``item_tower.pt`` of a user tower artifact."""
        p = self.path / ITEM_TOWER_FILE
        return p if p.is_file() else None

    def item_tower(self) -> Any:
        """The item tower module (loaded now).

        Raises:
            PushRefusedError: no item tower, or one that does not load.
        """
        import torch

        if self.item_tower_path is None:
            raise PushRefusedError(f"a user tower artifact must carry its item tower ({ITEM_TOWER_FILE})")
        try:
            return torch.jit.load(str(self.item_tower_path), map_location="cpu").eval()
        except Exception as err:
            raise PushRefusedError(f"{ITEM_TOWER_FILE} does not load: {err}".splitlines()[0]) from err


def load_artifact(registry: ModelRegistry, model: str, path: Path) -> Artifact:
    """Load ``path`` as an artifact of ``model`` (each file read once).

    Raises:
        PushRefusedError: unknown model, missing or unreadable files.
    """
    import torch

    if model not in registry.models():
        raise PushRefusedError(f"unknown model {model!r}; the repository serves {registry.models()}", field="model")
    if not path.is_dir():
        raise PushRefusedError(f"artifact {path} is not a directory", field="artifact")
    for name in ("model.pt", "golden.npz", "meta.json"):
        if not (path / name).is_file():
            raise PushRefusedError(f"artifact is missing {name}", field="artifact")
    try:
        module = torch.jit.load(str(path / "model.pt"), map_location="cpu").eval()
    except Exception as err:  # torch raises RuntimeError/ValueError/EOFError/zip errors on bad files
        raise PushRefusedError(f"model.pt does not load (unreadable or truncated): {err}".splitlines()[0]) from err
    try:
        meta = json.loads((path / "meta.json").read_text())
        golden = load_golden(path)
    except Exception as err:
        raise PushRefusedError(f"meta.json or golden.npz is unreadable: {err}") from err
    config = read_config(registry.repo, model)
    return Artifact(path, module, meta, golden, tuple(TensorSpec.from_config(t) for t in config.input),
                    tuple(TensorSpec.from_config(t) for t in config.output), config.max_batch_size)


def validate_artifact(art: Artifact, tables: DataTables, *, n_rows: int = 512) -> dict[str, Any]:
    """Check a loaded artifact against its model's signature, its golden outputs and real rows.

    Returns:
        The validation figures (golden max error, score range or embedding size, rows checked).

    Raises:
        PushRefusedError: with the reason, for each kind of failure.
    """
    inputs = []
    for spec in art.inputs:
        arr = art.golden.get(spec.name)
        if arr is None:
            raise PushRefusedError(f"golden.npz has no input {spec.name!r} required by config.pbtxt")
        if arr.dtype != spec.numpy_dtype:
            raise PushRefusedError(f"input {spec.name!r}: dtype {arr.dtype}, config.pbtxt says {spec.dtype}")
        if tuple(arr.shape[1:]) != spec.dims:
            raise PushRefusedError(f"input {spec.name!r}: shape {tuple(arr.shape[1:])}, config.pbtxt says {spec.dims}")
        inputs.append(arr)
    outs = _run(art.module, inputs, [o.name for o in art.outputs], "its golden inputs")
    checks: dict[str, Any] = {"golden_max_abs_error": _golden_error(art, outs), "rows_checked": n_rows}
    rng = np.random.default_rng(0)
    users = rng.integers(0, tables.n_users, n_rows)
    users[0] = tables.cold_row  # the cold-start path must score too
    items = rng.integers(0, tables.n_items, n_rows)
    if "cross_spec" in art.meta or (art.path / FEATURES_YAML).is_file():
        checks["score_range"] = _check_ranker_rows(art, tables, users, items)
    elif art.is_user_tower:
        checks["embedding_dim"] = _check_tower_rows(art, tables, users, items)
    else:
        raise PushRefusedError("a ranker artifact must name its crossing spec (cross_spec in meta.json) or declare "
                               f"its features ({FEATURES_YAML})")
    return checks


def _golden_error(art: Artifact, outs: dict[str, np.ndarray]) -> float:
    max_err = 0.0
    for spec in art.outputs:
        got = outs[spec.name]
        if tuple(got.shape[1:]) != spec.dims or got.dtype != spec.numpy_dtype:
            raise PushRefusedError(f"output {spec.name!r}: {got.dtype}{tuple(got.shape[1:])}, config.pbtxt says "
                                   f"{spec.dtype}{spec.dims}")
        ref = art.golden.get(spec.name)
        if ref is None:
            raise PushRefusedError(f"golden.npz has no reference output {spec.name!r}")
        err = float(np.max(np.abs(got - ref))) if got.size else 0.0
        if not np.allclose(got, ref, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL):
            raise PushRefusedError(f"golden inputs do not give the exported outputs of {spec.name!r} "
                                   f"(max error {err:.3g})")
        max_err = max(max_err, err)
    return max_err


def _check_ranker_rows(art: Artifact, tables: DataTables, users: np.ndarray, items: np.ndarray) -> list[float]:
    spec = CrossSpec.from_json(json.dumps(art.meta["cross_spec"])) if "cross_spec" in art.meta else None
    try:
        plan = version_plan(tables, art.path, spec)
    except RankserveError as err:
        raise PushRefusedError(f"its features do not fit the data set: {err}") from err
    none = [tables.encode_context(None)] * users.shape[0]
    feats = CrossingStage(tables, "numpy").inputs(tables, plan, users, none, np.arange(users.shape[0]),
                                                  items).tensors()
    out = art.outputs[0].name
    scores = _run(art.module, [feats[t.name] for t in art.inputs], [out], "real feature rows with its crossing spec")[out]
    if not np.isfinite(scores).all():
        raise PushRefusedError("model gives NaN or inf on real feature rows")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise PushRefusedError(f"scores out of [0, 1] on real rows: [{scores.min():.3g}, {scores.max():.3g}]")
    return [float(scores.min()), float(scores.max())]


def _check_tower_rows(art: Artifact, tables: DataTables, users: np.ndarray, items: np.ndarray) -> int:
    """The user tower and its item tower on real rows: embeddings of one size, finite."""
    item_in = [tables.item_cat[items], tables.item_num[items], tables.item_vec[items]]
    item_emb = _run(art.item_tower(), item_in, ["embedding"], f"real item rows ({ITEM_TOWER_FILE})")["embedding"]
    # no context: its sequences are empty, so no item's embedding is read (only their width)
    feats = tower_inputs(tables, users, [tables.encode_context(None)] * users.shape[0],
                         np.zeros((1, item_emb.shape[1]), np.float32))
    out = art.outputs[0].name
    emb = _run(art.module, [feats[t.name] for t in art.inputs], [out], "real user rows")[out]
    if item_emb.shape != (items.size, emb.shape[1]):
        raise PushRefusedError(f"{ITEM_TOWER_FILE} gives embeddings of shape {item_emb.shape[1:]}, the user tower "
                               f"{emb.shape[1:]}: they must match")
    if not (np.isfinite(emb).all() and np.isfinite(item_emb).all()):
        raise PushRefusedError("user or item embeddings contain NaN or inf")
    return int(emb.shape[1])


def _run(module: Any, inputs: list[np.ndarray], names: list[str], what: str) -> dict[str, np.ndarray]:
    import torch

    try:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    except Exception as err:
        raise PushRefusedError(f"model fails on {what}: {err}".splitlines()[0]) from err
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(names):
        raise PushRefusedError(f"model returns {len(outs)} outputs, config.pbtxt names {len(names)}")
    return {n: o.detach().numpy() for n, o in zip(names, outs, strict=True)}
