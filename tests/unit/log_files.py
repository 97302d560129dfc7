"""Served records and events written as Parquet files of exactly the log's schemas, for the join's
and the judge's unit tests (the log writer's own tests check that it writes these schemas)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TIME = pa.timestamp("ms", tz="UTC")
ITEM = pa.struct([("item_id", pa.string()), ("position", pa.int32()), ("score", pa.float32())])
SERVED = pa.schema([("request_id", pa.string()), ("time", TIME), ("user_id", pa.string()), ("context", pa.string()),
                    ("scenario", pa.string()), ("scenario_version", pa.int64()), ("model", pa.string()),
                    ("model_version", pa.int64()), ("role", pa.string()), ("catalogue_version", pa.int64()),
                    ("items", pa.list_(ITEM)), ("degraded", pa.bool_()), ("recall", pa.string()),
                    ("replica", pa.string())])
EVENTS = pa.schema([("request_id", pa.string()), ("item_id", pa.string()), ("type", pa.string()), ("time", TIME),
                    ("received", TIME), ("replica", pa.string())])
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Served:
    """One answer: ``items`` as (item_id, score), shown in that order."""

    request_id: str
    t: float  # seconds after T0
    items: list[tuple[str, float]]
    user_id: str | None = "u1"
    model: str = "ranker"
    version: int = 1
    role: str = "live"
    scenario: str = "home"
    context: dict = field(default_factory=dict)


def served_table(records: list[Served]) -> pa.Table:
    rows = [{"request_id": r.request_id, "time": at(r.t), "user_id": r.user_id, "context": json.dumps(r.context),
             "scenario": r.scenario, "scenario_version": 1, "model": r.model, "model_version": r.version,
             "role": r.role, "catalogue_version": 1,
             "items": [{"item_id": i, "position": p, "score": s} for p, (i, s) in enumerate(r.items)],
             "degraded": False, "recall": "ann", "replica": "host-1"} for r in records]
    return pa.Table.from_pylist(rows, schema=SERVED)


def events_table(events: list[tuple[str, str, str, float]]) -> pa.Table:
    """``(request_id, item_id, type, t)`` each."""
    rows = [{"request_id": r, "item_id": i, "type": t, "time": at(s), "received": at(s), "replica": "host-1"}
            for r, i, t, s in events]
    return pa.Table.from_pylist(rows, schema=EVENTS)


def write_served(root: Path, records: list[Served], *, replica: str = "host-1", seq: int = 0) -> Path:
    return _write(root / "served", f"served-{replica}-20260301T120000Z-{seq:06d}.parquet", served_table(records))


def write_events(root: Path, events: list[tuple[str, str, str, float]], *, replica: str = "host-1",
                 seq: int = 0) -> Path:
    return _write(root / "events", f"events-{replica}-20260301T120000Z-{seq:06d}.parquet", events_table(events))


def _write(folder: Path, name: str, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder / name
