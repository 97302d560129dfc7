"""Catalogue changes of an imported data set, in its schema's terms: item files of each kind
(Parquet, CSV, JSON, JSON lines) encoded as the import encoded the items, every refusal naming
the file, the column and the row with nothing written, the change folded into a catalogue on the
data set's tables (string ids: the id lookup grows), block and unblock by the schema's ids, and
``rankserve items ... --data NAME``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from serving.data.changes import encode_item_rows, parse_ids
from serving.data.read import read_rows
from serving.data.store import DataSet, DataSetStore
from serving.data.tables import DataTables
from serving.errors import SchemaError, ValidationError
from serving.pipeline.catalogue import Catalogue
from serving.repository.catalogue import ChangeLog
from tests.unit import data_files as data
from tests.unit.data_files import ITEMS
from tests.unit.test_dataset_training import _cli

# s4's columns under a new id: encoded as the import encoded s4 (price null: the median; sales 100)
LIKE_S4 = {"sku": "new-1", "brand": "b", "category": 2, "store": "x", "price": None, "rating": 2.0,
           "content": [4.0, 4.1, 4.2, 4.3], "sales_7d": 100}
UNSEEN = {"sku": "new-2", "brand": "zzz", "category": 9, "store": "x", "price": 55.0, "rating": None,
          "content": [0.0, 0.0, 0.0, 1.0], "sales_7d": 0}


@pytest.fixture()
def dataset(tmp_path: Path) -> DataSet:
    files = data.write(tmp_path / "in")
    ds = DataSetStore(tmp_path / "data").dataset("shop")
    ds.import_files(data.schema(), files.items, files.users, files.impressions)
    return ds


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as the file kind ``path``'s extension names (CSV vectors as text)."""
    name = path.name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        if name.endswith(".parquet"):
            pq.write_table(pa.table(columns), path)
        else:
            columns = {k: [" ".join(map(str, x)) if isinstance(x, list) else x for x in v] for k, v in columns.items()}
            pacsv.write_csv(pa.table(columns), path)
    return path


def _encode(ds: DataSet, path: Path, *, add: bool = True) -> Any:
    return encode_item_rows(read_rows(path), ds.tables(), ds.encoding()["items"], add=add)


@pytest.mark.parametrize("ext", ["parquet", "csv", "json", "jsonl"])
def test_added_rows_are_encoded_as_the_import_encoded_the_items(dataset: DataSet, tmp_path: Path, ext: str) -> None:
    tables = dataset.tables()
    rows = _encode(dataset, _write(tmp_path / f"new.{ext}", [LIKE_S4, UNSEEN]))
    assert rows.ids == ("new-1", "new-2")
    np.testing.assert_array_equal(rows.cat[0], tables.item_cat[4])
    np.testing.assert_allclose(rows.num[0], tables.item_num[4], rtol=1e-6)
    np.testing.assert_allclose(rows.vec[0], tables.item_vec[4], rtol=1e-6)
    assert rows.popularity[0] == pytest.approx(tables.popularity[4], rel=1e-6)
    # unseen values take code 0; a null rating the declared fill (0.5); 55 is the stored median of price
    brand, category = tables.cat_col("item.brand"), tables.cat_col("item.category")
    assert rows.cat[1, brand] == 0 and rows.cat[1, category] == 0
    price, rating = tables.num_col("item.price"), tables.num_col("item.rating")
    assert rows.num[1, price] == pytest.approx(rows.num[0, price])
    enc = dataset.encoding()["items"]["numeric"]["rating"]
    assert rows.num[1, rating] == pytest.approx((0.5 - enc["mean"]) / enc["std"], rel=1e-6)


def _bad(**over: Any) -> dict[str, Any]:
    return {**LIKE_S4, **over}


@pytest.mark.parametrize(("ext", "rows", "add", "reason"), [
    ("json", [LIKE_S4, _bad(colour="red")], True, "new.json: column 'colour', row 1 is not a column of the items"),
    ("csv", [_bad(colour="red")], True, "new.csv: column 'colour' is not a column"),
    ("json", [LIKE_S4, {k: v for k, v in LIKE_S4.items() if k != "rating"}], True,
     "new.json: column 'rating', row 1 is missing"),
    ("parquet", [{k: v for k, v in LIKE_S4.items() if k != "store"}], True, "new.parquet: column 'store' is missing"),
    ("csv", [LIKE_S4, _bad(sku="n2", price="cheap")], True, "new.csv: column 'price', row 1: 'cheap' is not a number"),
    ("json", [LIKE_S4, _bad(sku="n2", price="cheap")], True, "new.json: column 'price', row 1: 'cheap' is not"),
    ("json", [LIKE_S4, _bad(sku="n2", content=[1.0, 2.0])], True,
     "new.json: column 'content', row 1: 2 value(s), the schema declares a width of 4"),
    ("parquet", [LIKE_S4, _bad(sku="n2"), LIKE_S4], True, "new.parquet: column 'sku', row 2: the id 'new-1' is in rows 0"),
    ("jsonl", [{"sku": "s1", "price": 3.0}, {"sku": "s2"}], False, "new.jsonl: row 1 changes no column"),
])
def test_a_bad_item_file_is_refused_naming_file_column_and_row(dataset: DataSet, tmp_path: Path, ext: str,
                                                                rows: list[dict[str, Any]], add: bool,
                                                                reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        _encode(dataset, _write(tmp_path / f"new.{ext}", rows), add=add)
    assert reason in info.value.message


def test_ids_already_held_or_unknown_are_refused_and_nothing_is_written(dataset: DataSet, tmp_path: Path) -> None:
    log = ChangeLog(dataset.model_repository)
    tables = dataset.tables()
    log.append_items(tables, block=["s1"])
    with pytest.raises(ValidationError, match=r"new.json: column 'sku', row 1: the item 's3' is in the catalogue"):
        log.append_items(tables, add=_encode(dataset, _write(tmp_path / "new.json", [LIKE_S4, _bad(sku="s3")])))
    with pytest.raises(ValidationError, match=r"upd.csv: column 'sku', row 0: no item 'nope' in the catalogue"):
        log.append_items(tables, update=_encode(dataset, _write(tmp_path / "upd.csv", [{"sku": "nope", "price": 1}]),
                                                add=False))
    for change, reason in (({"block": ["s2", "nope"]}, "unknown item id(s) ['nope']"),
                           ({"unblock": ["s1", "s1"]}, "duplicate"), ({}, "empty")):
        with pytest.raises(ValidationError) as info:
            log.append_items(tables, **change)
        assert reason in info.value.message
    assert log.versions() == [1]
    with pytest.raises(ValidationError, match="an imported data set's catalogue changes in its schema's ids"):
        log.append(tables, block=[0])  # the demo's form (rows, its columns)
    assert log.versions() == [1]


def test_command_line_ids_take_the_schema_s_kind(dataset: DataSet) -> None:
    tables = dataset.tables()
    assert parse_ids(["s1", "17"], tables, "block") == ["s1", "17"]
    ints = tables.with_item_tables(np.array([5, 9, 30]), tables.item_cat[:3], tables.item_num[:3],
                                   tables.item_vec[:3], tables.popularity[:3])
    assert parse_ids(["9", 30, "-4"], ints, "block") == [9, 30, -4]
    with pytest.raises(ValidationError, match=r"block: item id 'sku-9' is not an integer"):
        parse_ids(["9", "sku-9"], ints, "block")


def test_changes_fold_into_the_data_set_s_catalogue_by_its_ids(dataset: DataSet, tmp_path: Path) -> None:
    tables = dataset.tables()
    log = ChangeLog(dataset.model_repository)
    added = log.append_items(tables, add=_encode(dataset, _write(tmp_path / "new.parquet", [LIKE_S4, UNSEEN])))
    assert added.ids == ("new-1", "new-2") and added.added_ids == (10, 11)
    update = _write(tmp_path / "upd.jsonl", [{"sku": "new-2", "sales_7d": 1000}, {"sku": "s0", "brand": "c"}])
    log.append_items(tables, update=_encode(dataset, update, add=False), block=["s3", "new-1"])
    log.append_items(tables, unblock=["s3"])
    v0 = Catalogue.initial(tables)
    cat = log.follow(v0).warm(previous=v0.warm())
    t: DataTables = cat.tables
    assert cat.version == 3 and t.n_items == 12 and t.item_ids[10:].tolist() == ["new-1", "new-2"]
    rows, known = t.item_rows(["new-2", "new-1", "s0", "nope"])
    assert rows.tolist()[:3] == [11, 10, 0] and known.tolist() == [True, True, True, False]
    assert cat.blocked.nonzero()[0].tolist() == [10]
    # the update changed what its rows gave, nothing else
    assert t.item_cat[0, t.cat_col("item.brand")] == tables.vocab["item.brand"]["c"]
    np.testing.assert_array_equal(np.delete(t.item_cat[0], t.cat_col("item.brand")),
                                  np.delete(tables.item_cat[0], t.cat_col("item.brand")))
    np.testing.assert_array_equal(t.item_num[:10], tables.item_num)
    assert t.item_num[11, t.num_col("item.rating")] != 0.0  # filled and standardised when added, kept
    assert t.popularity[11] > tables.popularity.max()  # 1000 sales: the most popular item now
    _, top = cat.popular(1)
    assert top.tolist() == [11]
    assert tables.n_items == 10 and v0.tables.n_items == 10  # the base is untouched
    again = log.current(tables)  # a replica starting now folds to the same catalogue
    assert again.tables.item_ids.tolist() == t.item_ids.tolist()
    np.testing.assert_array_equal(again.tables.popularity, t.popularity)
    log.compact(keep=0)  # one folded change stands for the three, ids included
    folded = log.current(tables)
    assert folded.tables.item_ids.tolist() == t.item_ids.tolist() and folded.blocked.nonzero()[0].tolist() == [10]


def test_the_items_command_speaks_the_data_set_s_ids(dataset: DataSet, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = dataset.root.parent.parent
    new = _write(tmp_path / "new.csv", [LIKE_S4, UNSEEN])
    rc, out = _cli(data_dir, "items", "add", str(new), "--data", "shop")
    assert rc == 0, out
    assert json.loads(out) == {"catalogue_version": 1, "blocked": [], "unblocked": [], "added_ids": ["new-1", "new-2"],
                               "updated_ids": []}
    rc, out = _cli(data_dir, "items", "block", "new-1", "s2", "--data", "shop")
    assert rc == 0 and json.loads(out)["blocked"] == ["new-1", "s2"]
    rc, out = _cli(data_dir, "items", "status", "--data", "shop")
    status = json.loads(out)
    assert status["items"] == len(ITEMS["sku"]) + 2 and status["blocked_ids"] == ["s2", "new-1"]
    rc, out = _cli(data_dir, "items", "add", str(new), "--data", "shop")  # the same ids again
    assert rc != 0 and "new.csv: column 'sku', row 0: the item 'new-1' is in the catalogue already" in \
        capsys.readouterr().err
    assert ChangeLog(dataset.model_repository).versions() == [1, 2]


def test_a_data_set_with_integer_ids_takes_them_from_files_and_the_command_line(tmp_path: Path) -> None:
    skus = [100 + 7 * i for i in range(len(ITEMS["sku"]))]  # not the rows: the id lookup is sorted ids
    files = data.write(tmp_path / "in", items={**ITEMS, "sku": skus},
                       impressions={**data.IMPRESSIONS, "sku": [skus[i % len(skus)] for i in range(12)],
                                    "recent": [[] for _ in range(12)]})
    ds = DataSetStore(tmp_path / "data").dataset("ints")
    ds.import_files(data.schema(), files.items, files.users, files.impressions)
    tables = ds.tables()
    log = ChangeLog(ds.model_repository)
    new = _write(tmp_path / "new.csv", [_bad(sku=5), _bad(sku=1000)])
    log.append_items(tables, add=_encode(ds, new))
    log.append_items(tables, block=parse_ids(["1000", str(skus[3])], tables, "block"))
    cat = log.current(tables)
    rows, known = cat.tables.item_rows([5, 1000, skus[3], 6])
    assert rows.tolist()[:3] == [10, 11, 3] and known.tolist() == [True, True, True, False]
    assert cat.blocked.nonzero()[0].tolist() == [3, 11]
    bad = _write(tmp_path / "bad.json", [_bad(sku=7), _bad(sku="sku-8")])
    with pytest.raises(SchemaError, match=r"bad.json: column 'sku', row 1: .*'sku-8'"):
        _encode(ds, bad)


def test_the_id_lookup_grows_without_changing_what_older_or_other_catalogues_find(dataset: DataSet,
                                                                                    tmp_path: Path) -> None:
    """A change's tables add their ids to the lookup of the tables they follow (no new dict of
    every id); the base, and a second line of changes from it, find only their own ids."""
    base = dataset.tables()
    one, other = ChangeLog(tmp_path / "one"), ChangeLog(tmp_path / "other")
    one.append_items(base, add=_encode(dataset, _write(tmp_path / "a.json", [_bad(sku="a")])))
    one.append_items(base, add=_encode(dataset, _write(tmp_path / "b.json", [_bad(sku="b")])))
    other.append_items(base, add=_encode(dataset, _write(tmp_path / "c.json", [_bad(sku="c"), _bad(sku="b")])))
    v0 = Catalogue.initial(base)
    first, second = one.follow(v0), other.follow(v0)
    asked = ["a", "b", "c", "s9"]
    assert base.item_rows(asked)[0].tolist() == [-1, -1, -1, 9]
    assert first.tables.item_rows(asked)[0].tolist() == [10, 11, -1, 9]
    assert second.tables.item_rows(asked)[0].tolist() == [-1, 11, 10, 9]
    assert one.follow(v0).tables.item_rows(asked)[0].tolist() == [10, 11, -1, 9]  # folded again from the base


def _members(cat: Catalogue, store: object) -> list[int]:
    """The items of ``store`` (a request's value), as popular-within and ``restrict`` find them."""
    code = cat.tables.encode_context({"store": store}).scopes["store"]
    return sorted(cat.popular(100, "store", code)[1].tolist()) if cat.has_group("store", code) else []


def test_a_group_value_only_a_change_brings_is_a_group_of_its_own(dataset: DataSet, tmp_path: Path) -> None:
    """A store that first appears with a catalogue change: the models read it as unseen (code 0),
    while restrictions, popular-within and diversity see a store of its own, not every other new
    store with it; a value no item holds finds nothing."""
    tables = dataset.tables()
    log = ChangeLog(dataset.model_repository)
    new = [_bad(sku="n1", store="z"), _bad(sku="n2", store="w"), _bad(sku="n3", store="z")]
    log.append_items(tables, add=_encode(dataset, _write(tmp_path / "new.csv", new)))
    moves = [{"sku": "s0", "store": "w"}, {"sku": "n3", "store": "x"}]
    log.append_items(tables, update=_encode(dataset, _write(tmp_path / "move.json", moves), add=False))
    v0 = Catalogue.initial(tables).warm()
    cat = log.follow(v0).warm(previous=v0)
    t = cat.tables
    x = tables.vocab["item.store"]["x"]
    assert t.item_cat[10:, t.cat_col("item.store")].tolist() == [0, 0, x]  # what the models read
    assert t.encode_context({"store": "z"}).groups == {"store": 0}  # and the stored impressions
    assert _members(cat, "z") == [10] and _members(cat, "w") == [0, 11]
    assert _members(cat, "x") == sorted([i for i, s in enumerate(ITEMS["store"]) if s == "x" and i != 0] + [12])
    assert _members(cat, "nowhere") == [] and t.encode_context({"store": "nowhere"}).scopes == {"store": -1}
    assert cat.group_of(np.asarray([10, 11]), "store").tolist() != [0, 0]  # diversity: two stores, not one
    assert Catalogue.initial(tables).tables.group_vocab == tables.group_vocab  # the base is untouched
    # the orders carried from v0 are those sorted anew; replayed from the base, and compacted: the same groups
    fresh = Catalogue(t, cat.blocked, cat.version)
    assert cat.group_counts() == fresh.group_counts() == {"store": 4, "category": 3}
    for g, col in (("store", 0), ("category", 1)):
        for value in np.unique(t.item_groups[:, col]).tolist():
            np.testing.assert_array_equal(cat.popular(100, g, value)[1], fresh.popular(100, g, value)[1])
    log.compact(keep=0)
    for again in (log.current(tables), cat):
        assert [_members(again, s) for s in ("z", "w", "nowhere")] == [[10], [0, 11], []]
