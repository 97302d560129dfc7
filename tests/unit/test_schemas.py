"""Every limit of the v1 request schema, with the status and the field of each refusal."""

from __future__ import annotations

import json

import pytest

from serving.config import Settings
from serving.errors import InvalidArgumentError, PayloadTooLargeError, RankserveError, ValidationError
from serving.schemas import RankResponse, ScoredItem, parse_rank_request

S = Settings(max_candidates=5, max_k=50, max_exclude=3, max_timeout_ms=1000, default_timeout_ms=500, max_body_bytes=2048)


def _parse(payload: object) -> object:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_rank_request(body, S)


def test_minimal_request_takes_defaults() -> None:
    req = _parse({"user_id": 42})
    assert req.user_id == 42 and req.k is None and req.candidates is None and req.exclude == []


def test_full_request() -> None:
    req = _parse({"user_id": 1, "k": 3, "candidates": [1, 2], "exclude": [5], "request_id": "abc",
                  "model": "ranker", "timeout_ms": 100, "scenario": "similar", "item_id": 7, "shop_id": 9})
    assert (req.k, req.candidates, req.exclude, req.request_id, req.model, req.timeout_ms) == (
        3, [1, 2], [5], "abc", "ranker", 100)
    assert (req.scenario, req.item_id, req.shop_id) == ("similar", 7, 9)


BAD = [
    (b"{", InvalidArgumentError, 400, "body"),
    (b"\xff\xfe", InvalidArgumentError, 400, "body"),
    (b"[1, 2]", InvalidArgumentError, 400, "body"),
    (b'"user"', InvalidArgumentError, 400, "body"),
    ({}, ValidationError, 422, "user_id"),
    ({"user_id": "42"}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": True}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": 1.5}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": None}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": 2**63}, ValidationError, 422, "user_id"),
    ({"user_id": 1, "k": 0}, ValidationError, 422, "k"),
    ({"user_id": 1, "k": -3}, ValidationError, 422, "k"),
    ({"user_id": 1, "k": 51}, ValidationError, 422, "k"),
    ({"user_id": 1, "k": "5"}, InvalidArgumentError, 400, "k"),
    ({"user_id": 1, "candidates": []}, ValidationError, 422, "candidates"),
    ({"user_id": 1, "candidates": [1, 2, 3, 4, 5, 6]}, ValidationError, 422, "candidates"),
    ({"user_id": 1, "candidates": "1,2"}, InvalidArgumentError, 400, "candidates"),
    ({"user_id": 1, "candidates": [1, "x"]}, InvalidArgumentError, 400, "candidates[1]"),
    ({"user_id": 1, "candidates": [1, 2**64]}, ValidationError, 422, "candidates[1]"),
    ({"user_id": 1, "exclude": [1, 2, 3, 4]}, ValidationError, 422, "exclude"),
    ({"user_id": 1, "exclude": [None]}, InvalidArgumentError, 400, "exclude[0]"),
    ({"user_id": 1, "timeout_ms": 0}, ValidationError, 422, "timeout_ms"),
    ({"user_id": 1, "timeout_ms": 1001}, ValidationError, 422, "timeout_ms"),
    ({"user_id": 1, "request_id": 7}, InvalidArgumentError, 400, "request_id"),
    ({"user_id": 1, "request_id": "x" * 129}, ValidationError, 422, "request_id"),
    ({"user_id": 1, "model": ""}, ValidationError, 422, "model"),
    ({"user_id": 1, "surprise": 1}, ValidationError, 422, "surprise"),
    ({"user_id": 1, "scenario": ""}, ValidationError, 422, "scenario"),
    ({"user_id": 1, "scenario": 3}, InvalidArgumentError, 400, "scenario"),
    ({"user_id": 1, "item_id": "7"}, InvalidArgumentError, 400, "item_id"),
    ({"user_id": 1, "shop_id": 2**63}, ValidationError, 422, "shop_id"),
    (b'{"user_id": NaN}', InvalidArgumentError, 400, "user_id"),
    (b'{"user_id": 1, "k": Infinity}', InvalidArgumentError, 400, "k"),
    (b"[" * 5000 + b"]" * 5000, PayloadTooLargeError, 413, "body"),
    (json.dumps({"user_id": 1, "exclude": list(range(600))}).encode(), PayloadTooLargeError, 413, "body"),
]


@pytest.mark.parametrize(("payload", "cls", "status", "field"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_are_refused_with_status_and_field(payload: object, cls: type, status: int, field: str) -> None:
    with pytest.raises(RankserveError) as info:
        _parse(payload)
    err = info.value
    assert type(err) is cls
    assert err.http_status == status
    assert err.field == field
    body = err.to_body()
    assert body["error"]["field"] == field and body["error"]["message"]


def test_deep_nesting_within_size_limit_is_a_clean_400() -> None:
    settings = Settings(max_body_bytes=1 << 20)
    with pytest.raises(InvalidArgumentError):
        parse_rank_request(b"[" * 100_000 + b"]" * 100_000, settings)


def test_response_json_shape() -> None:
    r = RankResponse("abc", [ScoredItem(17, 0.83)], "ranker", 3, "faiss", timings_ms={"total": 6.4},
                     scenario="similar", scenario_version=2)
    assert r.to_json() == {
        "request_id": "abc", "items": [{"item_id": 17, "score": 0.83}], "model": {"name": "ranker", "version": 3},
        "recall": "faiss", "degraded": False, "catalogue_version": 0, "scenario": "similar", "scenario_version": 2,
        "timings_ms": {"total": 6.4},
    }
    r.cold_start = True
    assert r.to_json()["cold_start"] is True
