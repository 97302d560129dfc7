"""The model push workflow: validate, write a version atomically, load it in Triton, move traffic.

Owns: ``rankserve push`` (``--create``: a new ranker model), ``promote`` and ``rollback``: the
per-model lock, the order of steps, and the traffic change at the end. A refused artifact leaves the repository and the live version
untouched. Must not touch: the serving process (replicas follow ``traffic.json`` themselves,
``serving.repository.followers``).

``training.export`` writes artifacts (see ``serving.repository.validate`` for their layout).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from serving.data.features import load_features, resolve, write_features_json
from serving.data.tables import DataTables
from serving.errors import PushRefusedError
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.crossing import FEATURES_YAML
from serving.pipeline.routing import Traffic
from serving.repository.catalogue import ChangeLog
from serving.repository.declared import DeclaredRanker, is_declared, load_declared
from serving.repository.export import export_version
from serving.repository.loading import load_checked
from serving.repository.nodes import wait_loaded
from serving.repository.registry import ModelRegistry
from serving.repository.validate import Artifact, load_artifact, validate_artifact

__all__ = ["MODEL_NAME_PATTERN", "ModelLoader", "PushResult", "model_dir", "promote", "push", "rollback"]

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,47}$"  # a model push --create makes (a folder of the repository)


class ModelLoader(Protocol):
    """What a push needs of Triton (``serving.triton.client.TritonClient``)."""

    def load_model(self, name: str, config: str | None = None) -> None: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...


@dataclass
class PushResult:
    model: str
    version: int
    traffic: Traffic
    checks: dict[str, Any] = field(default_factory=dict)


def model_dir(registry: ModelRegistry, model: str) -> Path:
    """The directory of ``model``, after checking that the name is one of the repository's models
    (so that a name with separators or ``..`` never reaches the file system).

    Raises:
        PushRefusedError: an unknown model name.
    """
    served = registry.models()
    if model not in served:
        raise PushRefusedError(f"unknown model {model!r}; the repository serves {served}", field="model")
    return registry.repo / model


@contextlib.contextmanager
def _model_lock(path: Path) -> Iterator[None]:
    """Serialises pushes of one model across processes; a second concurrent push is refused."""
    fd = open(path / ".push.lock", "w")  # noqa: SIM115 - held for the context's duration
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise PushRefusedError(f"another push, promote or rollback of {path.name} is in progress") from err
        yield
    finally:
        fd.close()


def push(
    registry: ModelRegistry,
    model: str,
    artifact: Path,
    tables: DataTables,
    triton: ModelLoader,
    *,
    canary_percent: float | None = None,
    shadow_percent: float | None = None,
    version: int | None = None,
    nodes_timeout_s: float = 60.0,
    keep_others: int = 2,
    create: bool = False,
    impressions: pa.Table | None = None,
    data_set: str = "",
) -> PushResult:
    """Validate ``artifact``, write it as a new version, load it in ``triton`` and wait until every
    live serving node has it ready (``serving.repository.nodes``), then move traffic.

    A declared ranker (``model.pt`` or ``model.onnx``, and ``features.yaml``; ``serving.repository.declared``) is
    checked on real rows of ``impressions`` (the data set ``data_set``'s); with ``create`` it makes
    the new model ``model``, its first version live.

    Raises:
        PushRefusedError: the artifact was refused, or a Triton could not load it in
            ``nodes_timeout_s``; the version (and a model being created) is removed again and
            traffic is unchanged.
    """
    for pct, what in ((canary_percent, "canary"), (shadow_percent, "shadow")):
        if pct is not None and not 0 < pct <= 100:
            raise PushRefusedError(f"{what} percent must be in (0, 100], got {pct}")
    if not create:
        if model not in registry.models():
            raise PushRefusedError(f"unknown model {model!r}; the repository serves {registry.models()}; a new "
                                   "ranker is pushed with --create", field="model")
        return _push(registry, model, artifact, tables, triton, model_dir(registry, model), canary_percent,
                     shadow_percent, version, nodes_timeout_s, keep_others, impressions, data_set)
    path = _new_model_dir(registry, model, artifact, canary_percent, shadow_percent)
    try:
        return _push(registry, model, artifact, tables, triton, path, None, None, version, nodes_timeout_s,
                     keep_others, impressions, data_set)
    except BaseException:
        if not registry.versions(model):
            shutil.rmtree(path, ignore_errors=True)  # the model being created: nothing of it stays
        raise


def _new_model_dir(registry: ModelRegistry, model: str, artifact: Path, canary_percent: float | None,
                   shadow_percent: float | None) -> Path:
    """The directory of a model ``push --create`` makes (made now, empty)."""
    if not re.fullmatch(MODEL_NAME_PATTERN, model):  # before any path is made of it
        raise PushRefusedError(f"model name {model!r} must match {MODEL_NAME_PATTERN}", field="model")
    if model in registry.models() or (registry.repo / model).exists():
        raise PushRefusedError(f"model {model!r} already exists; push a further version without --create",
                               field="model")
    if canary_percent is not None or shadow_percent is not None:
        raise PushRefusedError("a model pushed with --create starts live: it has no live version to canary or "
                               "shadow against", field="model")
    if not is_declared(artifact):
        raise PushRefusedError(f"--create takes a declared ranker: a folder of model.pt or model.onnx and {FEATURES_YAML}",
                               field="artifact")
    path = registry.repo / model
    path.mkdir(parents=True)
    return path


def _push(registry: ModelRegistry, model: str, artifact: Path, tables: DataTables, triton: ModelLoader, path: Path,
          canary_percent: float | None, shadow_percent: float | None, version: int | None, nodes_timeout_s: float,
          keep_others: int, impressions: pa.Table | None, data_set: str) -> PushResult:
    with _model_lock(path):
        existing = registry.versions(model)
        if version is not None and version in existing:
            raise PushRefusedError(f"{model} version {version} already exists", field="version")
        old = registry.traffic(model) if existing else None
        if old is not None and not registry.traffic_path(model).is_file():
            registry.set_traffic(model, old)  # pin live before a higher version appears on disk
        t0 = time.perf_counter()
        cat = ChangeLog(registry.repo).current(tables)  # the catalogue as changed so far
        declared = None
        if is_declared(artifact):
            if impressions is None:
                raise PushRefusedError("a declared ranker is checked on the data set's impressions; none were given")
            declared = load_declared(registry.repo, model, artifact, cat.tables, impressions, data_set=data_set)
            art, checks = declared.artifact, declared.checks
        else:
            art = load_artifact(registry, model, artifact)
            checks = validate_artifact(art, cat.tables)
        if art.is_user_tower and (canary_percent is not None or shadow_percent is not None):
            raise PushRefusedError(f"{model} is a user tower: it serves one version at a time, with the item index "
                                   "built from it, so it has no canary or shadow; push it live (and roll back if "
                                   "need be)", field="model")
        checks["validate_s"] = round(time.perf_counter() - t0, 3)
        new = _write_version(registry, model, art, cat, checks, version, declared)
        _load_or_retire(triton, registry, model, new, keep_others)
        try:
            checks["nodes"] = wait_loaded(registry.heartbeats, model, new, timeout_s=nodes_timeout_s)
        except PushRefusedError:
            _retire(path / str(new))
            with contextlib.suppress(Exception):
                load_checked(triton, registry, model, keep_others)
            raise
        traffic = _next_traffic(old, new, canary_percent, shadow_percent)
        registry.set_traffic(model, traffic)
        log.info("pushed %s v%d: traffic %s", model, new, traffic.to_json())
        return PushResult(model, new, traffic, checks)


def _write_version(registry: ModelRegistry, model: str, art: Artifact, cat: Catalogue,
                   checks: dict[str, Any], version: int | None, declared: DeclaredRanker | None) -> int:
    """Export the validated artifact (with the item index a user tower needs, the declaration a
    ranker with a ``features.yaml`` is served with, golden rows or not) as a new version."""
    from serving.index.faiss_index import save_index
    from serving.index.item_tower import ITEM_TOWER_FILE, index_catalogue

    meta = {**art.meta, "validation": checks, "pushed_from": str(art.path)}
    golden_inputs = {t.name: art.golden[t.name] for t in art.inputs}
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Path] = {}
        if art.is_user_tower:  # the index holds every catalogue change so far
            index, emb = index_catalogue(art.module, art.item_tower(), cat.tables, catalogue_version=cat.version)
            save_index(index, Path(tmp) / "items.faiss")
            np.save(Path(tmp) / "item_emb.npy", emb)
            meta["catalogue_version"] = cat.version
            extra = {"items.faiss": Path(tmp) / "items.faiss", "items.faiss.json": Path(tmp) / "items.faiss.json",
                     "item_emb.npy": Path(tmp) / "item_emb.npy", ITEM_TOWER_FILE: art.path / ITEM_TOWER_FILE}
        if (art.path / FEATURES_YAML).is_file():  # served with its declaration, as it was validated
            spec = declared.spec if declared is not None else load_features(art.path / FEATURES_YAML)
            plan = declared.plan if declared is not None else resolve(spec, cat.tables)
            features_json = write_features_json(Path(tmp), spec, plan)
            extra = {**extra, FEATURES_YAML: art.path / FEATURES_YAML, features_json.name: features_json}
        return export_version(registry.repo, model, art.module, art.inputs, art.outputs, golden_inputs, meta,
                              max_batch_size=art.max_batch_size, version=version, extra_files=extra)


def _load_or_retire(triton: ModelLoader, registry: ModelRegistry, model: str, new: int, keep_others: int) -> None:
    """Load the model's versions the retention rule keeps (the new one, the newest, among them) in
    Triton, each checked; if the new one does not come up, delete it and load again what was there."""
    path = registry.repo / model
    try:
        plan = load_checked(triton, registry, model, keep_others)
        if new not in plan.load:
            raise PushRefusedError(f"{model} version {new} was refused before loading: {plan.describe()}")
        if not triton.model_ready(model, str(new)):
            raise PushRefusedError(f"Triton loaded {model} but version {new} is not ready")
    except Exception as err:
        _retire(path / str(new))
        with contextlib.suppress(Exception):
            load_checked(triton, registry, model, keep_others)
        if isinstance(err, PushRefusedError):
            raise
        raise PushRefusedError(f"Triton refused {model} version {new}: {err}") from err


def _next_traffic(old: Traffic | None, new: int, canary_percent: float | None,
                  shadow_percent: float | None) -> Traffic:
    if old is None:
        return Traffic(live=new)
    if canary_percent is not None:
        return Traffic(live=old.live, canary_version=new, canary_percent=canary_percent, history=old.history)
    if shadow_percent is not None:
        return Traffic(live=old.live, shadow_version=new, shadow_percent=shadow_percent, history=old.history)
    return Traffic(live=new, history=(*old.history, old.live))


def _retire(version_dir: Path) -> None:
    """Delete a version that failed to load: first renamed out of Triton's sight, then removed."""
    if version_dir.is_dir():
        target = version_dir.parent / f".rejected-{version_dir.name}-{int(time.time())}"
        version_dir.rename(target)
        shutil.rmtree(target, ignore_errors=True)


def promote(registry: ModelRegistry, model: str) -> Traffic:
    """Make the canary (or shadow) version live for everyone."""
    with _model_lock(model_dir(registry, model)):
        t = registry.traffic(model)
        new = t.canary_version if t.canary_version is not None else t.shadow_version
        if new is None:
            raise PushRefusedError(f"{model} has no canary or shadow version to promote")
        traffic = Traffic(live=new, history=(*t.history, t.live))
        registry.set_traffic(model, traffic)
        return traffic


def rollback(registry: ModelRegistry, model: str, version: int | None = None, triton: ModelLoader | None = None,
             *, keep_others: int = 2, nodes_timeout_s: float = 60.0) -> Traffic:
    """Send all traffic to ``version`` (default: the previous live version); drops canary/shadow.

    A version Triton had unloaded (retention) is first announced as being prepared, loaded into
    ``triton`` and awaited on every live node; only then does traffic move, so no request is sent
    to a version that is not ready.

    Raises:
        PushRefusedError: no such version, or it did not load in time (traffic unchanged).
    """
    with _model_lock(model_dir(registry, model)):
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
                    raise PushRefusedError(f"{model} v{t.live} has no earlier version to roll back to")
                target = older[-1]
        else:
            target = version
        if target not in versions:
            raise PushRefusedError(f"{model} has no version {target}; versions: {versions}", field="version")
        history = tuple(v for v in t.history if v != target)
        if target != t.live:
            history = (*history, t.live)
            _prepare(registry, model, t, target, triton, keep_others, nodes_timeout_s)
        traffic = Traffic(live=target, history=history)
        registry.set_traffic(model, traffic)
        return traffic


def _prepare(registry: ModelRegistry, model: str, current: Traffic, target: int, triton: ModelLoader | None,
             keep_others: int, nodes_timeout_s: float) -> None:
    """Have ``target`` loaded everywhere before traffic moves to it: announce it as being prepared
    (every node's follower loads it), load it into ``triton``, wait for the nodes."""
    registry.set_traffic(model, replace(current, preparing=(target,)))
    try:
        if triton is not None:
            plan = load_checked(triton, registry, model, keep_others)
            if target not in plan.load:
                raise PushRefusedError(f"{model} version {target} cannot be loaded: {plan.describe()}",
                                       field="version")
        wait_loaded(registry.heartbeats, model, target, timeout_s=nodes_timeout_s)
    except BaseException:
        registry.set_traffic(model, current)  # nothing moved
        raise
