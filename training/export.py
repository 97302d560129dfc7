"""Export trained models as push artifacts, and install artifacts into a model repository.

``python -m training.export --out artifacts/ [--seed 1]`` retrains on the built demo data and
writes ``artifacts/ranker`` and ``artifacts/user_tower``, ready for ``rankserve push``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from serving.index.item_tower import ITEM_TOWER_FILE, embed_items
from serving.pipeline.features import (
    RANKER_INPUTS,
    RANKER_OUTPUT,
    TOWER_INPUTS,
    TOWER_OUTPUT,
    FeatureTables,
    ranker_inputs,
)
from serving.repository.export import export_version, load_golden, model_signature, signatures
from training.data import Marketplace, load_built_marketplace
from training.train import TrainedModels, train_all

__all__ = ["export_artifacts", "install_artifact", "model_signature", "signatures", "tower_extras"]

def tower_extras(folder: Path, item_tower_file: Path, emb: np.ndarray, queries: np.ndarray | None, *,
                 index: bool) -> dict[str, Path]:
    """The files a user tower version carries besides its model, written into ``folder``: the item
    tower, the catalogue's embeddings ``emb`` by item row (``item_emb.npy``) and, with ``index``, the
    FAISS index over them (``nprobe`` tuned on ``queries``, the tower's own user embeddings)."""
    extra: dict[str, Path] = {}
    if index:
        from serving.index.faiss_index import build_index, save_index

        save_index(build_index(emb, queries=queries), Path(folder) / "items.faiss")
        extra = {"items.faiss": Path(folder) / "items.faiss", "items.faiss.json": Path(folder) / "items.faiss.json"}
    np.save(Path(folder) / "item_emb.npy", emb)
    return {**extra, "item_emb.npy": Path(folder) / "item_emb.npy", ITEM_TOWER_FILE: Path(item_tower_file)}



def _golden(module: torch.jit.ScriptModule, names_in: list[str], arrays: list[np.ndarray],
            name_out: str) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = module(*[torch.from_numpy(a) for a in arrays]).numpy()
    return {**dict(zip(names_in, arrays, strict=True)), name_out: out}


def export_artifacts(mp: Marketplace, models: TrainedModels, out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``out/ranker`` and ``out/user_tower`` artifacts (model.pt, golden.npz, meta.json; the
    user tower also ``item_tower.pt``, from which its item index is built over the live catalogue)."""
    rng = np.random.default_rng(seed)
    test = np.nonzero(mp.imp_test)[0]
    rows = rng.choice(test, 64, replace=False)
    tables = FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense)
    from kernels import get_crosser

    feats = ranker_inputs(tables, mp.imp_user[rows], mp.imp_item[rows], get_crosser("numpy"), models.spec)
    ranker = torch.jit.script(models.ranker)
    tower = torch.jit.script(models.user_tower)
    users = mp.imp_user[rows]
    meta_common = {"quality": models.quality, "seed": seed}
    paths = {}
    for name, module, golden, extra in (
        ("ranker", ranker, _golden(ranker, list(RANKER_INPUTS), [feats.cat, feats.dense], RANKER_OUTPUT),
         {"cross_spec": json.loads(models.spec.to_json())}),
        ("user_tower", tower, _golden(tower, list(TOWER_INPUTS),
                                      [mp.user_cat[users], mp.user_dense[users]], TOWER_OUTPUT), {}),
    ):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        module.save(str(d / "model.pt"))
        np.savez(d / "golden.npz", **golden)
        (d / "meta.json").write_text(json.dumps({**meta_common, **extra}, indent=2))
        paths[name] = d
    torch.jit.script(models.item_tower).save(str(out / "user_tower" / ITEM_TOWER_FILE))
    return paths


def install_artifact(repo: Path, name: str, artifact: Path, tables: FeatureTables, *, index: bool = True) -> int:
    """Add an artifact to ``repo`` as a new version (first install; ``rankserve push`` validates and
    moves traffic). A user tower's item tower embeds the catalogue here and its FAISS index is
    built over it, with ``nprobe`` tuned on the tower's own user embeddings; with ``index=False``
    the version gets its item embeddings alone and FAISS is not imported."""
    module = torch.jit.load(str(artifact / "model.pt"))
    meta = json.loads((artifact / "meta.json").read_text())
    golden = load_golden(artifact)
    sig = model_signature(name, golden)
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Path] = {}
        if (artifact / ITEM_TOWER_FILE).is_file():
            item_tower = torch.jit.load(str(artifact / ITEM_TOWER_FILE))
            emb = embed_items(item_tower, tables)
            queries = None
            if index:
                from serving.index.faiss_index import tower_queries  # FAISS only where an index is built

                queries = tower_queries(module, tables.user_cat[: tables.n_users], tables.user_dense[: tables.n_users])
            extra = tower_extras(Path(tmp), artifact / ITEM_TOWER_FILE, emb, queries, index=index)
        return export_version(repo, name, module, sig["inputs"], sig["outputs"],
                              {t.name: golden[t.name] for t in sig["inputs"]}, meta,
                              max_batch_size=sig["max_batch_size"], extra_files=extra)


def main(argv: list[str] | None = None) -> int:
    from serving.config import Settings

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=1, help="training seed (a new seed gives a new model)")
    a = p.parse_args(argv)
    settings = Settings.from_env()
    mp = load_built_marketplace(settings.marketplace_path.parent)
    models = train_all(mp, seed=a.seed)
    paths = export_artifacts(mp, models, a.out, seed=a.seed)
    print(json.dumps({"artifacts": {k: str(v) for k, v in paths.items()}, "quality": models.quality}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
