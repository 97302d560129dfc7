"""The served log and the events: the Parquet stream writer (hidden names, rotation by size and by
age, the drain, a full buffer that drops and counts), the served record's columns and types, the
events' validation (every malformed case names its field, nothing stored), and the service
recording its answers and the events posted to it, with their metrics. No server: the real service
on the fake Triton of tests.unit.fakes, the files in a temporary folder."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.config import Settings
from serving.errors import InvalidArgumentError, OverloadedError, ValidationError
from serving.feedback.events import EVENT_SCHEMA, MAX_EVENTS, Event, parse_events, validate_events
from serving.feedback.paths import log_root
from serving.feedback.recorder import FeedbackRecorder
from serving.feedback.served import SERVED_SCHEMA, served_row, served_table
from serving.feedback.writer import ParquetStream
from serving.pipeline.routing import Traffic
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse, ScoredItem
from serving.service import RankService
from tests.unit.fakes import SPEC, ScoringClient, make_pipeline, make_repo
from tests.waiting import metric_sum

_SCHEMA = pa.schema([("n", pa.int64()), ("text", pa.string())])


def _table(rows: Sequence[int]) -> pa.Table:
    return pa.table({"n": pa.array(list(rows), pa.int64()), "text": pa.array([f"row {n:08d}" for n in rows])},
                    schema=_SCHEMA)


def _stream(folder: Path, **kw: Any) -> ParquetStream[int]:
    args: dict[str, Any] = {"capacity_rows": 100_000, "rotate_bytes": 1 << 30, "rotate_s": 3600.0, "flush_s": 0.05,
                            **kw}
    return ParquetStream(folder, "test", "host.1", _SCHEMA, _table, **args)


def _read(folder: Path) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else _SCHEMA.empty_table()


def _until(condition: Any, timeout_s: float = 30.0) -> None:
    """Until ``condition()`` holds (a hang bound, never a measure)."""
    t_end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < t_end, "timed out"
        time.sleep(0.01)


# -- the writer -----------------------------------------------------------------------------------------
def test_rows_are_written_under_a_hidden_name_and_appear_whole_when_the_stream_closes(tmp_path: Path) -> None:
    written: list[int] = []
    s = _stream(tmp_path, on_written=written.append)
    assert s.offer(range(10))
    _until(lambda: sum(written) == 10)
    assert list(tmp_path.glob("*.parquet")) == []  # a reader sees nothing half-written
    hidden = [p.name for p in tmp_path.iterdir()]
    assert len(hidden) == 1 and hidden[0].startswith(".test-host.1-") and hidden[0].endswith(".parquet.tmp"), hidden
    s.close()
    assert [p.name for p in tmp_path.iterdir()] == [hidden[0][1:-len(".tmp")]]
    assert _read(tmp_path)["n"].to_pylist() == list(range(10))
    assert not s.offer([11])  # closed: refused


def test_file_names_follow_kind_replica_utc_time_and_sequence(tmp_path: Path) -> None:
    s = _stream(tmp_path, rotate_bytes=1)  # every write closes its file
    for n in range(3):
        s.offer([n])
        _until(lambda n=n: len(list(tmp_path.glob("*.parquet"))) == n + 1)
    s.close()
    names = sorted(p.name for p in tmp_path.glob("*.parquet"))
    for seq, name in enumerate(names):
        kind, replica, stamp, tail = name.split("-")
        assert (kind, replica, tail) == ("test", "host.1", f"{seq:06d}.parquet"), name
        assert time.strptime(stamp, "%Y%m%dT%H%M%SZ")
    assert _read(tmp_path)["n"].to_pylist() == [0, 1, 2]


def test_a_file_is_closed_once_it_reaches_the_size_limit(tmp_path: Path) -> None:
    s = _stream(tmp_path, rotate_bytes=4096)
    for start in range(0, 3000, 300):
        s.offer(range(start, start + 300))
        time.sleep(0.06)
    s.close()
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) >= 3, files
    assert all(f.stat().st_size < 4096 + 300 * 40 for f in files)  # rotated soon after the limit, not at the end
    assert sorted(_read(tmp_path)["n"].to_pylist()) == list(range(3000))


def test_a_file_is_closed_at_its_age_limit_with_no_more_rows_coming(tmp_path: Path) -> None:
    s = _stream(tmp_path, rotate_s=0.2)
    s.offer([1, 2])
    _until(lambda: len(list(tmp_path.glob("*.parquet"))) == 1, timeout_s=10)  # visible without a close
    s.offer([3])
    _until(lambda: len(list(tmp_path.glob("*.parquet"))) == 2, timeout_s=10)
    assert sorted(_read(tmp_path)["n"].to_pylist()) == [1, 2, 3]
    s.close()


def test_a_full_buffer_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    gate = threading.Event()

    def slow(rows: Sequence[int]) -> pa.Table:
        gate.wait(30)  # the disk is stuck: the writer holds what it took
        return _table(rows)

    dropped: list[int] = []
    s = ParquetStream(tmp_path, "test", "host.1", _SCHEMA, slow, capacity_rows=5, rotate_bytes=1 << 30,
                      rotate_s=3600, flush_s=0.01, on_dropped=dropped.append)
    assert s.offer([0])
    _until(lambda: s.pending == 0)  # taken by the writer, which now waits on the disk
    t0 = time.perf_counter()
    results = [s.offer([n]) for n in range(1, 9)]
    assert time.perf_counter() - t0 < 0.5  # never waits for the disk
    assert results == [True] * 5 + [False] * 3 and dropped == [1, 1, 1]
    assert not s.offer([10, 11]) and dropped[-1] == 2  # all or nothing
    gate.set()
    s.close()
    assert sorted(_read(tmp_path)["n"].to_pylist()) == list(range(6))


def test_close_writes_everything_offered_and_closes_the_file(tmp_path: Path) -> None:
    s = _stream(tmp_path, flush_s=60.0)  # nothing would be written before a minute
    for n in range(1000):
        assert s.offer([n])
    s.close()
    assert sorted(_read(tmp_path)["n"].to_pylist()) == list(range(1000))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    s.close()  # idempotent


def test_a_failed_write_counts_its_rows_as_dropped_and_the_stream_goes_on(tmp_path: Path) -> None:
    calls = []

    def flaky(rows: Sequence[int]) -> pa.Table:
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError("disk full")
        return _table(rows)

    dropped: list[int] = []
    s = ParquetStream(tmp_path, "test", "host.1", _SCHEMA, flaky, capacity_rows=100, rotate_bytes=1 << 30,
                      rotate_s=3600, flush_s=0.01, on_dropped=dropped.append)
    s.offer([1, 2])
    _until(lambda: dropped == [2])
    s.offer([3])
    s.close()
    assert _read(tmp_path)["n"].to_pylist() == [3]


def test_the_stream_refuses_settings_that_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity_rows"):
        _stream(tmp_path, capacity_rows=0)


# -- the served record ---------------------------------------------------------------------------------
def _answer(rid: str = "r1", role: str = "live", n: int = 3) -> RankResponse:
    return RankResponse(request_id=rid, items=[ScoredItem(10 + i, 0.9 - i / 10) for i in range(n)],
                        model_name="ranker", model_version=2, recall="faiss", catalogue_version=4,
                        scenario="similar", scenario_version=3, model_role=role)


def test_the_served_record_has_the_contract_columns_and_types() -> None:
    assert SERVED_SCHEMA == pa.schema([
        ("request_id", pa.string()), ("time", pa.timestamp("ms", tz="UTC")), ("user_id", pa.string()),
        ("context", pa.string()), ("scenario", pa.string()), ("scenario_version", pa.int64()),
        ("model", pa.string()), ("model_version", pa.int64()), ("role", pa.string()),
        ("catalogue_version", pa.int64()),
        ("items", pa.list_(pa.struct([("item_id", pa.string()), ("position", pa.int32()), ("score", pa.float32())]))),
        ("degraded", pa.bool_()), ("recall", pa.string()), ("replica", pa.string()),
    ])
    req = RankRequest(user_id=7, context={"device": "ios", "hour": 9})
    rows = [served_row(req, _answer("a"), 1_700_000_000_123), served_row(RankRequest(user_id="u-9"),
                                                                          _answer("b", "canary", 0), 1)]
    t = served_table(rows, "host.1")
    assert t.schema == SERVED_SCHEMA
    a, b = t.to_pylist()
    assert a["request_id"] == "a" and a["user_id"] == "7" and json.loads(a["context"]) == {"device": "ios", "hour": 9}
    assert a["time"].timestamp() == 1_700_000_000.123 and a["time"].tzinfo is not None
    assert (a["scenario"], a["scenario_version"], a["model"], a["model_version"], a["role"]) == \
        ("similar", 3, "ranker", 2, "live")
    assert (a["catalogue_version"], a["degraded"], a["recall"], a["replica"]) == (4, False, "faiss", "host.1")
    assert [(i["item_id"], i["position"]) for i in a["items"]] == [("10", 0), ("11", 1), ("12", 2)]
    assert [i["score"] for i in a["items"]] == pytest.approx([0.9, 0.8, 0.7])
    assert b["user_id"] == "u-9" and b["context"] == "{}" and b["role"] == "canary" and b["items"] == []


# -- events --------------------------------------------------------------------------------------------
def _event(**kw: Any) -> dict[str, Any]:
    return {"request_id": "r1", "item_id": 5, "type": "click", **kw}


def test_events_are_read_with_their_time_as_epoch_seconds_or_iso_8601() -> None:
    got = validate_events({"events": [_event(), _event(item_id="sku-1", type="order", ts=1_700_000_000.5),
                                      _event(type="cart", ts="2024-01-02T03:04:05Z"),
                                      _event(ts="2024-01-02T03:04:05"), _event(ts=1_700_000_000)]})
    assert [(e.item_id, e.type) for e in got] == [(5, "click"), ("sku-1", "order"), (5, "cart"), (5, "click"),
                                                  (5, "click")]
    assert [e.ts for e in got] == [None, 1_700_000_000.5, 1704164645.0, 1704164645.0, 1_700_000_000]


@pytest.mark.parametrize(("event", "field"), [
    ({"item_id": 5, "type": "click"}, "events[1].request_id"),
    (_event(request_id=""), "events[1].request_id"),
    (_event(request_id="x" * 129), "events[1].request_id"),
    (_event(request_id=7), "events[1].request_id"),
    ({"request_id": "r", "type": "click"}, "events[1].item_id"),
    (_event(item_id=""), "events[1].item_id"),
    (_event(item_id=2**63), "events[1].item_id"),
    (_event(item_id=1.5), "events[1].item_id"),
    (_event(item_id=None), "events[1].item_id"),
    ({"request_id": "r", "item_id": 5}, "events[1].type"),
    (_event(type="view"), "events[1].type"),
    (_event(type="CLICK"), "events[1].type"),
    (_event(ts="yesterday"), "events[1].ts"),
    (_event(ts=-1), "events[1].ts"),
    (_event(ts=1e13), "events[1].ts"),
    (_event(ts=float("nan")), "events[1].ts"),
    (_event(ts=True), "events[1].ts"),
    (_event(ts=[1]), "events[1].ts"),
    (_event(price=3), "events[1].price"),
    ("click", "events[1]"),
])
def test_a_malformed_event_is_422_naming_its_field(event: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_events({"events": [_event(), event, _event()]})
    assert err.value.http_status == 422 and err.value.field == field, err.value.message
    assert field in err.value.message


@pytest.mark.parametrize("payload", [{"events": []}, {"events": [_event()] * (MAX_EVENTS + 1)}, {},
                                     {"events": {"0": _event()}}, {"events": None}])
def test_no_events_too_many_or_not_a_list_is_422_naming_events(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        validate_events(payload)
    assert err.value.field == "events", err.value.message


def test_a_call_of_exactly_the_limit_is_taken() -> None:
    assert len(validate_events({"events": [_event()] * MAX_EVENTS})) == MAX_EVENTS


def test_a_body_that_is_no_json_object_is_400_and_an_unknown_field_422() -> None:
    for body in (b"{", b"[1]", b"\xff"):
        with pytest.raises(InvalidArgumentError) as bad:
            parse_events(body)
        assert bad.value.http_status == 400 and bad.value.field == "body"
    with pytest.raises(ValidationError) as unknown:
        parse_events(json.dumps({"events": [_event()], "user": 1}).encode())
    assert unknown.value.field == "user"


# -- the service records ----------------------------------------------------------------------------------
def _service(tmp_path: Path, *, canary_percent: float = 0.0, **overrides: object) -> RankService:
    """The real service on the fake Triton, logging into ``tmp_path/log``; ranker version 2 a
    canary of ``canary_percent``."""
    repo = make_repo(tmp_path / "repo")
    if canary_percent:
        (repo / "ranker" / "2").mkdir()
        (repo / "ranker" / "2" / "meta.json").write_text(json.dumps({"cross_spec": json.loads(SPEC.to_json())}))
        ModelRegistry(repo).set_traffic("ranker", Traffic(live=1, canary_version=2, canary_percent=canary_percent))
    client = ScoringClient()
    pipeline = make_pipeline(repo, client, log_dir=tmp_path / "log", log_rotate_s=3600.0, **overrides)
    svc = RankService(pipeline.settings, pipeline, client, ModelRegistry(repo))
    svc.feedback = FeedbackRecorder(pipeline.settings, svc.metrics, replica="r0")
    return svc


async def _rank(svc: RankService, user_id: int, rid: str) -> RankResponse:
    async def read() -> RankRequest:
        return RankRequest(user_id=user_id, k=4, request_id=rid, context=None)

    return await svc.rank(read)


async def _post(svc: RankService, events: list[dict[str, Any]]) -> int:
    async def read() -> list[Event]:
        return validate_events({"events": events})

    return await svc.post_events(read)


def _metric(svc: RankService, name: str, **labels: str) -> float:
    return metric_sum(svc.metrics.render().decode(), name, **labels)


def test_the_log_root_is_the_data_sets_folder_unless_log_dir_names_one(tmp_path: Path) -> None:
    assert log_root(Settings(data_dir=tmp_path)) == tmp_path / "datasets" / "demo" / "log"
    assert log_root(Settings(data_dir=tmp_path, data="shop")) == tmp_path / "datasets" / "shop" / "log"
    assert log_root(Settings(data_dir=tmp_path, log_dir=tmp_path / "shared")) == tmp_path / "shared"


def test_every_answer_and_event_is_in_the_files_after_close_with_its_role_and_metrics(tmp_path: Path) -> None:
    svc = _service(tmp_path, canary_percent=50)

    async def run() -> list[RankResponse]:
        answers = [await _rank(svc, u, f"q{u}") for u in range(12)]
        assert await _post(svc, [_event(request_id="q0", item_id=answers[0].items[0].item_id),
                                 _event(request_id="q1", type="order", ts=1_700_000_000),
                                 _event(request_id="nobody", type="cart")]) == 3
        await svc.close()
        return answers

    answers = asyncio.run(run())
    root = tmp_path / "log"
    served = pq.read_table(sorted((root / "served").glob("*.parquet"))).to_pylist()
    assert [r["request_id"] for r in served] == [a.request_id for a in answers]
    assert [r["role"] for r in served] == [a.model_role for a in answers]
    assert {a.model_role for a in answers} == {"live", "canary"}
    assert all((a.model_role == "canary") == (a.model_version == 2) for a in answers)
    assert [r["model_version"] for r in served] == [a.model_version for a in answers]
    assert [[i["item_id"] for i in r["items"]] for r in served] == [[str(i.item_id) for i in a.items] for a in answers]
    events = pq.read_table(sorted((root / "events").glob("*.parquet")))
    assert events.schema == EVENT_SCHEMA
    rows = events.to_pylist()
    assert [(r["request_id"], r["type"], r["replica"]) for r in rows] == [("q0", "click", "r0"), ("q1", "order", "r0"),
                                                                          ("nobody", "cart", "r0")]
    assert rows[1]["time"].timestamp() == 1_700_000_000 and rows[0]["time"] == rows[0]["received"]
    shown = sum(len(a.items) for a in answers)
    assert _metric(svc, "rankserve_impressions_total") == shown
    assert _metric(svc, "rankserve_impressions_total", role="canary") == \
        sum(len(a.items) for a in answers if a.model_role == "canary")
    a0 = answers[0]
    assert _metric(svc, "rankserve_events_total", type="click", model="ranker", version=str(a0.model_version),
                   role=a0.model_role) == 1
    assert _metric(svc, "rankserve_events_total", type="cart", model="", version="", role="unknown") == 1
    assert _metric(svc, "rankserve_log_written_total", stream="served") == len(answers)
    assert _metric(svc, "rankserve_log_written_total", stream="events") == 3
    assert _metric(svc, "rankserve_requests_total", status="200", scenario="home",
                   version=str(a0.model_version)) >= 1


def test_a_malformed_call_stores_nothing(tmp_path: Path) -> None:
    svc = _service(tmp_path)

    async def run() -> None:
        with pytest.raises(ValidationError):
            await _post(svc, [_event(), _event(type="view")])
        await svc.close()

    asyncio.run(run())
    assert list((tmp_path / "log" / "events").glob("*")) == []


def test_a_full_event_log_answers_503_and_stores_none_of_the_call(tmp_path: Path) -> None:
    svc = _service(tmp_path, log_queue=2)
    assert svc.feedback is not None
    gate = threading.Event()
    events = svc.feedback.events
    events.offer([])  # nothing: the writer stays idle
    original = events._to_table
    events._to_table = lambda rows: (gate.wait(30), original(rows))[1]  # the disk is stuck

    async def run() -> None:
        assert await _post(svc, [_event(request_id="a")]) == 1
        await asyncio.to_thread(_until, lambda: events.pending == 0)
        assert await _post(svc, [_event(request_id="b"), _event(request_id="c")]) == 2
        with pytest.raises(OverloadedError) as full:
            await _post(svc, [_event(request_id="d")])
        assert full.value.http_status == 503 and full.value.retry_after_s is not None
        gate.set()
        await svc.close()

    asyncio.run(run())
    stored = pq.read_table(sorted((tmp_path / "log" / "events").glob("*.parquet")))["request_id"].to_pylist()
    assert sorted(stored) == ["a", "b", "c"]
    assert _metric(svc, "rankserve_log_dropped_total", stream="events") == 1


def test_log_off_records_no_answer_and_a_sample_records_a_share(tmp_path: Path) -> None:
    off = _service(tmp_path / "off", log_enabled=False)
    half = _service(tmp_path / "half", log_sample=0.5)

    async def run() -> None:
        for svc in (off, half):
            for u in range(200):
                await _rank(svc, u % 20, f"q{u}")
            await svc.close()

    asyncio.run(run())
    assert not (tmp_path / "off" / "log" / "served").exists()
    n = pq.read_table(sorted((tmp_path / "half" / "log" / "served").glob("*.parquet"))).num_rows
    assert 60 < n < 140, n
