"""The model push workflow: validate, write a version atomically, load it in Triton, move traffic.

An *artifact* is a directory holding what one version needs:

* ``model.pt``    TorchScript module (positional inputs in ``config.pbtxt`` order);
* ``golden.npz``  golden inputs and the reference outputs they must give (by tensor name);
* ``meta.json``   metadata; a ranker records the crossing spec it was trained with (``cross_spec``);
* ``item_emb.npy`` (user tower only) the item tower's embeddings, from which the FAISS index of
  the same version is built, so user tower and index always move together.

``training.export`` writes artifacts; ``rankserve push MODEL ARTIFACT`` runs :func:`push`.
A refused artifact leaves the repository and the live version untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kernels import CrossSpec, get_crosser
from serving.errors import PushRefusedError
from serving.pipeline.features import FeatureTables, ranker_inputs
from serving.repository.registry import ModelRegistry, Traffic

__all__ = ["PushError", "PushResult", "promote", "push", "rollback", "validate_artifact"]

log = logging.getLogger(__name__)

_DTYPES = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32, "TYPE_FP64": np.float64}
GOLDEN_RTOL, GOLDEN_ATOL = 1e-4, 1e-5


PushError = PushRefusedError


class ModelLoader(Protocol):
    def load_model(self, name: str) -> None: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...


@dataclass
class PushResult:
    model: str
    version: int
    traffic: Traffic
    checks: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _model_lock(model_dir: Path) -> Iterator[None]:
    """Serialises pushes of one model across processes; a second concurrent push is refused."""
    fd = open(model_dir / ".push.lock", "w")  # noqa: SIM115 - held for the context's duration
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise PushError(f"another push, promote or rollback of {model_dir.name} is in progress") from err
        yield
    finally:
        fd.close()


def validate_artifact(
    registry: ModelRegistry, model: str, artifact: Path, tables: FeatureTables, *, n_rows: int = 512
) -> dict[str, Any]:
    """Check an artifact before anything goes live.

    Returns:
        The validation figures (golden max error, score range, rows checked).

    Raises:
        PushError: with the reason, for each kind of failure.
    """
    import torch

    from serving.triton.config import read_config

    if model not in registry.models():
        raise PushError(f"unknown model {model!r}; the repository serves {registry.models()}", field="model")
    if not artifact.is_dir():
        raise PushError(f"artifact {artifact} is not a directory", field="artifact")
    for name in ("model.pt", "golden.npz", "meta.json"):
        if not (artifact / name).is_file():
            raise PushError(f"artifact is missing {name}", field="artifact")
    config = read_config(registry.repo, model)
    try:
        module = torch.jit.load(str(artifact / "model.pt"), map_location="cpu").eval()
    except Exception as err:  # torch raises RuntimeError/ValueError/EOFError/zip errors on bad files
        raise PushError(f"model.pt does not load (unreadable or truncated): {err}".splitlines()[0]) from err
    try:
        meta = json.loads((artifact / "meta.json").read_text())
        with np.load(artifact / "golden.npz") as z:
            golden = {k: z[k] for k in z.files}
    except Exception as err:
        raise PushError(f"meta.json or golden.npz is unreadable: {err}") from err

    # signature: names, dtypes, shapes against config.pbtxt
    inputs = []
    for t in config.input:
        arr = golden.get(t.name)
        if arr is None:
            raise PushError(f"golden.npz has no input {t.name!r} required by config.pbtxt")
        want = _DTYPES.get(_dtype_name(t.data_type))
        if arr.dtype != want:
            raise PushError(f"input {t.name!r}: dtype {arr.dtype}, config.pbtxt says {_dtype_name(t.data_type)}")
        if tuple(arr.shape[1:]) != tuple(t.dims):
            raise PushError(f"input {t.name!r}: shape {tuple(arr.shape[1:])}, config.pbtxt says {tuple(t.dims)}")
        inputs.append(arr)
    outs = _run(module, inputs, [o.name for o in config.output])
    max_err = 0.0
    for o in config.output:
        got = outs[o.name]
        if tuple(got.shape[1:]) != tuple(o.dims) or got.dtype != _DTYPES.get(_dtype_name(o.data_type)):
            raise PushError(f"output {o.name!r}: {got.dtype}{tuple(got.shape[1:])}, config.pbtxt says "
                            f"{_dtype_name(o.data_type)}{tuple(o.dims)}")
        ref = golden.get(o.name)
        if ref is None:
            raise PushError(f"golden.npz has no reference output {o.name!r}")
        if not np.allclose(got, ref, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL):
            err_ = float(np.max(np.abs(got - ref)))
            raise PushError(f"golden inputs do not give the exported outputs of {o.name!r} (max error {err_:.3g})")
        max_err = max(max_err, float(np.max(np.abs(got - ref))) if got.size else 0.0)

    # real feature rows: no NaN/inf, scores in range
    rng = np.random.default_rng(0)
    users = rng.integers(0, tables.n_users, n_rows)
    users[0] = tables.cold_row  # the cold-start path must score too
    items = rng.integers(0, tables.n_items, n_rows)
    checks: dict[str, Any] = {"golden_max_abs_error": max_err, "rows_checked": n_rows}
    if "cross_spec" in meta:
        spec = CrossSpec.from_json(json.dumps(meta["cross_spec"]))
        feats = ranker_inputs(tables, users, items, get_crosser("numpy"), spec)
        names = [t.name for t in config.input]
        try:
            real = _run(module, [{"cat": feats.cat, "dense": feats.dense}[n] for n in names], [config.output[0].name])
        except Exception as err:
            raise PushError(f"model fails on real feature rows with its crossing spec: {err}".splitlines()[0]) from err
        scores = real[config.output[0].name]
        if not np.isfinite(scores).all():
            raise PushError("model gives NaN or inf on real feature rows")
        if scores.min() < 0.0 or scores.max() > 1.0:
            raise PushError(f"scores out of [0, 1] on real rows: [{scores.min():.3g}, {scores.max():.3g}]")
        checks["score_range"] = [float(scores.min()), float(scores.max())]
    elif (artifact / "item_emb.npy").is_file():
        real = _run(module, [tables.user_cat[users], tables.user_dense[users]], [config.output[0].name])
        emb = real[config.output[0].name]
        item_emb = np.load(artifact / "item_emb.npy")
        if item_emb.shape != (tables.n_items, emb.shape[1]):
            raise PushError(f"item_emb.npy has shape {item_emb.shape}, expected ({tables.n_items}, {emb.shape[1]})")
        if not (np.isfinite(emb).all() and np.isfinite(item_emb).all()):
            raise PushError("user or item embeddings contain NaN or inf")
        checks["embedding_dim"] = int(emb.shape[1])
    else:
        raise PushError("artifact names no crossing spec (ranker) and carries no item_emb.npy (user tower)")
    return checks


def _dtype_name(code: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(code))


def _run(module: Any, inputs: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    import torch

    try:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    except Exception as err:
        raise PushError(f"model fails on its golden inputs: {err}".splitlines()[0]) from err
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(names):
        raise PushError(f"model returns {len(outs)} outputs, config.pbtxt names {len(names)}")
    return {n: o.detach().numpy() for n, o in zip(names, outs, strict=True)}


def push(
    registry: ModelRegistry,
    model: str,
    artifact: Path,
    tables: FeatureTables,
    triton: ModelLoader,
    *,
    canary_percent: float | None = None,
    shadow_percent: float | None = None,
    version: int | None = None,
) -> PushResult:
    """Validate ``artifact``, write it as a new version, load it, then move traffic.

    Raises:
        PushError: the artifact was refused or Triton could not load it; nothing changed.
    """
    import torch

    from serving.index.faiss_index import build_index, save_index, tower_queries
    from serving.triton.config import TensorSpec, export_version, read_config

    model_dir = registry.repo / model
    if not (model_dir / "config.pbtxt").is_file():
        raise PushError(f"unknown model {model!r}; the repository serves {registry.models()}", field="model")
    for pct, what in ((canary_percent, "canary"), (shadow_percent, "shadow")):
        if pct is not None and not 0 < pct <= 100:
            raise PushError(f"{what} percent must be in (0, 100], got {pct}")
    with _model_lock(model_dir):
        existing = registry.versions(model)
        if version is not None and version in existing:
            raise PushError(f"{model} version {version} already exists", field="version")
        old = registry.traffic(model) if existing else None
        if old is not None and not (model_dir / "traffic.json").is_file():
            registry.set_traffic(model, old)  # pin live before a higher version appears on disk
        t0 = time.perf_counter()
        checks = validate_artifact(registry, model, artifact, tables)
        checks["validate_s"] = round(time.perf_counter() - t0, 3)
        config = read_config(registry.repo, model)
        meta = json.loads((artifact / "meta.json").read_text())
        meta["validation"] = checks
        meta["pushed_from"] = str(artifact)
        with np.load(artifact / "golden.npz") as z:
            golden_inputs = {t.name: z[t.name] for t in config.input}
        extra: dict[str, Path] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if (artifact / "item_emb.npy").is_file():
                item_emb = np.load(artifact / "item_emb.npy").astype(np.float32)
                index_path = Path(tmp) / "items.faiss"
                tower = torch.jit.load(str(artifact / "model.pt"), map_location="cpu")
                queries = tower_queries(tower, tables.user_cat[: tables.n_users], tables.user_dense[: tables.n_users])
                save_index(build_index(item_emb, queries=queries), index_path)
                extra = {"items.faiss": index_path, "items.faiss.json": Path(f"{index_path}.json"),
                         "item_emb.npy": artifact / "item_emb.npy"}
            new = export_version(
                registry.repo, model, torch.jit.load(str(artifact / "model.pt"), map_location="cpu"),
                [TensorSpec(t.name, _dtype_name(t.data_type).removeprefix("TYPE_"), tuple(t.dims)) for t in config.input],
                [TensorSpec(t.name, _dtype_name(t.data_type).removeprefix("TYPE_"), tuple(t.dims)) for t in config.output],
                golden_inputs, meta, max_batch_size=config.max_batch_size, version=version, extra_files=extra,
            )
        try:
            triton.load_model(model)
            if not triton.model_ready(model, str(new)):
                raise PushError(f"Triton loaded {model} but version {new} is not ready")
        except Exception as err:
            _retire(model_dir / str(new))
            with contextlib.suppress(Exception):
                triton.load_model(model)  # back to the versions that were there
            if isinstance(err, PushError):
                raise
            raise PushError(f"Triton refused {model} version {new}: {err}") from err
        if old is None:
            traffic = Traffic(live=new)
        elif canary_percent is not None:
            traffic = Traffic(live=old.live, canary_version=new, canary_percent=canary_percent,
                              history=old.history)
        elif shadow_percent is not None:
            traffic = Traffic(live=old.live, shadow_version=new, shadow_percent=shadow_percent,
                              history=old.history)
        else:
            traffic = Traffic(live=new, history=(*old.history, old.live))
        registry.set_traffic(model, traffic)
        log.info("pushed %s v%d: traffic %s", model, new, traffic.to_json())
        return PushResult(model, new, traffic, checks)


def _retire(version_dir: Path) -> None:
    """Move a version that failed to load out of Triton's sight (kept for inspection)."""
    if version_dir.is_dir():
        target = version_dir.parent / f".rejected-{version_dir.name}-{int(time.time())}"
        version_dir.rename(target)
        shutil.rmtree(target, ignore_errors=True)


def promote(registry: ModelRegistry, model: str) -> Traffic:
    """Make the canary (or shadow) version live for everyone."""
    with _model_lock(registry.repo / model):
        t = registry.traffic(model)
        new = t.canary_version if t.canary_version is not None else t.shadow_version
        if new is None:
            raise PushError(f"{model} has no canary or shadow version to promote")
        traffic = Traffic(live=new, history=(*t.history, t.live))
        registry.set_traffic(model, traffic)
        return traffic


def rollback(registry: ModelRegistry, model: str, version: int | None = None) -> Traffic:
    """Send all traffic to ``version`` (default: the previous live version); drops canary/shadow."""
    with _model_lock(registry.repo / model):
        t = registry.traffic(model)
        versions = registry.versions(model)
        if version is None:
            if t.canary_version is not None or t.shadow_version is not None:
                target = t.live  # rolling back a canary: everyone back on live
            elif t.history:
                target = t.history[-1]
            else:
                older = [v for v in versions if v < t.live]
                if not older:
                    raise PushError(f"{model} v{t.live} has no earlier version to roll back to")
                target = older[-1]
        else:
            target = version
        if target not in versions:
            raise PushError(f"{model} has no version {target}; versions: {versions}", field="version")
        history = tuple(v for v in t.history if v != target)
        if target != t.live:
            history = (*history, t.live)
        traffic = Traffic(live=target, history=history)
        registry.set_traffic(model, traffic)
        return traffic
