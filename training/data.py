"""A seeded synthetic marketplace with a known ground-truth click model.

Users have a region, age bucket, device and a latent interest vector; items a category, shop,
brand, price (bucketed), rating, popularity and a latent vector near their category's centroid.
The click logit is::

    logit = a * <u_lat, v_lat> + T1[region, category] + T2[age, price_bucket] + T3[device, brand]
            + b * rating_z + c * log_popularity_z + bias

and a click is Bernoulli(sigmoid(logit)). Observed features are the latents plus small noise, so
a model can approach (not reach) the oracle AUC. Impressions follow a logging policy that mixes
the user's category affinity with item popularity, as production logs do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serving.terminal import task

__all__ = ["MarketConfig", "Marketplace", "generate", "load", "load_built_marketplace", "save"]


@dataclass(frozen=True)
class MarketConfig:
    """Sizes and seed of the synthetic marketplace (``scale`` multiplies users, items, shops)."""

    n_users: int = 20_000
    n_items: int = 50_000
    impressions_per_user: int = 40
    dim: int = 16
    n_regions: int = 8
    n_ages: int = 6
    n_devices: int = 3
    n_categories: int = 30
    n_shops: int = 2_000
    n_brands: int = 500
    n_price_buckets: int = 10
    noise: float = 0.1
    test_fraction: float = 0.1
    ctr: float = 0.03  # mean click probability of the logged impressions (real feeds: 1-5%)
    seed: int = 0

    def sized(self, *, items: int | None = None, users: int | None = None) -> MarketConfig:
        """The same marketplace with ``items`` items and ``users`` users (shops and brands grow with
        the catalogue, one shop per 25 items and one brand per 100, as in the default)."""
        n_items = self.n_items if items is None else int(items)
        n_users = self.n_users if users is None else int(users)
        if n_items < 100 or n_users < 50:
            raise ValueError(f"need at least 100 items and 50 users, got {n_items} and {n_users}")
        return MarketConfig(**{**asdict(self), "n_items": n_items, "n_users": n_users,
                               "n_shops": max(10, n_items // 25), "n_brands": max(10, n_items // 100)})


@dataclass
class Marketplace:
    """Feature tables (the serving layout of ``serving.pipeline.features``), truth and impressions."""

    config: MarketConfig
    user_cat: np.ndarray
    user_dense: np.ndarray
    item_cat: np.ndarray
    item_num: np.ndarray
    item_dense: np.ndarray
    # ground truth
    u_lat: np.ndarray
    v_lat: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    t3: np.ndarray
    item_bias: np.ndarray  # b * rating_z + c * log_pop_z + bias, per item
    # impressions (user row, item row, click, oracle logit); train/test split
    imp_user: np.ndarray
    imp_item: np.ndarray
    imp_click: np.ndarray
    imp_logit: np.ndarray
    imp_test: np.ndarray  # bool

    def oracle_logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        uc, ic = self.user_cat[users], self.item_cat[items]
        dot = np.einsum("ij,ij->i", self.u_lat[users], self.v_lat[items])
        return (1.2 * dot + self.t1[uc[:, 0], ic[:, 0]] + self.t2[uc[:, 1], ic[:, 3]]
                + self.t3[uc[:, 2], ic[:, 2]] + self.item_bias[items]).astype(np.float32)


def _z(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / (x.std() + 1e-9)).astype(np.float32)


def _offset_for_rate(logit: np.ndarray, rate: float) -> float:
    """The shift of every logit that makes the mean click probability ``rate`` (bisection)."""
    if not 0 < rate < 1:
        raise ValueError(f"ctr must be in (0, 1), got {rate}")
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(np.mean(1 / (1 + np.exp(-(logit + mid))))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def generate(cfg: MarketConfig) -> Marketplace:
    """Generate the marketplace (deterministic for ``cfg.seed``)."""
    with task("marketplace data", total=cfg.n_categories + 2) as bar:
        return _generate(cfg, bar.advance)


def _generate(cfg: MarketConfig, advance: Callable[[], None]) -> Marketplace:
    rng = np.random.default_rng(cfg.seed)
    D = cfg.dim
    s = D ** -0.25  # <u, v> of two N(0, s^2) vectors has unit variance
    # users (categorical ids start at 1; 0 means unknown / cold start)
    U, I = cfg.n_users, cfg.n_items  # noqa: E741 - the usual names for user and item counts
    user_cat = np.stack([rng.integers(1, cfg.n_regions + 1, U), rng.integers(1, cfg.n_ages + 1, U),
                         rng.integers(1, cfg.n_devices + 1, U)], axis=1).astype(np.int64)
    u_lat = (rng.normal(0, s, (U, D))).astype(np.float32)
    user_dense = (u_lat + rng.normal(0, cfg.noise * s, (U, D))).astype(np.float32)
    # items
    category = rng.integers(1, cfg.n_categories + 1, I)
    centroids = rng.normal(0, s, (cfg.n_categories + 1, D))
    v_lat = (0.8 * centroids[category] + 0.6 * rng.normal(0, s, (I, D))).astype(np.float32)
    item_dense = (v_lat + rng.normal(0, cfg.noise * s, (I, D))).astype(np.float32)
    shop = rng.integers(1, cfg.n_shops + 1, I)
    brand = rng.integers(1, cfg.n_brands + 1, I)
    cat_price = rng.normal(3.5, 0.8, cfg.n_categories + 1)
    log_price = cat_price[category] + rng.normal(0, 0.5, I)
    edges = np.quantile(log_price, np.linspace(0, 1, cfg.n_price_buckets + 1)[1:-1])
    price_bucket = np.searchsorted(edges, log_price) + 1
    rating = np.clip(rng.normal(4.0, 0.5, I), 1.0, 5.0)
    popularity = rng.zipf(1.6, I).astype(np.float64)
    log_pop = np.log1p(np.minimum(popularity, 1e6))
    item_cat = np.stack([category, shop, brand, price_bucket], axis=1).astype(np.int64)
    item_num = np.stack([_z(log_price), _z(rating), _z(log_pop)], axis=1).astype(np.float32)
    # click model
    t1 = rng.normal(0, 0.6, (cfg.n_regions + 1, cfg.n_categories + 1)).astype(np.float32)
    t2 = rng.normal(0, 0.5, (cfg.n_ages + 1, cfg.n_price_buckets + 1)).astype(np.float32)
    t3 = rng.normal(0, 0.4, (cfg.n_devices + 1, cfg.n_brands + 1)).astype(np.float32)
    item_bias = (0.3 * item_num[:, 1] + 0.3 * item_num[:, 2] - 2.2).astype(np.float32)
    advance()
    # logging policy: category by the user's affinity (softmax of <u, centroid>), item by popularity
    n_imp = cfg.impressions_per_user
    aff = u_lat @ centroids[1:].T.astype(np.float32) * 3.0
    aff = np.exp(aff - aff.max(axis=1, keepdims=True))
    aff /= aff.sum(axis=1, keepdims=True)
    imp_user = np.repeat(np.arange(U), n_imp)
    u01 = rng.random((U, n_imp))
    chosen_cat = (aff.cumsum(axis=1)[:, None, :] < u01[:, :, None]).sum(axis=2) + 1
    chosen_cat = np.minimum(chosen_cat, cfg.n_categories).reshape(-1)
    order = np.argsort(category, kind="stable")
    starts = np.searchsorted(category[order], np.arange(cfg.n_categories + 2))
    weights = np.sqrt(popularity[order])
    imp_item = np.empty(U * n_imp, dtype=np.int64)
    for c in range(1, cfg.n_categories + 1):
        advance()
        sel = np.nonzero(chosen_cat == c)[0]
        lo, hi = starts[c], starts[c + 1]
        if sel.size == 0:
            continue
        if hi <= lo:
            imp_item[sel] = rng.integers(0, I, sel.size)
            continue
        w = weights[lo:hi] / weights[lo:hi].sum()
        imp_item[sel] = order[lo + rng.choice(hi - lo, sel.size, p=w)]
    # a share of impressions explores uniformly
    explore = rng.random(imp_item.size) < 0.2
    imp_item[explore] = rng.integers(0, I, int(explore.sum()))
    mp = Marketplace(cfg, user_cat, user_dense, item_cat, item_num, item_dense, u_lat, v_lat, t1, t2, t3,
                     item_bias, imp_user.astype(np.int64), imp_item, np.zeros(0), np.zeros(0), np.zeros(0, bool))
    logit = mp.oracle_logit(mp.imp_user, imp_item)
    # one offset for every item so that the logged impressions click at the configured rate
    offset = _offset_for_rate(logit, cfg.ctr)
    mp.item_bias = (item_bias + offset).astype(np.float32)
    logit = (logit + offset).astype(np.float32)
    mp.imp_logit = logit
    mp.imp_click = (rng.random(logit.size) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    mp.imp_test = rng.random(logit.size) < cfg.test_fraction
    advance()
    return mp


def save(mp: Marketplace, data_dir: Path) -> None:
    """``marketplace.npz`` (serving tables), ``truth.npz`` and ``impressions.npz``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "marketplace.npz", user_cat=mp.user_cat, user_dense=mp.user_dense, item_cat=mp.item_cat,
             item_num=mp.item_num, item_dense=mp.item_dense)
    np.savez(data_dir / "truth.npz", u_lat=mp.u_lat, v_lat=mp.v_lat, t1=mp.t1, t2=mp.t2, t3=mp.t3,
             item_bias=mp.item_bias)
    np.savez(data_dir / "impressions.npz", user=mp.imp_user, item=mp.imp_item, click=mp.imp_click,
             logit=mp.imp_logit, test=mp.imp_test)


def load(data_dir: Path, cfg: MarketConfig) -> Marketplace:
    with np.load(data_dir / "marketplace.npz") as m, np.load(data_dir / "truth.npz") as t, \
            np.load(data_dir / "impressions.npz") as i:
        return Marketplace(cfg, m["user_cat"], m["user_dense"], m["item_cat"], m["item_num"], m["item_dense"],
                           t["u_lat"], t["v_lat"], t["t1"], t["t2"], t["t3"], t["item_bias"],
                           i["user"], i["item"], i["click"], i["logit"], i["test"])


def load_built_marketplace(data_dir: Path) -> Marketplace:
    """The marketplace a build wrote into ``data_dir``, at the configuration its ``build.json`` records."""
    summary = json.loads((data_dir / "build.json").read_text())
    return load(data_dir, MarketConfig(**summary["config"]))
