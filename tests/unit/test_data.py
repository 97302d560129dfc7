"""Data set import: the schema's example, Parquet and CSV read back exactly, every refusal named
(file, column, row) with nothing written, unknown users and items dropped and counted, write-once
versions and the live pointer, ``rankserve data import | list``."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import serving.data.schema as schema_module
import serving.data.store as store_module
from serving.cli import main
from serving.config import Settings
from serving.data.schema import parse_schema
from serving.data.store import DataSet, DataSetStore
from serving.errors import ConfigError, IntegrityError, SchemaError, SetupError, ValidationError
from tests.unit import data_files as data
from tests.unit.data_files import IMPRESSIONS, ITEMS, KEPT_ROWS, USERS


def _import(tmp_path: Path, kind: str = "parquet", name: str = "shop", **tables: dict) -> tuple[DataSet, object]:
    files = data.write(tmp_path / f"in-{kind}", kind, **tables)
    ds = DataSetStore(tmp_path / "data").dataset(name)
    return ds, ds.import_files(data.schema(), files.items, files.users, files.impressions)


def test_the_schema_modules_example_is_accepted_as_written() -> None:
    doc = schema_module.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("    items:\n"):doc.index("\nA numeric column may")])
    schema = parse_schema(example)
    assert schema.items.vectors == {"content": 64}
    assert schema.items.groups == ("store", "category")
    assert schema.context.sequences["recent"].max_len == 20
    assert schema.impressions.time == "ts"


def test_a_parquet_import_reads_back_codes_fills_standardisation_vectors_and_ids(tmp_path: Path) -> None:
    ds, _ = _import(tmp_path)
    t = ds.tables()
    assert (t.n_items, t.n_users, t.cold_row) == (10, 5, 5)
    assert t.item_ids.tolist() == ITEMS["sku"] and t.item_ids.dtype == object
    assert t.user_ids.tolist() == USERS["customer"] and t.user_ids.dtype == np.int64
    # categorical: sorted vocabulary, codes from 1, a null -> 0
    assert t.vocab["item.brand"] == {"a": 1, "b": 2, "c": 3}
    assert t.item_cat[:, t.cat_col("item.brand")].tolist() == [2, 1, 3, 1, 2, 0, 3, 3, 1, 2]
    assert t.vocab["item.category"] == {1: 1, 2: 2, 3: 3}
    assert t.user_cat[:, t.cat_col("user.tier")].tolist() == [1, 2, 1, 0, 3, 0]  # the cold row last
    # numeric: nulls filled with the median (price, age) or the declared fill (rating), then standardised
    np.testing.assert_allclose(t.item_num[:, t.num_col("item.price")], data.standardised(ITEMS["price"], 55.0),
                               rtol=1e-6)
    np.testing.assert_allclose(t.item_num[:, t.num_col("item.rating")], data.standardised(ITEMS["rating"], 0.5),
                               rtol=1e-6)
    np.testing.assert_allclose(t.user_num[:5, t.num_col("user.age")], data.standardised(USERS["age"], 35.0),
                               rtol=1e-6)
    np.testing.assert_array_equal(t.item_vec[:, t.item_vec_slice("content")],
                                  np.array(ITEMS["content"], np.float32))
    logged = np.log1p(np.array(ITEMS["sales_7d"], np.float64))
    np.testing.assert_allclose(t.popularity, (logged - logged.mean()) / logged.std(), rtol=1e-6)
    # the cold-start user: codes 0, zeros
    assert not t.user_cat[t.cold_row].any() and not t.user_num[t.cold_row].any()
    assert t.user_row(103) == (3, False) and t.user_row(555) == (5, True)


def test_the_import_reports_fills_and_the_impressions_it_dropped(tmp_path: Path) -> None:
    _, report = _import(tmp_path)
    lines = report.lines()  # type: ignore[attr-defined]
    assert lines[:3] == ["items.parquet: 10 rows read, 10 kept", "users.parquet: 5 rows read, 5 kept",
                         "impressions.parquet: 12 rows read, 7 kept"]
    assert "impressions.parquet: 5 impression(s) dropped: 3 name an unknown user, 3 an unknown item" in lines
    assert "items.price: 2 null(s) filled with the median 55" in lines
    assert "items.rating: 1 null(s) filled with the declared fill 0.5" in lines
    assert "users.age: 1 null(s) filled with the median 35" in lines
    assert "items.brand: 1 null(s) take the out-of-vocabulary code 0" in lines
    assert lines[-1].startswith("data set 'shop': version 1 written to ") and lines[-1].endswith("; it is live")


def test_impressions_keep_rows_of_known_users_and_items_with_their_context_encoded(tmp_path: Path) -> None:
    ds, _ = _import(tmp_path)
    t, imp = ds.tables(), ds.impressions()
    assert imp.num_rows == len(KEPT_ROWS)
    users = [IMPRESSIONS["customer"][i] for i in KEPT_ROWS]
    items = [IMPRESSIONS["sku"][i] for i in KEPT_ROWS]
    assert imp.column("user_row").to_pylist() == [USERS["customer"].index(u) for u in users]
    assert imp.column("item_row").to_pylist() == [ITEMS["sku"].index(i) for i in items]
    assert imp.column("label").to_pylist() == [IMPRESSIONS["clicked"][i] for i in KEPT_ROWS]
    assert imp.column("time").to_pylist() == KEPT_ROWS
    # the context's vocabulary comes from the impressions (all of them, dropped rows too)
    assert t.vocab["context.device"] == {"android": 1, "ios": 2, "web": 3}
    assert imp.column("context.device").to_pylist() == [2, 3, 2, 3, 2, 2, 1]
    # sequences: item rows, unknown ids left out, the last max_len (3) kept
    assert imp.column("context.recent").to_pylist() == [[1, 2], [], [], [0], [3, 3], [2], []]
    assert ds.encoding()["impressions"]["context"]["recent"]["unknown_ids"] == 2
    # the same context from a request encodes as the import did
    for row, i in enumerate(KEPT_ROWS):
        hour = IMPRESSIONS["hour_of_day"][i]
        enc = t.encode_context({"hour": hour, "device": IMPRESSIONS["device"][i], "recent": IMPRESSIONS["recent"][i]})
        assert enc.numeric["hour"] == pytest.approx(imp.column("context.hour")[row].as_py(), rel=1e-6)
        assert enc.categorical["device"] == imp.column("context.device")[row].as_py()
        assert enc.sequences["recent"].tolist() == imp.column("context.recent")[row].as_py()


def test_context_fields_the_impressions_lack_are_named_then_read_as_absent_as_training_read_them(
        tmp_path: Path) -> None:
    """Training gave the models an absent value of a context field the impressions have no column
    of: serving checks a request's value of it, then reads it as absent too."""
    lacking, report = _import(tmp_path, name="lacking",
                              impressions={k: v for k, v in IMPRESSIONS.items() if k not in ("recent", "device")})
    notes = [line for line in report.lines() if "have no column" in line]  # type: ignore[attr-defined]
    assert [n.split(":")[0] for n in notes] == ["context.device", "context.recent"]
    assert "serving reads a request's value of it as absent" in notes[0]
    assert "the items its user clicked before it" in notes[1]  # a sequence is derived from the log instead
    full, _ = _import(tmp_path, name="full")
    asked = {"device": "ios", "recent": ["s1", "s2"], "hour": 12.0}
    held, absent = full.tables().encode_context(asked), lacking.tables().encode_context(asked)
    assert held.categorical["device"] > 0 and held.sequences["recent"].tolist() == [1, 2]
    assert absent.categorical == {"device": 0}
    assert absent.sequences["recent"].tolist() == [1, 2]  # derived, so held: serving reads it
    assert absent.numeric == held.numeric and held.numeric["hour"] != 0.0  # hour is in both files
    with pytest.raises(ValidationError, match="context.device must be"):
        lacking.tables().encode_context({"device": ["ios"]})  # still checked


def _clicks_before(users: list, items: list, labels: list, times: list | None, max_len: int) -> list[list]:
    """The reference: per impression, the items its user clicked at an earlier time (or row), oldest first."""
    out = []
    for r in range(len(users)):
        earlier = [j for j in range(len(users))
                   if users[j] == users[r] and labels[j] == 1 and items[j] is not None and users[r] is not None
                   and (times[j] < times[r] if times is not None else j < r)]
        earlier.sort(key=lambda j: (times[j] if times is not None else 0, j))
        out.append([items[j] for j in earlier][-max_len:] if users[r] is not None else [])
    return out


@pytest.mark.parametrize("timed", [True, False])
def test_a_sequence_the_impressions_lack_is_each_users_clicks_before_the_impression(timed: bool) -> None:
    """No column of ``recent``: each impression's is the last max_len items its user clicked
    strictly before it (an earlier time, ties excluded; without a time, an earlier row)."""
    from serving.data.impressions import _Clicks
    rng = np.random.default_rng(3)
    n = 400
    users = [None if rng.random() < 0.05 else int(u) for u in rng.integers(0, 12, n)]
    items = [None if rng.random() < 0.05 else int(i) for i in rng.integers(0, 30, n)]
    labels = rng.integers(0, 2, n).tolist()
    times = rng.integers(0, 40, n).tolist() if timed else None  # many ties
    clicks = _Clicks(pa.array(users, pa.int32()), pa.array(items, pa.int32()), pa.array(labels, pa.int8()),
                     None if times is None else pa.array(times, pa.int64()).cast(pa.timestamp("s")),
                     "ts" if timed else None)
    rows, held = clicks.before(5)
    expected = _clicks_before(users, items, labels, times, 5)
    assert rows.to_pylist() == expected
    assert held == sum(1 for e in expected if e) and 0 < held < n


def test_csv_ids_keep_their_text_unless_every_id_is_written_as_an_integer(tmp_path: Path) -> None:
    """CSV has no types: zero-padded ids stay text (``00003``, not 3), ids that all print as integers
    are integers; an impression's integer id names the string id it prints as (Parquet too)."""
    from serving.data.read import read_rows
    padded = {f"s{i}": f"{i:05d}" for i in range(10)}
    items = {**ITEMS, "sku": [padded[s] for s in ITEMS["sku"]]}
    impressions = {**IMPRESSIONS, "sku": [padded.get(s, s) for s in IMPRESSIONS["sku"]],
                   "recent": [None if r is None else [padded.get(s, s) for s in r] for r in IMPRESSIONS["recent"]]}
    csv, _ = _import(tmp_path, "csv", name="padded", items=items, impressions=impressions)
    parquet, _ = _import(tmp_path, name="plain")
    assert csv.tables().item_ids.tolist() == [f"{i:05d}" for i in range(10)]
    assert csv.tables().user_ids.tolist() == USERS["customer"]  # 100, 101, ...: integers
    for name in ("user_row", "item_row", "context.recent"):
        assert csv.impressions().column(name).to_pylist() == parquet.impressions().column(name).to_pylist(), name
    # a Parquet file of integer user ids names users whose ids are text
    users = {**USERS, "customer": [str(u) for u in USERS["customer"]]}
    text_users, _ = _import(tmp_path, name="text-users", users=users)
    assert text_users.tables().user_ids.tolist() == users["customer"]
    assert text_users.impressions().column("user_row").to_pylist() == parquet.impressions().column("user_row").to_pylist()
    # the rows of a catalogue change from CSV read the same way
    (tmp_path / "add.csv").write_text("sku,price\n00042,1.5\n")
    assert read_rows(tmp_path / "add.csv", ids=["sku"]).table.column("sku").to_pylist() == ["00042"]


def test_csv_reads_exactly_as_parquet_does(tmp_path: Path) -> None:
    a, _ = _import(tmp_path, "parquet", name="from-parquet")
    b, report = _import(tmp_path, "csv", name="from-csv")
    ta, tb = a.tables(), b.tables()
    for name in ("item_ids", "user_ids", "item_cat", "item_num", "item_vec", "user_cat", "user_num", "user_vec",
                 "popularity"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)
    assert ta.vocab == tb.vocab
    assert a.impressions().equals(b.impressions())
    assert report.lines()[0] == "items.csv: 10 rows read, 10 kept"  # type: ignore[attr-defined]


def _parts(folder: Path, columns: dict, *, hive: str | None = None) -> Path:
    """``columns`` as a folder of Parquet parts, as Spark writes a table: three parts (or one folder
    per value of ``hive``, its column then only in the folder names), a ``_SUCCESS`` and ``.crc`` files."""
    table = pa.table(columns)
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").write_bytes(b"")
    if hive is None:
        bounds = [0, 2, 2, table.num_rows]  # the second part holds no row
        for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            pq.write_table(table.slice(lo, hi - lo), folder / f"part-{n:05d}.parquet")
            (folder / f".part-{n:05d}.parquet.crc").write_bytes(b"crc")
        return folder
    for value in sorted(set(columns[hive])):
        rows = [i for i, v in enumerate(columns[hive]) if v == value]
        (folder / f"{hive}={value}").mkdir()
        pq.write_table(table.take(rows).drop_columns([hive]), folder / f"{hive}={value}" / "part-0.parquet")
    return folder


def test_a_folder_of_parquet_parts_reads_as_the_table_they_make_up(tmp_path: Path) -> None:
    whole, _ = _import(tmp_path, name="whole")
    files = data.write(tmp_path / "in-parts", "parquet")
    # the impressions in parts; the users partitioned by region (rows ordered by region, as the folders read)
    order = sorted(range(len(USERS["customer"])), key=lambda i: USERS["region"][i] or "")
    users = {k: [v[i] for i in order] for k, v in USERS.items()}
    imp = _parts(tmp_path / "parts" / "impressions", IMPRESSIONS)
    users_in = _parts(tmp_path / "parts" / "users", users, hive="region")
    parts = DataSetStore(tmp_path / "data").dataset("parts")
    parts.import_files(data.schema(), files.items, users_in, imp)
    ta, tb = whole.tables(), parts.tables()
    for name in ("item_ids", "item_cat", "item_num", "popularity"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)
    assert sorted(tb.user_ids.tolist()) == sorted(ta.user_ids.tolist()) and ta.vocab == tb.vocab
    for user in USERS["customer"]:
        row_a, row_b = ta.user_row(user)[0], tb.user_row(user)[0]
        np.testing.assert_array_equal(ta.user_cat[row_a], tb.user_cat[row_b])
        np.testing.assert_array_equal(ta.user_num[row_a], tb.user_num[row_b])
    ia, ib = whole.impressions(), parts.impressions()
    assert ia.drop_columns(["user_row"]).equals(ib.drop_columns(["user_row"]))
    assert (ta.user_ids[ia.column("user_row").to_numpy()] == tb.user_ids[ib.column("user_row").to_numpy()]).all()
    source = parts.manifest()["sources"]["impressions"]
    assert source["files"] == 3 and source["bytes"] == sum(p.stat().st_size for p in imp.glob("part-*.parquet"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(SchemaError, match="a folder with no Parquet file"):
        parts.import_files(data.schema(), files.items, files.users, tmp_path / "empty")
    pq.write_table(pa.table({"user": [1]}), imp / "part-00009.parquet")  # a part of another table
    with pytest.raises(SchemaError, match="its parts are not one table: part-00009.parquet has 1 columns"):
        parts.import_files(data.schema(), files.items, files.users, imp)
    assert parts.versions() == [1]


def test_labels_of_text_read_as_numbers_and_booleans_do(tmp_path: Path) -> None:
    """A CSV label column of true/false, or one that mixes them with 0 and 1, is read as text."""
    words = {0: ["0", "false", " FALSE", "0.0"], 1: ["1", "true", "True ", "1.0"]}
    text = [words[v][i % 4] for i, v in enumerate(IMPRESSIONS["clicked"])]
    ds, _ = _import(tmp_path, impressions={**IMPRESSIONS, "clicked": text})
    assert ds.impressions().column("label").to_pylist() == [IMPRESSIONS["clicked"][i] for i in KEPT_ROWS]


@pytest.mark.parametrize("stamp", ["2026-11-{d:02d}T10:00:00Z", "2026-11-{d:02d} 10:00:00", "2026-11-{d:02d}"])
def test_times_of_iso_text_are_read_as_timestamps(tmp_path: Path, stamp: str) -> None:
    text = [stamp.format(d=1 + t) for t in IMPRESSIONS["ts"]]
    ds, _ = _import(tmp_path, impressions={**IMPRESSIONS, "ts": text})
    times = ds.impressions().column("time")
    assert pa.types.is_timestamp(times.type)
    assert [t.day - 1 for t in times.to_pylist()] == [IMPRESSIONS["ts"][i] for i in KEPT_ROWS]


def test_integer_item_ids_and_string_user_ids(tmp_path: Path) -> None:
    items = {**ITEMS, "sku": [1000 + i for i in range(10)]}
    users = {**USERS, "customer": ["u0", "u1", "u2", "u3", "u4"]}
    impressions = {**IMPRESSIONS, "customer": ["u0", "u9", "u1"] * 4, "sku": [1000, 1001, 5] * 4,
                   "recent": [[1001, 5, 1002]] * 12}
    ds, report = _import(tmp_path, items=items, users=users, impressions=impressions)
    t, imp = ds.tables(), ds.impressions()
    assert t.item_ids.dtype == np.int64 and t.user_ids.dtype == object
    assert imp.column("item_row").to_pylist() == [0] * 4
    assert (report.unknown_users, report.unknown_items) == (4, 4)  # type: ignore[attr-defined]
    assert imp.column("context.recent").to_pylist() == [[1, 2]] * 4


def _nothing_written(ds: DataSet) -> None:
    assert ds.versions() == [] and ds.live_version() is None
    assert list(ds.root.glob(".import-*")) == []


REFUSALS = [
    # (which table, change, file in message, column in message, the rest of the message)
    ("items", {"sku": ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s3", "s8", "s9"]}, "items", "sku",
     "row 7: the id 's3' is in rows 3 and 7"),
    ("users", {"customer": [100, 101, None, 103, 104]}, "users", "customer", "row 2: the id is null"),
    ("items", {"content": [[1.0, 2.0, 3.0, 4.0]] * 4 + [[1.0, 2.0, 3.0]] + [[1.0, 2.0, 3.0, 4.0]] * 5}, "items",
     "content", "row 4: 3 value(s), the schema declares a width of 4"),
    ("items", {"content": [[1.0, 2.0, 3.0, 4.0]] * 6 + [None] + [[1.0, 2.0, 3.0, 4.0]] * 3}, "items",
     "content", "row 6: a null vector"),
    ("items", {"content": [[1.0, 2.0, 3.0, 4.0]] * 8 + [[1.0, float("inf"), 3.0, 4.0]] + [[1.0, 2.0, 3.0, 4.0]]},
     "items", "content", "row 8: value 1 of the vector is inf"),
    ("items", {"price": ["10", "20", "30", "40", "abc", "60", "70", "80", "90", "100"]}, "items", "price",
     "row 4: 'abc' is not a number"),
    ("items", {"brand": [None, ["a"]] * 5}, "items", "brand",
     "row 1: a value of type list<element: string>: a categorical column holds strings"),
    ("users", {"age": [[1.0]] * 5}, "users", "age", "row 0: a value of type list<element: double>: a numeric column "
                                                    "holds numbers"),
    ("items", {"sku": [1.5 + i for i in range(10)]}, "items", "sku", "row 0: 1.5 is not a whole number"),
    ("items", {"sales_7d": [0, 5, 10, -3, 100, 7, 1, 0, 2, 40]}, "items", "sales_7d",
     "row 3: popularity must be >= 0, got -3"),
    ("users", {"age": [None] * 5}, "users", "age", "every row is null: there is no median to fill the nulls with; "
                                                   "declare a fill under users.fill"),
    ("impressions", {"clicked": [1, 0, 0, 1, 2, 1, 0, 0, 1, 0, 1, 0]}, "impressions", "clicked",
     "row 4: the label is 2: a label is 0 or 1"),
    ("impressions", {"clicked": ["true", "0", "yes"] * 4}, "impressions", "clicked",
     "row 2: the label is 'yes': a label is 0 or 1"),
    ("impressions", {"clicked": [[1]] * 12}, "impressions", "clicked",
     "row 0: a value of type list<element: int64>: a label is 0 or 1"),
    ("impressions", {"ts": list(range(5)) + [None] + list(range(6))}, "impressions", "ts", "row 5: a null: a time is a timestamp, a date, a number"),
    ("impressions", {"ts": ["2026-11-01"] * 5 + ["soon"] + ["2026-11-02"] * 6}, "impressions", "ts",
     "row 5: 'soon' is not a time"),
    ("impressions", {"ts": ["2026-11-01 10:00:00"] * 6 + ["2026-11-01T10:00:00Z"] * 6}, "impressions", "ts",
     "mixes times with a zone offset and times without one"),
    ("impressions", {"customer": [str(u) for u in IMPRESSIONS["customer"]]}, "impressions", "customer",
     "row 0: holds strings, while the ids of users.parquet (column 'customer') are integers"),
    ("impressions", {"device": [[1]] * 12}, "impressions", "device", "row 0: a value of type list<element: int64>"),
]


@pytest.mark.parametrize(("table", "change", "file", "column", "rest"), REFUSALS,
                         ids=[f"{r[0]}.{r[3]}-{i}" for i, r in enumerate(REFUSALS)])
def test_every_refusal_names_file_column_and_row_and_writes_nothing(tmp_path: Path, table: str, change: dict,
                                                                    file: str, column: str, rest: str) -> None:
    base = {"items": ITEMS, "users": USERS, "impressions": IMPRESSIONS}[table]
    with pytest.raises(SchemaError) as err:
        _import(tmp_path, **{table: {**base, **change}})
    assert err.value.message.startswith(f"{file}.parquet: column {column!r}")
    assert rest in err.value.message
    assert err.value.exit_status == 2
    _nothing_written(DataSetStore(tmp_path / "data").dataset("shop"))


def test_a_missing_column_and_an_empty_file_are_refused(tmp_path: Path) -> None:
    files = data.write(tmp_path / "in")
    pq.write_table(pq.read_table(files.items).drop_columns(["rating"]), files.items)
    ds = DataSetStore(tmp_path / "data").dataset("shop")
    with pytest.raises(SchemaError, match=r"items.parquet: column 'rating' is missing \(the schema declares it\)"):
        ds.import_files(data.schema(), files.items, files.users, files.impressions)
    files = data.write(tmp_path / "in", "csv")
    files.users.write_text("customer,region,tier,age\n")
    with pytest.raises(SchemaError, match="^users.csv: holds no rows$"):
        ds.import_files(data.schema(), files.items, files.users, files.impressions)
    files.users.write_text("")
    with pytest.raises(SchemaError, match="^users.csv: cannot read it as CSV: Empty CSV file"):
        ds.import_files(data.schema(), files.items, files.users, files.impressions)
    with pytest.raises(SchemaError, match="items.txt: unknown file type"):
        ds.import_files(data.schema(), tmp_path / "items.txt", files.users, files.impressions)
    _nothing_written(ds)


def test_impressions_that_name_no_known_user_and_item_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="impressions.parquet: no impression names both a known user"):
        _import(tmp_path, impressions={**IMPRESSIONS, "customer": [5] * 12})


def test_versions_are_write_once_and_live_moves_only_on_success(tmp_path: Path) -> None:
    files = data.write(tmp_path / "in")
    store = DataSetStore(tmp_path / "data")
    ds = store.dataset("shop")
    ds.import_files(data.schema(), files.items, files.users, files.impressions)
    first = {p.name: p.read_bytes() for p in ds.version_dir(1).iterdir()}
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o222 for p in ds.version_dir(1).iterdir())  # read-only
    report = ds.import_files(data.schema(), files.items, files.users, files.impressions)
    assert (report.version, ds.versions(), ds.live_version()) == (2, [1, 2], 2)
    pq.write_table(pq.read_table(files.users).drop_columns(["age"]), files.users)
    with pytest.raises(SchemaError):
        ds.import_files(data.schema(), files.items, files.users, files.impressions)
    assert (ds.versions(), ds.live_version()) == ([1, 2], 2)
    assert {p.name: p.read_bytes() for p in ds.version_dir(1).iterdir()} == first
    assert ds.tables(1).n_users == 5 and ds.manifest(1)["version"] == 1


def test_a_write_that_fails_leaves_no_version_and_no_temporary_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = data.write(tmp_path / "in")
    ds = DataSetStore(tmp_path / "data").dataset("shop")
    ds.import_files(data.schema(), files.items, files.users, files.impressions)
    real = store_module._write_files

    def disk_full(folder: Path, *args: object) -> None:
        real(folder, *args)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_files", disk_full)
    with pytest.raises(SetupError, match="No space left on device") as err:
        ds.import_files(data.schema(), files.items, files.users, files.impressions)
    assert err.value.exit_status == 4
    assert (ds.versions(), ds.live_version()) == ([1], 1)
    assert [p.name for p in ds.root.iterdir() if p.name.startswith(".import-")] == []


def test_a_version_whose_file_changed_is_not_loaded(tmp_path: Path) -> None:
    ds, _ = _import(tmp_path)
    path = ds.version_dir(1) / "tables.npz"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError, match="tables.npz differs from what the import wrote"):
        ds.tables()


def test_the_manifest_and_listing_say_what_each_version_holds(tmp_path: Path) -> None:
    ds, _ = _import(tmp_path)
    manifest = ds.manifest()
    assert set(manifest["files"]) == {"schema.yaml", "tables.npz", "ids.parquet", "encoding.json",
                                      "impressions.parquet"}
    assert manifest["rows"] == {"items": 10, "users": 5, "impressions": 7}
    assert set(manifest["sources"]) == {"items", "users", "impressions"}
    (row,) = DataSetStore(tmp_path / "data").listing()
    assert row["name"] == "shop" and row["live"] == 1
    assert row["versions"][0]["bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert parse_schema((ds.version_dir(1) / "schema.yaml").read_text()) == data.schema()
    kept_labels = [IMPRESSIONS["clicked"][r] for r in KEPT_ROWS]
    assert ds.click_rate() == pytest.approx(sum(kept_labels) / len(kept_labels))
    (ds.version_dir(1) / "impressions.parquet").chmod(0o644)
    (ds.version_dir(1) / "impressions.parquet").write_bytes(b"not parquet")
    assert ds.click_rate() is None


def test_a_data_set_with_no_version_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="data set 'shop' has no version") as err:
        DataSetStore(tmp_path).dataset("shop").tables()
    assert "rankserve data import shop" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="data set name 'Shop!' is invalid"):
        DataSetStore(tmp_path).dataset("Shop!")


def test_settings_for_a_data_set(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, model_repository=tmp_path / "demo-repo")
    shop = s.for_data("shop")
    assert (shop.data, shop.model_repository) == ("shop", tmp_path / "datasets" / "shop" / "model_repository")
    assert shop.for_data("demo").model_repository == tmp_path / "demo-repo"
    assert Settings.from_env({"RANKSERVE_DATA": "shop"}).data == "shop"
    with pytest.raises(ConfigError, match="RANKSERVE_DATA"):
        Settings.from_env({"RANKSERVE_DATA": "Shop"})
    store = DataSetStore.of(s)
    assert store.dataset("demo").model_repository == tmp_path / "demo-repo"
    assert store.dataset("shop").model_repository == shop.model_repository


def test_cli_imports_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANKSERVE_DATA_DIR", str(tmp_path / "data"))
    files = data.write(tmp_path / "in", "csv")
    assert main(["data", "import", "shop", *files.args()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "items.csv: 10 rows read, 10 kept"
    assert out[-1] == f"data set 'shop': version 1 written to {tmp_path / 'data/datasets/shop/versions/000001'}; it is live"
    assert main(["data", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["live"], [v["version"] for v in d["versions"]]) for d in listing["data_sets"]] == \
        [("shop", 1, [1])]
    (tmp_path / "data" / "datasets" / "half").mkdir()  # as a write that failed leaves it: a folder, no version
    assert main(["data", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("half") and "(no version" in table[1]
    assert table[2].split()[:3] == ["shop", "1", "*"] and "10" in table[2].split()
    assert table[-1].startswith("(2 data set(s) under ")


def test_cli_refusal_exits_2_naming_file_column_and_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANKSERVE_DATA_DIR", str(tmp_path / "data"))
    files = data.write(tmp_path / "in", "csv", items={**ITEMS, "price": ["1", "2", "3", "x", "5", "6", "7", "8", "9", "10"]})
    assert main(["data", "import", "shop", *files.args()]) == 2
    assert "items.csv: column 'price', row 3: 'x' is not a number" in capsys.readouterr().err
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out.startswith("no data set under")


def test_a_column_in_several_chunks_is_encoded_whole_and_refused_at_its_row_in_the_file() -> None:
    from serving.data.encode import Column, encode_vector

    vectors = [[float(i), 1.0] for i in range(5)]
    column = pa.chunked_array([pa.array(vectors[:2]), pa.array(vectors[2:])])
    np.testing.assert_array_equal(encode_vector(column, 2, Column("f.parquet", "v")), np.array(vectors, np.float32))
    bad = pa.chunked_array([pa.array(vectors[:2]), pa.array([[1.0, 2.0], [3.0, float("nan")], [1.0, 1.0]])])
    with pytest.raises(SchemaError, match=r"^f.parquet: column 'v', row 3: value 1 of the vector is nan"):
        encode_vector(bad, 2, Column("f.parquet", "v"))
    text = pa.chunked_array([pa.array(["1 2", "[3, 4]"]), pa.array(["5;6", "7 x"])])
    with pytest.raises(SchemaError, match=r"row 3: value 1 of the vector, 'x', is not a number"):
        encode_vector(text, 2, Column("f.csv", "v"))


def test_a_version_whose_manifest_is_damaged_is_not_loaded(tmp_path: Path) -> None:
    ds, _ = _import(tmp_path)
    path = ds.version_dir(1) / "manifest.json"
    os.chmod(path, 0o644)
    path.write_text('{"files": [')
    with pytest.raises(IntegrityError, match="manifest.json does not read"):
        ds.tables()
