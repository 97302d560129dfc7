"""The assembly of a ranker's declared features: what each form computes (against its meaning,
row by row), every backend against the reference, the demo's declaration against today's ranker
inputs, and the training table against what serving assembles for the same rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kernels import CrossSpec, available_backends, cross_hash_scalar, get_crosser
from serving.data import assembly
from serving.data.assembly import ContextColumns, RankerInputs, assemble_features, feature_table, request_side
from serving.data.features import DEMO_FEATURES, load_features, parse_features, resolve
from serving.data.tables import DataTables
from serving.pipeline.features import FeatureTables, ranker_inputs
from tests.kernel_cases import run_on_cuda_simulator
from tests.unit.data_fakes import FakeContext, demo_tables, random_contexts, random_tables
from tests.unit.test_features import FULL

BACKENDS_HERE = available_backends(allow_simulator=False)


def _recent(ctx: FakeContext, name: str, max_len: int) -> np.ndarray:
    rows = np.asarray(ctx.sequences.get(name, []), np.int64)
    return rows[rows >= 0][-max_len:]


def _row_by_meaning(t: DataTables, u: int, ctx: FakeContext, i: int) -> tuple[list[int], list[float]]:
    """The FULL declaration's row for user row ``u``, context ``ctx`` and item row ``i``, entry by entry."""
    region, tier = (int(v) for v in t.user_cat[u])
    brand, category, store = (int(v) for v in t.item_cat[i])
    device, channel = ctx.cat.get("device", 0), ctx.cat.get("channel", 0)
    cat = [region, store, channel, cross_hash_scalar(tier, category, 0, 101), cross_hash_scalar(device, region, 1, 7),
           cross_hash_scalar(brand, store, 2, 2**31 - 1)]
    taste, style = t.user_vec[u, :8].astype(np.float64), t.user_vec[u, 8:]
    content, look = t.item_vec[i, :8].astype(np.float64), t.item_vec[i, 8:]
    recent, cart = _recent(ctx, "recent", 5), _recent(ctx, "cart", 3)
    mean_look = t.item_vec[recent, 8:].astype(np.float64).mean(0) if recent.size else np.zeros(4)
    mean_content = t.item_vec[cart, :8].astype(np.float64).mean(0) if cart.size else np.zeros(8)
    dense = [t.item_num[i, 1], t.user_num[u, 0], ctx.num.get("hour", 0.0), taste @ content, *(style * look),
             mean_look @ look, mean_content @ content]
    return cat, [float(v) for v in dense]


def _batch(seed: int, n_requests: int = 12, *, cold: bool = True) -> tuple[DataTables, np.ndarray,
                                                                          list[FakeContext], np.ndarray, np.ndarray]:
    """Tables, requests (user rows, the cold row among them when ``cold``; contexts) and their
    candidate rows."""
    t = random_tables(seed)
    rng = np.random.default_rng(seed)
    users = rng.integers(0, t.n_users + cold, n_requests)
    if cold:
        users[0] = t.n_users  # an unknown user: the cold-start row
    contexts = random_contexts(t, n_requests, seed)
    req_of = np.sort(rng.integers(0, n_requests, 90))
    return t, users, contexts, req_of, rng.integers(0, t.n_items, req_of.shape[0])


def test_each_form_computes_what_it_means() -> None:
    for seed in range(8):
        t, users, contexts, req_of, items = _batch(seed)
        plan = resolve(parse_features(FULL), t)
        out = assemble_features(t, plan, request_side(t, users, contexts, plan), req_of, items, get_crosser("numpy"))
        assert isinstance(out, RankerInputs) and out.cat.dtype == np.int64 and out.dense.dtype == np.float32
        for b in range(req_of.shape[0]):
            cat, dense = _row_by_meaning(t, int(users[req_of[b]]), contexts[req_of[b]], int(items[b]))
            assert out.cat[b].tolist() == cat, (seed, b)
            np.testing.assert_allclose(out.dense[b], dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_every_backend_assembles_as_the_reference(backend: str) -> None:
    for seed in range(5):
        t, users, contexts, req_of, items = _batch(100 + seed, n_requests=40)
        plan = resolve(parse_features(FULL), t)
        side = request_side(t, users, contexts, plan)
        want = assemble_features(t, plan, side, req_of, items, get_crosser("numpy"))
        got = assemble_features(t, plan, side, req_of, items, get_crosser(backend))
        assert np.array_equal(got.cat, want.cat)
        np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)


def test_request_side_columns() -> None:
    t = random_tables(7)
    plan = resolve(parse_features(FULL), t)
    contexts = [FakeContext({"channel": 3}, {"hour": 1.5}, {"recent": np.array([-1, 4, 5, -1, 6, 7, 8, 9, 10])}),
                FakeContext()]
    side = request_side(t, np.array([2, t.n_users]), contexts, plan)
    assert side.q_cat.tolist() == [[*t.user_cat[2].tolist(), 0, 3], [0, 0, 0, 0]]
    assert side.q_num.tolist() == [[t.user_num[2, 0], 1.5], [0.0, 0.0]]
    # user vectors (12), then mean(recent, look): the last 5 known items; mean(cart, content): none
    np.testing.assert_array_equal(side.q_vec[0, :12], t.user_vec[2])
    np.testing.assert_allclose(side.q_vec[0, 12:16], t.item_vec[[6, 7, 8, 9, 10], 8:].mean(0), rtol=1e-6)
    assert side.q_vec[0, 16:].tolist() == [0.0] * 8 and side.q_vec[1].tolist() == [0.0] * 24
    assert side.q_cat.dtype == np.int64 and side.q_num.dtype == np.float32 and side.q_vec.dtype == np.float32


def _impressions(t: DataTables, contexts: list[FakeContext], users: np.ndarray, req_of: np.ndarray,
                 items: np.ndarray) -> pa.Table:
    """Logged rows as a data set stores them: each candidate of each request, its context encoded;
    ``channel`` has no column (absent from every row), an absent ``hour`` is a null."""
    ctx = [contexts[r] for r in req_of]
    return pa.table({
        "user_row": users[req_of], "item_row": items, "label": (items % 3 == 0).astype(np.int8),
        "time": np.arange(req_of.shape[0], dtype=np.int64) * 1000,
        "device": [c.cat.get("device", 0) for c in ctx],
        "hour": pa.array([c.num.get("hour") for c in ctx], pa.float64()),
        "recent": [c.sequences.get("recent", np.zeros(0, np.int64)).tolist() for c in ctx],
        "cart": pa.array([c.sequences["cart"].tolist() if "cart" in c.sequences else None for c in ctx],
                         pa.list_(pa.int64())),
    })


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_training_table_is_what_serving_assembles_row_for_row(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assembly, "_CHUNK_ROWS", 16)  # several chunks
    t, users, contexts, req_of, items = _batch(11, n_requests=20, cold=False)  # a data set logs known users
    contexts = [FakeContext({"device": c.cat.get("device", 0)}, c.num, c.sequences) for c in contexts]
    spec = parse_features(FULL)
    table = feature_table(t, _impressions(t, contexts, users, req_of, items), spec, get_crosser(backend))
    assert table.column_names == ["user_id", "item_id", "time", "cat", "dense", "label"]
    assert table.schema.field("cat").type == pa.list_(pa.int64())
    assert table.schema.field("dense").type == pa.list_(pa.float32())
    # serving: one request per logged answer, its candidates in one batch
    plan = resolve(spec, t)
    served = assemble_features(t, plan, request_side(t, users, contexts, plan), req_of, items, get_crosser(backend))
    assert np.array_equal(np.array(table.column("cat").to_pylist()), served.cat)
    assert np.array_equal(np.array(table.column("dense").to_pylist(), np.float32), served.dense)
    assert table.column("user_id").to_pylist() == t.user_ids[users[req_of]].tolist()
    assert table.column("item_id").to_pylist() == t.item_ids[items].tolist()
    assert table.column("label").to_pylist() == (items % 3 == 0).astype(int).tolist()
    assert table.column("time").to_pylist() == (np.arange(req_of.shape[0]) * 1000).tolist()


def test_context_columns_from_a_table_equal_those_from_contexts() -> None:
    t, users, contexts, req_of, items = _batch(12, n_requests=30)
    contexts = [FakeContext({"device": c.cat.get("device", 0)}, c.num, c.sequences) for c in contexts]
    a = ContextColumns.of_table(t.schema, _impressions(t, contexts, users, np.arange(30), items[:30]))
    b = ContextColumns.of_contexts(t.schema, contexts)
    assert np.array_equal(a.cat, b.cat) and np.array_equal(a.num, b.num)
    for (ao, ar), (bo, br) in zip(a.sequences, b.sequences, strict=True):
        assert np.array_equal(ao, bo) and np.array_equal(ar, br)
    assert max(np.diff(a.sequences[0][0])) <= 5 and (a.sequences[0][1] >= 0).all()


def _demo_feature_tables(seed: int) -> FeatureTables:
    rng = np.random.default_rng(seed)
    users, items = 50, 80
    return FeatureTables(np.stack([rng.integers(1, n + 1, users) for n in (8, 6, 3)], axis=1),
                         rng.normal(size=(users, 16)).astype(np.float32),
                         np.stack([rng.integers(1, n + 1, items) for n in (20, 40, 30, 10)], axis=1),
                         rng.normal(size=(items, 3)).astype(np.float32), rng.normal(size=(items, 16)).astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_demo_declaration_is_todays_ranker_input_layout(backend: str) -> None:
    from training.train import CROSS_SPEC  # the pairs and buckets the demo ranker was trained with

    ft = _demo_feature_tables(3)
    t = demo_tables(ft)
    plan = resolve(load_features(DEMO_FEATURES), t)
    rng = np.random.default_rng(3)
    users = np.append(rng.integers(0, ft.n_users, 9), ft.cold_row)
    req_of = np.repeat(np.arange(10), 37)
    items = rng.integers(0, ft.n_items, req_of.shape[0])
    crosser = get_crosser(backend)
    got = assemble_features(t, plan, request_side(t, users, [FakeContext()] * 10, plan), req_of, items, crosser)
    want = ranker_inputs(ft, users[req_of], items, crosser, CROSS_SPEC)
    assert got.cat.shape == want.cat.shape and got.dense.shape == want.dense.shape
    assert np.array_equal(got.cat, want.cat)
    np.testing.assert_allclose(got.dense, want.dense, rtol=1e-6, atol=1e-6)
    # the embeddings the demo trains: each column's largest code + 1, then the crosses' buckets
    cards = [int(a.max()) + 1 for a in (*ft.user_cat[:-1].T, *ft.item_cat.T)]
    assert plan.cardinalities.tolist() == cards + [CROSS_SPEC.buckets] * CROSS_SPEC.n_pairs


_SIM = """
import numpy as np
from kernels import get_crosser
from serving.data.assembly import assemble_features, request_side
from serving.data.features import DEMO_FEATURES, load_features, parse_features, resolve
from serving.data.tables import DataTables
from serving.pipeline.features import ranker_inputs
from tests.unit.test_feature_assembly import FULL, _batch, _demo_feature_tables
from tests.unit.data_fakes import FakeContext, demo_tables
from kernels.spec import CrossSpec
sim, ref = get_crosser("numba_cuda"), get_crosser("numpy")
t, users, contexts, req_of, items = _batch(5, n_requests=8)
plan = resolve(parse_features(FULL), t)
side = request_side(t, users, contexts, plan)
got, want = (assemble_features(t, plan, side, req_of, items, c) for c in (sim, ref))
assert np.array_equal(got.cat, want.cat)
np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
ft = _demo_feature_tables(4)
dt = demo_tables(ft)
plan = resolve(load_features(DEMO_FEATURES), dt)
users, items = np.arange(6), np.arange(6) * 7
got = assemble_features(dt, plan, request_side(dt, users, [FakeContext()] * 6, plan), np.arange(6), items, sim)
want = ranker_inputs(ft, users, items, ref, CrossSpec(pairs=((0, 0), (1, 3), (2, 2)), buckets=4096, dense_dim=16))
assert np.array_equal(got.cat, want.cat)
np.testing.assert_allclose(got.dense, want.dense, rtol=1e-5, atol=1e-5)
print("sim-ok")
"""


def test_declared_features_on_the_cuda_simulator() -> None:
    run_on_cuda_simulator(_SIM)


def test_demo_versions_are_served_the_plan_of_the_demo_declaration() -> None:
    """A demo ranker version (no features.yaml; its crossing spec in meta.json) is served the plan
    demo_features.yaml resolves to, and FeatureTables is the demo's DataTables."""
    from serving.data.tables import DataTables
    from serving.pipeline.features import cross_spec_plan
    from training.train import CROSS_SPEC

    ft = _demo_feature_tables(5)
    assert isinstance(ft, DataTables) and ft.schema.items.groups == ("shop", "category")
    assert cross_spec_plan(ft, CROSS_SPEC).to_dict() == resolve(load_features(DEMO_FEATURES), ft).to_dict()
    other = CrossSpec(pairs=((2, 0),), buckets=11, dense_dim=16)
    assert cross_spec_plan(ft, other).to_dict() != resolve(load_features(DEMO_FEATURES), ft).to_dict()
