"""An HTTP or gRPC load generator, run as its own process (never inside the server's).

Owns: sending load (closed or open loop) to a loopback target and summarising what came back.
Must not touch: the server.

``python -m loadtest.loadgen --url URL --concurrency 32 --duration-s 10 --bodies FILE`` keeps
``concurrency`` requests in flight for ``duration_s`` seconds (closed loop), cycling through the
JSON bodies in ``FILE`` (one per line), and prints one JSON object: requests/s, latency
percentiles and status counts.

``--rate R`` is open loop instead: requests arrive as a Poisson process of ``R`` per second
whatever the server does, and each latency runs from the request's scheduled arrival, so a
stalled server or a late generator shows in the percentiles (no coordinated omission).
``--concurrency`` then caps the requests in flight; an arrival over the cap is not sent and
counts as a failure (``client_overflow``).

``--url grpc://127.0.0.1:PORT`` sends the same bodies as ``rankserve.v1.Ranker/Rank`` messages
(:func:`rank_message`: a data set's string ids in the ``*_str`` fields, its context as
``context_json``); gRPC status ``OK`` counts as 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from serving.net import is_loopback

__all__ = ["client", "rank_message", "run_load", "run_open_loop"]


class _Http:
    """POSTs JSON bodies: (status, answer bytes)."""

    def __init__(self, url: str, concurrency: int, timeout_s: float = 30.0, authorization: str | None = None) -> None:
        import aiohttp

        self.url = url
        self._headers = {"content-type": "application/json",
                         **({"authorization": authorization} if authorization else {})}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                              timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def send(self, body: bytes) -> tuple[int | str, _Answer]:
        async with self._session.post(self.url, data=body, headers=self._headers) as resp:
            return resp.status, _JsonAnswer(await resp.read(), resp.headers.get("Retry-After"))

    async def close(self) -> None:
        await self._session.close()


def rank_message(body: dict[str, Any]) -> Any:
    """The ``rankserve.v1.RankRequest`` of a ``/v1/rank`` JSON body: the same fields, string ids
    (a data set whose schema's ids are strings) in the ``*_str`` fields, ``context`` as
    ``context_json``."""
    from serving.proto import ranker_pb2

    fields = dict(body)
    for name in ("user_id", "item_id", "candidates", "exclude"):
        value = fields.get(name)
        if isinstance(value, str) or (isinstance(value, list) and any(isinstance(v, str) for v in value)):
            fields[f"{name}_str"] = fields.pop(name)
    if "context" in fields:
        fields["context_json"] = json.dumps(fields.pop("context"))
    return ranker_pb2.RankRequest(**fields)


class _Grpc:
    """Calls rankserve.v1.Ranker/Rank with the JSON bodies as messages: (status, answer message)."""

    def __init__(self, url: str, concurrency: int, timeout_s: float = 30.0, authorization: str | None = None) -> None:
        import grpc

        from serving.proto import ranker_pb2_grpc

        self._timeout_s = timeout_s
        self._metadata = (("authorization", authorization),) if authorization else None
        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)
        self._messages: dict[bytes, Any] = {}

    async def send(self, body: bytes) -> tuple[int | str, _Answer]:
        msg = self._messages.get(body)
        if msg is None:
            msg = self._messages[body] = rank_message(json.loads(body))
        try:
            res = await self._stub.Rank(msg, timeout=self._timeout_s, metadata=self._metadata)
        except self._grpc.aio.AioRpcError as err:
            return err.code().name, _JsonAnswer(json.dumps({"error": err.details()}).encode())
        return 200, _GrpcAnswer(res)

    async def close(self) -> None:
        await self._channel.close()


class _Answer(Protocol):
    """An answer, read only as far as the run needs (decoding every answer would load the client)."""

    retry_after: str | None

    def items(self) -> int: ...
    def degraded(self) -> bool: ...
    def version(self) -> int | None: ...
    def timings(self) -> dict[str, float]: ...
    def as_json(self) -> Any: ...


_VERSION = re.compile(rb'"model":\{"name":"[^"]*","version":(\d+)\}')


class _JsonAnswer:
    def __init__(self, raw: bytes, retry_after: str | None = None) -> None:
        self.raw = raw
        self.retry_after = retry_after

    def version(self) -> int | None:
        """The model version that scored the answer."""
        m = _VERSION.search(self.raw)
        return int(m.group(1)) if m else None

    def items(self) -> int:
        return self.raw.count(b'"item_id"')

    def degraded(self) -> bool:
        return b'"degraded":true' in self.raw

    def timings(self) -> dict[str, float]:
        return {k: float(v) for k, v in json.loads(self.raw).get("timings_ms", {}).items()}

    def as_json(self) -> Any:
        return json.loads(self.raw)


class _GrpcAnswer:
    def __init__(self, msg: Any) -> None:
        self.msg = msg
        self.retry_after: str | None = None

    def version(self) -> int | None:
        return int(self.msg.model.version)

    def items(self) -> int:
        return len(self.msg.items)

    def degraded(self) -> bool:
        return bool(self.msg.degraded)

    def timings(self) -> dict[str, float]:
        return dict(self.msg.timings_ms)

    def as_json(self) -> Any:
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(self.msg, preserving_proto_field_name=True)


def client(url: str, concurrency: int, timeout_s: float = 30.0, authorization: str | None = None) -> _Http | _Grpc:
    """A client of ``url`` (``grpc://``: gRPC Rank; else JSON POSTs) keeping at most ``concurrency`` connections."""
    return (_Grpc if url.startswith("grpc://") else _Http)(url, concurrency, timeout_s, authorization)


def _summary(lat: list[float], status: Counter, wall: float,
             method: Literal["linear", "inverted_cdf"] = "linear") -> dict[str, Any]:
    """Request counts, throughput and latency percentiles (ms) of one run."""
    arr = np.asarray(lat) if lat else np.zeros(1)
    ok = int(status.get(200, 0))

    def pct(q: float) -> float:
        v = float(np.percentile(arr, q, method=method))
        return round(v, 3) if np.isfinite(v) else float("inf")

    return {
        "duration_s": round(wall, 3),
        "requests": len(lat),
        "ok": ok,
        "failures": len(lat) - ok,
        "status": {str(k): v for k, v in status.items()},
        "rps": round(ok / wall, 2),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


@dataclass
class _Tally:
    """What a closed-loop run observed: latencies, statuses, items per answer and, when asked,
    the server's own ``timings_ms`` of every answer and every request with its answer."""

    lat: list[float] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    items: list[int] = field(default_factory=list)
    ok_lat: list[float] = field(default_factory=list)
    timings: dict[str, list[float]] | None = None
    record: list[str] | None = None

    def add(self, body: bytes, code: int | str, answer: _Answer | None, ms: float) -> None:
        self.status[code] += 1
        if code == 200 and answer is not None:
            self.items.append(answer.items())
            self.ok_lat.append(ms)
            if self.timings is not None:
                for stage, v in answer.timings().items():
                    self.timings.setdefault(stage, []).append(v)
        if self.record is not None:
            self.record.append(json.dumps({"t": time.time(), "status": code, "request": json.loads(body),
                                           "response": answer.as_json() if answer is not None else {}}))

    def stages(self) -> dict[str, float]:
        """Mean client latency of the answered requests and the mean of each server stage."""
        out = {"client": round(float(np.mean(self.ok_lat)), 3)} if self.ok_lat else {}
        out.update({k: round(float(np.mean(v)), 3) for k, v in (self.timings or {}).items()})
        return out


async def _worker(client: _Http | _Grpc, bodies: list[bytes], start: int, stop_at: float, tally: _Tally,
                  stop_file: Path | None = None) -> None:
    i = start
    while time.perf_counter() < stop_at and not (stop_file is not None and stop_file.exists()):
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        answer: _Answer | None
        try:
            code, answer = await client.send(body)
        except Exception as err:  # noqa: BLE001 - every failure is counted, none stops the run
            code, answer = f"error:{type(err).__name__}", None
        ms = (time.perf_counter() - t0) * 1000
        tally.lat.append(ms)
        tally.add(body, code, answer, ms)


async def run_load(url: str, bodies: list[bytes], *, concurrency: int, duration_s: float,
                   warmup_s: float = 1.0, record: list[str] | None = None,
                   stop_file: Path | None = None, timings: bool = False,
                   authorization: str | None = None) -> dict[str, object]:
    """Closed-loop load; returns throughput, latency percentiles (ms) and status counts, and with
    ``timings`` the mean client latency beside the mean of each stage the server reports.
    ``authorization``: sent with every request (``Bearer <key>``)."""
    conn = client(url, concurrency, authorization=authorization)
    try:
        if warmup_s > 0:
            warm = _Tally()
            await asyncio.gather(*(_worker(conn, bodies, w, time.perf_counter() + warmup_s, warm)
                                   for w in range(concurrency)))
        tally = _Tally(timings={} if timings else None, record=record)
        t0 = time.perf_counter()
        await asyncio.gather(*(_worker(conn, bodies, w * 7919, t0 + duration_s, tally, stop_file)
                               for w in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await conn.close()
    out: dict[str, object] = {
        "concurrency": concurrency,
        **_summary(tally.lat, tally.status, wall),
        "mean_items": round(float(np.mean(tally.items)), 2) if tally.items else 0.0,
    }
    if timings:
        out["stage_ms"] = tally.stages()
    return out


async def run_open_loop(url: str, bodies: list[bytes], *, rate: float, duration_s: float,
                        max_in_flight: int = 512, warmup_s: float = 1.0, seed: int = 0,
                        timeout_s: float = 30.0, record: list[str] | None = None,
                        authorization: str | None = None) -> dict[str, object]:
    """Open-loop load: Poisson arrivals at ``rate`` per second for ``duration_s``; latency is
    measured from each request's scheduled arrival time. With ``record``, one JSON line per measured
    request: ``at`` (its arrival, Unix time), ``ms``, ``status``, ``degraded`` and the body's ``timeout_ms``."""
    conn = client(url, max_in_flight, timeout_s, authorization)
    rng = np.random.default_rng(seed)
    lat: list[float] = []
    status: Counter = Counter()
    late: list[float] = []
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    epoch = time.time() - t0  # perf_counter -> wall clock, for records other processes line up with
    deadline_ms = {b: json.loads(b).get("timeout_ms") for b in set(bodies)} if record is not None else {}

    async def one(body: bytes, due: float, measured: bool) -> None:
        degraded, version, retry_after = False, None, None
        try:
            code, answer = await conn.send(body)
            degraded = code == 200 and answer.degraded()
            if record is not None:
                version, retry_after = (answer.version() if code == 200 else None), answer.retry_after
        except Exception as err:  # noqa: BLE001 - every failure is counted, none stops the run
            code = f"error:{type(err).__name__}"
        if measured:
            ms = (time.perf_counter() - due) * 1000
            status[code] += 1
            lat.append(ms)
            if record is not None:
                record.append(json.dumps({"at": round(epoch + due, 4), "ms": round(ms, 2), "status": code,
                                          "degraded": degraded, "timeout_ms": deadline_ms.get(body),
                                          "version": version, "retry_after": retry_after}))

    try:
        t_end = measure_from + duration_s
        due, i, arrivals = t0, 0, 0
        while True:
            due += rng.exponential(1.0 / rate)
            if due >= t_end:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            measured = due >= measure_from
            if measured:
                arrivals += 1
                late.append((time.perf_counter() - due) * 1000)
            if len(tasks) >= max_in_flight:
                if measured:
                    status["client_overflow"] += 1
                    lat.append(float("inf"))
                continue
            task = asyncio.create_task(one(bodies[i % len(bodies)], due, measured))
            i += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=60)
            for task in pending:
                task.cancel()
                status["client_timeout"] += 1
                lat.append(float("inf"))
                if record is not None:
                    record.append(json.dumps({"at": None, "ms": None, "status": "client_timeout", "degraded": False}))
        wall = duration_s
    finally:
        await conn.close()
    return {
        "rate": rate,
        "offered_rps": round(arrivals / wall, 2),
        # nearest rank: a request never answered (inf) stays inf instead of turning the interpolation into NaN
        **_summary(lat, status, wall, method="inverted_cdf"),
        "generator_late_p99_ms": round(float(np.percentile(late, 99)), 3) if late else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", type=Path, required=True, help="file with one JSON request body per line")
    p.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight; open loop: their cap")
    p.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second (default: closed loop)")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="open loop: seed of the arrival times")
    p.add_argument("--record", type=Path, help="write every request and its outcome as JSON lines here (closed loop: "
                                              "request and response; open loop: arrival, latency, status)")
    p.add_argument("--stop-file", type=Path, help="stop early once this file exists (duration stays the bound)")
    p.add_argument("--client-timeout-s", type=float, default=30.0, help="a request unanswered this long fails")
    p.add_argument("--key-file", type=Path, help="a file holding the API key to send (Authorization: Bearer)")
    p.add_argument("--timings", action="store_true",
                   help="closed loop: report the mean of each timings_ms stage the answers carry")
    a = p.parse_args(argv)
    if not is_loopback(a.url):
        print("loadgen only targets loopback addresses", file=sys.stderr)
        return 2
    bodies = [ln.encode() for ln in a.bodies.read_text().splitlines() if ln.strip()]
    authorization = f"Bearer {a.key_file.read_text().strip()}" if a.key_file else None
    if a.rate is not None:
        if a.rate <= 0:
            print("--rate must be positive", file=sys.stderr)
            return 2
        record: list[str] | None = [] if a.record else None
        res = asyncio.run(run_open_loop(a.url, bodies, rate=a.rate, duration_s=a.duration_s,
                                        max_in_flight=a.concurrency, warmup_s=a.warmup_s, seed=a.seed,
                                        timeout_s=a.client_timeout_s, record=record, authorization=authorization))
    else:
        record = [] if a.record else None
        res = asyncio.run(run_load(a.url, bodies, concurrency=a.concurrency, duration_s=a.duration_s,
                                   warmup_s=a.warmup_s, record=record, stop_file=a.stop_file, timings=a.timings,
                                   authorization=authorization))
    if a.record and record is not None:
        a.record.write_text("\n".join(record) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
