"""The demo marketplace written as a team's files imports into a data set whose tables are the
generator's, value for value, and whose time-ordered holdout is the generator's test share; the
example marketplace's files (``python -m training.synthetic``) import with their string ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving.data.features import DEMO_FEATURES, load_features, resolve
from serving.data.schema import load_schema
from serving.data.store import DataSetStore
from training import synthetic
from training.data import MarketConfig, generate
from training.demo_files import write_demo_files


def test_the_demo_imports_as_any_marketplace_with_the_generators_values(tmp_path: Path) -> None:
    mp = generate(MarketConfig(seed=3).sized(items=600, users=120))
    files = write_demo_files(mp, tmp_path / "files")
    ds = DataSetStore(tmp_path / "data").dataset("demo_files")
    report = ds.import_files(load_schema(files.schema), files.items, files.users, files.impressions)
    assert report.impressions_dropped == 0
    tables = ds.tables()
    np.testing.assert_array_equal(tables.item_cat, mp.item_cat)
    np.testing.assert_array_equal(tables.user_cat[:-1], mp.user_cat)  # the last row: the cold user
    np.testing.assert_allclose(tables.item_num, mp.item_num, atol=1e-5)
    np.testing.assert_array_equal(tables.item_vec, mp.item_dense)
    np.testing.assert_array_equal(tables.user_vec[:-1], mp.user_dense)
    assert np.argsort(-tables.popularity, kind="stable")[:20].tolist() == \
        np.argsort(-mp.item_num[:, 2], kind="stable")[:20].tolist()
    resolve(load_features(DEMO_FEATURES), tables)  # the demo ranker's declaration names these columns

    imp = pq.read_table(files.impressions)
    latest = imp.sort_by("ts").slice(imp.num_rows - int(mp.imp_test.sum()))
    clicks = latest.column("clicked").to_numpy()
    np.testing.assert_array_equal(clicks, mp.imp_click[mp.imp_test].astype(np.int8))


def test_the_example_marketplace_files_import_with_string_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main([str(tmp_path / "shop"), "--items", "80", "--users", "20", "--impressions", "400"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    files = {role: Path(path) for role, path in printed.items()}
    ds = DataSetStore(tmp_path / "data").dataset("shop")
    ds.import_files(load_schema(files["schema"]), files["items"], files["users"], files["impressions"])
    tables = ds.tables()
    assert tables.n_items == 80 and tables.item_ids[0] == "sku-000000"
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "tiny"), "--items", "3"])
