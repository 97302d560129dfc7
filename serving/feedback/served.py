"""The served record: one row per answer, what the user was shown and by which model.

Owns: :data:`SERVED_SCHEMA` (the served log's Parquet schema), :class:`ServedRow` (built on the
request path from the request and its answer: plain values, cheap to make) and
:func:`served_table` (rows to an Arrow table, on the writer's thread). Must not touch: files, the
queue, metrics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from serving.schemas import RankRequest, RankResponse

__all__ = ["ITEM_TYPE", "ROLES", "SERVED_SCHEMA", "ServedRow", "TIME_TYPE", "served_row", "served_table"]

TIME_TYPE = pa.timestamp("ms", tz="UTC")
ITEM_TYPE = pa.struct([("item_id", pa.string()), ("position", pa.int32()), ("score", pa.float32())])
ROLES = ("live", "canary")  # shadow versions are never shown to users: not in the served log

_json = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps with options makes one per call

SERVED_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("time", TIME_TYPE),
    ("user_id", pa.string()),
    ("context", pa.string()),
    ("scenario", pa.string()),
    ("scenario_version", pa.int64()),
    ("model", pa.string()),
    ("model_version", pa.int64()),
    ("role", pa.string()),
    ("catalogue_version", pa.int64()),
    ("items", pa.list_(ITEM_TYPE)),
    ("degraded", pa.bool_()),
    ("recall", pa.string()),
    ("replica", pa.string()),
])


class ServedRow(NamedTuple):
    """One answer as the served log records it (items as parallel lists: position = index). A
    named tuple: made on the request path, where a frozen dataclass's set-up costs several times more."""

    request_id: str
    time_ms: int  # epoch milliseconds, UTC
    user_id: str | None
    context: str  # JSON object
    scenario: str
    scenario_version: int
    model: str
    model_version: int
    role: str
    catalogue_version: int
    item_ids: list[str]
    scores: list[float]
    degraded: bool
    recall: str


def served_row(req: RankRequest, res: RankResponse, time_ms: int) -> ServedRow:
    """The record of answer ``res`` to request ``req``, served at ``time_ms`` (epoch ms)."""
    return ServedRow(
        request_id=res.request_id, time_ms=time_ms, user_id=None if req.user_id is None else str(req.user_id),
        context=_json(req.context) if req.context else "{}", scenario=res.scenario,
        scenario_version=res.scenario_version, model=res.model_name, model_version=res.model_version,
        role=res.model_role, catalogue_version=res.catalogue_version,
        item_ids=[str(it.item_id) for it in res.items], scores=[it.score for it in res.items],
        degraded=res.degraded, recall=res.recall,
    )


def _items(rows: Sequence[ServedRow]) -> pa.Array:
    """The ``items`` column: one list of (item_id, position, score) per row, built flat."""
    lens = np.fromiter((len(r.item_ids) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    positions = np.arange(int(offsets[-1]), dtype=np.int32) - np.repeat(offsets[:-1], lens)
    ids = pa.array([i for r in rows for i in r.item_ids], pa.string())
    scores = pa.array(np.fromiter((s for r in rows for s in r.scores), dtype=np.float32, count=int(offsets[-1])))
    values = pa.StructArray.from_arrays([ids, pa.array(positions), scores], fields=list(ITEM_TYPE))
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=pa.list_(ITEM_TYPE))


def served_table(rows: Sequence[ServedRow], replica: str) -> pa.Table:
    """``rows`` as a table of :data:`SERVED_SCHEMA`."""
    def col(name: str) -> list[object]:
        return [getattr(r, name) for r in rows]

    return pa.Table.from_arrays([
        pa.array(col("request_id"), pa.string()), pa.array(col("time_ms"), pa.int64()).cast(TIME_TYPE),
        pa.array(col("user_id"), pa.string()), pa.array(col("context"), pa.string()),
        pa.array(col("scenario"), pa.string()), pa.array(col("scenario_version"), pa.int64()),
        pa.array(col("model"), pa.string()), pa.array(col("model_version"), pa.int64()),
        pa.array(col("role"), pa.string()), pa.array(col("catalogue_version"), pa.int64()), _items(rows),
        pa.array(col("degraded"), pa.bool_()), pa.array(col("recall"), pa.string()),
        pa.array([replica] * len(rows), pa.string()),
    ], schema=SERVED_SCHEMA)
