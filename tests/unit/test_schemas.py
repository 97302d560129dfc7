"""The v1 request schema: every refusal of a body's shape, types and ranges with its status and
field, and the one size limit of HTTP bodies and gRPC messages. The limits of settings and
scenario (k, candidates, exclude, timeout_ms) are checked in the pipeline (test_pipeline.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from serving.errors import InvalidArgumentError, PayloadTooLargeError, RankserveError, ValidationError
from serving.http_api import read_body
from serving.schemas import RankResponse, ScoredItem, check_size, parse_rank_request


def _parse(payload: object) -> object:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_rank_request(body)


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
    ({"user_id": True}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": 1.5}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": None}, InvalidArgumentError, 400, "user_id"),
    ({"user_id": 2**63}, ValidationError, 422, "user_id"),
    ({"user_id": ""}, ValidationError, 422, "user_id"),
    ({"user_id": "u" * 257}, ValidationError, 422, "user_id"),
    ({"user_id": 1, "candidates": [1, [2]]}, InvalidArgumentError, 400, "candidates[1]"),
    ({"user_id": 1, "context": []}, InvalidArgumentError, 400, "context"),
    ({"user_id": 1, "k": 0}, ValidationError, 422, "k"),
    ({"user_id": 1, "k": -3}, ValidationError, 422, "k"),
    ({"user_id": 1, "k": "5"}, InvalidArgumentError, 400, "k"),
    ({"user_id": 1, "candidates": "1,2"}, InvalidArgumentError, 400, "candidates"),
    ({"user_id": 1, "candidates": [1, 2**64]}, ValidationError, 422, "candidates[1]"),
    ({"user_id": 1, "exclude": [None]}, InvalidArgumentError, 400, "exclude[0]"),
    ({"user_id": 1, "timeout_ms": 0}, ValidationError, 422, "timeout_ms"),
    ({"user_id": 1, "request_id": 7}, InvalidArgumentError, 400, "request_id"),
    ({"user_id": 1, "request_id": "x" * 129}, ValidationError, 422, "request_id"),
    ({"user_id": 1, "model": ""}, ValidationError, 422, "model"),
    ({"user_id": 1, "surprise": 1}, ValidationError, 422, "surprise"),
    ({"user_id": 1, "scenario": ""}, ValidationError, 422, "scenario"),
    ({"user_id": 1, "scenario": 3}, InvalidArgumentError, 400, "scenario"),
    ({"user_id": 1, "shop_id": 2**63}, ValidationError, 422, "shop_id"),
    (b'{"user_id": NaN}', InvalidArgumentError, 400, "user_id"),
    (b'{"user_id": 1, "k": Infinity}', InvalidArgumentError, 400, "k"),
    (b"[" * 5000 + b"]" * 5000, InvalidArgumentError, 400, "body"),
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
    with pytest.raises(InvalidArgumentError):
        parse_rank_request(b"[" * 100_000 + b"]" * 100_000)


def test_the_size_limit_is_one_check_for_bodies_and_messages() -> None:
    check_size(2048, 2048)
    for kwargs, message, field in (({}, "request body is 2049 bytes, the limit is 2048", "body"),
                                   ({"so_far": True}, "request body exceeds the limit of 2048 bytes", "body"),
                                   ({"what": "request", "field": "request"}, "request is 2049 bytes, the limit is 2048",
                                    "request")):
        with pytest.raises(PayloadTooLargeError) as info:
            check_size(2049, 2048, **kwargs)
        assert (info.value.message, info.value.field, info.value.http_status) == (message, field, 413)


def _request(chunks: list[bytes], declared: int | None) -> tuple[Request, list[int]]:
    """An HTTP request whose body arrives in ``chunks``; the list counts the chunks read."""
    read: list[int] = []

    async def receive() -> dict[str, object]:
        read.append(1)
        return {"type": "http.request", "body": chunks[len(read) - 1], "more_body": len(read) < len(chunks)}

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/rank", "headers": headers}, receive), read


def test_http_refuses_a_body_on_its_declared_length_and_while_it_streams() -> None:
    request, read = _request([b"x" * 1000] * 3, declared=3000)
    with pytest.raises(PayloadTooLargeError, match="request body is 3000 bytes, the limit is 2048"):
        asyncio.run(read_body(request, 2048))
    assert read == []  # refused before a byte was read
    request, read = _request([b"x" * 1000] * 5, declared=None)
    with pytest.raises(PayloadTooLargeError, match="exceeds the limit of 2048 bytes"):
        asyncio.run(read_body(request, 2048))
    assert len(read) == 3  # refused at the chunk that crossed the limit, not after the whole body
    request, _ = _request([b'{"user_id": ', b"1}"], declared=None)
    assert parse_rank_request(asyncio.run(read_body(request, 2048))).user_id == 1


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


@pytest.mark.parametrize("body", [b'{"user_id": ' + b"9" * 5000 + b"}", b'{"user_id": 1, "k": ' + b"1" * 5000 + b"}"])
def test_an_integer_python_will_not_parse_is_a_400_not_a_500(body: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_rank_request(body)
    assert info.value.http_status == 400 and info.value.field == "body"
