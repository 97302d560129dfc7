"""The Serve application end to end over HTTP: real Ray Serve, real Triton, real FAISS."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.config import Settings
from serving.pipeline.assemble import create_pipeline
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import use_live_scenarios
from serving.schemas import RankRequest
from serving.triton.client import TritonEndpoint
from serving.triton.inprocess import InProcessClient

pytestmark = pytest.mark.integration


def _rank(url: str, payload: object, **kw: object) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{url}/v1/rank", content=body, headers={"content-type": "application/json"}, timeout=30, **kw)


def _check_items(items: list[dict], k: int) -> list[int]:
    ids = [it["item_id"] for it in items]
    scores = [it["score"] for it in items]
    assert len(ids) <= k
    assert len(set(ids)) == len(ids), "items must be unique"
    assert scores == sorted(scores, reverse=True), "items must be sorted by score"
    assert all(0.0 <= s <= 1.0 for s in scores), "ranker scores are click probabilities"
    return ids


def test_recall_path_answers_v1_contract(rankserve_url: str, n_items: int) -> None:
    r = _rank(rankserve_url, {"user_id": 42, "k": 20, "exclude": [5, 6], "request_id": "abc"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "abc"
    assert body["recall"] == "faiss" and body["degraded"] is False
    assert body["model"]["name"] == "ranker" and body["model"]["version"] >= 1
    ids = _check_items(body["items"], 20)
    assert len(ids) == 20 and not {5, 6} & set(ids)
    assert all(0 <= i < n_items for i in ids)
    assert set(body["timings_ms"]) >= {"recall", "cross", "rank", "total"}
    assert "cold_start" not in body


def test_given_candidates_are_respected(rankserve_url: str) -> None:
    cands = [17, 99, 3, 250, 99, 1024]
    r = _rank(rankserve_url, {"user_id": 7, "k": 10, "candidates": cands, "exclude": [3]})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = _check_items(body["items"], 10)
    assert body["recall"] == "given"
    assert sorted(ids) == sorted({17, 99, 250, 1024})


def test_same_answer_twice(rankserve_url: str) -> None:
    a = _rank(rankserve_url, {"user_id": 1234, "k": 50}).json()
    b = _rank(rankserve_url, {"user_id": 1234, "k": 50}).json()
    assert a["items"] == b["items"]
    assert a["request_id"] != b["request_id"]  # generated ids are unique


def test_unknown_user_takes_cold_start_path(rankserve_url: str) -> None:
    r = _rank(rankserve_url, {"user_id": 10**15, "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["cold_start"] is True and len(r.json()["items"]) == 5


BAD = [
    (b"{not json", 400, "body"),
    (b"[]", 400, "body"),
    ({"k": 5}, 422, "user_id"),
    ({"user_id": "42"}, 422, "user_id"),  # the demo's ids are integers
    ({"user_id": 1, "k": 0}, 422, "k"),
    ({"user_id": 1, "k": 1001}, 422, "k"),
    ({"user_id": 1, "candidates": list(range(2001))}, 422, "candidates"),
    ({"user_id": 1, "candidates": [1, "two"]}, 422, "candidates[1]"),
    ({"user_id": 1, "candidates": [1, 2.5]}, 400, "candidates[1]"),
    ({"user_id": 1, "context": {"weather": "rain"}}, 422, "context.weather"),
    ({"user_id": 1, "model": "no-such-model"}, 404, "model"),
    ({"user_id": 1, "timeout_ms": -5}, 422, "timeout_ms"),
    ({"user_id": 1, "unexpected": True}, 422, "unexpected"),
    (b'{"user_id": 1, "exclude": [' + b"1," * 200_000 + b"1]}", 413, "body"),
]


@pytest.mark.parametrize(("payload", "status", "field"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_get_4xx_and_server_stays_ready(rankserve_url: str, payload: object, status: int,
                                                     field: str) -> None:
    r = _rank(rankserve_url, payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"] and err["code"]
    assert httpx.get(f"{rankserve_url}/readyz", timeout=30).status_code == 200
    assert _rank(rankserve_url, {"user_id": 3, "k": 3}).status_code == 200


def test_unknown_candidates_are_dropped_and_counted(rankserve_url: str) -> None:
    r = _rank(rankserve_url, {"user_id": 1, "candidates": [1, 2, 10**9, -1], "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_candidates"] == 2 and {it["item_id"] for it in r.json()["items"]} == {1, 2}
    r = _rank(rankserve_url, {"user_id": 1, "candidates": [-1]})
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["unknown_candidates"] == 1


def test_unknown_paths_and_methods_use_the_error_shape(rankserve_url: str) -> None:
    r = httpx.get(f"{rankserve_url}/v2/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{rankserve_url}/v1/rank", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_operations_endpoints(rankserve_url: str) -> None:
    assert httpx.get(f"{rankserve_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{rankserve_url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    models = httpx.get(f"{rankserve_url}/v1/models", timeout=30).json()
    names = {m["name"] for m in models["models"]}
    assert {"ranker", "user_tower"} <= names
    for m in models["models"]:
        assert any(v["state"] == "READY" for v in m["versions"])
    text = httpx.get(f"{rankserve_url}/metrics").text
    for name in ("rankserve_request_latency_ms", "rankserve_batch_requests", "rankserve_stage_latency_ms",
                 "rankserve_queue_depth", "rankserve_model_version"):
        assert name in text


def test_concurrent_requests_are_batched(rankserve_url: str) -> None:
    def one(u: int) -> int:
        return _rank(rankserve_url, {"user_id": u, "k": 10}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(100, 164)))
    assert codes == [200] * 64
    text = httpx.get(f"{rankserve_url}/metrics").text
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("rankserve_batch_requests_")}
    assert vals["rankserve_batch_requests_sum"] / vals["rankserve_batch_requests_count"] > 1.0


def test_served_scores_equal_in_process_model(rankserve_url: str, settings: Settings) -> None:
    """The HTTP answer equals the same pipeline run in-process on the TorchScript models."""
    registry = ModelRegistry(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    assert use_live_scenarios(pipeline, registry) == {}  # the scenarios the server serves
    for payload in ({"user_id": 77, "k": 30}, {"user_id": 5, "k": 8, "candidates": list(range(100, 160))}):
        served = _rank(rankserve_url, payload).json()
        prep = pipeline.prepare(RankRequest.model_validate(payload))
        (local,), _ = asyncio.run(pipeline.run_batch([prep]))
        assert [it["item_id"] for it in served["items"]] == [it.item_id for it in local.items]
        np.testing.assert_allclose([it["score"] for it in served["items"]], [it.score for it in local.items],
                                   rtol=1e-5, atol=1e-6)


def test_past_deadline_answers_504_and_stays_ready(rankserve_url: str) -> None:
    r = _rank(rankserve_url, {"user_id": 9, "k": 5, "timeout_ms": 1})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert httpx.get(f"{rankserve_url}/readyz", timeout=30).status_code == 200


def test_full_queue_sheds_with_503_and_retry_after(rankserve_url: str, settings: Settings, triton) -> None:  # noqa: ANN001
    """A second application whose queue bound is zero sheds every request, fast and in shape."""
    from ray import serve

    from serving.app import build_app

    shed = settings.model_copy(update={"max_queued_requests": 0})
    serve.run(build_app(shed, TritonEndpoint(triton.grpc_url, triton.key)), name="shed", route_prefix="/shed")
    try:
        r = _rank(f"{rankserve_url}/shed", {"user_id": 1})
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert "rankserve_shed_total 1.0" in httpx.get(f"{rankserve_url}/shed/metrics", timeout=30).text
    finally:
        serve.delete("shed")
    assert _rank(rankserve_url, {"user_id": 1, "k": 2}).status_code == 200


def test_readme_api_example_runs_as_written(rankserve_url: str) -> None:
    """The README's curl body is accepted and the answer has the README's fields (docs cannot drift)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## API (v1)"):]
    body = json.loads(re.search(r"-d '(\{.*?\})'", section, re.S).group(1))  # type: ignore[union-attr]
    shown = re.search(r"```json\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    r = _rank(rankserve_url, body)
    assert r.status_code == 200, r.text
    got = r.json()
    for key in re.findall(r'"(\w+)":', shown):
        assert key in got or any(key in (it if isinstance(it, dict) else {}) for it in
                                 [got.get("model"), got.get("timings_ms"), *(got.get("items") or [])]), key
    assert got["request_id"] == body["request_id"] and len(got["items"]) == body["k"]
