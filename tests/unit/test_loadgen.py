"""The open-loop load generator against a tiny local HTTP server that answers one request at a time.

Such a server shows coordinated omission plainly: a closed loop of one client sees only the
service time, while arrivals at a rate above 1 / service time queue up, and an open loop must
report that queue in its latencies.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from loadtest.loadgen import run_load, run_open_loop

SERVICE_S = 0.04


@pytest.fixture
def one_at_a_time_url() -> Iterator[str]:
    ready = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        async def main() -> None:
            lock = asyncio.Lock()

            async def rank(request: web.Request) -> web.Response:
                await request.read()
                async with lock:
                    await asyncio.sleep(SERVICE_S)
                return web.json_response({"items": [{"item_id": 1, "score": 0.5}]})

            app = web.Application()
            app.router.add_post("/v1/rank", rank)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            box["stop"] = stop = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            await runner.cleanup()

        asyncio.run(main())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{box['port']}/v1/rank"
    box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
    t.join(10)


def test_open_loop_counts_the_queue_that_a_closed_loop_hides(one_at_a_time_url: str) -> None:
    bodies = [b'{"user_id": 1}']
    closed = asyncio.run(run_load(one_at_a_time_url, bodies, concurrency=1, duration_s=1.0, warmup_s=0.2))
    # 40 arrivals/s at 25/s service capacity: the queue grows by ~15 requests a second, ~30 by the
    # end, whose wait is ~30 service times; a busy machine serves slower and only adds to it
    opened = asyncio.run(run_open_loop(one_at_a_time_url, bodies, rate=40, duration_s=2.0, warmup_s=0.2, seed=1))
    assert closed["p99_ms"] < 10 * SERVICE_S * 1000  # a bound: one service time each, plus the machine's noise
    assert opened["failures"] == 0
    assert opened["p99_ms"] > 15 * SERVICE_S * 1000, opened
    assert opened["rps"] < opened["offered_rps"] * 0.9 or opened["p50_ms"] > 4 * SERVICE_S * 1000


def test_open_loop_below_capacity_sees_about_the_service_time(one_at_a_time_url: str) -> None:
    opened = asyncio.run(run_open_loop(one_at_a_time_url, [b'{"user_id": 1}'], rate=5, duration_s=2.0,
                                       warmup_s=0.2, seed=2))
    assert opened["failures"] == 0
    assert 5 <= opened["requests"] <= 20
    assert SERVICE_S * 1000 <= opened["p50_ms"] < 10 * SERVICE_S * 1000  # the service time, not a queue


def test_arrivals_over_the_in_flight_cap_are_failures(one_at_a_time_url: str) -> None:
    opened = asyncio.run(run_open_loop(one_at_a_time_url, [b'{"user_id": 1}'], rate=100, duration_s=1.0,
                                       warmup_s=0.0, max_in_flight=3, seed=3))
    assert opened["status"].get("client_overflow", 0) > 0
    assert opened["p99_ms"] == float("inf")
