"""The user tower's inputs for any schema (serving.data.tower): widths, order, sequence means, the cold user."""

from __future__ import annotations

import numpy as np

from serving.data.assembly import ContextColumns
from serving.data.tower import tower_inputs, tower_widths
from tests.unit.data_fakes import DEMO_SCHEMA, SCHEMA, FakeContext, random_contexts, random_tables


def _expected(t, rows, contexts, emb):
    """Row by row, the contract's layout written out plainly."""
    cats, denses = [], []
    for r, c in zip(rows, contexts, strict=True):
        ctx = SCHEMA.context
        cats.append([*t.user_cat[r], *[c.cat.get(f, 0) for f in ctx.categorical]])
        means = []
        for name, spec in ctx.sequences.items():
            items = [i for i in np.asarray(c.sequences.get(name, []), np.int64) if i >= 0][-spec.max_len:]
            means += list(emb[items].mean(axis=0)) if items else [0.0] * emb.shape[1]
        denses.append([*t.user_num[r], *[c.num.get(f, 0.0) for f in ctx.numeric], *t.user_vec[r], *means])
    return np.array(cats, np.int64), np.array(denses, np.float32)


def test_layout_and_means_match_the_contract_row_by_row() -> None:
    t = random_tables(0)
    contexts = random_contexts(t, 25, seed=1)
    rows = np.random.default_rng(2).integers(0, t.n_users + 1, 25)
    emb = np.random.default_rng(3).normal(size=(t.n_items, 6)).astype(np.float32)
    got = tower_inputs(t, rows, contexts, emb)
    cat, dense = _expected(t, rows, contexts, emb)
    assert got["user_cat"].dtype == np.int64 and got["user_dense"].dtype == np.float32
    assert got["user_cat"].shape == (25, 2 + 2) and got["user_dense"].shape == (25, 1 + 1 + 12 + 6 * 2)
    assert np.array_equal(got["user_cat"], cat)
    np.testing.assert_allclose(got["user_dense"], dense, rtol=1e-5, atol=1e-6)
    widths = tower_widths(SCHEMA, 6)
    assert len(widths["cat"]) == got["user_cat"].shape[1]
    assert widths["sequences"] == ["context.recent", "context.cart"]


def test_context_columns_give_the_same_inputs_as_encoded_contexts() -> None:
    t = random_tables(4)
    contexts = random_contexts(t, 10, seed=5)
    emb = np.random.default_rng(6).normal(size=(t.n_items, 3)).astype(np.float32)
    rows = np.arange(10)
    a = tower_inputs(t, rows, contexts, emb)
    b = tower_inputs(t, rows, ContextColumns.of_contexts(SCHEMA, contexts), emb)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_cold_user_without_context_is_zeros_and_recent_items_change_the_input() -> None:
    t = random_tables(7)
    emb = np.random.default_rng(8).normal(size=(t.n_items, 4)).astype(np.float32)
    empty = tower_inputs(t, np.array([t.n_users]), [FakeContext()], emb)
    assert not empty["user_cat"].any() and not empty["user_dense"].any()
    seen = tower_inputs(t, np.array([t.n_users]), [FakeContext(sequences={"recent": np.array([3, 5])})], emb)
    np.testing.assert_allclose(seen["user_dense"][0, -8:-4], emb[[3, 5]].mean(axis=0), rtol=1e-6)
    assert not seen["user_dense"][0, -4:].any()  # the other sequence (cart) stays empty


def test_without_embeddings_the_sequence_blocks_are_left_out_and_the_demo_is_todays_layout() -> None:
    t = random_tables(9, schema=DEMO_SCHEMA)
    got = tower_inputs(t, np.arange(5), [FakeContext()] * 5, None)
    assert np.array_equal(got["user_cat"], t.user_cat[:5])  # region, age_bucket, device
    assert np.array_equal(got["user_dense"], t.user_vec[:5])  # the interest vector


def test_an_input_the_schema_gives_no_column_is_one_constant_column() -> None:
    from kernels import get_crosser
    from serving.data.assembly import assemble_features, request_side
    from serving.data.features import FeatureSpec, resolve
    from serving.data.schema import parse_schema
    from serving.data.tower import CONSTANT_COLUMN

    bare = parse_schema("items: {id: i, categorical: [kind]}\nusers: {id: u}\nimpressions: {user: u, item: i, label: y}")
    t = random_tables(0, schema=bare)
    rows = np.arange(5)
    got = tower_inputs(t, rows, [FakeContext()] * 5, None)
    assert got["user_cat"].shape == (5, 1) and got["user_dense"].shape == (5, 1)
    assert not got["user_cat"].any() and not got["user_dense"].any()
    assert tower_widths(bare, 4) == {"cat": [CONSTANT_COLUMN], "dense": [CONSTANT_COLUMN], "sequences": [],
                                     "embedding_dim": 4}
    plan = resolve(FeatureSpec(cat=["item.kind"], dense=[]), t)
    side = request_side(t, rows, [FakeContext()] * 5, plan)
    x = assemble_features(t, plan, side, rows, rows, get_crosser("numpy"))
    assert x.cat.shape == (5, 1) and x.dense.shape == (5, 1) and x.dense.dtype == np.float32 and not x.dense.any()
