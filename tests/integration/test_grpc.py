"""The gRPC API end to end: rankserve.v1.Ranker/Rank through Serve's gRPC proxy, the same answers
and the same errors (as gRPC statuses) as HTTP, and the server healthy after bad input."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest

from serving.config import Settings
from serving.grpc_api import ERROR_CODE_KEY, ERROR_FIELD_KEY
from serving.proto import ranker_pb2, ranker_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(rankserve_url: str, settings: Settings) -> Iterator[ranker_pb2_grpc.RankerStub]:
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield ranker_pb2_grpc.RankerStub(channel)


def test_grpc_answers_as_http_does(stub: ranker_pb2_grpc.RankerStub, rankserve_url: str) -> None:
    res = stub.Rank(ranker_pb2.RankRequest(user_id=42, k=20, exclude=[5, 6], request_id="g1"), timeout=30)
    http = httpx.post(f"{rankserve_url}/v1/rank", json={"user_id": 42, "k": 20, "exclude": [5, 6]}, timeout=30).json()
    assert res.request_id == "g1" and res.recall == "faiss" and not res.degraded and not res.cold_start
    assert (res.model.name, res.model.version) == (http["model"]["name"], http["model"]["version"])
    assert [it.item_id for it in res.items] == [it["item_id"] for it in http["items"]]
    assert [it.score for it in res.items] == pytest.approx([it["score"] for it in http["items"]], rel=1e-6)
    assert len(res.items) == 20 and not {5, 6} & {it.item_id for it in res.items}
    assert set(res.timings_ms) >= {"recall", "cross", "rank", "total"}


def test_grpc_given_candidates_and_cold_start(stub: ranker_pb2_grpc.RankerStub) -> None:
    res = stub.Rank(ranker_pb2.RankRequest(user_id=7, k=10, candidates=[17, 99, 3, 250, 99], exclude=[3]), timeout=30)
    assert res.recall == "given" and sorted(it.item_id for it in res.items) == [17, 99, 250]
    scores = [it.score for it in res.items]
    assert scores == sorted(scores, reverse=True)
    res = stub.Rank(ranker_pb2.RankRequest(user_id=10**15, k=5), timeout=30)
    assert res.cold_start and len(res.items) == 5


BAD = [
    (ranker_pb2.RankRequest(k=5), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
    (ranker_pb2.RankRequest(user_id=1, k=0), grpc.StatusCode.INVALID_ARGUMENT, "k"),
    (ranker_pb2.RankRequest(user_id=1, k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k"),
    (ranker_pb2.RankRequest(user_id=1, candidates=range(2001)), grpc.StatusCode.INVALID_ARGUMENT, "candidates"),
    (ranker_pb2.RankRequest(user_id=1, model="no-such-model"), grpc.StatusCode.NOT_FOUND, "model"),
    (ranker_pb2.RankRequest(user_id=1, timeout_ms=-5), grpc.StatusCode.INVALID_ARGUMENT, "timeout_ms"),
    (ranker_pb2.RankRequest(user_id=1, request_id="x" * 129), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
]


def test_grpc_unknown_candidates_are_dropped_and_counted(stub: ranker_pb2_grpc.RankerStub) -> None:
    res = stub.Rank(ranker_pb2.RankRequest(user_id=1, candidates=[1, 2, 10**9]), timeout=30)
    assert sorted(it.item_id for it in res.items) == [1, 2] and res.unknown_candidates == 1


@pytest.mark.parametrize(("msg", "code", "field"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_grpc_bad_requests_get_their_status_and_field(stub: ranker_pb2_grpc.RankerStub, rankserve_url: str,
                                                      msg: ranker_pb2.RankRequest, code: grpc.StatusCode,
                                                      field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Rank(msg, timeout=30)
    err = info.value
    assert err.code() == code, err.details()
    trailing = dict(err.trailing_metadata() or ())
    assert trailing.get(ERROR_FIELD_KEY) == field and trailing.get(ERROR_CODE_KEY) and err.details()
    assert httpx.get(f"{rankserve_url}/readyz", timeout=30).status_code == 200
    assert len(stub.Rank(ranker_pb2.RankRequest(user_id=3, k=3), timeout=30).items) == 3


def test_grpc_message_over_the_body_limit_is_refused_before_decoding(stub: ranker_pb2_grpc.RankerStub,
                                                                   settings: Settings) -> None:
    """The gRPC server's receive limit is the HTTP body limit: an oversized message is refused by
    gRPC itself (so it carries gRPC's own details, not rankserve's trailing metadata), and the
    server keeps answering."""
    big = ranker_pb2.RankRequest(user_id=1, exclude=range(10**12, 10**12 + 60_000))
    assert big.ByteSize() > settings.max_body_bytes
    with pytest.raises(grpc.RpcError) as info:
        stub.Rank(big, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(settings.max_body_bytes) in info.value.details(), info.value.details()
    assert stub.Rank(ranker_pb2.RankRequest(user_id=1, k=3), timeout=30).items


def test_grpc_deadline_exceeded(stub: ranker_pb2_grpc.RankerStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Rank(ranker_pb2.RankRequest(user_id=11, k=10, timeout_ms=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_readme_grpc_example_runs_as_written(stub: ranker_pb2_grpc.RankerStub, settings: Settings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python snippet, pointed at this session's gRPC port, runs and prints an answer."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### gRPC"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    assert "127.0.0.1:9000" in code
    exec(code.replace("127.0.0.1:9000", f"127.0.0.1:{settings.grpc_port}"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert re.match(r"\[\(\d+, 0\.\d+\)(, \(\d+, 0\.\d+\)){4}\] \d+ \d", printed), printed
