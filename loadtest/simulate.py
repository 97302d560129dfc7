"""A simulator of users: rank requests for the demo's users, clicks drawn from the demo's hidden click model.

Owns: playing users against a running server from outside (``rankserve simulate``): open-loop rank
requests (Poisson arrivals, as ``loadtest.loadgen``), a click drawn for every item shown from the
demo generator's own truth (:meth:`training.data.Marketplace.oracle_logit`), the clicks posted to
``POST /v1/events``, the drift of tastes (:class:`Drift`), and the online figures of a run (CTR
per time bucket and per model version, and the counts). Must not touch: the server (only its HTTP
API), the data set, models. Nothing under ``serving/`` imports this module.

The generator draws a click as Bernoulli(sigmoid(oracle logit)) with no position effect, so the
simulator applies none: each item shown is clicked with its own probability, wherever it stands.

Drift: at ``drift_at_s`` the users of a share of the regions (seeded) permute their category
preferences: the region x category table of the click model is read through a permutation of the
categories for them. A ranker's ``cross(user.region, item.category)`` can learn the new tastes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.loadgen import client
from training.data import Marketplace

__all__ = ["Drift", "SimulationConfig", "Tally", "Tastes", "run_simulation", "simulate"]

EVENTS_PER_CALL = 1000  # the events endpoint takes up to this many a call


@dataclass(frozen=True)
class Drift:
    """Which users' tastes shift (those of ``regions``) and how (category ``c`` is liked as ``perm[c]`` was)."""

    regions: frozenset[int]
    perm: np.ndarray

    @classmethod
    def of(cls, mp: Marketplace, *, seed: int, share: float) -> Drift:
        """The drift of ``share`` of ``mp``'s regions (at least one), with a seeded permutation of its
        categories that moves every one of them (code 0, unknown, stays)."""
        if not 0 < share <= 1:
            raise ValueError(f"the drifted share must be in (0, 1], got {share}")
        rng = np.random.default_rng([seed, 11])
        n_regions, n_cats = mp.t1.shape[0] - 1, mp.t1.shape[1] - 1
        regions = rng.choice(np.arange(1, n_regions + 1), max(1, round(share * n_regions)), replace=False)
        shift = rng.integers(1, n_cats) if n_cats > 1 else 0  # a cyclic shift of a shuffled order: no fixed point
        order = rng.permutation(np.arange(1, n_cats + 1))
        perm = np.arange(n_cats + 1)
        perm[order] = np.roll(order, int(shift))
        return cls(frozenset(int(r) for r in regions), perm)


class Tastes:
    """P(click) of users and items: the generator's truth, drifted for :class:`Drift`'s users once ``drifted``."""

    def __init__(self, mp: Marketplace, drift: Drift | None) -> None:
        self.mp = mp
        self.drift = drift
        self._shifted = replace(mp, t1=mp.t1[:, drift.perm]) if drift is not None else mp
        self._in = np.zeros(mp.t1.shape[0], bool)
        if drift is not None:
            self._in[list(drift.regions)] = True

    def probability(self, users: np.ndarray, items: np.ndarray, *, drifted: bool = False) -> np.ndarray:
        """P(click) float64 [n] of ``users[j]`` (rows) shown ``items[j]`` (rows)."""
        logit = self.mp.oracle_logit(users, items).astype(np.float64)
        if drifted and self.drift is not None:
            moved = self._in[self.mp.user_cat[users, 0]]
            if moved.any():
                logit[moved] = self._shifted.oracle_logit(users[moved], items[moved])
        return 1.0 / (1.0 + np.exp(-logit))


@dataclass
class _Cell:
    impressions: int = 0
    clicks: int = 0

    def add(self, shown: int, clicked: int) -> None:
        self.impressions += shown
        self.clicks += clicked

    def to_json(self) -> dict[str, Any]:
        ctr = self.clicks / self.impressions if self.impressions else None
        return {"impressions": self.impressions, "clicks": self.clicks, "ctr": None if ctr is None else round(ctr, 5)}


@dataclass
class Tally:
    """What a run saw: counts, impressions and clicks per time bucket and model version, and when
    each version first answered (Unix time)."""

    bucket_s: float
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests_sent", "answered", "failed", "overflow", "impressions", "clicks", "events_posted",
         "events_accepted", "event_calls_failed"), 0))
    buckets: dict[int, dict[str, _Cell]] = field(default_factory=dict)
    versions: dict[str, _Cell] = field(default_factory=dict)
    first_answer: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # failed rank requests by HTTP status, or the error's type

    def failed(self, why: str) -> None:
        self.counts["failed"] += 1
        self.failures[why] = self.failures.get(why, 0) + 1

    def answer(self, t_s: float, model: str, shown: int, clicked: int, at: float) -> None:
        """One answer ``t_s`` seconds into the run by ``model`` (``name vN``): ``shown`` items, ``clicked`` of them."""
        self.counts["answered"] += 1
        self.counts["impressions"] += shown
        self.counts["clicks"] += clicked
        cells = self.buckets.setdefault(int(t_s // self.bucket_s), {})
        cells.setdefault("all", _Cell()).add(shown, clicked)
        cells.setdefault(model, _Cell()).add(shown, clicked)
        self.versions.setdefault(model, _Cell()).add(shown, clicked)
        self.first_answer.setdefault(model, at)

    def to_json(self) -> dict[str, Any]:
        buckets = [{"t_s": round(b * self.bucket_s, 3), **cells["all"].to_json(),
                    "by_model": {m: c.to_json() for m, c in sorted(cells.items()) if m != "all"}}
                   for b, cells in sorted(self.buckets.items())]
        return {"counts": dict(self.counts), "failures": dict(sorted(self.failures.items())),
                "bucket_s": self.bucket_s, "buckets": buckets,
                "by_model": {m: c.to_json() for m, c in sorted(self.versions.items())},
                "first_answer": {m: round(t, 3) for m, t in sorted(self.first_answer.items())}}


@dataclass(frozen=True)
class SimulationConfig:
    """A run: ``rate`` requests/s for ``duration_s``, tastes drifting at ``drift_at_s`` (None: never)."""

    rate: float
    duration_s: float
    drift_at_s: float | None = None
    seed: int = 0  # the users asked for, the clicks drawn and the drift
    k: int = 10  # items asked for per request
    drift_share: float = 0.5  # of the regions
    bucket_s: float = 30.0  # the CTR time buckets' width
    max_in_flight: int = 256  # an arrival over this many unanswered requests is not sent (counted: overflow)
    flush_s: float = 0.5  # how often the clicks drawn are posted
    scenario: str | None = None  # the scenario asked for (None: the server's default)


class _Events:
    """Click events waiting to be posted, posted in calls of at most :data:`EVENTS_PER_CALL`."""

    def __init__(self, url: str, tally: Tally, authorization: str | None) -> None:
        self._conn = client(url, 4, authorization=authorization)
        self._tally = tally
        self.pending: list[dict[str, Any]] = []

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:EVENTS_PER_CALL], self.pending[EVENTS_PER_CALL:]
            self._tally.counts["events_posted"] += len(batch)
            try:
                code, answer = await self._conn.send(json.dumps({"events": batch}).encode())
                body = answer.as_json() if code == 202 else {}
            except Exception:  # noqa: BLE001 - a failed call is counted, the run goes on
                code, body = "error", {}
            if code == 202:
                self._tally.counts["events_accepted"] += int(body.get("accepted", len(batch)))
            else:
                self._tally.counts["event_calls_failed"] += 1

    async def close(self) -> None:
        await self._conn.close()


def _answer_rows(answer: Mapping[str, Any]) -> tuple[list[Any], str]:
    """The items (ids, in shown order) and the model (``name vN``) of a rank answer."""
    model = answer.get("model") or {}
    return [it["item_id"] for it in answer.get("items", [])], f"{model.get('name', '?')} v{model.get('version', '?')}"


async def run_simulation(base_url: str, tastes: Tastes, cfg: SimulationConfig, *, stop: asyncio.Event | None = None,
                         authorization: str | None = None) -> dict[str, Any]:
    """Play users against the server at ``base_url`` (see the module docstring); returns the run's figures."""
    stop = stop or asyncio.Event()
    rng = np.random.default_rng([cfg.seed, 1])
    clicks_rng = np.random.default_rng([cfg.seed, 2])
    tally = Tally(cfg.bucket_s)
    conn = client(f"{base_url}/v1/rank", cfg.max_in_flight, authorization=authorization)
    events = _Events(f"{base_url}/v1/events", tally, authorization)
    n_users = tastes.mp.user_cat.shape[0]
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    epoch = time.time() - t0  # + perf_counter(): Unix time
    run = uuid.uuid4().hex[:10]  # request ids unique to this run: a log holds earlier runs' answers too

    async def one(user: int, n: int) -> None:
        body: dict[str, Any] = {"user_id": user, "k": cfg.k, "request_id": f"sim-{run}-{n}"}
        if cfg.scenario:
            body["scenario"] = cfg.scenario
        try:
            code, answer = await conn.send(json.dumps(body).encode())
            got = answer.as_json() if code == 200 else None
        except Exception as err:  # noqa: BLE001 - every failure is counted, none stops the run
            tally.failed(type(err).__name__)
            return
        if got is None:
            tally.failed(str(code))
            return
        _record(got, user, time.perf_counter() - t0, tastes, cfg, clicks_rng, tally, events)

    async def flusher() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.flush_s)
            await events.flush()

    flushing = asyncio.create_task(flusher())
    try:
        await _arrivals(cfg, rng, stop, t0, lambda n: _start(one(int(rng.integers(0, n_users)), n), tasks, cfg, tally))
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    finally:
        stop.set()
        await flushing
        await events.flush()
        await conn.close()
        await events.close()
    out = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "started": round(epoch + t0, 3),
           "wall_s": round(time.perf_counter() - t0, 3), **tally.to_json()}
    out["drifted_regions"] = sorted(tastes.drift.regions) if tastes.drift is not None else []
    return out


def _start(coro: Any, tasks: set[asyncio.Task], cfg: SimulationConfig, tally: Tally) -> None:
    tally.counts["requests_sent"] += 1
    if len(tasks) >= cfg.max_in_flight:
        tally.counts["overflow"] += 1
        coro.close()
        return
    task = asyncio.create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _arrivals(cfg: SimulationConfig, rng: np.random.Generator, stop: asyncio.Event, t0: float,
                    send: Callable[[int], None]) -> None:
    """Call ``send(n)`` at Poisson arrival times of ``cfg.rate`` per second until ``cfg.duration_s`` or ``stop``."""
    due, n = t0, 0
    while not stop.is_set():
        due += rng.exponential(1.0 / cfg.rate)
        if due - t0 >= cfg.duration_s:
            return
        wait = due - time.perf_counter()
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
        send(n)
        n += 1


def _record(got: Mapping[str, Any], user: int, t_s: float, tastes: Tastes, cfg: SimulationConfig,
            rng: np.random.Generator, tally: Tally, events: _Events) -> None:
    """Draw the clicks of one answer, count them, queue their events."""
    items, model = _answer_rows(got)
    drifted = cfg.drift_at_s is not None and t_s >= cfg.drift_at_s
    rows = np.asarray(items, np.int64)
    clicked = rng.random(rows.size) < tastes.probability(np.full(rows.size, user, np.int64), rows, drifted=drifted)
    now = time.time()
    tally.answer(t_s, model, rows.size, int(clicked.sum()), now)
    rid = got.get("request_id")
    for item in rows[clicked].tolist():
        events.pending.append({"request_id": rid, "item_id": item, "type": "click", "ts": round(now, 3)})


def simulate(base_url: str, mp: Marketplace, cfg: SimulationConfig, *, out: Path | None = None,
             authorization: str | None = None) -> dict[str, Any]:
    """``rankserve simulate``: run the simulation (Ctrl-C stops it early and cleanly: what was sent
    is still counted and the queued events posted), write the figures to ``out`` (JSON) and return them."""
    tastes = Tastes(mp, Drift.of(mp, seed=cfg.seed, share=cfg.drift_share) if cfg.drift_at_s is not None else None)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            return await run_simulation(base_url, tastes, cfg, stop=stop, authorization=authorization)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    res = asyncio.run(main())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    return res
