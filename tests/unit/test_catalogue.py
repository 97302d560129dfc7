"""Catalogue changes without a server: the change log's validation and numbering, folding changes,
the pipeline never returning a blocked item, a replica's catalogue follower applying changes (added
items recallable), and the FAISS index taking upserts."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.errors import ValidationError
from serving.index.faiss_index import build_index
from serving.index.torch_exact import TorchExactIndex
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.features import ITEM_CAT_FIELDS, ITEM_NUM_FIELDS
from serving.repository.catalogue import ChangeLog, apply_change, read_item_rows
from serving.repository.followers import CatalogueFollower
from serving.schemas import RankRequest, RankResponse
from tests.unit.fakes import N_ITEMS, D, ScoringClient, make_pipeline, make_repo, make_tables


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def _item(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: 2 for c in ITEM_CAT_FIELDS}
    row.update({c: 0.5 for c in ITEM_NUM_FIELDS})
    row["dense"] = [1.0] * D
    row.update(over)
    return row


@pytest.mark.parametrize(("change", "reason"), [
    ({"block": [N_ITEMS]}, "unknown item id"),
    ({"block": [-1]}, "unknown item id"),
    ({"block": [3, 3]}, "duplicate"),
    ({"block": ["x"]}, "not an integer"),
    ({"add": [_item(colour=1)]}, "unknown column"),
    ({"add": [{k: v for k, v in _item().items() if k != "rating"}]}, "missing ['rating']"),
    ({"add": [_item(rating=math.nan)]}, "finite"),
    ({"add": [_item(dense=[1.0] * (D + 1))]}, "dense must be a list"),
    ({"add": [_item(), _item(shop=0)]}, "shop must be an integer id >= 1"),
    ({"update": [{"item_id": 4, "log_price": 1.0}, {"item_id": 4, "rating": 0.1}]}, "duplicate item id 4"),
    ({"update": [{"log_price": 1.0}]}, "names its item_id"),
])
def test_a_bad_change_is_refused_whole_with_the_reason(repo: Path, change: dict, reason: str) -> None:
    log = ChangeLog(repo)
    log.append(make_tables(), block=[1])
    with pytest.raises(ValidationError) as info:
        log.append(make_tables(), unblock=[1], **change)
    assert reason in info.value.message
    assert log.versions() == [1]  # nothing written: the good part (unblock 1) is not applied either
    assert log.current(make_tables()).blocked[1]
    with pytest.raises(ValidationError, match="empty"):
        log.append(make_tables())


def test_changes_fold_into_a_new_catalogue_and_leave_the_old_one_alone(repo: Path) -> None:
    tables = make_tables()
    log = ChangeLog(repo)
    log.append(tables, block=[5, 6])
    added = log.append(tables, add=[_item(), _item(rating=-1.0)])
    assert added.added_ids == (N_ITEMS, N_ITEMS + 1)
    log.append(tables, unblock=[6], update=[{"item_id": 7, "log_price": 2.5}, {"item_id": N_ITEMS, "shop": 9}])
    v0 = Catalogue.initial(tables)
    cat = log.follow(v0)
    assert cat.version == 3 and cat.tables.n_items == N_ITEMS + 2
    assert cat.blocked[5] and not cat.blocked[6] and cat.n_blocked == 1
    assert cat.tables.item_num[7, ITEM_NUM_FIELDS.index("log_price")] == pytest.approx(2.5)
    assert cat.tables.item_cat[N_ITEMS, ITEM_CAT_FIELDS.index("shop")] == 9
    assert cat.tables.item_num[N_ITEMS + 1, ITEM_NUM_FIELDS.index("rating")] == pytest.approx(-1.0)
    assert v0.version == 0 and v0.tables.n_items == N_ITEMS and v0.n_blocked == 0  # untouched
    assert tables.item_num[7, ITEM_NUM_FIELDS.index("log_price")] != pytest.approx(2.5)
    assert log.embedded_since(0, 3).tolist() == [7, N_ITEMS, N_ITEMS + 1]
    assert log.embedded_since(2, 3).tolist() == [7, N_ITEMS]
    assert cat.servable(np.array([5, 6, N_ITEMS + 1, N_ITEMS + 2, -1])).tolist() == [False, True, True, False, False]


def test_a_change_costs_what_it_changes_and_every_older_catalogue_keeps_its_tables(repo: Path) -> None:
    """Adds go into spare rows of the newest catalogue's buffer (no copy of the item tables); an
    update copies only the table it touches; no change writes into memory an older catalogue (or
    a GPU copy of its tables) reads; a second change from the same older catalogue copies."""
    tables = make_tables()
    log = ChangeLog(repo)
    frozen = {n: getattr(tables, n).copy() for n in ("item_cat", "item_num", "item_dense")}
    v1 = apply_change(Catalogue.initial(tables), log.append(tables, add=[_item()]))
    v2 = apply_change(v1, log.append(v1.tables, add=[_item(rating=-1.0), _item(rating=-2.0)]))
    for name in ("item_cat", "item_num", "item_dense"):  # appended in place: one buffer for v1 and v2
        assert np.shares_memory(getattr(v1.tables, name), getattr(v2.tables, name))
        assert not getattr(v2.tables, name).flags.writeable
    v3 = apply_change(v2, log.append(v2.tables, update=[{"item_id": 3, "log_price": 9.0}]))
    assert not np.shares_memory(v3.tables.item_num, v2.tables.item_num)  # copied on write
    assert np.shares_memory(v3.tables.item_cat, v2.tables.item_cat)  # untouched: shared
    assert v3.tables.item_num[3, ITEM_NUM_FIELDS.index("log_price")] == pytest.approx(9.0)
    assert v2.tables.item_num[3, ITEM_NUM_FIELDS.index("log_price")] != pytest.approx(9.0)
    branch = apply_change(v1, log.append(v1.tables, add=[_item(rating=5.0)]))  # v1 is no longer the newest
    assert branch.tables.item_num[N_ITEMS + 1, ITEM_NUM_FIELDS.index("rating")] == pytest.approx(5.0)
    assert v2.tables.item_num[N_ITEMS + 1, ITEM_NUM_FIELDS.index("rating")] == pytest.approx(-1.0)
    assert (v1.tables.n_items, v2.tables.n_items, v3.tables.n_items, branch.tables.n_items) == \
        (N_ITEMS + 1, N_ITEMS + 3, N_ITEMS + 3, N_ITEMS + 2)
    for name, before in frozen.items():
        np.testing.assert_array_equal(getattr(tables, name), before)
        np.testing.assert_array_equal(getattr(v3.tables, name)[:N_ITEMS][np.arange(N_ITEMS) != 3],
                                      before[np.arange(N_ITEMS) != 3])


def test_concurrent_changes_lose_nothing(repo: Path) -> None:
    """Writers in parallel (each its own log object, as separate processes would be) get distinct
    versions 1..n and every change is in the catalogue."""
    tables = make_tables()
    errors: list[BaseException] = []

    def block(i: int) -> None:
        try:
            ChangeLog(repo).append(tables, block=[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=block, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = ChangeLog(repo)
    assert log.versions() == list(range(1, 41))
    assert sorted(log.current(tables).blocked.nonzero()[0].tolist()) == list(range(40))


def test_item_files_are_read_as_json_or_json_lines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([_item(), _item()]))
    (tmp_path / "b.jsonl").write_text(json.dumps(_item()) + "\n\n" + json.dumps(_item()) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps(_item()) + "\n{oops\n")
    assert len(read_item_rows(tmp_path / "a.json")) == 2
    assert len(read_item_rows(tmp_path / "b.jsonl")) == 2
    with pytest.raises(ValidationError, match="line 2"):
        read_item_rows(tmp_path / "c.jsonl")
    with pytest.raises(ValidationError, match="cannot read"):
        read_item_rows(tmp_path / "missing.json")


def _rank(p: Any, **req: Any) -> RankResponse:
    (r,) = asyncio.run(p.run_batch([p.prepare(RankRequest.model_validate({"user_id": 3, "k": 40, **req}))]))[0]
    assert isinstance(r, RankResponse)
    return r


def test_blocked_items_are_never_returned_recalled_or_given(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    first = [it.item_id for it in _rank(p).items]
    given = list(range(0, 60))
    blocked = first[:10] + [0, 1, 2]
    changed = apply_change(p.catalogue, ChangeLog(repo).append(p.catalogue.tables, block=blocked))
    p.cell.publish(lambda state: state.replace(catalogue=changed))
    recalled, from_given = _rank(p), _rank(p, candidates=given)
    assert recalled.catalogue_version == from_given.catalogue_version == 1
    assert not {it.item_id for it in recalled.items} & set(blocked)
    assert len(recalled.items) == 40  # blocked items are replaced, not just dropped
    assert not {it.item_id for it in from_given.items} & set(blocked)
    assert first[10] in {it.item_id for it in recalled.items}


def test_the_follower_applies_changes_and_added_items_can_be_recalled(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    user = p.catalogue.tables.user_dense[3]
    log = ChangeLog(repo)
    follower = CatalogueFollower(p.cell, log, threading.Event(), p.cell.current.catalogue)
    # an item made to be the user's best match: its dense vector is the user's, scaled up
    log.append(p.catalogue.tables, add=[_item(dense=(user * 10).tolist())])
    log.append(p.catalogue.tables, block=[0])
    assert follower.catch_up() == 2 and follower.catch_up() == 0 and follower.poll() is False
    assert p.catalogue.version == 2 and p.recall.index.catalogue_version == 2
    r = _rank(p)
    assert r.catalogue_version == 2 and r.items[0].item_id == N_ITEMS
    assert 0 not in {it.item_id for it in r.items}


def test_faiss_indexes_take_upserts() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    emb = centres[rng.integers(0, 20, 4000)] + 0.1 * rng.normal(size=(4000, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    new = rng.normal(size=(3, 16)).astype(np.float32)
    for kind in ("flat", "ivf", "ivfpq"):
        index = build_index(emb, kind=kind, nlist=16)
        index.upsert(np.array([7, 4000, 4001]), new, catalogue_version=5)
        assert index.n_items == 4002 and index.catalogue_version == 5
        _, ids = index.search(new, 1)
        assert ids[:, 0].tolist() == [7, 4000, 4001], kind
        _, near_old = index.search(emb[7:8], 5)
        assert 7 not in near_old[0] or kind == "ivfpq"  # the old vector of item 7 is gone
        with pytest.raises(ValueError, match="follow on"):
            index.upsert(np.array([5000]), new[:1], catalogue_version=6)
    exact = TorchExactIndex(emb)
    exact.upsert(np.array([7, 4000, 4001]), new, catalogue_version=5)
    _, ids = exact.search(new, 1)
    assert ids[:, 0].tolist() == [7, 4000, 4001] and exact.n_items == 4002 and exact.catalogue_version == 5
    hnsw = build_index(emb, kind="hnsw")
    with pytest.raises(ValueError, match="HNSW"):
        hnsw.upsert(np.array([3]), new[:1], catalogue_version=1)


def test_popularity_orders_carried_across_changes_equal_orders_sorted_again() -> None:
    """A replica takes out only what a change moved (added items, new popularity, shop or
    category) and puts it in its new place in the previous catalogue's orders; the result is the
    full sort's, ties by id, at every step, groups emptied and new ones included."""
    from serving.pipeline.catalogue import GROUP_FIELDS, _carry_orders

    rng = np.random.default_rng(3)
    n = 4000
    shop, category = ITEM_CAT_FIELDS.index("shop"), ITEM_CAT_FIELDS.index("category")
    item_cat = np.stack([rng.integers(1, 9, n), rng.integers(1, 60, n), rng.integers(1, 20, n),
                         rng.integers(1, 5, n)], axis=1)
    item_num = rng.normal(size=(n, len(ITEM_NUM_FIELDS))).astype(np.float32)
    pop = ITEM_NUM_FIELDS.index("log_popularity")
    item_num[:, pop] = np.round(item_num[:, pop], 1)  # many ties, as zipf popularity has
    item_num[:6, pop] = [0.0, -0.0, 0.0, -0.0, 0.0, -0.0]
    tables = make_tables().with_items(item_cat, item_num, np.zeros((n, D), np.float32))
    cat = Catalogue.initial(tables).warm()
    for step in range(8):
        t = cat.tables
        ic, num = t.item_cat.copy(), t.item_num.copy()
        moved = rng.choice(t.n_items, 15, replace=False)
        num[moved[:5], pop] = np.round(rng.normal(size=5), 1)
        ic[moved[5:10], shop] = rng.integers(1, 70, 5)  # some into shops that had no items
        ic[moved[10:], category] = rng.integers(1, 10, 5)
        if step == 3:  # a shop closes: its items move to another, leaving it empty
            ic[ic[:, shop] == 7, shop] = 8
        k = 20 + step
        ic = np.concatenate([ic, ic[rng.choice(t.n_items, k)]])
        num = np.concatenate([num, np.round(rng.normal(size=(k, num.shape[1])), 1).astype(np.float32)])
        changed = t.with_items(ic, num, np.zeros((ic.shape[0], D), np.float32))
        assert _carry_orders(cat._orders, t, changed) is not None  # the carried path, not a sort
        carried = Catalogue(changed, np.zeros(changed.n_items, bool), step + 1).warm(previous=cat)._orders
        again = Catalogue(changed, np.zeros(changed.n_items, bool), step + 1).warm()._orders
        assert np.array_equal(again.by_pop, np.argsort(-changed.popularity, kind="stable"))
        assert np.array_equal(carried.by_pop, again.by_pop) and np.array_equal(carried.keys, again.keys)
        for g in GROUP_FIELDS:
            for field in ("order", "keys", "values", "starts"):
                assert np.array_equal(getattr(carried.grouped[g], field), getattr(again.grouped[g], field)), \
                    (step, g, field)
        cat = Catalogue(changed, np.zeros(changed.n_items, bool), step + 1).warm(previous=cat)
        assert 7 not in cat._orders.grouped["shop"].values or step < 3
    # two new items into one gap: the least popular of shop a (its end), the most popular of shop b (its start)
    t = cat.tables
    a, b = cat._orders.grouped["shop"].values[:2]
    ic = np.concatenate([t.item_cat, t.item_cat[:2]])
    ic[-2:, shop] = [a, b]
    num = np.concatenate([t.item_num, t.item_num[:2]])
    num[-2:, pop] = [-100.0, 100.0]
    changed = t.with_items(ic, num, np.zeros((ic.shape[0], D), np.float32))
    carried = Catalogue(changed, np.zeros(changed.n_items, bool), 9).warm(previous=cat)._orders.grouped["shop"]
    again = Catalogue(changed, np.zeros(changed.n_items, bool), 9).warm()._orders.grouped["shop"]
    assert np.array_equal(carried.order, again.order)
    blocked_only = Catalogue(cat.tables, np.ones(cat.tables.n_items, bool), 99).warm(previous=cat)
    assert blocked_only._orders is cat._orders  # same tables: nothing to place


def test_popularity_orders_follow_changes_folded_as_a_replica_folds_them(repo: Path) -> None:
    """Through ``apply_change``: adds appended into spare rows (the orders skip comparing the
    unchanged rows), then an update of popularity and shop, then a block; each carried order is
    the full sort's."""
    from serving.pipeline.catalogue import _extends

    tables = make_tables()
    log = ChangeLog(repo)
    cat = Catalogue.initial(tables).warm()
    pop, shop = ITEM_NUM_FIELDS.index("log_popularity"), ITEM_CAT_FIELDS.index("shop")
    changes = [dict(add=[_item(log_popularity=9.0, shop=1), _item(log_popularity=-9.0, shop=999)]),
               dict(add=[_item(log_popularity=0.5, shop=2)]),
               dict(update=[{"item_id": 3, "log_popularity": 7.0}, {"item_id": N_ITEMS, "shop": 5}]),
               dict(block=[4])]
    for i, change in enumerate(changes):
        new = apply_change(cat, log.append(cat.tables, **change))
        appended = _extends(new.tables.item_num, cat.tables.item_num) and _extends(new.tables.item_cat,
                                                                                   cat.tables.item_cat)
        # the second add went into the spare rows the first made, a block keeps the tables: no row compared
        assert appended == (i in (1, 3))
        carried = Catalogue(new.tables, new.blocked, new.version).warm(previous=cat)._orders
        again = Catalogue(new.tables, new.blocked, new.version).warm()._orders
        assert np.array_equal(carried.by_pop, again.by_pop)
        for g in carried.grouped:
            assert np.array_equal(carried.grouped[g].order, again.grouped[g].order)
            assert np.array_equal(carried.grouped[g].values, again.grouped[g].values)
        cat = new.warm(previous=cat)
    assert cat.popular(1)[1].tolist() == [N_ITEMS]  # the most popular: the first added
    assert cat.tables.item_num[3, pop] == pytest.approx(7.0) and cat.popular(2)[1].tolist() == [N_ITEMS, 3]
    assert cat.popular(5, "shop", 999)[1].tolist() == [N_ITEMS + 1] and cat.has_group("shop", 5)
    assert cat.tables.item_cat[N_ITEMS, shop] == 5 and N_ITEMS in cat.popular(50, "shop", 5)[1]


def test_content_neighbours_are_exact_and_follow_changes(repo: Path) -> None:
    """Item-to-item by content: the largest inner products of the content vectors, as NumPy
    finds them, over the catalogue as it is now (an added item counts at once, unindexed)."""
    tables = make_tables()
    cat = Catalogue.initial(tables)
    seeds = np.array([7, 0, N_ITEMS - 1])
    scores, ids = cat.content_nearest(seeds, 12)
    ref = tables.item_dense[seeds] @ tables.item_dense.T
    for r in range(seeds.size):
        want = np.sort(ref[r])[::-1][:12]
        np.testing.assert_allclose(scores[r], want, rtol=1e-5)
        np.testing.assert_allclose(ref[r][ids[r]], want, rtol=1e-5)
    assert cat.content_nearest(seeds, 10 * N_ITEMS)[1].shape == (3, N_ITEMS)  # at most every item
    log = ChangeLog(repo)
    twin = (tables.item_dense[7] * 10).tolist()  # an added item made the seed's nearest
    log.append(tables, add=[_item(dense=twin)])
    cat = log.follow(cat)
    assert cat.content_nearest(np.array([7]), 3)[1][0][0] == N_ITEMS
