"""Pipeline logic on plain classes: top-k, exclude, given candidates, cold start, degrading, deadlines.

Triton is replaced here by small deterministic clients (``tests/unit/fakes.py``; this is a unit
test of the stage logic; tests/integration runs the same pipeline against the real Triton).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from serving.errors import DeadlineExceededError, ModelNotFoundError, ValidationError
from serving.pipeline.orchestration import RankPipeline
from serving.pipeline.routing import Traffic
from serving.pipeline.topk import top_k
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse
from tests.unit.fakes import N_ITEMS, SPEC, D, E, ScoringClient, make_pipeline, make_repo


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def _pipeline(repo: Path, client: ScoringClient, **overrides: object) -> RankPipeline:
    return make_pipeline(repo, client, **overrides)


def _run(p: RankPipeline, reqs: list[dict]) -> list:
    preps = [p.prepare(RankRequest.model_validate(r)) for r in reqs]
    return asyncio.run(p.run_batch(preps))[0]


def _expected_order(p: RankPipeline, user: int, items: np.ndarray) -> np.ndarray:
    u = p.catalogue.tables.user_dense[user]
    s = p.catalogue.tables.item_dense[items] @ u
    return items[np.lexsort((np.arange(items.size), -s))]


def test_given_candidates_ranked_by_model_score(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient())
    cands = [5, 17, 3, 250, 99, 17, 42]
    (r,) = _run(p, [{"user_id": 7, "k": 4, "candidates": cands, "exclude": [42]}])
    assert isinstance(r, RankResponse) and r.recall == "given" and not r.degraded
    ids = [it.item_id for it in r.items]
    uniq = np.array([5, 17, 3, 250, 99])
    assert ids == _expected_order(p, 7, uniq)[:4].tolist()
    scores = [it.score for it in r.items]
    assert scores == sorted(scores, reverse=True)


def test_recall_batch_is_one_tower_call_and_excludes(repo: Path) -> None:
    client = ScoringClient()
    p = _pipeline(repo, client)
    reqs = [{"user_id": u, "k": 10, "exclude": [1, 2, 3]} for u in range(6)] + [{"user_id": 3, "candidates": [9, 8]}]
    out = _run(p, reqs)
    assert [c[0] for c in client.calls].count("user_tower") == 1
    rows = sum(c[2] for c in client.calls if c[0] == "ranker")
    assert rows == 6 * 40 + 2
    for r in out[:6]:
        ids = [it.item_id for it in r.items]
        assert r.recall == "faiss" and len(ids) == 10 and len(set(ids)) == 10 and not {1, 2, 3} & set(ids)
    assert [it.item_id for it in out[6].items] == _expected_order(p, 3, np.array([9, 8])).tolist()


def test_ranker_calls_are_split_at_max_rows(repo: Path) -> None:
    client = ScoringClient()
    p = _pipeline(repo, client)
    _run(p, [{"user_id": 1, "candidates": list(range(150))}])
    assert [c[2] for c in client.calls if c[0] == "ranker"] == [64, 64, 22]


def test_unknown_user_is_cold_start(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient())
    (r,) = _run(p, [{"user_id": 10**12, "k": 5}])
    assert r.cold_start and len(r.items) == 5


def test_unknown_candidates_are_dropped_and_counted_and_unknown_models_refused(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient())
    (r,) = _run(p, [{"user_id": 1, "candidates": [1, N_ITEMS, -1, 7, 1]}])
    assert sorted(it.item_id for it in r.items) == [1, 7] and r.unknown_candidates == 2
    assert r.to_json()["unknown_candidates"] == 2
    (r,) = _run(p, [{"user_id": 1, "k": 3}])
    assert r.unknown_candidates is None and "unknown_candidates" not in r.to_json()
    with pytest.raises(ModelNotFoundError):
        p.prepare(RankRequest(user_id=1, model="nope"))


LIMITS = [({"k": 51}, "k", "k must be in [1, 50], got 51"),
          ({"candidates": []}, "candidates", "candidates must not be empty (omit it to use recall)"),
          ({"candidates": [1, 2, 3, 4, 5, 6]}, "candidates", "at most 5 candidates per request, got 6"),
          ({"exclude": [1, 2, 3, 4]}, "exclude", "at most 3 exclude ids, got 4"),
          ({"timeout_ms": 1001}, "timeout_ms", "timeout_ms must be in [1, 1000], got 1001")]


@pytest.mark.parametrize(("extra", "field", "message"), LIMITS, ids=[f[1] + str(i) for i, f in enumerate(LIMITS)])
def test_limits_are_checked_once_against_the_scenario(repo: Path, extra: dict, field: str, message: str) -> None:
    """The built-in home's limits are the global ones: the messages name no scenario (one that
    sets a lower limit is named, test_scenarios.py). For HTTP and gRPC alike: both prepare here."""
    p = _pipeline(repo, ScoringClient(), max_candidates=5, max_k=50, max_exclude=3, max_timeout_ms=1000,
                  default_timeout_ms=500)
    with pytest.raises(ValidationError) as info:
        p.prepare(RankRequest.model_validate({"user_id": 1, **extra}))
    assert (info.value.field, info.value.message, info.value.http_status) == (field, message, 422)
    at_limit = {"k": 50, "candidates": [1, 2, 3, 4, 5], "exclude": [1, 2, 3], "timeout_ms": 1000}[field]
    assert p.prepare(RankRequest.model_validate({"user_id": 1, field: at_limit})).user_id == 1


def test_ranker_down_degrades_to_recall_scores(repo: Path) -> None:
    client = ScoringClient(fail={"ranker"})
    p = _pipeline(repo, client)
    (r,) = _run(p, [{"user_id": 2, "k": 5}])
    assert r.degraded and r.recall == "faiss" and len(r.items) == 5
    assert [c[0] for c in client.calls].count("ranker") == 2  # one retry, then degrade
    emb = np.pad(p.catalogue.tables.user_dense[2], (0, E - D))
    sc, ids = p.recall.index.search(emb[None], 5)
    assert [it.item_id for it in r.items] == ids[0].tolist()
    # the API's score stays in [0, 1]; the recall score rides beside it
    assert all(0.0 <= it.score <= 1.0 for it in r.items) and r.items[0].score == 1.0
    np.testing.assert_allclose([it.recall_score for it in r.items], sc[0], rtol=1e-6)
    assert r.to_json()["items"][0]["recall_score"] == r.items[0].recall_score


def test_everything_down_degrades_to_popular(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient(fail={"ranker", "user_tower"}))
    (r,) = _run(p, [{"user_id": 2, "k": 3}])
    assert r.degraded and r.recall == "popular"
    assert [it.item_id for it in r.items] == p.recall.popular(3)[1].tolist()
    assert all(0.0 <= it.score <= 1.0 for it in r.items) and all(it.recall_score is not None for it in r.items)


def test_expired_request_fails_alone(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient())
    ok = p.prepare(RankRequest(user_id=1, k=3))
    late = p.prepare(RankRequest(user_id=2, k=3, timeout_ms=1), arrival=time.monotonic() - 1)
    out, stats = asyncio.run(p.run_batch([late, ok]))
    assert isinstance(out[0], DeadlineExceededError) and isinstance(out[1], RankResponse)
    assert stats.requests == 2


def test_canary_routes_by_stable_user_hash(repo: Path) -> None:
    (repo / "ranker" / "2").mkdir()
    (repo / "ranker" / "2" / "meta.json").write_text(json.dumps({"cross_spec": json.loads(SPEC.to_json())}))
    reg = ModelRegistry(repo)
    reg.set_traffic("ranker", Traffic(live=1, canary_version=2, canary_percent=25))
    p = _pipeline(repo, ScoringClient())
    prepared = [p.prepare(RankRequest(user_id=u)) for u in range(2000)]
    versions = [r.version for r in prepared]
    assert [r.role for r in prepared] == ["canary" if v == 2 else "live" for v in versions]  # the served log's role
    share = versions.count(2) / len(versions)
    assert 0.2 < share < 0.3
    assert versions == [p.prepare(RankRequest(user_id=u)).version for u in range(2000)]


@pytest.mark.parametrize("n", [0, 1, 5, 50])
def test_top_k_orders_and_breaks_ties_by_position(n: int) -> None:
    rng = np.random.default_rng(n)
    s = rng.integers(0, 5, n).astype(np.float32)
    for k in (1, 3, 100):
        got = top_k(s, k)
        want = np.lexsort((np.arange(n), -s))[:k]
        assert got.tolist() == want.tolist()


def test_an_exclude_list_beyond_the_index_search_limit_leaves_fewer_candidates_not_an_error(repo: Path) -> None:
    """The index searches at most ``max_k`` (faiss-gpu: 2048) items; recall_n plus a long exclude
    list beyond that is clamped, and the answer is still k items, none excluded."""
    p = _pipeline(repo, ScoringClient())
    assert p.recall.index.max_k == 64 and p.settings.recall_n == 40
    _, ids = p.recall.search(np.pad(p.catalogue.tables.user_dense[4], (0, E - D))[None], 500)
    assert ids.shape == (1, 64)
    exclude = ids[0][:50].tolist()  # most of what the search can return
    (r,) = _run(p, [{"user_id": 4, "k": 10, "exclude": exclude}])
    got = [it.item_id for it in r.items]
    assert isinstance(r, RankResponse) and len(got) == 10 and not set(got) & set(exclude)


def test_recall_from_another_index_is_labelled_with_its_kind(repo: Path) -> None:
    from serving.index.torch_exact import TorchExactIndex
    from serving.pipeline.assemble import make_caller, make_recall

    p = _pipeline(repo, ScoringClient())
    index = TorchExactIndex(np.pad(p.catalogue.tables.item_dense, ((0, 0), (0, E - D))))  # the fake tower's space
    recall = make_recall(p.settings, p.repository, p.catalogue, make_caller(p.settings, ScoringClient()), 1,
                         index=index)
    p.cell.publish(lambda state: state.replace(recall=recall))
    (r,) = _run(p, [{"user_id": 4, "k": 5}])
    assert r.recall == "torch_exact" and not r.degraded and len(r.items) == 5


@pytest.mark.parametrize(("payload", "field"), [
    ({"user_id": "42"}, "user_id"),
    ({"user_id": 1, "candidates": [1, "x"]}, "candidates[1]"),
    ({"user_id": 1, "exclude": ["x"]}, "exclude[0]"),
    ({"user_id": 1, "item_id": "7", "scenario": "home"}, "item_id"),
])
def test_ids_of_the_other_kind_than_the_data_set_s_are_refused_naming_the_field(repo: Path, payload: dict,
                                                                                 field: str) -> None:
    p = _pipeline(repo, ScoringClient())
    with pytest.raises(ValidationError, match="must be an integer") as info:
        p.prepare(RankRequest(**payload))
    assert info.value.field == field and info.value.http_status == 422


def test_a_context_the_schema_does_not_declare_is_refused_naming_the_field(repo: Path) -> None:
    p = _pipeline(repo, ScoringClient())
    with pytest.raises(ValidationError) as info:
        p.prepare(RankRequest(user_id=1, context={"weather": "rain"}))
    assert info.value.field == "context.weather" and info.value.http_status == 422
    with pytest.raises(ValidationError) as info:
        p.prepare(RankRequest(user_id=1, context={"shop": [1]}))
    assert info.value.field == "context.shop"
