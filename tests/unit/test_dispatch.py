"""How the ranking deployment hands requests to the pipeline: a request that finds nothing running
goes at once, requests that arrive meanwhile are batched. The deployment class runs here without
Ray or Triton, on a pipeline stand-in that records the batches it is given."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from serving.app import RankingService
from serving.config import Settings


@dataclass
class _Prep:
    request_id: str
    cost: int = 500


@dataclass
class _Pipeline:
    run_s: float
    batches: list[list[str]] = field(default_factory=list)

    async def run_batch(self, batch: list[_Prep]) -> tuple[list[str], object]:
        self.batches.append([p.request_id for p in batch])
        await asyncio.sleep(self.run_s)
        return [p.request_id for p in batch], None


def _service(batching: bool, batch_wait_s: float, run_s: float) -> RankingService:
    cls = RankingService.func_or_class
    svc = cls.__new__(cls)
    svc.settings = Settings(batching=batching, batch_wait_timeout_s=batch_wait_s)
    svc.pipeline = _Pipeline(run_s)
    svc._running = 0
    svc._observe = lambda stats: None
    svc._batched.set_batch_wait_timeout_s(batch_wait_s)  # a lone request must not see it
    return svc


def test_a_lone_request_does_not_wait_for_the_batch_to_fill() -> None:
    svc = _service(batching=True, batch_wait_s=0.5, run_s=0.01)

    async def go() -> tuple[str, float]:
        t0 = time.perf_counter()
        out = await svc._answer(_Prep("a"))
        return out, time.perf_counter() - t0

    out, took = asyncio.run(go())
    assert out == "a"
    assert took < 0.25, f"waited {took:.3f} s: the 0.5 s batch wait was applied to a lone request"
    assert svc.pipeline.batches == [["a"]]


def test_requests_arriving_while_one_runs_go_to_the_batcher() -> None:
    """Routing only: Serve's batcher needs a replica context, so a recorder stands in for it here
    (the integration suite checks real batches form under concurrency)."""
    svc = _service(batching=True, batch_wait_s=0.05, run_s=0.1)
    to_batcher: list[str] = []

    async def batcher(prep: _Prep) -> str:
        to_batcher.append(prep.request_id)
        return (await svc._run([prep]))[0]

    svc._batched = batcher

    async def go() -> list[str]:
        first = asyncio.create_task(svc._answer(_Prep("first")))
        await asyncio.sleep(0.01)  # "first" is running now
        rest = [asyncio.create_task(svc._answer(_Prep(f"r{i}"))) for i in range(5)]
        out = await asyncio.gather(first, *rest)
        after = await svc._answer(_Prep("after"))  # all done: idle again
        return [*out, after]

    out = asyncio.run(go())
    assert out == ["first", "r0", "r1", "r2", "r3", "r4", "after"]
    assert to_batcher == ["r0", "r1", "r2", "r3", "r4"]
    assert svc._running == 0


def test_batching_off_sends_each_request_alone() -> None:
    svc = _service(batching=False, batch_wait_s=0.05, run_s=0.02)

    async def go() -> list[str]:
        return await asyncio.gather(*(svc._answer(_Prep(f"r{i}")) for i in range(4)))

    assert asyncio.run(go()) == ["r0", "r1", "r2", "r3"]
    assert sorted(svc.pipeline.batches) == [["r0"], ["r1"], ["r2"], ["r3"]]
