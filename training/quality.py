"""What a ranking team reads about a build: calibration and ranking quality, recomputable from the
served artifacts (TorchScript models, the item index) and the generator's ground truth.

Owns: the figures beyond AUC (log loss, ECE, the pipeline's NDCG@20 against the oracle pipeline
that ranks every item by its true click probability). The pipeline here is the served one,
in-process: user tower -> item index top-N -> crossing -> ranker -> top-k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernels import CrossSpec, get_crosser
from serving.pipeline.features import FeatureTables, ranker_inputs
from serving.pipeline.topk import top_k
from training.data import Marketplace
from training.metrics import ece, log_loss, ndcg_at_k

__all__ = ["calibration", "pipeline_ndcg", "ranker_quality", "true_click_prob"]


def true_click_prob(mp: Marketplace, user: int, items: np.ndarray) -> np.ndarray:
    """P(click) of ``items`` for ``user`` under the generator's click model."""
    users = np.full(items.shape[0], user, dtype=np.int64)
    return 1.0 / (1.0 + np.exp(-mp.oracle_logit(users, items).astype(np.float64)))


def calibration(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Log loss and ECE of click probabilities on held-out impressions, beside the base rate's log loss."""
    base = np.full(labels.shape, float(np.mean(labels)))
    return {"log_loss": round(log_loss(probs, labels), 5), "log_loss_base_rate": round(log_loss(base, labels), 5),
            "ece": round(ece(probs, labels), 5), "mean_score": round(float(np.mean(probs)), 5),
            "ctr": round(float(np.mean(labels)), 5)}


def pipeline_ndcg(mp: Marketplace, tower: Any, index: Any, ranker: Any, spec: CrossSpec, *, n_users: int = 200,
                  recall_n: int = 500, k: int = 20, seed: int = 1) -> dict[str, float]:
    """NDCG@k of the served pipeline against the oracle pipeline, over ``n_users`` random users.

    The gain of an item is its true click probability; the oracle ranks every item by it. Also
    the same NDCG for the ranker alone over the recalled candidates (what recall loses vs ranking).
    """
    tables = FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense)
    users = np.random.default_rng(seed).choice(mp.user_cat.shape[0], min(n_users, mp.user_cat.shape[0]),
                                               replace=False)
    all_items = np.arange(mp.item_cat.shape[0], dtype=np.int64)
    crosser = get_crosser("numpy")
    with torch.inference_mode():
        emb = tower(torch.from_numpy(mp.user_cat[users]), torch.from_numpy(mp.user_dense[users])).numpy()
    _, ids = index.search(np.ascontiguousarray(emb, dtype=np.float32), recall_n)
    full, within = [], []
    for u, cand in zip(users, ids, strict=True):
        cand = cand[cand >= 0]
        feats = ranker_inputs(tables, np.full(cand.shape[0], u, np.int64), cand, crosser, spec)
        with torch.inference_mode():
            scores = ranker(torch.from_numpy(feats.cat), torch.from_numpy(feats.dense)).numpy().reshape(-1)
        served = cand[top_k(scores, k)]
        truth_cand = true_click_prob(mp, int(u), cand)
        full.append(ndcg_at_k(true_click_prob(mp, int(u), served), true_click_prob(mp, int(u), all_items), k))
        within.append(ndcg_at_k(true_click_prob(mp, int(u), served), truth_cand, k))
    return {f"ndcg_at_{k}": round(float(np.mean(full)), 4), f"ndcg_at_{k}_within_recall": round(float(np.mean(within)), 4),
            "ndcg_users": int(users.size)}


def ranker_quality(mp: Marketplace, ranker: Any, spec: CrossSpec) -> dict[str, float]:
    """AUC (and the oracle's), log loss and ECE of a served ranker on the held-out impressions."""
    from training.metrics import auc

    tables = FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense)
    test = np.nonzero(mp.imp_test)[0]
    feats = ranker_inputs(tables, mp.imp_user[test], mp.imp_item[test], get_crosser("auto"), spec)
    with torch.inference_mode():
        scores = ranker(torch.from_numpy(feats.cat), torch.from_numpy(feats.dense)).numpy().reshape(-1)
    clicks = mp.imp_click[test]
    a_model, a_oracle = auc(scores, clicks), auc(mp.imp_logit[test], clicks)
    return {"auc": round(a_model, 4), "oracle_auc": round(a_oracle, 4),
            "auc_fraction": round((a_model - 0.5) / (a_oracle - 0.5), 4), **calibration(scores, clicks)}
