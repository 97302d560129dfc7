"""How the service hands requests to the pipeline: a request that finds nothing running goes at
once, requests that arrive meanwhile go to the batcher, and the outcome is counted. The real
service and pipeline run here without Ray or Triton (fake Triton client, exact index); Serve's
batcher needs a replica context, so a small asyncio batcher stands in for it (the integration
suite checks that real batches form under concurrency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from serving.errors import OverloadedError
from serving.pipeline.orchestration import BatchStats, Prepared, RankPipeline
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse
from serving.service import BatchFn, RankService, Result
from tests.unit.fakes import ScoringClient, make_pipeline, make_repo


class _Recording(RankPipeline):
    """The real pipeline, recording the request ids of each batch it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    async def run_batch(self, batch: list[Prepared]) -> tuple[list[Result], BatchStats]:
        self.batches.append([p.request_id for p in batch])
        return await super().run_batch(batch)


def _waiting_batcher(wait_s: float, seen: list[str]) -> Callable[[BatchFn], Callable[[Prepared], Awaitable[Result]]]:
    """Collects requests for ``wait_s``, then runs them as one batch."""

    def make(fn: BatchFn) -> Callable[[Prepared], Awaitable[Result]]:
        queue: list[tuple[Prepared, asyncio.Future[Result]]] = []

        async def flush() -> None:
            await asyncio.sleep(wait_s)
            batch = queue[:]
            queue.clear()
            for (_, fut), res in zip(batch, await fn([p for p, _ in batch]), strict=True):
                fut.set_result(res)

        async def submit(p: Prepared) -> Result:
            seen.append(p.request_id)
            fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            queue.append((p, fut))
            if len(queue) == 1:
                asyncio.get_running_loop().create_task(flush())
            return await fut

        return submit

    return make


def _service(tmp_path: Path, *, batching: bool, wait_s: float, delay_s: float,
             seen: list[str] | None = None, **overrides: object) -> RankService:
    repo = make_repo(tmp_path)
    client = ScoringClient(delay_s=delay_s)
    pipeline = make_pipeline(repo, client, cls=_Recording, batching=batching, **overrides)
    return RankService(pipeline.settings, pipeline, client, ModelRegistry(repo),
                       batcher=_waiting_batcher(wait_s, seen if seen is not None else []))


def _rank(svc: RankService, rid: str) -> Awaitable[RankResponse]:
    async def read() -> RankRequest:
        return RankRequest(user_id=3, k=5, request_id=rid)

    return svc.rank(read)


def _batches(svc: RankService) -> list[list[str]]:
    assert isinstance(svc.pipeline, _Recording)
    return svc.pipeline.batches


def test_a_lone_request_does_not_wait_for_the_batch_to_fill(tmp_path: Path) -> None:
    svc = _service(tmp_path, batching=True, wait_s=0.5, delay_s=0.005)

    async def go() -> tuple[RankResponse, float]:
        t0 = time.perf_counter()
        out = await _rank(svc, "a")
        return out, time.perf_counter() - t0

    out, took = asyncio.run(go())
    assert out.request_id == "a" and len(out.items) == 5
    assert took < 0.25, f"waited {took:.3f} s: the 0.5 s batch wait was applied to a lone request"
    assert _batches(svc) == [["a"]]


def test_requests_arriving_while_one_runs_go_to_the_batcher(tmp_path: Path) -> None:
    seen: list[str] = []
    svc = _service(tmp_path, batching=True, wait_s=0.02, delay_s=0.05, seen=seen)

    async def go() -> list[str]:
        first = asyncio.create_task(_rank(svc, "first"))
        await asyncio.sleep(0.01)  # "first" is running now
        rest = [asyncio.create_task(_rank(svc, f"r{i}")) for i in range(5)]
        out = await asyncio.gather(first, *rest)
        after = await _rank(svc, "after")  # all done: idle again
        return [r.request_id for r in [*out, after]]

    assert asyncio.run(go()) == ["first", "r0", "r1", "r2", "r3", "r4", "after"]
    assert seen == ["r0", "r1", "r2", "r3", "r4"]
    assert _batches(svc) == [["first"], ["r0", "r1", "r2", "r3", "r4"], ["after"]]
    assert "rankserve_batch_requests_count 3.0" in svc.metrics_text().decode()


def test_batching_off_sends_each_request_alone(tmp_path: Path) -> None:
    seen: list[str] = []
    svc = _service(tmp_path, batching=False, wait_s=0.05, delay_s=0.02, seen=seen)

    async def go() -> list[str]:
        return [r.request_id for r in await asyncio.gather(*(_rank(svc, f"r{i}") for i in range(4)))]

    assert asyncio.run(go()) == ["r0", "r1", "r2", "r3"]
    assert sorted(_batches(svc)) == [["r0"], ["r1"], ["r2"], ["r3"]]
    assert seen == []


def test_a_full_queue_sheds_with_retry_after(tmp_path: Path) -> None:
    svc = _service(tmp_path, batching=True, wait_s=0.01, delay_s=0.0, max_queued_requests=0)
    with pytest.raises(OverloadedError) as info:
        asyncio.run(_rank(svc, "x"))
    assert info.value.headers() == {"Retry-After": "1"}
    assert "rankserve_shed_total 1.0" in svc.metrics_text().decode()
