"""Deadline-aware dynamic batching of ranking requests inside one replica.

Owns: when a request runs and with whom. A request that finds nothing running goes at once
(waiting for a batch to fill would only add the wait to its latency). Requests that arrive while
batches run are queued and leave the queue earliest deadline first, in batches bounded by their
total candidates, at most ``max_concurrent`` batches at a time, after waiting at most ``wait_s``
for a batch to fill. A request that cannot meet its deadline given the work queued ahead of it
gets its 504 at once instead of a place in a batch; one whose deadline passes while queued
leaves the queue with a 504. Must not touch: the pipeline's stages, wire formats, Ray.

Every request keeps its own deadline inside a batch (the pipeline and the service enforce it);
the batch's earliest deadline never applies to the others.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving.errors import DeadlineExceededError, RankserveError
from serving.pipeline.orchestration import Prepared
from serving.schemas import RankResponse

__all__ = ["DeadlineBatcher", "Throughput"]

Result = RankResponse | RankserveError
BatchFn = Callable[[list[Prepared]], Awaitable[list[Result]]]


@dataclass
class Throughput:
    """Candidates per second the replica gets through, smoothed over recent batches (EWMA)."""

    alpha: float = 0.2
    rows_per_s: float = 0.0
    _busy_since: float | None = None
    _rows: int = 0

    def record(self, rows: int, seconds: float, concurrent: int) -> None:
        """One batch of ``rows`` candidates took ``seconds`` while ``concurrent`` batches ran."""
        if seconds <= 0 or rows <= 0:
            return
        rate = rows * max(1, concurrent) / seconds
        self.rows_per_s = rate if self.rows_per_s == 0 else (1 - self.alpha) * self.rows_per_s + self.alpha * rate

    def seconds_for(self, rows: int) -> float | None:
        """Expected seconds to get through ``rows`` candidates (None before anything was measured)."""
        return rows / self.rows_per_s if self.rows_per_s > 0 else None


@dataclass(order=True)
class _Waiting:
    deadline: float
    seq: int
    prep: Prepared = field(compare=False)
    future: asyncio.Future[Result] = field(compare=False)


class DeadlineBatcher:
    """Batches :class:`Prepared` requests for ``run`` (one result per request, in order).

    Args:
        run: runs one batch.
        max_cost: most candidates in one batch.
        max_concurrent: most batches running at once.
        wait_s: longest wait for a batch to fill while another runs.
    """

    def __init__(self, run: BatchFn, *, max_cost: int, max_concurrent: int, wait_s: float) -> None:
        if max_cost < 1 or max_concurrent < 1 or wait_s < 0:
            raise ValueError(f"need max_cost >= 1, max_concurrent >= 1, wait_s >= 0; got {max_cost}, "
                             f"{max_concurrent}, {wait_s}")
        self._run = run
        self.max_cost = max_cost
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s
        self.throughput = Throughput()
        self.running = 0
        self._heap: list[_Waiting] = []
        self._queued_cost = 0
        self._seq = itertools.count()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._heap)

    def expected_finish_s(self, prep: Prepared) -> float | None:
        """Seconds before ``prep`` would be done: the queued work that leaves the queue before it
        (earlier deadlines) and its own, at the measured throughput (None before any is measured)."""
        ahead = sum(w.prep.cost for w in self._heap if w.deadline <= prep.deadline)
        return self.throughput.seconds_for(ahead + prep.cost)

    async def submit(self, prep: Prepared) -> Result:
        """The request's result, when its batch has run."""
        if self.running == 0 and not self._heap:
            return (await self._run_batch([prep]))[0]
        need = self.expected_finish_s(prep)
        if need is not None and time.monotonic() + need >= prep.deadline:
            raise DeadlineExceededError(
                f"the queue ahead of this request and its own work need ~{1000 * need:.0f} ms, more than its "
                "deadline leaves")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiting(prep.deadline, next(self._seq), prep, future))
        self._queued_cost += prep.cost
        self._wake()
        return await future

    def _wake(self) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def _dispatch_loop(self) -> None:
        """Launch batches while requests wait and a batch slot is free."""
        assert self._arrived is not None
        while self._heap:
            while self.running >= self.max_concurrent:
                self._arrived.clear()
                await self._arrived.wait()  # a batch finished (or more arrived)
            t_end = time.monotonic() + self.wait_s
            while self._heap and self._queued_cost < self.max_cost and self.running > 0:
                left = t_end - time.monotonic()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                asyncio.get_running_loop().create_task(self._launch(batch))

    def _take(self) -> list[tuple[Prepared, asyncio.Future[Result]]]:
        """Earliest deadlines first, up to ``max_cost`` (at least one); expired requests get 504."""
        now = time.monotonic()
        batch: list[tuple[Prepared, asyncio.Future[Result]]] = []
        cost = 0
        while self._heap:
            w = self._heap[0]
            if batch and cost + w.prep.cost > self.max_cost:
                break
            heapq.heappop(self._heap)
            self._queued_cost -= w.prep.cost
            if w.future.done():  # the caller gave up (its deadline passed)
                continue
            if now >= w.deadline:
                w.future.set_exception(DeadlineExceededError(
                    f"deadline passed after {1000 * (now - w.prep.arrival):.0f} ms in the batch queue"))
                continue
            batch.append((w.prep, w.future))
            cost += w.prep.cost
        return batch

    async def _launch(self, batch: list[tuple[Prepared, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run_batch([p for p, _ in batch])
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, not the batcher
            results = [err if isinstance(err, RankserveError) else RankserveError(f"batch failed: {err!r}")] * len(batch)
        for (_, future), res in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(res)

    async def _run_batch(self, batch: list[Prepared]) -> list[Result]:
        self.running += 1  # before the first await: a request arriving next sees it
        t0 = time.monotonic()
        try:
            return await self._run(batch)
        finally:
            self.throughput.record(sum(p.cost for p in batch), time.monotonic() - t0, self.running)
            self.running -= 1
            if self._arrived is not None:
                self._arrived.set()
