"""How the service hands requests to the pipeline: idle dispatch, deadline-aware batching (earliest
deadline first, each request its own deadline, hopeless requests answered at once), and load
shedding. The real service, batcher and pipeline run here without Ray or Triton (a fake Triton
client with a set delay, an exact index)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from serving.errors import DeadlineExceededError, OverloadedError, TritonError
from serving.pipeline.orchestration import BatchStats, Prepared, RankPipeline
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse
from serving.service import RankService, Result
from tests.unit.fakes import ScoringClient, make_pipeline, make_repo


class _Recording(RankPipeline):
    """The real pipeline, recording the request ids of each batch it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    async def run_batch(self, batch: list[Prepared]) -> tuple[list[Result], BatchStats]:
        self.batches.append([p.request_id for p in batch])
        return await super().run_batch(batch)


class _Gated(ScoringClient):
    """Holds every call at ``gate`` until it is set (``held``: closed at first); ``entered`` is set
    by the first call: a batch is running."""

    def __init__(self, delay_s: float = 0.0, *, held: bool = True) -> None:
        super().__init__(delay_s=delay_s)
        self.gate, self.entered = asyncio.Event(), asyncio.Event()
        if not held:
            self.gate.set()

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().infer(*args, **kwargs)


def _service(tmp_path: Path, *, delay_s: float = 0.0, client: ScoringClient | None = None,
             **overrides: object) -> RankService:
    repo = make_repo(tmp_path)
    client = client or ScoringClient(delay_s=delay_s)
    pipeline = make_pipeline(repo, client, cls=_Recording, **overrides)
    return RankService(pipeline.settings, pipeline, client, ModelRegistry(repo))


async def _rank(svc: RankService, rid: str, timeout_ms: int = 2000) -> RankResponse:
    async def read() -> RankRequest:
        return RankRequest(user_id=3, k=5, request_id=rid, timeout_ms=timeout_ms)

    return await svc.rank(read)


def _batches(svc: RankService) -> list[list[str]]:
    assert isinstance(svc.pipeline, _Recording)
    return svc.pipeline.batches


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Until ``condition`` holds (a hang bound, never a measure)."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


def _submitted(svc: RankService, n: int) -> Callable[[], bool]:
    """``n`` requests wait in the batch queue or are in a batch that has started."""
    assert svc.batcher is not None
    batcher = svc.batcher
    return lambda: batcher.queued + sum(map(len, _batches(svc))) >= n


def test_a_lone_request_does_not_wait_for_the_batch_to_fill(tmp_path: Path) -> None:
    svc = _service(tmp_path, delay_s=0.005)
    assert svc.batcher is not None
    svc.batcher.wait_s = 60.0  # a wait this long would show at once (the settings allow up to 1 s)

    async def go() -> tuple[RankResponse, float]:
        t0 = time.perf_counter()
        out = await _rank(svc, "a")
        return out, time.perf_counter() - t0

    out, took = asyncio.run(go())
    assert out.request_id == "a" and len(out.items) == 5
    # a hang bound: the request takes milliseconds; waiting for the batch to fill takes 60 s
    assert took < 6, f"waited {took:.1f} s: the batch wait was applied to a lone request"
    assert _batches(svc) == [["a"]]


def test_requests_arriving_while_one_runs_are_batched(tmp_path: Path) -> None:
    client = _Gated()
    svc = _service(tmp_path, client=client, batch_wait_timeout_s=0.02)

    async def go() -> list[str]:
        first = asyncio.create_task(_rank(svc, "first"))
        await _until(client.entered.is_set)  # "first" is running now, held at the gate
        rest = [asyncio.create_task(_rank(svc, f"r{i}")) for i in range(5)]
        await _until(_submitted(svc, 6))
        client.gate.set()
        out = await asyncio.gather(first, *rest)
        after = await _rank(svc, "after")  # all done: idle again
        return [r.request_id for r in [*out, after]]

    assert asyncio.run(go()) == ["first", "r0", "r1", "r2", "r3", "r4", "after"]
    assert _batches(svc) == [["first"], ["r0", "r1", "r2", "r3", "r4"], ["after"]]
    assert "rankserve_batch_requests_count 3.0" in svc.metrics_text().decode()


def test_batches_form_earliest_deadline_first(tmp_path: Path) -> None:
    """With room for two requests per batch and one batch at a time, the queued requests leave in
    deadline order, not arrival order."""
    client = _Gated()
    svc = _service(tmp_path, client=client, batch_wait_timeout_s=0.0, max_concurrent_batches=1,
                   max_batch_candidates=80)  # recall_n is 40: two requests per batch

    async def go() -> None:
        first = asyncio.create_task(_rank(svc, "first"))
        await _until(client.entered.is_set)
        queued = [asyncio.create_task(_rank(svc, rid, ms)) for rid, ms in
                  (("late", 5000), ("soon", 1000), ("later", 6000), ("sooner", 900))]
        await _until(_submitted(svc, 5))
        client.gate.set()
        await asyncio.gather(first, *queued)

    asyncio.run(go())
    assert _batches(svc) == [["first"], ["sooner", "soon"], ["late", "later"]]


def test_each_request_keeps_its_own_deadline_in_a_batch(tmp_path: Path) -> None:
    """A tight request batched with generous ones gets its 504; the generous ones are answered
    in full, not degraded by the tight one's deadline."""
    client = _Gated(delay_s=0.1, held=False)  # a batch takes two calls: 0.2 s, beyond the tight 150 ms
    svc = _service(tmp_path, client=client, batch_wait_timeout_s=0.02)

    async def go() -> list[RankResponse | BaseException]:
        first = asyncio.create_task(_rank(svc, "first"))
        await _until(client.entered.is_set)
        mixed = [asyncio.create_task(_rank(svc, rid, ms)) for rid, ms in
                 (("g1", 5000), ("tight", 150), ("g2", 5000), ("g3", 5000))]
        return await asyncio.gather(first, *mixed, return_exceptions=True)

    first, g1, tight, g2, g3 = asyncio.run(go())
    assert isinstance(tight, DeadlineExceededError)
    for r in (first, g1, g2, g3):
        assert isinstance(r, RankResponse) and not r.degraded and len(r.items) == 5, r
    assert sorted(["g1", "tight", "g2", "g3"]) in [sorted(b) for b in _batches(svc)]


def test_a_request_that_cannot_meet_its_deadline_is_answered_at_once(tmp_path: Path) -> None:
    """Answered while the batch ahead of it still runs, not after a wait in the queue."""
    client = _Gated()
    svc = _service(tmp_path, client=client, batch_wait_timeout_s=0.0, max_concurrent_batches=1,
                   max_batch_candidates=40)
    assert svc.batcher is not None
    svc.batcher.throughput.rows_per_s = 100.0  # as measured: 2.5 requests of 40 candidates a second

    async def go() -> BaseException | RankResponse:
        first = asyncio.create_task(_rank(svc, "first", 20000))
        await _until(client.entered.is_set)  # "first" runs, and stays running until the gate opens
        # ~2 s of queued work (by the estimate), all due before the next request, which would
        # leave the queue after it and then need its own 0.4 s: 2.4 s, beyond its 2.3 s deadline
        ahead = [asyncio.create_task(_rank(svc, f"a{i}", 2200)) for i in range(5)]
        await _until(_submitted(svc, 6))
        try:  # a hang bound: queued behind the closed gate, it would never be answered
            res: BaseException | RankResponse = await asyncio.wait_for(_rank(svc, "hopeless", 2300), 30)
        except DeadlineExceededError as err:
            res = err
        assert not first.done(), "the batch ahead finished before the hopeless request was answered"
        client.gate.set()
        await asyncio.gather(first, *ahead, return_exceptions=True)
        return res

    res = asyncio.run(go())
    assert isinstance(res, DeadlineExceededError) and "queue ahead" in res.message, res
    assert all("hopeless" not in b for b in _batches(svc))


def test_batching_off_sends_each_request_alone(tmp_path: Path) -> None:
    svc = _service(tmp_path, delay_s=0.02, batching=False)
    assert svc.batcher is None

    async def go() -> list[str]:
        return [r.request_id for r in await asyncio.gather(*(_rank(svc, f"r{i}") for i in range(4)))]

    assert asyncio.run(go()) == ["r0", "r1", "r2", "r3"]
    assert sorted(_batches(svc)) == [["r0"], ["r1"], ["r2"], ["r3"]]


def test_a_full_queue_sheds_with_retry_after(tmp_path: Path) -> None:
    svc = _service(tmp_path, delay_s=0.05, max_queued_requests=2)

    async def go() -> list[RankResponse | BaseException]:
        return await asyncio.gather(*(_rank(svc, f"r{i}") for i in range(4)), return_exceptions=True)

    out = asyncio.run(go())
    shed = [r for r in out if isinstance(r, OverloadedError)]
    assert len(shed) == 2 and all(r.headers()["Retry-After"] >= "1" for r in shed)
    assert sum(isinstance(r, RankResponse) for r in out) == 2
    assert "rankserve_shed_total 2.0" in svc.metrics_text().decode()
    with pytest.raises(ValueError, match="max_queued_requests"):
        _service(tmp_path / "x", delay_s=0, max_queued_requests=300, max_ongoing_requests=256)


class _CancelToError(ScoringClient):
    """Turns cancellation into a Triton error, as the gRPC client does with a cancelled call."""

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().infer(*args, **kwargs)
        except asyncio.CancelledError:
            raise TritonError("call cancelled") from None


def test_a_deadline_gives_504_even_when_the_cancelled_call_ends_as_an_error(tmp_path: Path) -> None:
    """At the deadline the request is answered 504, not with the degraded answer the pipeline
    makes of the cancelled Triton call."""
    repo = make_repo(tmp_path)
    client = _CancelToError(delay_s=0.2)
    pipeline = make_pipeline(repo, client)
    svc = RankService(pipeline.settings, pipeline, client, ModelRegistry(repo))
    with pytest.raises(DeadlineExceededError):
        asyncio.run(_rank(svc, "late", timeout_ms=50))


def test_metrics_show_the_versions_in_traffic_and_drop_those_that_left(tmp_path: Path) -> None:
    from serving.pipeline.routing import Traffic
    from serving.repository.followers import TrafficFollower

    svc = _service(tmp_path, delay_s=0.0)
    registry = ModelRegistry(svc.registry.repo)
    traffic = TrafficFollower(registry, svc.pipeline.cell, "user_tower")
    registry.set_traffic("ranker", Traffic(live=1, canary_version=2, canary_percent=10.0))
    assert traffic.poll()
    text = svc.metrics_text().decode()
    assert 'rankserve_model_traffic_percent{model="ranker",role="live",version="1"} 90.0' in text
    assert 'rankserve_model_traffic_percent{model="ranker",role="canary",version="2"} 10.0' in text
    assert 'rankserve_model_traffic_percent{model="user_tower",role="live",version="1"} 100.0' in text
    registry.set_traffic("ranker", Traffic(live=1))  # the canary rolled back: v2 leaves the split
    assert traffic.poll()
    text = svc.metrics_text().decode()
    assert 'rankserve_model_traffic_percent{model="ranker",role="live",version="1"} 100.0' in text
    assert 'role="canary"' not in text and 'version="2"' not in text
