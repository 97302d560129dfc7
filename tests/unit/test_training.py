"""Training pieces without the full build: deterministic data, AUC, TorchScript equality, FAISS."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.data.store import DataSetStore
from serving.index.faiss_index import build_index, load_index, nprobe_steps, recall_at_k, save_index
from training.data import MarketConfig, generate
from training.metrics import auc
from training.models import DCNv2Ranker, UserTower
from training.train import ranker_cardinalities, train_ranker

TINY = MarketConfig(n_users=300, n_items=400, impressions_per_user=30, n_shops=20, seed=5)


def test_generator_is_deterministic_and_matches_the_serving_layout() -> None:
    a, b = generate(TINY), generate(TINY)
    assert np.array_equal(a.imp_item, b.imp_item) and np.array_equal(a.imp_click, b.imp_click)
    assert a.user_cat.shape == (300, 3) and a.user_cat.dtype == np.int64 and a.user_cat.min() >= 1
    assert a.item_cat.shape == (400, 4) and a.item_num.shape == (400, 3)
    assert a.user_dense.dtype == a.item_dense.dtype == np.float32
    assert 0.02 < a.imp_click.mean() < 0.04  # the configured 3 % click rate, as real feeds see
    assert not np.array_equal(generate(MarketConfig(**{**TINY.__dict__, "seed": 6})).imp_item, a.imp_item)


def test_click_rate_is_configurable_and_popularity_has_a_long_tail() -> None:
    big = MarketConfig(n_users=2000, n_items=3000, impressions_per_user=30, n_shops=50, seed=1)
    for ctr in (0.01, 0.05):
        rate = generate(MarketConfig(**{**big.__dict__, "ctr": ctr})).imp_click.mean()
        assert abs(rate - ctr) < 0.3 * ctr, (ctr, rate)
    m = generate(big)
    shown = np.bincount(m.imp_item, minlength=big.n_items)
    top = np.sort(shown)[::-1]
    assert top[: big.n_items // 100].sum() > 0.1 * shown.sum()  # 1 % of items take > 10 % of impressions
    assert np.median(shown) < 0.7 * shown.mean()  # the typical item is shown less than the average
    clicks = np.bincount(m.imp_item, weights=m.imp_click, minlength=big.n_items)
    assert (clicks == 0).mean() > 0.5  # and most items are never clicked


def _pairwise_auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y > 0.5], s[y <= 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, 60).astype(float)  # many ties
    y = (rng.random(60) < 0.4).astype(float)
    assert auc(s, y) == pytest.approx(_pairwise_auc(s, y), abs=1e-12)
    with pytest.raises(ValueError):
        auc(s, np.zeros(60))


def test_scripted_models_equal_eager() -> None:
    torch.manual_seed(0)
    ranker = DCNv2Ranker([5, 7, 11], dense_dim=6).eval()
    tower = UserTower([4, 4, 4], dense_dim=6).eval()
    cat = torch.randint(0, 4, (32, 3))
    dense = torch.randn(32, 6)
    with torch.inference_mode():
        assert torch.equal(torch.jit.script(ranker)(cat, dense), ranker(cat, dense))
        assert torch.equal(torch.jit.script(tower)(cat, dense), tower(cat, dense))


def test_tiny_ranker_learns() -> None:
    mp = generate(TINY)
    from training.train import cross_spec

    spec = cross_spec(TINY.dim)
    model, cat, dense = train_ranker(mp, spec, epochs=3, batch=256)
    assert len(ranker_cardinalities(mp, spec)) == cat.shape[1]
    test = np.nonzero(mp.imp_test)[0]
    with torch.inference_mode():
        s = model(torch.from_numpy(cat[test]), torch.from_numpy(dense[test])).numpy().ravel()
    assert auc(s, mp.imp_click[test]) > 0.6


def test_faiss_ivf_recall_and_round_trip(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30_000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = (emb[:100] + rng.normal(0, 0.1, (100, 16))).astype(np.float32)
    ivf = build_index(emb, queries=q)
    assert ivf.kind == "ivf" and recall_at_k(ivf, emb, q, 500) >= 0.95
    flat = build_index(emb[:500])
    assert flat.kind == "flat" and recall_at_k(flat, emb[:500], q, 50) == 1.0
    scores, ids = flat.search(q[:2], 10_000)  # k larger than the catalogue
    assert ids.shape == (2, 500) and (ids >= 0).all()
    save_index(ivf, tmp_path / "i.faiss")
    back = load_index(tmp_path / "i.faiss", use_gpu="off")
    assert back.nprobe == ivf.nprobe and np.array_equal(back.search(q, 20)[1], ivf.search(q, 20)[1])
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(back)


def test_nprobe_is_tuned_in_steps_of_about_1_5x_up_to_every_list() -> None:
    """A fine ladder (a choice costs at most ~1.5x the least that would reach the recall target),
    with no jump: 16,384 lists once went from nprobe 256 straight to all of them (exact search)."""
    steps = nprobe_steps(16_384)
    assert steps[:6] == [4, 6, 8, 12, 16, 24] and steps[-1] == 12_288
    assert all(1.3 <= b / a <= 1.5 for a, b in itertools.pairwise(steps))
    assert nprobe_steps(5) == [4] and nprobe_steps(4) == []


def test_build_without_an_index_says_so_and_is_not_reused_when_an_index_is_asked_for(tmp_path: Path) -> None:
    from training.build import NO_INDEX, build

    data, repo = tmp_path / "data", tmp_path / "repo"
    first = build(data, repo, items=500, users=200, index=False)
    assert not first["cached"] and first["index"] is False
    demo = DataSetStore(tmp_path, demo_model_repository=repo).dataset("demo")  # imported beside the cache
    assert demo.live_version() == first["data_set_version"] and demo.tables().n_items == 500
    assert first["quality"]["recall_at_500"] is None and first["quality"]["index_kind"] == NO_INDEX
    tower = repo / "user_tower" / "1"
    assert (tower / "item_emb.npy").is_file() and not (tower / "items.faiss").exists()
    assert build(data, repo, items=500, users=200, index=False)["cached"]
    with_index = build(data, repo, items=500, users=200)
    assert not with_index["cached"] and with_index["quality"]["recall_at_500"] > 0.9
    assert (tower / "items.faiss").is_file()
    assert set(with_index["quality"]["scenarios"]) == {"home", "similar", "shop"}
    assert build(data, repo, items=500, users=200, index=False)["cached"]  # an indexed build serves a no-index request
    # a cache from before scenarios: they are added and measured, the models are not trained again
    summary = json.loads((data / "build.json").read_text())
    del summary["quality"]["scenarios"]
    (data / "build.json").write_text(json.dumps(summary))
    shutil.rmtree(repo / "scenarios")
    again = build(data, repo, items=500, users=200)
    assert again["cached"] and again["built_at"] == with_index["built_at"]
    assert again["quality"]["scenarios"] == with_index["quality"]["scenarios"]
    assert (repo / "scenarios" / "live.json").is_file()
