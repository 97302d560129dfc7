"""The simulator of users: its click model is the generator's, its drift is seeded and touches only
the drifted regions' category preferences, and a run against a small local server counts every
request, answer and event."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from loadtest.simulate import Drift, SimulationConfig, Tastes, run_simulation
from training.data import MarketConfig, Marketplace, generate

TINY = MarketConfig(n_users=120, n_items=300, impressions_per_user=5, n_shops=12, seed=3)


@pytest.fixture(scope="module")
def mp() -> Marketplace:
    return generate(TINY)


def test_drift_is_seeded_and_moves_every_category_of_a_share_of_regions(mp: Marketplace) -> None:
    a, b = Drift.of(mp, seed=4, share=0.5), Drift.of(mp, seed=4, share=0.5)
    assert a.regions == b.regions and np.array_equal(a.perm, b.perm)
    assert Drift.of(mp, seed=5, share=0.5).perm.tolist() != a.perm.tolist()
    assert len(a.regions) == TINY.n_regions // 2 and all(1 <= r <= TINY.n_regions for r in a.regions)
    assert a.perm[0] == 0 and sorted(a.perm.tolist()) == list(range(TINY.n_categories + 1))
    assert (a.perm[1:] != np.arange(1, TINY.n_categories + 1)).all()
    with pytest.raises(ValueError, match="share"):
        Drift.of(mp, seed=0, share=0.0)


def test_tastes_are_the_generators_truth_until_the_drift(mp: Marketplace) -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, TINY.n_users, 500), rng.integers(0, TINY.n_items, 500)
    drift = Drift.of(mp, seed=1, share=0.5)
    tastes = Tastes(mp, drift)
    truth = 1 / (1 + np.exp(-mp.oracle_logit(users, items).astype(np.float64)))
    np.testing.assert_allclose(tastes.probability(users, items), truth, rtol=1e-6)
    after = tastes.probability(users, items, drifted=True)
    region, category = mp.user_cat[users, 0], mp.item_cat[items, 0]
    moved = np.isin(region, sorted(drift.regions))
    assert moved.any() and (~moved).any()
    np.testing.assert_allclose(after[~moved], truth[~moved], rtol=1e-6)
    logit = np.log(after / (1 - after)) - np.log(truth / (1 - truth))
    want = mp.t1[region, drift.perm[category]] - mp.t1[region, category]
    np.testing.assert_allclose(logit[moved], want[moved], atol=1e-4)


async def _serve(handler_state: dict[str, Any]) -> tuple[web.AppRunner, str]:
    async def rank(request: web.Request) -> web.Response:
        body = await request.json()
        handler_state["ranked"] += 1
        return web.json_response({"request_id": body["request_id"], "model": {"name": "ranker", "version": 7},
                                  "items": [{"item_id": i, "score": 0.5} for i in range(body["k"])]})

    async def events(request: web.Request) -> web.Response:
        body = await request.json()
        handler_state["events"] += len(body["events"])
        assert all(e["type"] == "click" and e["request_id"].startswith("sim-") for e in body["events"])
        return web.json_response({"accepted": len(body["events"])}, status=202)

    app = web.Application()
    app.router.add_post("/v1/rank", rank)
    app.router.add_post("/v1/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_a_run_counts_every_request_answer_and_event(mp: Marketplace) -> None:
    seen = {"ranked": 0, "events": 0}
    cfg = SimulationConfig(rate=60, duration_s=1.5, drift_at_s=0.7, seed=2, k=20, bucket_s=0.5, flush_s=0.1)

    async def main() -> dict[str, Any]:
        runner, url = await _serve(seen)
        try:
            return await run_simulation(url, Tastes(mp, Drift.of(mp, seed=2, share=0.5)), cfg)
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    assert abs(res["started"] - time.time()) < 60
    c = res["counts"]
    assert c["requests_sent"] > 30 and c["answered"] == c["requests_sent"] == seen["ranked"]
    assert c["failed"] == c["overflow"] == 0
    assert c["impressions"] == 20 * c["answered"]
    assert c["clicks"] > 0 and c["events_posted"] == c["clicks"] == c["events_accepted"] == seen["events"]
    assert sum(b["impressions"] for b in res["buckets"]) == c["impressions"]
    assert res["by_model"]["ranker v7"]["clicks"] == c["clicks"]
    assert res["started"] < res["first_answer"]["ranker v7"] < res["started"] + 5  # Unix time
    assert res["drifted_regions"]
    json.dumps(res)


def test_a_stop_ends_a_run_early_and_still_posts_its_events(mp: Marketplace) -> None:
    seen = {"ranked": 0, "events": 0}
    cfg = SimulationConfig(rate=80, duration_s=60, seed=1, k=30, flush_s=30)

    async def main() -> dict[str, Any]:
        runner, url = await _serve(seen)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.8, stop.set)
        try:
            return await run_simulation(url, Tastes(mp, None), cfg, stop=stop)
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    assert res["wall_s"] < 10
    assert res["counts"]["answered"] > 0
    assert res["counts"]["events_accepted"] == res["counts"]["clicks"] == seen["events"]
