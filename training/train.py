"""Training loops for the two-tower model and the DCN-v2 ranker (CPU-friendly, a few epochs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kernels import CrossSpec, get_crosser
from serving.pipeline.features import FeatureTables, ranker_inputs
from serving.terminal import Task, task
from training.data import Marketplace
from training.metrics import auc
from training.models import DCNv2Ranker, ItemTower, UserTower
from training.quality import calibration

__all__ = ["CROSS_SPEC", "TrainedModels", "fit_ranker", "fit_two_tower", "ranker_cardinalities", "train_all"]

log = logging.getLogger(__name__)

# region x category, age_bucket x price_bucket, device x brand
CROSS_BUCKETS = 4096


def cross_spec(dense_dim: int) -> CrossSpec:
    return CrossSpec(pairs=((0, 0), (1, 3), (2, 2)), buckets=CROSS_BUCKETS, dense_dim=dense_dim)


CROSS_SPEC = cross_spec(16)


@dataclass
class TrainedModels:
    user_tower: UserTower
    item_tower: ItemTower
    ranker: DCNv2Ranker
    spec: CrossSpec
    item_emb: np.ndarray
    quality: dict[str, float]


def _cards(a: np.ndarray) -> list[int]:
    return [int(a[:, j].max()) + 1 for j in range(a.shape[1])]


def ranker_cardinalities(mp: Marketplace, spec: CrossSpec) -> list[int]:
    return _cards(mp.user_cat) + _cards(mp.item_cat) + [spec.buckets] * spec.n_pairs


def train_two_tower(mp: Marketplace, *, epochs: int = 2, batch: int = 1024, seed: int = 0,
                    temperature: float = 0.05, min_steps: int = 400) -> tuple[UserTower, ItemTower]:
    """In-batch softmax on clicked (user, item) pairs of the training split; at least
    ``min_steps`` steps (at click rates of a few percent, two epochs of clicks are few steps)."""
    torch.manual_seed(seed)
    D = mp.user_dense.shape[1]
    user = UserTower(_cards(mp.user_cat), D)
    item = ItemTower(_cards(mp.item_cat), mp.item_num.shape[1], D)
    pos = np.nonzero((mp.imp_click > 0.5) & ~mp.imp_test)[0]
    uc, ud = torch.from_numpy(mp.user_cat), torch.from_numpy(mp.user_dense)
    ic, inum, idn = torch.from_numpy(mp.item_cat), torch.from_numpy(mp.item_num), torch.from_numpy(mp.item_dense)

    def pairs(b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = torch.from_numpy(mp.imp_user[b]), torch.from_numpy(mp.imp_item[b])
        return user(uc[u], ud[u]), item(ic[i], inum[i], idn[i])

    fit_two_tower(user, item, pos, pairs, epochs=epochs, batch=min(batch, max(64, pos.size // 4)), seed=seed,
                  temperature=temperature, min_steps=min_steps)
    return user.eval(), item.eval()


def fit_two_tower(user: nn.Module, item: nn.Module, pos: np.ndarray,
                  pairs: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]], *, epochs: int, batch: int,
                  seed: int, temperature: float, min_steps: int) -> None:
    """In-batch softmax over the impressions ``pos`` (clicked ones), ``pairs(b)`` giving the user
    and item embeddings of impressions ``b``: ``epochs`` passes in a seeded shuffled order, more
    when they make fewer than ``min_steps`` steps."""
    opt = torch.optim.Adam([*user.parameters(), *item.parameters()], lr=2e-3)
    rng = np.random.default_rng(seed)
    steps = max(1, pos.size // batch)
    epochs = max(epochs, -(-min_steps // steps))
    with task("train two-tower", total=epochs * steps) as bar:
        for epoch in range(epochs):
            bar.describe(f"train two-tower {epoch + 1}/{epochs}")
            perm = rng.permutation(pos)
            for s in range(0, steps * batch, batch):
                b = perm[s:s + batch]
                users, items = pairs(b)
                loss = nn.functional.cross_entropy(users @ items.T / temperature, torch.arange(b.size))
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.advance()


def train_ranker(mp: Marketplace, spec: CrossSpec, *, epochs: int = 3, batch: int = 2048,
                 seed: int = 0) -> tuple[DCNv2Ranker, np.ndarray, np.ndarray]:
    """BCE on all training impressions; inputs built by ``serving.pipeline.features.ranker_inputs``."""
    torch.manual_seed(seed)
    train = np.nonzero(~mp.imp_test)[0]
    steps = -(-train.size // batch)
    with task("train ranker", total=1 + epochs * steps) as bar:
        bar.describe("train ranker: crossing")
        tables = FeatureTables(mp.user_cat, mp.user_dense, mp.item_cat, mp.item_num, mp.item_dense)
        feats = ranker_inputs(tables, mp.imp_user, mp.imp_item, get_crosser("auto"), spec)
        bar.advance()
        model = DCNv2Ranker(ranker_cardinalities(mp, spec), feats.dense.shape[1])
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        cat, dense = torch.from_numpy(feats.cat), torch.from_numpy(feats.dense)
        y = torch.from_numpy(mp.imp_click).unsqueeze(1)
        fit_ranker(model, cat, dense, y, train, [opt], epochs=epochs, batch=batch, seed=seed, bar=bar)
    return model.eval(), feats.cat, feats.dense


def fit_ranker(model: DCNv2Ranker, cat: torch.Tensor, dense: torch.Tensor, y: torch.Tensor, train: np.ndarray,
               optimizers: Sequence[torch.optim.Optimizer], *, epochs: int, batch: int, seed: int, bar: Task) -> None:
    """BCE on rows ``train`` of the inputs: ``epochs`` passes in a seeded shuffled order, ``bar``
    advanced by one per step."""
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        bar.describe(f"train ranker {epoch + 1}/{epochs}")
        perm = torch.from_numpy(rng.permutation(train))
        for s in range(0, perm.numel(), batch):
            b = perm[s:s + batch]
            loss = nn.functional.binary_cross_entropy_with_logits(model.logit(cat[b], dense[b]), y[b])
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            bar.advance()


def train_all(mp: Marketplace, *, seed: int = 0) -> TrainedModels:
    """Train both models and measure quality on the held-out impressions."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    user, item = train_two_tower(mp, seed=seed)
    with torch.inference_mode():
        item_emb = item(torch.from_numpy(mp.item_cat), torch.from_numpy(mp.item_num),
                        torch.from_numpy(mp.item_dense)).numpy()
    t1 = time.perf_counter()
    spec = cross_spec(mp.user_dense.shape[1])
    ranker, cat, dense = train_ranker(mp, spec, seed=seed)
    t2 = time.perf_counter()
    test = np.nonzero(mp.imp_test)[0]
    with torch.inference_mode():
        scores = ranker(torch.from_numpy(cat[test]), torch.from_numpy(dense[test])).numpy().reshape(-1)
    a_model = auc(scores, mp.imp_click[test])
    a_oracle = auc(mp.imp_logit[test], mp.imp_click[test])
    quality = {
        "auc": round(a_model, 4), "oracle_auc": round(a_oracle, 4),
        "auc_fraction": round((a_model - 0.5) / (a_oracle - 0.5), 4),
        **calibration(scores, mp.imp_click[test]),
        "n_users": int(mp.user_cat.shape[0]), "n_items": int(mp.item_cat.shape[0]),
        "train_two_tower_s": round(t1 - t0, 1), "train_ranker_s": round(t2 - t1, 1),
    }
    log.info("quality: %s", quality)
    return TrainedModels(user, item, ranker, spec, item_emb.astype(np.float32), quality)
