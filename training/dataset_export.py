"""Writing a data set's trained default models into its own model repository: both, or neither.

Owns: the two versions ``rankserve train`` adds (``ranker`` with its ``features.yaml`` and
``features.json``; ``user_tower`` with its item tower, the catalogue's embeddings by item row and
the FAISS index over them), their golden tensors and ``meta.json`` (the data set, its version,
the holdout figures, the tower's input columns), and the first traffic of a model that had none.
Each version is written by ``serving.repository.export.export_version`` (atomic, digests
recorded, ``config.pbtxt`` written for a new model or a changed signature); when the second fails
the first is removed again, with the folders this export made, so a failed train leaves the
repository as it was and the live versions keep serving. Must not touch: traffic of a model that
already has some (``rankserve rollback MODEL VERSION`` moves it), training, the data set's files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from serving.data.features import write_features_json
from serving.data.tower import tower_inputs, tower_widths
from serving.errors import SetupError
from serving.files import version_dirs
from serving.repository.export import export_version
from serving.repository.registry import ModelRegistry, Traffic
from training.dataset_train import TrainedDataSet, context_rows, user_embeddings
from training.export import model_signature, tower_extras

__all__ = ["FEATURES_YAML", "GOLDEN_ROWS", "export_trained"]

FEATURES_YAML = "features.yaml"
GOLDEN_ROWS = 64


def _golden_rows(trained: TrainedDataSet, seed: int) -> np.ndarray:
    test = np.flatnonzero(trained.data.test)
    return np.sort(np.random.default_rng(seed).choice(test, min(GOLDEN_ROWS, test.size), replace=False))


def _ranker(repo: Path, trained: TrainedDataSet, rows: np.ndarray, meta: dict[str, Any], tmp: Path) -> int:
    golden = {"cat": trained.cat[rows], "dense": trained.dense[rows]}
    sig = model_signature("ranker", {**golden, "score": np.zeros((1, 1), np.float32)})
    (tmp / FEATURES_YAML).write_text(yaml.safe_dump(trained.spec.model_dump(), sort_keys=False))
    features_json = write_features_json(tmp, trained.spec, trained.plan)
    meta = {**meta, "features": trained.spec.model_dump()}
    return export_version(repo, "ranker", torch.jit.script(trained.ranker), sig["inputs"], sig["outputs"], golden,
                          meta, max_batch_size=sig["max_batch_size"],
                          extra_files={FEATURES_YAML: tmp / FEATURES_YAML, features_json.name: features_json})


def _user_tower(repo: Path, trained: TrainedDataSet, rows: np.ndarray, meta: dict[str, Any], tmp: Path, *,
                index: bool) -> int:
    data = trained.data
    golden = tower_inputs(data.tables, data.users[rows], context_rows(data.context, rows), trained.item_emb)
    emb_dim = trained.item_emb.shape[1]
    sig = model_signature("user_tower", {**golden, "embedding": np.zeros((1, emb_dim), np.float32)})
    scripted = torch.jit.script(trained.user_tower)
    torch.jit.script(trained.item_tower).save(str(tmp / "item_tower.pt"))
    queries = user_embeddings(scripted, data, np.flatnonzero(data.test)[:256], trained.item_emb) if index else None
    extra = tower_extras(tmp, tmp / "item_tower.pt", trained.item_emb, queries, index=index)
    meta = {**meta, "tower_inputs": tower_widths(data.tables.schema, emb_dim)}
    return export_version(repo, "user_tower", scripted, sig["inputs"], sig["outputs"], golden, meta,
                          max_batch_size=sig["max_batch_size"], extra_files=extra)


def export_trained(repo: Path, trained: TrainedDataSet, *, data_set: str, data_version: int | None, seed: int,
                   epochs: int, index: bool = True) -> dict[str, int]:
    """Add ``ranker`` and ``user_tower`` versions to ``repo`` (made when missing); returns the
    version of each. A model without traffic yet serves its new version; one with traffic keeps it.

    Raises:
        SetupError: a file could not be written (what this export wrote is removed again; so for
            any other error).
    """
    repo = Path(repo)
    made = [p for p in (repo, repo / "ranker", repo / "user_tower") if not p.exists()]
    meta = {"data_set": data_set, "data_version": data_version, "seed": seed, "epochs": epochs,
            "quality": trained.metrics}
    rows = _golden_rows(trained, seed)
    written: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            written["ranker"] = _ranker(repo, trained, rows, meta, Path(tmp))
            written["user_tower"] = _user_tower(repo, trained, rows, meta, Path(tmp), index=index)
    except BaseException as err:
        for name, version in written.items():
            shutil.rmtree(repo / name / str(version), ignore_errors=True)
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(err, OSError):
            raise SetupError(f"cannot write the models into {repo}: {err.strerror or err}; nothing was written",
                             hint="check the free disk space, and that this user may write there") from err
        raise
    registry = ModelRegistry(repo)
    for name, version in written.items():
        if not registry.traffic_path(name).exists() or version_dirs(repo / name) == [version]:
            registry.set_traffic(name, Traffic(live=version))
    return written

