"""``make quality-bench``: the quality of ``rankserve train``'s default models beside their baselines.

Owns: the quality benchmark. On the demo marketplace (``training.data``, written as a data set's
files by ``training.demo_files`` and imported), at each asked scale, it trains the default models
(``serving.data.default_features``, ``training.dataset_train``) and, on the same time-ordered
holdout (the generator's own test share), the demo's own models (``training.train.train_all``,
what ``rankserve build`` trains); optionally also the data-set trainer over the demo's own layout
(``serving/data/demo_features.yaml``). On the second marketplace (``training.synthetic``, whose
clicks come from a known model) it sets the default models beside chance, popularity and the true
click probability. Figures on the holdout impressions: AUC, log loss, NDCG@20 within requests
(``training.dataset_train.ndcg_at``), recall@500 of the user tower over the whole catalogue
(``recall_at``; for popularity: its 500 most popular items; for chance: 500 / items), and on the
second marketplace the share of item pairs within a request ordered as the truth orders them.
Prints each figure beside its baselines; ``--out`` writes them as JSON. A benchmark, not a test.
Must not touch: any data set or model repository but its temporary ones, the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["demo_figures", "main", "second_marketplace_figures"]

FIGURES = ("auc", "log_loss", "recall_at_500", "ndcg_at_20")


def _holdout(scores: np.ndarray, labels: np.ndarray, request: np.ndarray) -> dict[str, float]:
    from training.dataset_train import ndcg_at
    from training.metrics import auc, log_loss

    return {"auc": round(auc(scores, labels), 4), "log_loss": round(log_loss(scores, labels), 5),
            "ndcg_at_20": round(ndcg_at(scores, labels, request), 4)}


def _import(files: Any, root: Path, name: str) -> tuple[Any, Any]:
    from serving.data.schema import load_schema
    from serving.data.store import DataSetStore

    paths = files if isinstance(files, dict) else {"schema": files.schema, "items": files.items,
                                                   "users": files.users, "impressions": files.impressions}
    ds = DataSetStore(root).dataset(name)
    ds.import_files(load_schema(paths["schema"]), paths["items"], paths["users"], paths["impressions"])
    return ds.tables(), ds.impressions()


def _trained(tables: Any, impressions: Any, spec: Any, *, epochs: int, seed: int) -> dict[str, Any]:
    from training.dataset_train import train_data_set

    t0 = time.perf_counter()
    m = train_data_set(tables, impressions, spec, epochs=epochs, seed=seed).metrics
    return {**{k: m[k] for k in FIGURES}, "train_s": round(time.perf_counter() - t0, 1)}


def demo_figures(items: int | None, users: int | None, *, seed: int, epochs: int, root: Path,
                 demo_layout: bool) -> dict[str, Any]:
    """The demo marketplace at ``items`` x ``users`` (None: the demo's own size): the default models,
    the demo's own models and (``demo_layout``) the data-set trainer over the demo's layout."""
    import torch

    from kernels import get_crosser
    from serving.data.default_features import default_features
    from serving.data.features import DEMO_FEATURES, load_features
    from serving.pipeline.features import FeatureTables, ranker_inputs
    from training.data import MarketConfig, generate
    from training.dataset_train import prepare, recall_at
    from training.demo_files import write_demo_files
    from training.train import train_all

    mp = generate(MarketConfig(seed=seed).sized(items=items, users=users))
    tables, impressions = _import(write_demo_files(mp, root / "files"), root / "data", "demo")
    n_users, n_items = mp.user_cat.shape[0], mp.item_cat.shape[0]
    if not (np.array_equal(tables.user_cat[:n_users], mp.user_cat) and np.array_equal(tables.item_cat, mp.item_cat)):
        raise RuntimeError("the imported demo's rows are not the generator's: the two models would not be comparable")
    out: dict[str, Any] = {"items": n_items, "users": n_users, "impressions": int(impressions.num_rows)}
    out["default"] = _trained(tables, impressions, default_features(tables.schema), epochs=epochs, seed=seed)
    if demo_layout:
        out["demo_layout"] = _trained(tables, impressions, load_features(DEMO_FEATURES), epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    own = train_all(mp, seed=seed)
    own.ranker.eval()
    train_s = round(time.perf_counter() - t0, 1)
    data = prepare(tables, impressions, seed=seed)
    test = np.flatnonzero(data.test)
    feats = ranker_inputs(FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense),
                          data.users[test], data.items[test], get_crosser("auto"), own.spec)
    with torch.inference_mode():
        scores = own.ranker(torch.from_numpy(feats.cat), torch.from_numpy(feats.dense)).numpy().reshape(-1)
    out["demo_own"] = {**_holdout(scores.astype(np.float64), data.labels[test], data.request[test]),
                       "recall_at_500": round(recall_at(own.user_tower.eval(), data, own.item_emb), 4), "train_s": train_s,
                       "auc_as_the_build_measures_it": own.quality["auc"]}
    return out


def _popularity_recall(data: Any, popularity: np.ndarray, n: int = 500) -> float:
    """recall@n of the n most popular items, per held-out user as ``recall_at`` counts it."""
    clicked = np.flatnonzero(data.test & (data.labels > 0.5))
    top = np.zeros(popularity.shape[0], bool)
    top[np.argsort(-popularity, kind="stable")[:n]] = True
    _, inverse = np.unique(data.users[clicked], return_inverse=True)
    return float((np.bincount(inverse, weights=top[data.items[clicked]]) / np.bincount(inverse)).mean())


def second_marketplace_figures(*, seed: int, epochs: int, root: Path) -> dict[str, Any]:
    """The second marketplace at its default size: the default models beside chance, popularity and the truth."""
    import pyarrow.parquet as pq

    from serving.data.default_features import default_features
    from training.dataset_train import pair_agreement, prepare
    from training.synthetic import click_probability, write_marketplace

    files = write_marketplace(root / "files", seed=seed)
    tables, impressions = _import(files, root / "data", "shop")
    data = prepare(tables, impressions, seed=seed)
    test = np.flatnonzero(data.test)
    labels, request = data.labels[test], data.request[test]
    raw = pq.read_table(files["impressions"]).take(test)  # the import keeps every row, in order
    truth = click_probability(pq.read_table(files["items"]), pq.read_table(files["users"]),
                              raw.column("customer").to_pylist(), raw.column("sku").to_pylist(),
                              raw.column("device").to_pylist(), raw.column("recent").to_pylist(), seed=seed)
    from training.dataset_train import ranker_scores, train_data_set

    trained = train_data_set(tables, impressions, default_features(tables.schema), epochs=epochs, seed=seed)
    model = ranker_scores(trained.ranker, trained.cat[test], trained.dense[test])
    popularity = tables.popularity.astype(np.float64)
    out: dict[str, Any] = {"items": tables.n_items, "impressions": int(impressions.num_rows)}
    for name, scores in (("default", model), ("chance", np.random.default_rng(seed).random(test.size)),
                         ("popularity", popularity[data.items[test]]), ("truth", truth)):
        out[name] = {**_holdout(scores, labels, request), "pair_agreement": round(pair_agreement(truth, scores, request), 4)}
    out["default"]["recall_at_500"] = trained.metrics["recall_at_500"]
    out["chance"]["recall_at_500"] = round(min(1.0, 500 / tables.n_items), 4)
    out["popularity"]["recall_at_500"] = round(_popularity_recall(data, popularity), 4)
    for name in ("chance", "popularity"):  # their scores are no probabilities
        out[name]["log_loss"] = None
    return out


def _print(report: dict[str, Any]) -> None:
    def row(label: str, figures: dict[str, Any], keys: tuple[str, ...]) -> str:
        return f"  {label:<12}" + "".join(f"{'-' if figures.get(k) is None else figures[k]:>16}" for k in keys)

    for scale, r in report["demo"].items():
        print(f"demo marketplace, {scale}: {r['items']:,} items, {r['users']:,} users, {r['impressions']:,} impressions")
        print(f"  {'models':<12}" + "".join(f"{k:>16}" for k in (*FIGURES, "train_s")))
        for name in ("default", "demo_layout", "demo_own"):
            if name in r:
                print(row(name, r[name], (*FIGURES, "train_s")))
    if "second" in report:
        r = report["second"]
        keys = (*FIGURES, "pair_agreement")
        print(f"second marketplace: {r['items']:,} items, {r['impressions']:,} impressions")
        print(f"  {'scores':<12}" + "".join(f"{k:>16}" for k in keys))
        for name in ("default", "chance", "popularity", "truth"):
            print(row(name, r[name], keys))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, nargs="*", default=[0, 1_000_000],
                   help="demo catalogue sizes to measure (0: the demo's own 50,000); none: skip the demo")
    p.add_argument("--users", type=int, help="demo users (default: the demo's 20,000)")
    p.add_argument("--epochs", type=int, default=3, help="the default models' --epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-layout", action="store_true", help="also the data-set trainer over the demo's own layout")
    p.add_argument("--no-second", dest="second", action="store_false", help="skip the second marketplace")
    p.add_argument("--out", type=Path, help="write the report here as JSON")
    a = p.parse_args(argv)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                              "command": "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "epochs": a.epochs, "seed": a.seed, "demo": {}}
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        for k, items in enumerate(a.items):
            scale = "default" if not items else f"{items:,} items"
            report["demo"][scale] = demo_figures(items or None, a.users, seed=a.seed, epochs=a.epochs,
                                                 root=Path(tmp) / f"demo{k}", demo_layout=a.demo_layout)
        if a.second:
            report["second"] = second_marketplace_figures(seed=a.seed, epochs=a.epochs, root=Path(tmp) / "second")
    _print(report)
    if a.out:
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
