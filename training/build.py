"""``rankserve build``: demo marketplace -> trained models -> model repository, cached on disk,
with the three demo scenarios (``training/scenarios/``: ``home``, ``similar``, ``shop``).

Idempotent: when ``build.json`` records the same configuration and the repository holds both
models, nothing is rebuilt (scenarios missing from an older build are added, and measured); a
cache that is damaged or from another version is refused with how to rebuild it, and so is a
build this machine has no room for (``training.preflight``). Progress bars show on a terminal.
The summary carries the quality a ranking team reads: AUC against the oracle, log loss and
calibration (ECE), the index's recall@500 against exact search and its memory, the served
pipeline's NDCG@20 against the oracle pipeline, and each scenario's NDCG@20 against the oracle
restricted to its candidate rule (``training.scenario_quality``).

The generated marketplace is also written as a team's files (``training.demo_files``: ``files/``
beside the cache: ``schema.yaml`` and three Parquet files) and imported as the data set ``demo``
(under the data dir's parent, as ``rankserve data import demo`` would); ``build.json`` records
the version it imported as ``data_set_version``, which is what lets ``rankserve train demo``
write into the demo's model repository (``training.dataset_command``).
``python -m training.build --data-dir .rankserve/data --repo model_repository [--items N --users M]``.

``--no-index`` (``build(..., index=False)``) skips the FAISS index, its recall@500 and the NDCG
of the served pipeline, and never imports FAISS: the user tower version then carries its item
embeddings alone (exact search with torch can use them; ``serving.index.torch_exact``). The
summary says so. Serving with the default FAISS recall needs the default build.
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
from serving.config import DEMO_DATA, Settings
from serving.data.schema import load_schema
from serving.data.store import DataSetStore
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.features import FeatureTables
from serving.repository.registry import ModelRegistry, Traffic
from serving.repository.scenarios import ScenarioStore
from serving.terminal import progress, task
from training.data import MarketConfig, Marketplace, generate, load_built_marketplace, save
from training.demo_files import write_demo_files
from training.export import export_artifacts, install_artifact
from training.preflight import BUILD_FORMAT, MODELS, plan, scenarios_missing
from training.train import TrainedModels, cross_spec

__all__ = ["DEMO_FILES", "DEMO_SCENARIOS", "build", "import_demo", "install_scenarios", "recompute_quality"]

log = logging.getLogger(__name__)
NO_INDEX = "none: built with --no-index (no FAISS index, no recall@500)"
DEMO_FILES = "files"  # the folder of the cache the demo's data set files are written to
# The demo scenario files, applied in this order (each becomes version 1 of its scenario).
DEMO_SCENARIOS = tuple(Path(__file__).resolve().parent / "scenarios" / f"{n}.yaml" for n in ("home", "similar", "shop"))


def served_quality(mp: Marketplace, repo: Path, seed: int = 0) -> dict[str, Any]:
    """Quality of the served artifacts (live versions): the index's recall@500 against exact search
    on 1,000 users' tower embeddings (not the tuning ones) and its memory, and the pipeline's
    NDCG@20 against the oracle pipeline."""
    import torch

    from serving.index.faiss_index import load_index, recall_at_k, tower_queries
    from training.quality import pipeline_ndcg

    reg = ModelRegistry(repo)
    d = reg.version_dir("user_tower", reg.traffic("user_tower").live)
    r = reg.version_dir("ranker", reg.traffic("ranker").live)
    index = load_index(d / "items.faiss", use_gpu="off")
    tower = torch.jit.load(str(d / "model.pt"))
    q = tower_queries(tower, mp.user_cat, mp.user_dense, n=1000, seed=seed + 1)
    rec = recall_at_k(index, np.load(d / "item_emb.npy"), q, 500)
    ndcg = pipeline_ndcg(mp, tower, index, torch.jit.load(str(r / "model.pt")), reg.cross_spec("ranker", int(r.name)))
    return {"recall_at_500": round(rec, 4), "index_kind": index.kind, "index_nprobe": index.nprobe,
            "index_mib": round((d / "items.faiss").stat().st_size / 2**20, 1), **ndcg}


def recompute_quality(data_dir: Path, repo: Path) -> dict[str, Any]:
    """The build's quality figures recomputed from the served (live) artifacts: the ranker's AUC,
    log loss and ECE, the index's recall@500 and the pipeline's NDCG@20."""
    import torch

    from training.quality import ranker_quality

    mp = load_built_marketplace(data_dir)
    reg = ModelRegistry(repo)
    v = reg.traffic("ranker").live
    ranker = torch.jit.load(str(reg.version_dir("ranker", v) / "model.pt"))
    return {**ranker_quality(mp, ranker, reg.cross_spec("ranker", v)), **served_quality(mp, repo)}


def install_scenarios(repo: Path, settings: Settings, tables: FeatureTables) -> dict[str, int]:
    """Replace the repository's scenarios with the demo ones; returns their versions."""
    store = ScenarioStore(repo)
    store.remove_all()
    groups = Catalogue.initial(tables).group_counts()
    registry = ModelRegistry(repo)
    return {sc.name: sc.version for sc in (store.apply(f.read_text(), settings, registry, groups)
                                           for f in DEMO_SCENARIOS)}


def _scenario_quality(data_dir: Path, repo: Path, settings: Settings, mp: Marketplace | None = None) -> dict[str, Any]:
    from training.scenario_quality import scenario_ndcg

    mp = mp or load_built_marketplace(data_dir)
    return scenario_ndcg(mp, settings.model_copy(update={"model_repository": repo, "data_dir": data_dir.parent}))


def _add_scenarios(summary: dict[str, Any], data_dir: Path, repo: Path, settings: Settings) -> dict[str, Any]:
    """A cached build from before scenarios: install the demo ones and measure them."""
    install_scenarios(repo, settings, FeatureTables.load(data_dir / "marketplace.npz"))
    summary["quality"]["scenarios"] = _scenario_quality(data_dir, repo, settings)
    (data_dir / "build.json").write_text(json.dumps(summary, indent=2))
    log.info("build: scenarios %s", json.dumps(summary["quality"]["scenarios"]))
    return summary


def import_demo(mp: Marketplace, data_dir: Path, repo: Path) -> int:
    """Write ``mp`` as the demo's data set files into ``data_dir/files`` and import them as the data
    set ``demo`` of the data dir ``data_dir.parent`` (its model repository ``repo``); returns the
    imported version."""
    files = write_demo_files(mp, data_dir / DEMO_FILES)
    store = DataSetStore(data_dir.parent, demo_model_repository=repo)
    return store.dataset(DEMO_DATA).import_files(load_schema(files.schema), files.items, files.users,
                                                 files.impressions).version


# The demo's own two-tower hyper-parameters (training.train.train_two_tower's), for the data-set trainer
DEMO_TOWERS = {"epochs": 2, "batch": 1024, "min_steps": 400, "temperature": 0.05}


def train_demo(mp: Marketplace, data_dir: Path, version: int, *, seed: int) -> TrainedModels:
    """Both demo models trained through the data-set trainer on the imported data set ``demo``
    (``version``), the ranker over the demo's own layout (``serving/data/demo_features.yaml``,
    whose plan is the crossing contract the demo serves with), with the demo's hyper-parameters;
    the quality figures the build reports (AUC against the oracle's on the generator's test share)."""
    from serving.data.features import DEMO_FEATURES, load_features
    from training.dataset_train import train_data_set
    from training.quality import ranker_quality

    ds = DataSetStore(data_dir.parent).dataset(DEMO_DATA)
    tables = ds.tables(version)
    if not (np.array_equal(tables.user_cat[:mp.user_cat.shape[0]], mp.user_cat) and np.array_equal(tables.item_cat, mp.item_cat)):
        raise RuntimeError("the imported demo's rows are not the generator's")
    trained = train_data_set(tables, ds.impressions(version), load_features(DEMO_FEATURES), epochs=3, seed=seed,
                             towers=DEMO_TOWERS)
    spec = cross_spec(mp.user_dense.shape[1])
    m = trained.metrics
    quality = {**ranker_quality(mp, trained.ranker, spec), "n_users": int(mp.user_cat.shape[0]),
               "n_items": int(mp.item_cat.shape[0]), "train_two_tower_s": m["train_two_tower_s"],
               "train_ranker_s": m["train_ranker_s"]}
    return TrainedModels(trained.user_tower, trained.item_tower, trained.ranker, spec, trained.item_emb, quality)


def build(data_dir: Path, repo: Path, *, items: int | None = None, users: int | None = None, seed: int = 0,
          force: bool = False, index: bool = True, settings: Settings | None = None) -> dict[str, Any]:
    """Generate data (``items`` items and ``users`` users, default the demo's), train, export and
    install both models and the demo scenarios; returns the build summary.

    Args:
        index: build the FAISS index and measure its recall@500 and the NDCGs (False: none of
            them, FAISS not imported; a cached build without an index is rebuilt when an index is
            asked for).
        settings: the limits the scenarios are checked against (default: the defaults).

    Raises:
        BuildCacheError: the cache is damaged or from another version (``force`` rebuilds it).
        InsufficientResourcesError: too little free memory or disk for the build.
    """
    data_dir, repo = Path(data_dir), Path(repo)
    settings = settings or Settings.model_validate({"model_repository": repo})
    cfg = MarketConfig(seed=seed).sized(items=items, users=users)
    cached = plan(data_dir, repo, config=asdict(cfg), index=index, force=force)
    if cached is not None:
        if scenarios_missing(cached, repo):
            cached = _add_scenarios(cached, data_dir, repo, settings)
        return {**cached, "cached": True}
    with progress():
        summary = _build(data_dir, repo, cfg, index=index, settings=settings)
    (data_dir / "build.json").write_text(json.dumps(summary, indent=2))
    log.info("build: %s", json.dumps(summary))
    return {**summary, "cached": False}


def _build(data_dir: Path, repo: Path, cfg: MarketConfig, *, index: bool, settings: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    seed = cfg.seed
    (data_dir / "build.json").unlink(missing_ok=True)  # no summary names a half-written cache
    mp = generate(cfg)
    save(mp, data_dir)
    data_set_version = import_demo(mp, data_dir, repo)
    t_data = time.perf_counter() - t0
    models = train_demo(mp, data_dir, data_set_version, seed=seed)
    with task("export and install models", total=3 + len(MODELS)) as bar:
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
            versions[name] = install_artifact(repo, name, artifacts / name, tables, index=index)
            ModelRegistry(repo).set_traffic(name, Traffic(live=versions[name]))
            bar.advance()
        install_scenarios(repo, settings, tables)
        quality: dict[str, Any] = dict(models.quality)
        if index:
            bar.describe("measure recall@500 and NDCG@20")
            quality.update(served_quality(mp, repo, seed))
            bar.advance()
            bar.describe("measure each scenario's NDCG@20")
            quality["scenarios"] = _scenario_quality(data_dir, repo, settings, mp)
            bar.describe(f"models installed, recall {quality['recall_at_500']:.3f}")
        else:
            quality.update({"recall_at_500": None, "index_kind": NO_INDEX})
            bar.advance()
        bar.advance()
    return {"format": BUILD_FORMAT, "rankserve": __version__, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": seed, "index": index, "config": asdict(cfg), "quality": quality,
            "versions": versions, "data_set_version": data_set_version, "data_s": round(t_data, 1), "build_s": round(time.perf_counter() - t0, 1),
            "impressions": int(mp.imp_click.size), "ctr": round(float(mp.imp_click.mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path(".rankserve/data"))
    p.add_argument("--repo", type=Path, default=Path("model_repository"))
    p.add_argument("--items", type=int, help="catalogue size (default: the demo's 50,000)")
    p.add_argument("--users", type=int, help="users (default: the demo's 20,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-index", dest="index", action="store_false",
                   help="no FAISS index and no recall@500 (FAISS not imported)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(build(a.data_dir, a.repo, items=a.items, users=a.users, seed=a.seed, force=a.force,
                           index=a.index), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
