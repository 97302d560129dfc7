"""``rankserve build``: demo marketplace -> trained models -> model repository, cached on disk.

Idempotent: when ``build.json`` records the same seed and scale and the repository holds both
models, nothing is rebuilt; a cache that is damaged or from another version is refused with how
to rebuild it, and so is a build this machine has no room for (``training.preflight``). Progress
bars show on a terminal. ``python -m training.build --data-dir .rankserve/data --repo model_repository``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from serving import __version__
from serving.pipeline.features import FeatureTables
from serving.repository.registry import ModelRegistry, Traffic
from serving.terminal import progress, task
from training.data import MarketConfig, Marketplace, generate, load, save
from training.export import export_artifacts, install_artifact
from training.preflight import BUILD_FORMAT, MODELS, plan
from training.train import train_all

__all__ = ["build", "load_built_marketplace"]

log = logging.getLogger(__name__)


def load_built_marketplace(data_dir: Path) -> Marketplace:
    summary = json.loads((data_dir / "build.json").read_text())
    return load(data_dir, MarketConfig(**summary["config"]))


def _served_recall(repo: Path, version: int, tables: FeatureTables, seed: int) -> dict[str, Any]:
    """recall@500 of the index as installed, on 1000 users' tower embeddings (not the tuning ones)."""
    import torch

    from serving.index.faiss_index import load_index, recall_at_k, tower_queries

    d = repo / "user_tower" / str(version)
    index = load_index(d / "items.faiss", use_gpu="off")
    tower = torch.jit.load(str(d / "model.pt"))
    q = tower_queries(tower, tables.user_cat[: tables.n_users], tables.user_dense[: tables.n_users], n=1000,
                      seed=seed + 1)
    rec = recall_at_k(index, np.load(d / "item_emb.npy"), q, 500)
    return {"recall_at_500": round(rec, 4), "index_kind": index.kind, "index_nprobe": index.nprobe}


def build(data_dir: Path, repo: Path, *, scale: float = 1.0, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Generate data, train, export and install both models; returns the build summary.

    Raises:
        BuildCacheError: the cache is damaged or from another version (``force`` rebuilds it).
        InsufficientResourcesError: too little free memory or disk for a build at ``scale``.
    """
    data_dir, repo = Path(data_dir), Path(repo)
    cached = plan(data_dir, repo, scale=scale, seed=seed, force=force)
    if cached is not None:
        return {**cached, "cached": True}
    with progress():
        summary = _build(data_dir, repo, scale=scale, seed=seed)
    (data_dir / "build.json").write_text(json.dumps(summary, indent=2))
    log.info("build: %s", json.dumps(summary))
    return {**summary, "cached": False}


def _build(data_dir: Path, repo: Path, *, scale: float, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg = MarketConfig(seed=seed).scaled(scale)
    (data_dir / "build.json").unlink(missing_ok=True)  # no summary names a half-written cache
    mp = generate(cfg)
    save(mp, data_dir)
    t_data = time.perf_counter() - t0
    models = train_all(mp, seed=seed)
    with task("export and install models", total=2 + len(MODELS)) as bar:
        artifacts = data_dir / "artifacts" / f"seed{seed}"
        shutil.rmtree(artifacts, ignore_errors=True)
        export_artifacts(mp, models, artifacts, seed=seed)
        bar.advance()
        repo.mkdir(parents=True, exist_ok=True)
        versions = {}
        tables = FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense)
        for name in MODELS:
            bar.describe(f"install {name}")
            shutil.rmtree(repo / name, ignore_errors=True)
            versions[name] = install_artifact(repo, name, artifacts / name, tables)
            ModelRegistry(repo).set_traffic(name, Traffic(live=versions[name]))
            bar.advance()
        bar.describe("measure recall@500")
        models.quality.update(_served_recall(repo, versions["user_tower"], tables, seed))
        bar.advance()
        bar.describe(f"models installed, recall {models.quality['recall_at_500']:.3f}")
    return {"format": BUILD_FORMAT, "rankserve": __version__, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": seed, "scale": scale, "config": asdict(cfg), "quality": models.quality,
            "versions": versions, "data_s": round(t_data, 1), "build_s": round(time.perf_counter() - t0, 1),
            "impressions": int(mp.imp_click.size), "ctr": round(float(mp.imp_click.mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path(".rankserve/data"))
    p.add_argument("--repo", type=Path, default=Path("model_repository"))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(build(a.data_dir, a.repo, scale=a.scale, seed=a.seed, force=a.force), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
