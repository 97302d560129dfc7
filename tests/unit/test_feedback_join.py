"""The join of the served log with the events: matched, unmatched, late, duplicates, several
replicas' files, damaged files, the window, and the Ray Data path's shared query."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.errors import ConfigError, SchemaError
from serving.feedback.duck import parquet_files, readable_files
from serving.feedback.join import (
    JOINED_SCHEMA,
    IdTypes,
    join_logs,
    join_tables,
    parse_time,
)
from tests.unit.log_files import T0, Served, at, events_table, served_table, write_events, write_served

WINDOW_S = 1800.0


def _labels(table: pa.Table, column: str = "click") -> dict[tuple[str, str], int]:
    return {(r["request_id"], r["item_id"]): r[column] for r in table.to_pylist()}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Two answers of one replica, one of another; clicks, a cart, a late click, a duplicate, an unmatched one."""
    write_served(tmp_path, [Served("r1", 0, [("a", 0.9), ("b", 0.5), ("c", 0.1)], user_id="7"),
                            Served("r2", 60, [("a", 0.8), ("d", 0.2)], user_id="8", role="canary", version=2)])
    write_served(tmp_path, [Served("r3", 120, [("e", 0.4)], user_id=None)], replica="host-2")  # no events at all
    write_events(tmp_path, [("r1", "b", "click", 10), ("r1", "b", "click", 11),  # a duplicate
                            ("r1", "b", "cart", 20), ("r2", "d", "click", 60 + WINDOW_S + 1),  # late
                            ("r2", "x", "click", 70),  # an item r2 did not show: unmatched
                            ("nope", "a", "click", 80)])  # an unknown request: unmatched
    write_events(tmp_path, [("r2", "a", "order", 65)], replica="host-2")
    return tmp_path


def test_every_shown_item_is_one_row_labelled_by_the_events_within_the_window(log: Path) -> None:
    result = join_logs(log, None, attribution_window_s=WINDOW_S)
    t = result.table
    assert t.schema == JOINED_SCHEMA
    assert t.num_rows == 6
    assert _labels(t) == {("r1", "a"): 0, ("r1", "b"): 1, ("r1", "c"): 0, ("r2", "a"): 0, ("r2", "d"): 0,
                          ("r3", "e"): 0}
    assert _labels(t, "cart")[("r1", "b")] == 1 and sum(_labels(t, "cart").values()) == 1
    assert _labels(t, "order") == {**{k: 0 for k in _labels(t)}, ("r2", "a"): 1}
    rows = {(r["request_id"], r["item_id"]): r for r in t.to_pylist()}
    assert rows[("r1", "c")]["position"] == 2 and rows[("r1", "c")]["score"] == pytest.approx(0.1)
    assert rows[("r2", "d")]["role"] == "canary" and rows[("r2", "d")]["model_version"] == 2
    assert rows[("r3", "e")]["user_id"] is None
    assert rows[("r2", "a")]["time"] == at(60)
    c = result.counts
    assert (c.served, c.impressions, c.joined, c.late, c.unmatched, c.duplicates, c.damaged_files) == \
        (3, 6, 3, 1, 2, 1, 0)
    assert c.events == c.joined + c.late + c.unmatched


def test_ids_are_cast_to_the_data_sets_types_and_a_non_integer_id_becomes_null(tmp_path: Path) -> None:
    write_served(tmp_path, [Served("r1", 0, [("11", 0.5), ("x", 0.2)], user_id="7")])
    t = join_logs(tmp_path, IdTypes(user=pa.int64(), item=pa.int64())).table
    assert t.column("user_id").type == pa.int64() and t.column("item_id").to_pylist() == [11, None]
    assert join_logs(tmp_path, None).table.column("item_id").to_pylist() == ["11", "x"]


def test_since_and_until_window_the_served_time_and_events_follow_their_answer(log: Path) -> None:
    result = join_logs(log, None, since=at(30), until=at(100), attribution_window_s=WINDOW_S)
    assert set(result.table.column("request_id").to_pylist()) == {"r2"}
    c = result.counts
    # r2's late click and its order count; r1's events belong to an earlier window; the unmatched
    # events of t=70 and t=80 are in this one
    assert (c.served, c.impressions, c.joined, c.late, c.unmatched, c.duplicates) == (1, 2, 1, 1, 2, 0)
    empty = join_logs(log, None, since=at(1000))
    assert empty.table.num_rows == 0 and empty.counts.served == 0 and empty.table.schema == JOINED_SCHEMA


def test_a_longer_attribution_window_labels_the_late_click(log: Path) -> None:
    result = join_logs(log, None, attribution_window_s=WINDOW_S + 10)
    assert _labels(result.table)[("r2", "d")] == 1 and result.counts.late == 0


def test_dot_files_are_never_read(log: Path) -> None:
    (log / "served" / ".served-host-3-20260301T120000Z-000000.parquet.tmp").write_bytes(b"half a file")
    pq.write_table(served_table([Served("hidden", 0, [("z", 1.0)])]), log / "served" / ".hidden.parquet")
    assert len(parquet_files(log / "served")) == 2
    result = join_logs(log, None)
    assert "hidden" not in result.table.column("request_id").to_pylist() and result.counts.damaged_files == 0


def test_a_damaged_file_is_named_left_out_and_counted(log: Path) -> None:
    torn = log / "served" / "served-host-9-20260301T120000Z-000000.parquet"
    torn.write_bytes(b"PAR1 not really")
    foreign = log / "events" / "events-host-9-20260301T120000Z-000000.parquet"
    pq.write_table(pa.table({"something": [1]}), foreign)
    result = join_logs(log, None)
    assert result.counts.damaged_files == 2 and result.table.num_rows == 6
    why = dict(result.damaged)
    assert "not a readable Parquet file" in why[torn] and "lacks the column(s) request_id" in why[foreign]


def test_an_empty_or_wholly_damaged_served_log_is_refused_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no served log under .*served: it holds no"):
        join_logs(tmp_path, None)
    write_events(tmp_path, [("r1", "a", "click", 1)])
    with pytest.raises(SchemaError, match="no served log"):
        join_logs(tmp_path, None)
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "served-h-20260301T120000Z-000000.parquet").write_bytes(b"garbage")
    with pytest.raises(SchemaError, match="every file is damaged.*served-h-20260301T120000Z-000000.parquet"):
        join_logs(tmp_path, None)


def test_no_events_leaves_every_impression_unlabelled(tmp_path: Path) -> None:
    write_served(tmp_path, [Served("r1", 0, [("a", 0.9), ("b", 0.1)])])
    result = join_logs(tmp_path, None)
    assert result.table.column("click").to_pylist() == [0, 0] and result.counts.events == 0


def test_the_tables_in_memory_join_as_the_files_do(log: Path) -> None:
    """The Ray Data path reads the files into tables and runs this same query on them."""
    files = readable_files(log / "served", ["request_id"]).files
    served = pa.concat_tables([pq.read_table(p) for p in files])
    events = pa.concat_tables([pq.read_table(p) for p in parquet_files(log / "events")])
    from_tables = join_tables(served, events, None, since=at(30))
    from_files = join_logs(log, None, since=at(30))
    assert from_tables.table.equals(from_files.table) and from_tables.counts == from_files.counts
    with pytest.raises(SchemaError, match="no served record"):
        join_tables(served.slice(0, 0), events_table([]))


def test_times_read_as_iso_8601_or_as_an_age() -> None:
    assert parse_time("2026-03-01T12:00:00Z") == T0
    assert parse_time("2026-03-01T12:00:00") == T0  # no zone: UTC
    assert parse_time("2026-03-01T13:00:00+01:00") == T0
    assert parse_time("10m", now=T0) == T0 - timedelta(minutes=10)
    assert parse_time("1.5h", now=T0) == T0 - timedelta(minutes=90)
    for bad in ("yesterday", "10q", "", "-5m"):
        with pytest.raises(ConfigError, match="neither ISO 8601"):
            parse_time(bad)
