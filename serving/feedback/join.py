"""The join: what was served, and what users did with it, as labelled impressions.

Owns: :func:`join_logs` (the served log and the events of one log folder, read with DuckDB) and
:func:`join_tables` (the same join over tables already in memory: what the Ray Data path reads
on a cluster), both through one query (:func:`_joined`); what *matched*, *unmatched*, *late* and
*duplicate* mean, and the counts; the reading of ``--since``/``--until`` times
(:func:`parse_time`). Must not touch: the data set's versions (``serving.data.store``), the
log's writing, serving.

Semantics. One output row per item shown in a served record whose time is in ``[since, until)``.
An event (``request_id``, ``item_id``, ``type``; the same triple posted twice counts once, at its
earliest time: a *duplicate*) *matches* when its ``(request_id, item_id)`` was served, at any
time; it labels its impression (``click``, ``cart`` or ``order`` = 1) when its time is at most
``attribution_window_s`` after the served time, and is *late* (counted, not labelled) otherwise.
An event whose impression was served outside the window belongs to another window's join and is
not counted here; an event that matches nothing is *unmatched* when its own time is in the window.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from serving.data.impressions import lenient_ids
from serving.data.schema import Schema
from serving.errors import ConfigError, SchemaError
from serving.feedback.duck import LogFiles, connect, readable_files

if TYPE_CHECKING:
    import duckdb

__all__ = ["EMPTY_EVENTS", "EVENT_TYPES", "JOINED_SCHEMA", "EVENTS_COLUMNS", "SERVED_COLUMNS", "IdTypes", "JoinCounts",
           "JoinResult", "join_logs", "join_tables", "log_files", "parse_time", "with_damaged"]

EVENT_TYPES = ("click", "cart", "order")
SERVED_COLUMNS = ("request_id", "time", "user_id", "scenario", "model", "model_version", "role", "items")
EVENTS_COLUMNS = ("request_id", "item_id", "type", "time")
DEFAULT_ATTRIBUTION_WINDOW_S = 1800.0
_TIME = pa.timestamp("ms", tz="UTC")
EMPTY_EVENTS = pa.table({"request_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string()),
                         "type": pa.array([], pa.string()), "time": pa.array([], _TIME)})
JOINED_SCHEMA = pa.schema([("request_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
                           ("position", pa.int32()), ("score", pa.float32()),
                           *((t, pa.int8()) for t in EVENT_TYPES),
                           ("model", pa.string()), ("model_version", pa.int64()), ("role", pa.string()),
                           ("scenario", pa.string()), ("time", _TIME)])


@dataclass(frozen=True)
class IdTypes:
    """The id types of a data set (``pa.string()`` or ``pa.int64()``): what the log's text ids are cast to."""

    user: pa.DataType = field(default_factory=pa.string)
    item: pa.DataType = field(default_factory=pa.string)


@dataclass(frozen=True)
class JoinCounts:
    """What a join read and made (see the module docstring for each word)."""

    served: int = 0  # served records in the window
    impressions: int = 0  # items shown in them: the joined table's rows
    events: int = 0  # distinct events counted here: joined + late + unmatched
    joined: int = 0
    unmatched: int = 0
    late: int = 0
    duplicates: int = 0
    damaged_files: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.served:,} served records, {self.impressions:,} impressions, {self.events:,} events: "
                f"{self.joined:,} joined, {self.unmatched:,} unmatched, {self.late:,} late"
                + (f", {self.duplicates:,} duplicates" if self.duplicates else "")
                + (f"; {self.damaged_files:,} damaged file(s) left out" if self.damaged_files else ""))


@dataclass(frozen=True)
class JoinResult:
    """The joined impressions (:data:`JOINED_SCHEMA`, ids cast to the data set's types) and the counts."""

    table: pa.Table
    counts: JoinCounts
    damaged: tuple[tuple[Path, str], ...] = ()


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A ``--since``/``--until`` value: ISO 8601 (no zone: UTC) or an age before ``now``: ``90s``, ``10m``, ``2h``, ``1d``.

    Raises:
        ConfigError: neither form.
    """
    now = now or datetime.now(UTC)
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if age:
        seconds = float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise ConfigError(f"time {text!r} is neither ISO 8601 (2026-03-01T12:00:00Z) nor an age (90s, 10m, 2h, 1d)",
                          field="since") from err
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def join_logs(log_root: Path, schema: Schema | IdTypes | None = None, since: datetime | None = None,
              until: datetime | None = None, *,
              attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> JoinResult:
    """Join ``<log_root>/served/`` with ``<log_root>/events/`` (DuckDB over their whole Parquet files).

    Args:
        log_root: the data set's log folder.
        schema: the ids' types (:class:`IdTypes`); a :class:`Schema` or None keeps them as text (a
            schema names the id columns, not their types: the data set's tables know those).
        since, until: the served time window (None: unbounded).
        attribution_window_s: how long after the served time an event still labels its impression.

    Raises:
        SchemaError: no served record at all under ``log_root`` (nothing was logged, or every file is damaged).
    """
    served, events = log_files(Path(log_root))
    con = connect()
    con.read_parquet([str(p) for p in served.files]).select(*SERVED_COLUMNS).create_view("served_raw")
    if events.files:
        con.read_parquet([str(p) for p in events.files]).select(*EVENTS_COLUMNS).create_view("events_raw")
    else:
        con.register("events_raw", EMPTY_EVENTS)
    return with_damaged(_joined(con, _id_types(schema), since, until, attribution_window_s),
                        served.damaged + events.damaged)


def log_files(log_root: Path) -> tuple[LogFiles, LogFiles]:
    """The served log's and the events' readable files, and their damaged ones.

    Raises:
        SchemaError: no readable served file (nothing was logged, or every file is damaged).
    """
    served = readable_files(log_root / "served", SERVED_COLUMNS)
    events = readable_files(log_root / "events", EVENTS_COLUMNS)
    if not served.files:
        raise SchemaError(_no_served(served), hint="move the damaged files out of the folder, then join again"
                          if served.damaged else "serve with the log on, send requests, then join")
    return served, events


def with_damaged(result: JoinResult, damaged: tuple[tuple[Path, str], ...]) -> JoinResult:
    """``result`` naming the files its reading left out as damaged."""
    return JoinResult(result.table, JoinCounts(**{**result.counts.to_json(), "damaged_files": len(damaged)}), damaged)


def join_tables(served: pa.Table, events: pa.Table, schema: Schema | IdTypes | None = None,
                since: datetime | None = None, until: datetime | None = None, *,
                attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> JoinResult:
    """:func:`join_logs` over tables in memory (the served records and the events, their contract schemas)."""
    if served.num_rows == 0:
        raise SchemaError("no served record to join")
    con = connect()
    con.register("served_raw", served.select(list(SERVED_COLUMNS)))
    con.register("events_raw", events.select(list(EVENTS_COLUMNS)))
    return _joined(con, _id_types(schema), since, until, attribution_window_s)


def _no_served(served: LogFiles) -> str:
    if served.damaged:
        return f"no readable served log under {served.folder}: every file is damaged ({served.describe_damaged()})"
    return f"no served log under {served.folder}: it holds no *.parquet file"


def _id_types(schema: Schema | IdTypes | None) -> IdTypes:
    return schema if isinstance(schema, IdTypes) else IdTypes()


_SHOWN = """
CREATE TEMP TABLE shown AS
SELECT s.request_id, s.user_id, it.item_id, it.position, it.score, s.model, s.model_version, s.role,
       s.scenario, epoch_ms(s.time) AS t_ms
FROM served_raw s, unnest(s.items) AS u(it)
"""
_EVENTS = """
CREATE TEMP TABLE ev AS
SELECT e.request_id, e.item_id, e.type, e.t_ms, e.n, k.t_ms AS served_ms
FROM (SELECT request_id, item_id, type, min(epoch_ms(time)) AS t_ms, count(*) AS n
      FROM events_raw GROUP BY request_id, item_id, type) e
LEFT JOIN (SELECT request_id, item_id, min(t_ms) AS t_ms FROM shown GROUP BY request_id, item_id) k
       ON e.request_id = k.request_id AND e.item_id = k.item_id
"""
_COUNTS = """
SELECT
  (SELECT count(*) FROM served_raw WHERE epoch_ms(time) >= $lo AND epoch_ms(time) < $hi),
  count(*) FILTER (WHERE served_ms >= $lo AND served_ms < $hi AND t_ms - served_ms <= $win),
  count(*) FILTER (WHERE served_ms IS NULL AND t_ms >= $lo AND t_ms < $hi),
  count(*) FILTER (WHERE served_ms >= $lo AND served_ms < $hi AND t_ms - served_ms > $win),
  coalesce(sum(n - 1) FILTER (WHERE (served_ms IS NULL AND t_ms >= $lo AND t_ms < $hi)
                               OR (served_ms >= $lo AND served_ms < $hi)), 0)
FROM ev
"""
_OUT = """
SELECT sh.request_id, sh.user_id, sh.item_id, sh.position::INTEGER AS position, sh.score::FLOAT AS score,
       coalesce(l.click, 0)::TINYINT AS click, coalesce(l.cart, 0)::TINYINT AS cart,
       coalesce(l."order", 0)::TINYINT AS "order", sh.model, sh.model_version::BIGINT AS model_version, sh.role,
       sh.scenario, sh.t_ms
FROM shown sh
LEFT JOIN (SELECT request_id, item_id, max((type = 'click')::INT) AS click, max((type = 'cart')::INT) AS cart,
                  max((type = 'order')::INT) AS "order"
           FROM ev WHERE served_ms IS NOT NULL AND t_ms - served_ms <= $win GROUP BY request_id, item_id) l
       ON sh.request_id = l.request_id AND sh.item_id = l.item_id
WHERE sh.t_ms >= $lo AND sh.t_ms < $hi
ORDER BY sh.t_ms, sh.request_id, sh.position
"""


def _joined(con: duckdb.DuckDBPyConnection, ids: IdTypes, since: datetime | None, until: datetime | None,
            attribution_window_s: float) -> JoinResult:
    """The one query both paths run, over the views ``served_raw`` and ``events_raw`` of ``con``."""
    import duckdb

    params: dict[str, Any] = {"lo": _ms(since, -(2 ** 62)), "hi": _ms(until, 2 ** 62),
                              "win": int(attribution_window_s * 1000)}
    try:
        con.execute(_SHOWN)
        con.execute(_EVENTS)
        (served, joined, unmatched, late, duplicates), = con.sql(_COUNTS, params=params).fetchall()
        out = con.sql(_OUT, params=params).to_arrow_table()
    except duckdb.Error as err:
        raise SchemaError(f"the served log or the events do not read: {err}",
                          hint="a file the log writer did not write whole? move it out of the folder") from err
    times = pc.cast(out.column("t_ms"), pa.int64()).cast(pa.timestamp("ms")).cast(_TIME)
    table = out.drop_columns(["t_ms"]).append_column("time", times)
    table = table.cast(JOINED_SCHEMA)
    table = table.set_column(1, "user_id", lenient_ids(table.column("user_id").combine_chunks(), ids.user)) \
        .set_column(2, "item_id", lenient_ids(table.column("item_id").combine_chunks(), ids.item))
    counts = JoinCounts(served=int(served), impressions=table.num_rows, events=int(joined + unmatched + late),
                        joined=int(joined), unmatched=int(unmatched), late=int(late), duplicates=int(duplicates))
    return JoinResult(table, counts)


def _ms(when: datetime | None, default: int) -> int:
    if when is None:
        return default
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    return int(when.timestamp() * 1000)
