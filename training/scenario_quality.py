"""Each scenario's NDCG@20 against the ground-truth oracle restricted to the same candidate rule.

The served pipeline runs in this process: the code a replica runs (``serving.pipeline``: the
scenario's sources, merge, filters, crossing, ranker and diversity rule) with the repository's
TorchScript models in place of Triton and the version's FAISS index, on the repository's scenario
files. For each of 200 random users the context is drawn from the user's own impressions: the
seed item is one the user was shown (the product page they look at), the shop is the shop of
another.

The gain of an item is its true click probability for the user (the generator's click model).
The oracle ranks, by that gain, every item the scenario's candidate rule admits in truth, as each
source kind declares it (``serving.pipeline.sources.SourceSpec.admits`` over this module's ground
truth):

* a user-to-item or an overall ``popular`` source admits any item (so ``home``'s oracle ranks
  the whole catalogue, as the pipeline NDCG of ``training.quality`` does);
* a ``popular`` source within a shop or category admits that shop's or category's items;
* an ``item_to_item`` source admits the ``count`` items nearest the seed in the generator's true
  latent space (inner product, as the index ranks the learned embeddings): truly similar items;
* the caller's candidates (``given``) admit nothing of their own;
* the sources' sets are united, then the filters apply (``restrict``, ``exclude_seed``).

An item the pipeline returns that the oracle does not admit gains 0 (for ``similar``: an item its
recall calls similar that is not). Beside each figure, two baselines over the same users and
contexts: ``random_candidates``, k of the pipeline's own candidates (its sources, merged and
filtered) picked at random, what the ranker adds to the recall; and ``random``, k random items of
those the oracle admits, what ranking nothing but truly admitted items would give (above the
served figure when recall misses the rule's true items, as item-to-item recall from the two-tower
embeddings, ``space: embedding``, does for ``similar``: they are trained for user-item affinity).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serving.config import Settings
from serving.pipeline.features import ITEM_CAT_FIELDS
from serving.pipeline.scenario import Scenario
from serving.pipeline.sources import SCOPE_FIELD
from serving.schemas import RankRequest, RankResponse
from training.data import Marketplace
from training.metrics import ndcg_at_k
from training.quality import true_click_prob

__all__ = ["scenario_ndcg"]


def _contexts(mp: Marketplace, users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per user: a seed item and a shop, from items the user was shown."""
    seeds, shops = np.empty(users.size, np.int64), np.empty(users.size, np.int64)
    for j, u in enumerate(users):
        shown = mp.imp_item[np.flatnonzero(mp.imp_user == u)]
        pick = rng.choice(shown, 2) if shown.size else rng.integers(0, mp.item_cat.shape[0], 2)
        seeds[j], shops[j] = pick[0], mp.item_cat[pick[1], ITEM_CAT_FIELDS.index("shop")]
    return seeds, shops


class _Truth:
    """The generator's ground truth around one request (a :class:`serving.pipeline.sources.Truth`):
    what each source's rule admits, as masks over every item."""

    def __init__(self, mp: Marketplace, seed: int, shop: int) -> None:
        self.mp, self.seed, self.shop = mp, seed, shop

    def everything(self) -> np.ndarray:
        return np.ones(self.mp.item_cat.shape[0], dtype=bool)

    def nothing(self) -> np.ndarray:
        return np.zeros(self.mp.item_cat.shape[0], dtype=bool)

    def within(self, scope: str) -> np.ndarray:
        col = ITEM_CAT_FIELDS.index(SCOPE_FIELD[scope])
        value = self.shop if scope == "request_shop" else self.mp.item_cat[self.seed, col]
        return np.asarray(self.mp.item_cat[:, col] == value)

    def nearest_seed(self, count: int) -> np.ndarray:
        """The ``count`` items nearest the seed in the true latent space (the seed itself not one)."""
        near = self.mp.v_lat @ self.mp.v_lat[self.seed]
        near[self.seed] = -np.inf
        ok = self.nothing()
        ok[np.argpartition(-near, count)[:count]] = True
        return ok


def _admitted(mp: Marketplace, sc: Scenario, seed: int, shop: int) -> np.ndarray:
    """Item ids the scenario's candidate rule admits in truth (see the module's docstring): the
    union of what its sources admit (each source says, :meth:`SourceSpec.admits`), then its filters."""
    truth = _Truth(mp, seed, shop)
    ok = truth.nothing()
    for src in sc.spec.sources:
        ok |= src.admits(truth)
    if sc.spec.filters.restrict:
        ok &= truth.within(sc.spec.filters.restrict)
    if sc.spec.filters.exclude_seed:
        ok[seed] = False
    return np.flatnonzero(ok)


def _answers(pipeline: Any, reqs: list[RankRequest], batch: int = 25) -> list[tuple[RankResponse, np.ndarray]]:
    """Each request's answer, with the candidates the pipeline ranked for it."""
    out: list[tuple[RankResponse, np.ndarray]] = []
    for lo in range(0, len(reqs), batch):
        live = pipeline.live
        preps = [pipeline.prepare(r, live=live) for r in reqs[lo: lo + batch]]
        results, _ = asyncio.run(pipeline.run_batch(preps))
        found = asyncio.run(pipeline.candidates.find(live.catalogue, live.recall, [p.wanted() for p in preps]))
        for r, f in zip(results, found, strict=True):
            if not isinstance(r, RankResponse):
                raise RuntimeError(f"the in-process pipeline failed a quality request: {r}")
            out.append((r, f.ids))
    return out


def scenario_ndcg(mp: Marketplace, settings: Settings, versions: dict[str, int] | None = None, *,
                  n_users: int = 200, k: int = 20, seed: int = 2) -> dict[str, dict[str, float]]:
    """NDCG@``k`` of every scenario (the live versions, or ``versions``) against its oracle, with
    the two random baselines, over ``n_users`` users of ``mp`` served from ``settings.model_repository``."""
    from serving.pipeline.assemble import create_pipeline
    from serving.repository.registry import ModelRegistry
    from serving.repository.scenarios import ScenarioStore
    from serving.triton.inprocess import InProcessClient

    registry = ModelRegistry(settings.model_repository)
    store = ScenarioStore(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    groups = pipeline.catalogue.group_counts()
    wanted = versions or {row["name"]: row["live"] for row in store.listing()}
    scenarios = {n: store.resolve(n, v, settings, registry, groups) for n, v in wanted.items()}
    pipeline.set_scenarios(scenarios)
    rng = np.random.default_rng(seed)
    users = rng.choice(mp.user_cat.shape[0], min(n_users, mp.user_cat.shape[0]), replace=False)
    seeds, shops = _contexts(mp, users, rng)
    out: dict[str, dict[str, float]] = {}
    for name, sc in sorted(scenarios.items()):
        reqs = [RankRequest.model_validate({"user_id": int(u), "scenario": name, "k": k, "item_id": int(s),
                                            "shop_id": int(h)}) for u, s, h in zip(users, seeds, shops, strict=True)]
        served, rand, rand_cand = [], [], []
        for u, s, h, (ans, cands) in zip(users, seeds, shops, _answers(pipeline, reqs), strict=True):
            admitted = _admitted(mp, sc, int(s), int(h))
            truth = true_click_prob(mp, int(u), admitted)

            def gain(ids: np.ndarray, u: int = int(u), admitted: np.ndarray = admitted) -> np.ndarray:
                return true_click_prob(mp, u, ids) * np.isin(ids, admitted)

            got = np.asarray([it.item_id for it in ans.items], dtype=np.int64)
            served.append(ndcg_at_k(gain(got), truth, k))
            rand.append(ndcg_at_k(rng.permutation(truth)[:k], truth, k))
            rand_cand.append(ndcg_at_k(gain(rng.permutation(cands)[:k]), truth, k))
        out[name] = {"version": sc.version, f"ndcg_at_{k}": round(float(np.mean(served)), 4),
                     f"ndcg_at_{k}_random_candidates": round(float(np.mean(rand_cand)), 4),
                     f"ndcg_at_{k}_random": round(float(np.mean(rand)), 4), "users": int(users.size)}
    return out
