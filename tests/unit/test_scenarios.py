"""Scenarios without a server: the file's validation (every refusal with its reason, nothing
written), versions, live pointer and rollback, each demo scenario's candidate rule in the real
pipeline on fake Triton, the request's context and limits, scenarios sharing a ranker batched
into the same Triton calls, a replica's scenario follower following applies, and the metrics' label."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.config import Settings
from serving.errors import ModelNotFoundError, ScenarioNotFoundError, ScenarioRefusedError, ValidationError
from serving.metrics import Metrics, merge_expositions
from serving.pipeline.orchestration import RankPipeline
from serving.pipeline.scenario import Scenario, ScenarioSpec
from serving.repository.followers import ScenarioFollower
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore, parse_scenario
from serving.schemas import RankRequest, RankResponse
from tests.unit.fakes import SPEC, ScoringClient, make_pipeline, make_repo
from training.build import DEMO_SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
SHOP, CATEGORY = 1, 0  # columns of item_cat

SIMILAR = """
name: similar
sources:
  - {kind: item_to_item, count: 30}
filters: {exclude_seed: true}
ranker: ranker
limits: {default_k: 8, max_k: 20, timeout_ms: 500, max_timeout_ms: 1000, max_candidates: 30}
"""
SHOP_PAGE = """
name: shop
sources:
  - {kind: popular, within: request_shop, count: 100}
filters: {restrict: request_shop}
ranker: ranker
diversity: {per: category, max_items: 2}
limits: {default_k: 6, max_k: 10}
"""
BLEND = """
name: blend
sources:
  - {kind: user_to_item, count: 20}
  - {kind: popular, count: 10}
merge: {order: interleave}
ranker: ranker
limits: {max_k: 30}
"""


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def _apply(p: RankPipeline, repo: Path, *texts: str) -> ScenarioStore:
    store = ScenarioStore(repo)
    for text in texts:
        store.apply(text, p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    served, refused = store.live(p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    assert refused == {}
    p.set_scenarios(served)
    return store


def _run(p: RankPipeline, reqs: list[dict]) -> list:
    preps = [p.prepare(RankRequest.model_validate(r)) for r in reqs]
    return asyncio.run(p.run_batch(preps))[0]


# -- the file --------------------------------------------------------------------------------
def test_the_demo_scenarios_are_valid_and_the_docs_show_home_as_built() -> None:
    settings = Settings()
    for path in DEMO_SCENARIOS:
        spec = parse_scenario(path.read_text())
        assert spec.name == path.stem
        sc = Scenario.resolve(spec, 1, settings, ["ranker"], {"shop": 2000, "category": 30})
        assert sc.max_k <= settings.max_k and sc.source_total >= sc.max_k or spec.given is not None
    page = (ROOT / "docs" / "reference" / "scenarios.md").read_text()
    shown = re.search(r"```yaml\n(.*?)```", page[page.index("## The file"):], re.S)
    assert shown is not None and shown.group(1) == DEMO_SCENARIOS[0].read_text()
    assert settings.max_k >= 1000  # home's max_k is the global one


@pytest.mark.parametrize(("text", "reason"), [
    ("name: x\nsources: [{kind: telepathy, count: 3}]\nranker: ranker\n", "unknown source kind 'telepathy'"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\ncolour: red\n", "unknown key 'colour'"),
    ("name: x\nsources: [{kind: popular, count: 30, within: all, cap: 2}]\nranker: ranker\n",
     "unknown key 'sources[0].cap'"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: nope\n", "unknown model 'nope'"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: user_tower\n", "unknown model 'user_tower'"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\nlimits: {max_k: 5000}\n",
     "above the server's global limit (1000)"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\nlimits: {max_k: 20, timeout_ms: 99999}\n",
     "timeout_ms: 99999 is above the server's global limit"),
    ("name: x\nsources: [{kind: popular, count: 0}]\nranker: ranker\n", "sources[0].count"),
    ("name: x\nsources: [{kind: popular, count: 3000}]\nranker: ranker\n", "above the server's max_candidates"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\nlimits: {default_k: 9, max_k: 5}\n",
     "default_k (9) must be <= max_k (5)"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\nlimits: {max_k: 50}\n",
     "sources give at most 30 candidates"),
    ("name: x\nsources: [{kind: popular, within: request_shop, count: 90}]\nranker: ranker\n"
     "filters: {restrict: request_shop}\ndiversity: {per: shop, max_items: 3}\nlimits: {default_k: 5, max_k: 10}\n",
     "every candidate is of one shop"),
    ("name: x\nsources: [{kind: popular, count: 90}]\nranker: ranker\ndiversity: {per: category, max_items: 1}\n"
     "limits: {default_k: 5, max_k: 10}\n", "the catalogue has 8 category value(s)"),
    ("name: x\nsources: [{kind: user_to_item, within: 'request:brand', count: 30}]\nlimits: {max_k: 20}\n",
     "unknown item group(s) ['brand']"),
    ("name: x\nsources: [{kind: item_to_item, within: everywhere, count: 30}]\nlimits: {max_k: 20}\n",
     "sources[0].within"),
    ("name: x\nsources: [{kind: popular, count: 30}]\nranker: ranker\nlimits: {max_k: 20}\nname: y\n",
     "key 'name' is given twice"),
    ("name: x\nsources: [{kind: popular, count: 30]\n", "the YAML does not parse at line 2"),
    ("- just\n- a list\n", "a scenario file is a mapping"),
    ("name: Home Feed\nsources: [{kind: popular, count: 30}]\nranker: ranker\n", "name: String should match"),
    ("name: x\nsources: []\nranker: ranker\n", "sources: List should have at least 1 item"),
    ("name: x\nsources: [{kind: popular, count: 30}, {kind: popular, count: 5}]\nranker: ranker\n",
     "the same source is listed twice"),
    ("name: x\nsources: [{kind: popular, count: '30'}]\nranker: ranker\n", "sources[0].count: Input should be"),
])
def test_a_bad_scenario_file_is_refused_with_the_reason_and_nothing_changes(repo: Path, text: str,
                                                                            reason: str) -> None:
    p = make_pipeline(repo, ScoringClient())
    store = _apply(p, repo, SIMILAR)
    before = (store.listing(), store.live_path.read_text())
    for action in (store.check, store.apply):
        with pytest.raises(ScenarioRefusedError) as info:
            action(text, p.settings, ModelRegistry(repo), p.catalogue.group_counts())
        assert reason in info.value.message, info.value.message
    assert (store.listing(), store.live_path.read_text()) == before


def test_settings_lower_than_a_scenario_refuse_it_where_it_is_applied(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient(), max_k=15, default_k=10)
    with pytest.raises(ScenarioRefusedError, match=r"limits.max_k: 20 is above the server's global limit \(15\)"):
        ScenarioStore(repo).apply(SIMILAR, p.settings, ModelRegistry(repo), p.catalogue.group_counts())


def test_a_scenario_that_names_no_ranker_is_ranked_by_the_data_sets_default_ranker(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    store = _apply(p, repo, "name: x\nsources: [{kind: popular, count: 30}]\nlimits: {max_k: 20}\n")
    assert [s["name"] for s in store.listing()] == ["x"]
    assert p.scenarios["x"].spec.ranker == "ranker"


def test_a_scenario_without_max_k_may_return_what_its_sources_and_diversity_rule_can_fill(repo: Path) -> None:
    """max_k left out: the global one, or fewer when the sources or the diversity rule cannot fill
    it; an explicit max_k they cannot fill is still refused."""
    p = make_pipeline(repo, ScoringClient())
    args = (p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    store = ScenarioStore(repo)
    few = store.apply("name: few\nsources: [{kind: popular, count: 30}]\n", *args)
    assert (few.max_k, few.default_k) == (30, min(30, p.settings.default_k))
    spread = store.apply("name: spread\nsources: [{kind: user_to_item, count: 300}]\n"
                         "diversity: {per: category, max_items: 1}\n", *args)
    assert (spread.max_k, spread.default_k) == (8, 8)  # 8 categories, one item each
    given = store.apply("name: given\nsources: [{kind: given}, {kind: popular, count: 30}]\n", *args)
    assert given.max_k == p.settings.max_k  # the caller may give any number
    with pytest.raises(ScenarioRefusedError, match="default_k 50 / max_k 30.*max_k left out is 30"):
        store.apply("name: x\nsources: [{kind: popular, count: 30}]\nlimits: {default_k: 50}\n", *args)
    with pytest.raises(ScenarioRefusedError, match="sources give at most 30 candidates"):
        store.apply("name: x\nsources: [{kind: popular, count: 30}]\nlimits: {max_k: 40}\n", *args)
    served, _ = store.live(*args)
    p.set_scenarios(served)
    (r,) = _run(p, [{"user_id": 3, "scenario": "spread"}])
    cats = p.catalogue.tables.item_cat[[it.item_id for it in r.items], CATEGORY].tolist()
    assert len(cats) == 8 and len(set(cats)) == 8


def test_versions_live_pointer_and_rollback(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    store = _apply(p, repo, SIMILAR, SHOP_PAGE, SIMILAR.replace("default_k: 8", "default_k: 9"))
    assert store.listing() == [{"name": "shop", "live": 1, "versions": [1], "history": []},
                               {"name": "similar", "live": 2, "versions": [1, 2], "history": [1]}]
    assert store.text("similar", 1) == SIMILAR  # kept verbatim
    args = (p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    back = store.rollback("similar", *args)
    assert (back.version, back.default_k) == (1, 8)
    assert store.listing()[1] == {"name": "similar", "live": 1, "versions": [1, 2], "history": []}
    with pytest.raises(ScenarioRefusedError, match="no earlier version"):
        store.rollback("similar", *args)
    with pytest.raises(ScenarioRefusedError, match="unknown scenario 'nope'"):
        store.rollback("nope", *args)
    assert store.apply(SIMILAR, *args).version == 3  # versions are never reused


def test_applies_at_the_same_moment_each_get_their_own_version(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    store = ScenarioStore(repo)
    args = (p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    got: list[int] = []
    threads = [threading.Thread(target=lambda k=k: got.append(
        store.apply(SIMILAR.replace("default_k: 8", f"default_k: {k}"), *args).version)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    (row,) = store.listing()
    assert row["versions"] == list(range(1, 9)) and len(row["history"]) == 7 and row["live"] not in row["history"]


# -- serving a scenario -----------------------------------------------------------------------
def test_similar_ranks_the_seeds_neighbours_for_the_user_and_never_the_seed(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    _apply(p, repo, SIMILAR)
    tables = p.catalogue.tables
    for seed in (3, 77, 150):
        (r,) = _run(p, [{"user_id": 4, "scenario": "similar", "item_id": seed}])
        ids = [it.item_id for it in r.items]
        assert isinstance(r, RankResponse) and (r.scenario, r.scenario_version) == ("similar", 1)
        assert len(ids) == 8 and seed not in ids and r.recall == "faiss"  # the index's label
        sim = tables.item_dense @ tables.item_dense[seed]  # the fake item tower: item dense padded
        near = set(np.argsort(-sim, kind="stable")[:31].tolist()) - {seed}
        assert set(ids) <= near
        scores = [it.score for it in r.items]
        assert scores == sorted(scores, reverse=True)


def test_shop_gives_only_the_shops_items_with_its_diversity_rule(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    _apply(p, repo, SHOP_PAGE)
    item_cat = p.catalogue.tables.item_cat
    (r,) = _run(p, [{"user_id": 9, "scenario": "shop", "shop_id": 5}])
    ids = np.asarray([it.item_id for it in r.items])
    assert len(ids) == 6 and set(item_cat[ids, SHOP]) == {5}
    cats = item_cat[ids, CATEGORY].tolist()
    assert max(cats.count(c) for c in cats) <= 2
    # without the rule the same candidates would have given a category three times or more
    shop = p.scenarios["shop"]
    p.set_scenarios({"shop": dataclasses.replace(shop, spec=shop.spec.model_copy(update={"diversity": None}))})
    (plain,) = _run(p, [{"user_id": 9, "scenario": "shop", "shop_id": 5, "k": 10}])
    plain_cats = item_cat[[it.item_id for it in plain.items], CATEGORY].tolist()
    assert max(plain_cats.count(c) for c in plain_cats) > 2


def test_nearest_sources_within_a_scope_search_that_scopes_items_exactly(repo: Path) -> None:
    """``within`` on user_to_item and item_to_item: the scope's own nearest items, not the few of
    the catalogue-wide nearest that a restriction would leave."""
    p = make_pipeline(repo, ScoringClient())
    _apply(p, repo, "name: mine\nsources: [{kind: user_to_item, within: request_shop, count: 5}]\n"
                    "filters: {restrict: request_shop}\nlimits: {default_k: 5, max_k: 5}\n",
           "name: near\nsources: [{kind: item_to_item, within: 'seed:shop', count: 4}]\n"
           "filters: {exclude_seed: true}\nlimits: {default_k: 4, max_k: 4}\n")
    tables, emb = p.catalogue.tables, p.recall.index.emb
    shop = tables.item_cat[:, SHOP]
    members = np.flatnonzero(shop == 5)
    assert members.size > 5
    (r,) = _run(p, [{"user_id": 9, "scenario": "mine", "shop_id": 5}])
    user = np.pad(tables.user_dense[9], (0, emb.shape[1] - tables.user_dense.shape[1]))
    want = members[np.argsort(-(emb[members] @ user), kind="stable")[:5]]
    assert sorted(it.item_id for it in r.items) == sorted(want.tolist()) and r.recall == "exact"
    seed = int(members[0])
    (s,) = _run(p, [{"user_id": 9, "scenario": "near", "item_id": seed}])
    others = members[members != seed]
    want = others[np.argsort(-(emb[others] @ emb[seed]), kind="stable")[:4]]
    assert sorted(it.item_id for it in s.items) == sorted(want.tolist())
    assert p.scenarios["mine"].spec.needs == {"shop_id"} and p.scenarios["near"].spec.needs == {"item_id"}


def test_popularity_blend_interleaves_and_dedupes(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient(fail={"ranker"}))  # degraded: the merged order shows
    _apply(p, repo, BLEND)
    (r,) = _run(p, [{"user_id": 2, "scenario": "blend", "k": 30, "exclude": [0]}])
    ids = [it.item_id for it in r.items]
    _, popular = p.catalogue.popular(12)
    user = np.pad(p.catalogue.tables.user_dense[2], (0, 4))
    _, near = p.recall.index.search(user[None], 25)
    want: list[int] = []
    for a, b in zip(near[0][near[0] != 0][:20].tolist(), popular[popular != 0][:10].tolist() + [None] * 10,
                    strict=True):
        want += [x for x in (a, b) if x is not None and x not in want]
    assert r.degraded and ids == want[:30] and len(set(ids)) == len(ids)


def test_request_context_and_limits_are_checked_per_scenario(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    _apply(p, repo, SIMILAR, SHOP_PAGE)
    cases = [({"scenario": "nope"}, ScenarioNotFoundError, "scenario"),
             ({"scenario": "similar"}, ValidationError, "item_id"),
             ({"scenario": "similar", "item_id": 10**6}, ValidationError, "item_id"),
             ({"scenario": "shop"}, ValidationError, "shop_id"),
             ({"scenario": "shop", "shop_id": 99}, ValidationError, "shop_id"),
             ({"scenario": "similar", "item_id": 1, "k": 21}, ValidationError, "k"),
             ({"scenario": "similar", "item_id": 1, "timeout_ms": 2000}, ValidationError, "timeout_ms"),
             ({"scenario": "similar", "item_id": 1, "candidates": [1, 2]}, ValidationError, "candidates"),
             ({"scenario": "similar", "item_id": 1, "model": "nope"}, ModelNotFoundError, "model")]
    for extra, cls, field in cases:
        with pytest.raises(cls) as info:
            p.prepare(RankRequest.model_validate({"user_id": 1, **extra}))
        assert info.value.field == field, (extra, info.value.message)
    for extra, message in (({"k": 21}, "k must be in [1, 20] for scenario 'similar', got 21"),
                           ({"timeout_ms": 2000}, "timeout_ms must be in [1, 1000] for scenario 'similar', got 2000"),
                           ({"candidates": [1]}, "scenario 'similar' takes no candidates")):
        with pytest.raises(ValidationError, match=re.escape(message)):
            p.prepare(RankRequest.model_validate({"user_id": 1, "scenario": "similar", "item_id": 1, **extra}))
    prep = p.prepare(RankRequest(user_id=1, scenario="similar", item_id=1), arrival=100.0)
    assert (prep.k, prep.deadline, prep.seed, prep.cost) == (8, 100.5, 1, 30)
    home = p.prepare(RankRequest(user_id=1, k=500, shop_id=3))  # context a scenario does not use is ignored
    assert home.scenario is not None and home.scenario.version == 0 and home.k == 500


def test_a_requests_model_overrides_the_scenarios_ranker(repo: Path) -> None:
    (repo / "ranker_b" / "1").mkdir(parents=True)
    (repo / "ranker_b" / "config.pbtxt").write_text('name: "ranker_b"\n')
    (repo / "ranker_b" / "1" / "meta.json").write_text(json.dumps({"cross_spec": json.loads(SPEC.to_json())}))
    client = ScoringClient()
    p = make_pipeline(repo, client)
    _apply(p, repo, SIMILAR)
    a, b = _run(p, [{"user_id": 1, "scenario": "similar", "item_id": 5},
                    {"user_id": 1, "scenario": "similar", "item_id": 5, "model": "ranker_b"}])
    assert (a.model_name, b.model_name) == ("ranker", "ranker_b")
    assert {c[0] for c in client.calls} == {"ranker", "ranker_b"}


def test_scenarios_that_share_a_ranker_are_batched_into_the_same_triton_calls(repo: Path) -> None:
    """Three scenarios in one batch: one ranker group, so Triton sees as few calls as the rows need,
    the same as if every request had been of one scenario."""
    client = ScoringClient()
    p = make_pipeline(repo, client)
    _apply(p, repo, SIMILAR, SHOP_PAGE)
    reqs = [{"user_id": 1, "k": 5}, {"user_id": 2, "scenario": "similar", "item_id": 7},
            {"user_id": 3, "scenario": "shop", "shop_id": 2}, {"user_id": 4, "scenario": "similar", "item_id": 9}]
    preps = [p.prepare(RankRequest.model_validate(r)) for r in reqs]
    out, stats = asyncio.run(p.run_batch(preps))
    ranker_calls = [c for c in client.calls if c[0] == "ranker"]
    rows = sum(c[2] for c in ranker_calls)
    assert rows == stats.rows and stats.group_scenarios == [3]
    assert len(ranker_calls) == -(-rows // 64)  # chunks of max_rows: no call per scenario
    assert [r.scenario for r in out] == ["home", "similar", "shop", "similar"]
    assert [c[0] for c in client.calls].count("user_tower") == 1


def test_the_follower_follows_applies_and_keeps_what_it_cannot_serve(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    registry = ModelRegistry(repo)
    store = ScenarioStore(repo)
    watcher = ScenarioFollower(p.settings, registry, p.cell, store)
    args = (p.settings, registry, p.catalogue.group_counts())
    assert watcher.poll() is False and set(p.scenarios) == {"home"}
    store.apply(SIMILAR, *args)
    assert watcher.poll() is True and p.scenarios["similar"].version == 1
    assert watcher.poll() is False
    # a version this replica's settings refuse (max_k above its own) leaves v1 serving
    wide = Settings(model_repository=repo, max_k=50)
    wider = SIMILAR.replace("max_k: 20", "max_k: 40").replace("30", "40")
    store.apply(wider, wide, registry, p.catalogue.group_counts())
    p.settings = p.settings.model_copy(update={"max_k": 30})
    watcher.settings = p.settings
    assert watcher.poll() is True
    assert p.scenarios["similar"].version == 1 and "similar" in watcher.refused
    store.rollback("similar", *args)
    watcher.poll()
    assert p.scenarios["similar"].version == 1 and watcher.refused == {}


def test_metrics_carry_the_scenario_and_merge_across_replicas() -> None:
    texts = []
    for n in (2, 3):
        m = Metrics()
        m.requests.labels("200", "similar", "3").inc(n)
        m.requests.labels("404", "none", "").inc()
        m.latency_ms.labels("similar", "3").observe(4.0)
        m.scenario_version.labels("similar").set(n)
        m.batch_scenarios.observe(n)
        texts.append(m.render().decode())
    merged = merge_expositions(texts)
    assert 'rankserve_requests_total{scenario="similar",status="200",version="3"} 5.0' in merged
    assert 'rankserve_requests_total{scenario="none",status="404",version=""} 2.0' in merged
    assert 'rankserve_request_latency_ms_count{scenario="similar",version="3"} 2.0' in merged
    assert 'rankserve_scenario_version{scenario="similar"} 3.0' in merged  # the largest, not a sum
    assert 'rankserve_ranker_call_scenarios_bucket{le="1.0"} 0.0' in merged


def test_the_spec_says_what_context_a_request_needs() -> None:
    assert parse_scenario(SIMILAR).needs_seed and not parse_scenario(SIMILAR).needs_shop
    assert parse_scenario(SHOP_PAGE).needs_shop and not parse_scenario(SHOP_PAGE).needs_seed
    cat = ScenarioSpec.from_mapping({"name": "c", "ranker": "r", "sources": [
        {"kind": "popular", "count": 5, "within": "seed_category"}]})
    assert cat.needs_seed and not cat.needs_shop


def test_scenario_freshness_reports_the_first_answer_and_every_replica() -> None:
    """Two replicas: one serves v2 at once, the other answers v1 for 0.8 s more. The first answer
    carrying v2 comes 0.1 s after the apply; every replica serves it 0.8 s after it."""
    from benchmarks.freshness import first_answer_delays
    from benchmarks.scenario_freshness import last_old_answer_delays, scenario_freshness_report

    seen = [(9.9, 1), (10.1, 2), (10.3, 1), (10.8, 1), (10.9, 2), (11.0, 2)]
    written = [(2, 10.0)]
    assert first_answer_delays(written, seen) == [pytest.approx(0.1)]
    assert last_old_answer_delays(written, seen) == [pytest.approx(0.8)]
    assert last_old_answer_delays([(1, 9.0)], seen) == [0.0]  # nothing older than v1 answered
    raw = {"delays": [0.1, 0.3], "everywhere": [0.8, 2.5], "scenarios": ["home", "shop"], "requests": 100,
           "failed": 0, "rps": 50.0, "concurrency": 8, "gap_s": 0.5}
    rep = scenario_freshness_report(raw, target_s=2.0)
    assert (rep["max_s"], rep["everywhere"]["max_s"], rep["meets_target"]) == (0.3, 2.5, False)
    assert rep["by_scenario"]["home"] == {"p50_s": 0.1, "p90_s": 0.1, "max_s": 0.1, "everywhere_max_s": 0.8}
    assert scenario_freshness_report({**raw, "everywhere": [0.8, 1.5]})["meets_target"]
    assert not scenario_freshness_report({**raw, "everywhere": [0.8, 1.5], "failed": 1})["meets_target"]
