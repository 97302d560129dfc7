"""Scenarios on the running server (real Triton, Ray Serve, FAISS): each demo scenario serves its
candidate rule over HTTP and gRPC; unknown scenarios and missing context are refused naming the
field; scenarios sharing the ranker are batched into the same Triton calls; a new version applied
with ``rankserve scenarios apply`` from another process goes live under load with 0 failed
requests, asserted on the scenario version each answer carries (every answer obeys the version it
names), and rolls back; bad files are refused with the reason and change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml

from serving.pipeline.features import FeatureTables
from serving.proto import ranker_pb2, ranker_pb2_grpc
from serving.repository.scenarios import ScenarioStore
from tests.load import Load
from tests.waiting import wait_for, wait_for_answers

pytestmark = pytest.mark.integration
SHOP, CATEGORY = 1, 0  # columns of item_cat


def _rank(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/rank", json={"timeout_ms": 5000, **body}, timeout=30)  # the demo scenarios allow up to 5 s


def _cli(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
           "RANKSERVE_DATA_DIR": str(settings.data_dir)}
    return subprocess.run([sys.executable, "-m", "serving.cli", "scenarios", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _served(url: str) -> dict[str, int]:
    body = httpx.get(f"{url}/v1/scenarios", timeout=30).json()
    return {row["name"]: row["version"] for row in body["scenarios"]}


def _big_shops(tables: FeatureTables, n: int, at_least: int = 20) -> list[int]:
    """``n`` shops with at least ``at_least`` items: enough to fill k under the diversity rule."""
    shops, counts = np.unique(tables.item_cat[:, SHOP], return_counts=True)
    return [int(s) for s in shops[counts >= at_least][:n]]


def test_each_demo_scenario_serves_its_candidate_rule(settings, rankserve_url: str) -> None:
    tables = FeatureTables.load(settings.marketplace_path)
    listing = httpx.get(f"{rankserve_url}/v1/scenarios", timeout=30).json()
    rows = {r["name"]: r for r in listing["scenarios"]}
    assert listing["default"] == "home" and {"home", "similar", "shop"} <= set(rows)
    assert rows["similar"]["needs"] == ["item_id"] and rows["shop"]["needs"] == ["shop_id"]
    home = _rank(rankserve_url, user_id=5).json()
    assert (home["scenario"], home["scenario_version"], len(home["items"])) == ("home", 1, 20)
    for seed in (11, 4321, 40000):
        r = _rank(rankserve_url, user_id=7, scenario="similar", item_id=seed)
        assert r.status_code == 200, r.text
        body = r.json()
        ids = [it["item_id"] for it in body["items"]]
        assert (body["scenario"], body["scenario_version"], len(ids)) == ("similar", 1, 12)
        assert seed not in ids and body["recall"] == "content" and not body["degraded"]
        shops = tables.item_cat[ids, SHOP].tolist()
        assert max(shops.count(s) for s in shops) <= 3  # the diversity rule
        # neighbours of the seed (similar.yaml: space content): closer to it in content than a random item is
        dense = tables.item_dense
        sims = dense[ids] @ dense[seed]
        assert float(np.median(sims)) > float(np.quantile(dense[np.arange(0, dense.shape[0], 97)] @ dense[seed], 0.99))
    for shop in _big_shops(tables, 3):
        body = _rank(rankserve_url, user_id=3, scenario="shop", shop_id=shop, k=12).json()
        ids = [it["item_id"] for it in body["items"]]
        assert (body["scenario"], len(ids)) == ("shop", 12) and set(tables.item_cat[ids, SHOP]) == {shop}
        cats = tables.item_cat[ids, CATEGORY].tolist()
        assert max(cats.count(c) for c in cats) <= 4


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"scenario": "cart"}, 404, "scenario"),
    ({"scenario": "similar"}, 422, "item_id"),
    ({"scenario": "similar", "item_id": 10**9}, 422, "item_id"),
    ({"scenario": "shop"}, 422, "shop_id"),
    ({"scenario": "shop", "shop_id": 10**9}, 422, "shop_id"),
    ({"scenario": "similar", "item_id": 1, "k": 51}, 422, "k"),
    ({"scenario": "shop", "shop_id": 1, "candidates": [1, 2]}, 422, "candidates"),
    ({"scenario": "similar", "item_id": 1, "model": "nope"}, 404, "model"),
])
def test_unknown_scenarios_and_missing_context_are_refused_naming_the_field(rankserve_url: str, settings,
                                                                            body: dict, status: int,
                                                                            field: str) -> None:
    r = _rank(rankserve_url, user_id=1, **body)
    assert r.status_code == status and r.json()["error"]["field"] == field, r.text
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = ranker_pb2_grpc.RankerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Rank(ranker_pb2.RankRequest(user_id=1, **body), timeout=30)
        trailing = dict(info.value.trailing_metadata() or ())
        assert trailing.get("rankserve-error-field") == field
        res = stub.Rank(ranker_pb2.RankRequest(user_id=1, scenario="similar", item_id=42), timeout=30)
        assert (res.scenario, res.scenario_version, len(res.items)) == ("similar", 1, 12)
        assert 42 not in [it.item_id for it in res.items]


def test_scenarios_sharing_the_ranker_are_batched_together_at_triton(settings, rankserve_url: str) -> None:
    """Concurrent requests of three scenarios: the service counts, per batch, how many scenarios
    the ranker's Triton calls held; some held more than one."""
    tables = FeatureTables.load(settings.marketplace_path)
    shops = _big_shops(tables, 8)

    def metric() -> tuple[float, float]:
        text = httpx.get(f"{rankserve_url}/metrics", timeout=30).text
        vals = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                if ln.startswith("rankserve_ranker_call_scenarios_")}
        return vals.get('rankserve_ranker_call_scenarios_bucket{le="1.0"}', 0.0), \
            vals.get("rankserve_ranker_call_scenarios_count", 0.0)

    one_before, all_before = metric()
    bodies = [({"scenario": "home"}, {"scenario": "similar", "item_id": 100 + i},
               {"scenario": "shop", "shop_id": shops[i % len(shops)]})[i % 3] for i in range(120)]
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda ib: _rank(rankserve_url, user_id=ib[0], **ib[1]).status_code,
                              enumerate(bodies)))
    assert codes == [200] * len(bodies)
    one_after, all_after = metric()
    mixed = (all_after - all_before) - (one_after - one_before)
    print(f"ranker groups: {all_after - all_before:.0f}, of which held 2+ scenarios: {mixed:.0f}")
    assert mixed >= 1


def _version_text(settings: Any, name: str, **limits: int) -> str:
    store = ScenarioStore(settings.model_repository)
    data = yaml.safe_load(store.text(name, 1))
    data["limits"].update(limits)
    return str(yaml.safe_dump(data, sort_keys=False))


def test_apply_under_load_goes_live_with_no_failed_request_and_rolls_back(settings, rankserve_url: str,
                                                                         tmp_path: Path) -> None:
    tables = FeatureTables.load(settings.marketplace_path)
    shops = _big_shops(tables, 20)
    lines: list[dict[str, Any]] = []
    for u in range(60):
        lines.append({"user_id": u, "scenario": "similar", "item_id": 1000 + 7 * u, "timeout_ms": 5000})
        lines.append({"user_id": u, "scenario": "shop", "shop_id": shops[u % len(shops)], "timeout_ms": 5000})
        lines.append({"user_id": u, "timeout_ms": 5000})
    k_of = {("similar", 1): 12, ("shop", 1): 10, ("similar", 2): 7, ("shop", 2): 6, ("home", 1): 20}
    try:
        with Load(rankserve_url, lines, tmp_path / "load") as load:
            wait_for_answers(rankserve_url, 30)
            for name, k in (("similar", 7), ("shop", 6)):
                path = tmp_path / f"{name}.yaml"
                path.write_text(_version_text(settings, name, default_k=k))
                out = _cli(settings, "apply", str(path))
                assert out.returncode == 0, out.stderr[-500:]
                assert json.loads(out.stdout.strip().splitlines()[-1]) == {"scenario": name, "version": 2,
                                                                             "live": True}
                _wait_for_served(rankserve_url, name, 2)
            wait_for_answers(rankserve_url, 30)
            back = _cli(settings, "rollback", "similar")
            assert back.returncode == 0 and json.loads(back.stdout.strip().splitlines()[-1])["version"] == 1, \
                back.stderr
            _wait_for_served(rankserve_url, "similar", 1)
            wait_for_answers(rankserve_url, 30)
            summary, rows = load.finish()
    finally:
        _cli(settings, "rollback", "shop")  # leave the session's scenarios as built
    assert summary["failures"] == 0, summary
    seen: dict[str, list[int]] = {}
    for row in rows:
        resp, req = row["response"], row["request"]
        name, version = resp["scenario"], resp["scenario_version"]
        assert name == req.get("scenario", "home")
        assert len(resp["items"]) == k_of[name, version], (name, version, len(resp["items"]))  # obeys its version
        seen.setdefault(name, []).append(version)
    # each answer carried one version; the versions followed apply and rollback in order
    assert _runs(seen["similar"]) == [1, 2, 1] and _runs(seen["shop"]) == [1, 2], {k: _runs(v) for k, v in seen.items()}
    assert set(seen["home"]) == {1}


def _wait_for_served(url: str, name: str, version: int) -> None:
    # a bound for a hang, not a measure (make scenario-freshness measures)
    wait_for(lambda: _served(url)[name] == version, f"the replica serves {name} v{version}", poll_s=0.05)


def _runs(versions: list[int], shortest: int = 4) -> list[int]:
    """The versions in the order the answers arrived, repeats collapsed. With 4 requests in flight,
    one prepared just before a swap may arrive just after one prepared after it: runs shorter than
    ``shortest`` are left out."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    out: list[int] = []
    for v, n in runs:
        if n >= shortest and (not out or out[-1] != v):
            out.append(v)
    return out


@pytest.mark.parametrize(("text", "reason"), [
    ("name: similar\nsources: [{kind: telepathy, count: 50}]\nranker: ranker\n", "unknown source kind 'telepathy'"),
    ("name: similar\nsources: [{kind: item_to_item, count: 50}]\nranker: dcn_v9\nlimits: {max_k: 20}\n",
     "unknown model 'dcn_v9'"),
    ("name: similar\nsources: [{kind: item_to_item, count: 50}]\nranker: ranker\nlimits: {max_k: 20, "
     "max_timeout_ms: 60000}\n", "max_timeout_ms: 60000 is above the server's global limit (30000)"),
    ("name: shop\nsources: [{kind: popular, within: request_shop, count: 500}]\nfilters: {restrict: request_shop}\n"
     "ranker: ranker\ndiversity: {per: shop, max_items: 3}\nlimits: {default_k: 3, max_k: 10}\n",
     "every candidate is of one shop"),
    ("name: similar\nsources: [{kind: item_to_item, count: 50}]\nranker: ranker\nrerank: true\n",
     "unknown key 'rerank'"),
    ("name: similar\nsources: [{kind: item_to_item, count: 50, space: colour}]\nranker: ranker\n",
     "space"),
    ("name: similar\nsources:\n  - kind: item_to_item\n   count: 50\n", "the YAML does not parse"),
])
def test_bad_scenario_files_are_refused_with_the_reason_and_nothing_changes(settings, rankserve_url: str,
                                                                           tmp_path: Path, text: str,
                                                                           reason: str) -> None:
    store = ScenarioStore(settings.model_repository)
    before, served = store.listing(), _served(rankserve_url)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for action in ("validate", "apply"):
        out = _cli(settings, action, str(path))
        assert out.returncode == 3 and "refused" in out.stderr and reason in out.stderr, out.stderr[-500:]
        assert "Traceback" not in out.stderr
    assert store.listing() == before
    time.sleep(0.3)  # a replica would have seen a change by now
    assert _served(rankserve_url) == served
