"""A closed-loop HTTP or gRPC load generator, run as its own process (never inside the server's).

``python -m serving.loadgen --url URL --concurrency 32 --duration-s 10 --bodies FILE`` keeps
``concurrency`` requests in flight for ``duration_s`` seconds, cycling through the JSON bodies in
``FILE`` (one per line), and prints one JSON object: requests/s, latency percentiles, status
counts and the mean batch size the server reported (when responses carry it).

``--url grpc://127.0.0.1:PORT`` sends the same bodies as ``rankserve.v1.Ranker/Rank`` messages;
gRPC status ``OK`` counts as 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_load"]


class _Http:
    """POSTs JSON bodies: (status, answer bytes)."""

    def __init__(self, url: str, concurrency: int) -> None:
        import aiohttp

        self.url = url
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                              timeout=aiohttp.ClientTimeout(total=30))

    async def send(self, body: bytes) -> tuple[int | str, bytes]:
        async with self._session.post(self.url, data=body, headers={"content-type": "application/json"}) as resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        await self._session.close()


class _Grpc:
    """Calls rankserve.v1.Ranker/Rank with the JSON bodies as messages: (status, answer as JSON)."""

    def __init__(self, url: str, concurrency: int) -> None:
        import grpc

        from serving.proto import ranker_pb2, ranker_pb2_grpc

        self._pb2 = ranker_pb2
        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)
        self._messages: dict[bytes, Any] = {}

    async def send(self, body: bytes) -> tuple[int | str, bytes]:
        from google.protobuf.json_format import MessageToJson

        msg = self._messages.get(body)
        if msg is None:
            msg = self._messages[body] = self._pb2.RankRequest(**json.loads(body))
        try:
            res = await self._stub.Rank(msg, timeout=30)
        except self._grpc.aio.AioRpcError as err:
            return err.code().name, json.dumps({"error": err.details()}).encode()
        return 200, MessageToJson(res, preserving_proto_field_name=True).encode()

    async def close(self) -> None:
        await self._channel.close()


async def _worker(client: _Http | _Grpc, bodies: list[bytes], start: int, stop_at: float,
                  lat: list[float], status: Counter, items: list[int], record: list[str] | None = None,
                  stop_file: Path | None = None) -> None:
    i = start
    while time.perf_counter() < stop_at and not (stop_file is not None and stop_file.exists()):
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            code, payload = await client.send(body)
            status[code] += 1
            if code == 200:
                items.append(payload.count(b'"item_id"'))
            if record is not None:
                record.append(json.dumps({"t": time.time(), "status": code,
                                          "request": json.loads(body), "response": json.loads(payload)}))
        except Exception as err:  # noqa: BLE001 - every failure is counted, none stops the run
            status[f"error:{type(err).__name__}"] += 1
        lat.append((time.perf_counter() - t0) * 1000)


async def run_load(url: str, bodies: list[bytes], *, concurrency: int, duration_s: float,
                   warmup_s: float = 1.0, record: list[str] | None = None,
                   stop_file: Path | None = None) -> dict[str, object]:
    """Closed-loop load; returns throughput, latency percentiles (ms) and status counts."""
    client = _Grpc(url, concurrency) if url.startswith("grpc://") else _Http(url, concurrency)
    try:
        if warmup_s > 0:
            await asyncio.gather(*(_worker(client, bodies, w, time.perf_counter() + warmup_s, [], Counter(), [])
                                   for w in range(concurrency)))
        lat: list[float] = []
        status: Counter = Counter()
        items: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(_worker(client, bodies, w * 7919, t0 + duration_s, lat, status, items, record,
                                       stop_file) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    arr = np.asarray(lat) if lat else np.zeros(1)
    ok = int(status.get(200, 0))
    return {
        "concurrency": concurrency,
        "duration_s": round(wall, 3),
        "requests": len(lat),
        "ok": ok,
        "failures": len(lat) - ok,
        "status": {str(k): v for k, v in status.items()},
        "rps": round(ok / wall, 2),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_items": round(float(np.mean(items)), 2) if items else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", type=Path, required=True, help="file with one JSON request body per line")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--record", type=Path, help="write every request and response as JSON lines here")
    p.add_argument("--stop-file", type=Path, help="stop early once this file exists (duration stays the bound)")
    a = p.parse_args(argv)
    if not a.url.startswith(("http://127.", "http://localhost", "http://[::1]", "grpc://127.", "grpc://localhost")):
        print("loadgen only targets loopback addresses", file=sys.stderr)
        return 2
    bodies = [ln.encode() for ln in a.bodies.read_text().splitlines() if ln.strip()]
    record: list[str] | None = [] if a.record else None
    res = asyncio.run(run_load(a.url, bodies, concurrency=a.concurrency, duration_s=a.duration_s,
                               warmup_s=a.warmup_s, record=record, stop_file=a.stop_file))
    if a.record and record is not None:
        a.record.write_text("\n".join(record) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
