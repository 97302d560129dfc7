"""The gRPC wire format: messages <-> the HTTP API's payloads and answers, errors <-> statuses,
and the generated code is what ranker.proto gives today."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from serving import grpc_api
from serving.errors import ERROR_TABLE, OverloadedError, PayloadTooLargeError, ValidationError
from serving.feedback.events import validate_events
from serving.proto import ranker_pb2
from serving.proto.generate import generate
from serving.schemas import RankResponse, ScoredItem, validate_rank_request

ROOT = Path(__file__).resolve().parents[2]


def test_only_fields_that_are_set_reach_the_payload() -> None:
    assert grpc_api.request_payload(ranker_pb2.RankRequest(), 1024) == {}
    msg = ranker_pb2.RankRequest(user_id=0, k=5, candidates=[3, 1], exclude=[9], request_id="r1", model="ranker",
                                 timeout_ms=250)
    assert grpc_api.request_payload(msg, 1024) == {"user_id": 0, "k": 5, "candidates": [3, 1], "exclude": [9],
                                                   "request_id": "r1", "model": "ranker", "timeout_ms": 250}
    ctx = ranker_pb2.RankRequest(user_id=1, scenario="similar", item_id=0, shop_id=12)
    assert grpc_api.request_payload(ctx, 1024) == {"user_id": 1, "scenario": "similar", "item_id": 0, "shop_id": 12}


def test_messages_get_the_http_apis_validation_and_its_field_names() -> None:
    """The schema's checks; the limits (k, candidates, exclude, timeout_ms against settings and
    scenario) are the pipeline's, for both protocols (tests/unit/test_pipeline.py)."""
    with pytest.raises(ValidationError, match="user_id is required") as err:
        validate_rank_request(grpc_api.request_payload(ranker_pb2.RankRequest(k=3), 1024))
    assert err.value.field == "user_id"
    for msg, fld in ((ranker_pb2.RankRequest(user_id=1, k=0), "k"),
                     (ranker_pb2.RankRequest(user_id=1, timeout_ms=-1), "timeout_ms"),
                     (ranker_pb2.RankRequest(user_id=1, request_id="x" * 129), "request_id")):
        with pytest.raises(ValidationError) as err:
            validate_rank_request(grpc_api.request_payload(msg, 1 << 20))
        assert err.value.field == fld
    req = validate_rank_request(grpc_api.request_payload(ranker_pb2.RankRequest(user_id=7), 1024))
    assert req.user_id == 7 and req.k is None and req.candidates is None and req.exclude == []


def test_an_oversized_message_is_refused_before_validation() -> None:
    msg = ranker_pb2.RankRequest(user_id=1, exclude=range(100_000))
    with pytest.raises(PayloadTooLargeError, match="limit") as err:
        grpc_api.request_payload(msg, 256 * 1024)
    assert err.value.field == "request"


def test_an_answer_becomes_the_same_content_as_its_json() -> None:
    res = RankResponse(request_id="abc", items=[ScoredItem(17, 0.83), ScoredItem(3, 0.5)], model_name="ranker",
                       model_version=3, recall="faiss", cold_start=True, timings_ms={"rank": 4.12345, "total": 6.4},
                       scenario="shop", scenario_version=4)
    msg = grpc_api.response_message(res)
    body = res.to_json()
    assert (msg.scenario, msg.scenario_version) == (body["scenario"], body["scenario_version"]) == ("shop", 4)
    assert msg.request_id == body["request_id"] and msg.recall == body["recall"]
    assert [(it.item_id, it.score) for it in msg.items] == [(it["item_id"], it["score"]) for it in body["items"]]
    assert (msg.model.name, msg.model.version) == (body["model"]["name"], body["model"]["version"])
    assert dict(msg.timings_ms) == body["timings_ms"]
    assert msg.cold_start and not msg.degraded
    assert ranker_pb2.RankResponse.FromString(msg.SerializeToString()) == msg


def test_errors_carry_the_tables_grpc_status_and_the_field() -> None:
    for cls, (_, grpc_name) in ERROR_TABLE.items():
        code, details, metadata = grpc_api.error_status(cls("why", field="k"))
        assert code == grpc.StatusCode[grpc_name] and details == "why"
        assert (grpc_api.ERROR_CODE_KEY, cls.code) in metadata and (grpc_api.ERROR_FIELD_KEY, "k") in metadata
    _, _, metadata = grpc_api.error_status(OverloadedError("busy", retry_after_s=1))
    assert ("retry-after", "1") in metadata and all(k != grpc_api.ERROR_FIELD_KEY for k, _ in metadata)


def test_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the code")
    for fresh in generate(tmp_path):
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: python -m serving.proto.generate"


def test_string_ids_and_the_context_travel_in_their_own_fields() -> None:
    msg = ranker_pb2.RankRequest(user_id_str="u-1", item_id_str="sku-9", candidates_str=["sku-1", "sku-2"],
                                 exclude_str=["sku-3"], context_json='{"device": "ios", "recent": ["sku-4"]}')
    assert grpc_api.request_payload(msg, 1024) == {
        "user_id": "u-1", "item_id": "sku-9", "candidates": ["sku-1", "sku-2"], "exclude": ["sku-3"],
        "context": {"device": "ios", "recent": ["sku-4"]}}
    with pytest.raises(ValidationError) as info:
        grpc_api.request_payload(ranker_pb2.RankRequest(user_id=1, user_id_str="u-1"), 1024)
    assert info.value.field == "user_id"
    with pytest.raises(ValidationError) as info:
        grpc_api.request_payload(ranker_pb2.RankRequest(user_id=1, context_json="{"), 1024)
    assert info.value.field == "context"
    res = RankResponse("r", [ScoredItem("sku-1", 0.5), ScoredItem(7, 0.25)], "ranker", 1, "given",
                       unknown_candidates=2)
    out = grpc_api.response_message(res)
    assert [(i.item_id, i.item_id_str) for i in out.items] == [(0, "sku-1"), (7, "")]
    assert out.unknown_candidates == 2 and not grpc_api.response_message(
        RankResponse("r", [], "ranker", 1, "faiss")).HasField("unknown_candidates")


def test_events_messages_get_the_http_calls_payload_and_validation() -> None:
    ev = ranker_pb2.Event
    msg = ranker_pb2.EventsRequest(events=[ev(request_id="r1", item_id=0, type="click"),
                                           ev(request_id="r2", item_id_str="sku-1", type="order", ts=1.5e9),
                                           ev(request_id="r3", item_id=4, type="cart", ts_str="2026-01-02T03:04:05Z")])
    payload = grpc_api.events_payload(msg, 1 << 20)
    assert payload == {"events": [{"request_id": "r1", "item_id": 0, "type": "click"},
                                  {"request_id": "r2", "item_id": "sku-1", "type": "order", "ts": 1.5e9},
                                  {"request_id": "r3", "item_id": 4, "type": "cart", "ts": "2026-01-02T03:04:05Z"}]}
    assert [e.item_id for e in validate_events(payload)] == [0, "sku-1", 4]
    for bad, fld in ((ev(request_id="r", item_id=1, item_id_str="a", type="click"), "events[1].item_id"),
                     (ev(request_id="r", item_id=1, type="click", ts=1.0, ts_str="2026-01-01"), "events[1].ts")):
        with pytest.raises(ValidationError) as err:
            grpc_api.events_payload(ranker_pb2.EventsRequest(events=[ev(request_id="r", item_id=1, type="click"),
                                                                     bad]), 1 << 20)
        assert err.value.field == fld
    for bad, fld in ((ev(item_id=1, type="click"), "events[0].request_id"), (ev(request_id="r", type="click"),
                                                                            "events[0].item_id"),
                     (ev(request_id="r", item_id=1), "events[0].type")):  # proto3: empty is "not given"
        with pytest.raises(ValidationError) as err:
            validate_events(grpc_api.events_payload(ranker_pb2.EventsRequest(events=[bad]), 1 << 20))
        assert err.value.field == fld and "is required" in err.value.message
    with pytest.raises(ValidationError) as err:
        validate_events(grpc_api.events_payload(ranker_pb2.EventsRequest(), 1 << 20))
    assert err.value.field == "events"
    with pytest.raises(PayloadTooLargeError):
        grpc_api.events_payload(ranker_pb2.EventsRequest(events=[ev(request_id="r" * 100, item_id=1)] * 20), 1024)
