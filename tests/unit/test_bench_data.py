"""``rankserve bench``, ``capacity`` and ``chaos`` on an imported data set, without servers: the
requests drawn from its impressions (its own ids, each impression's context encoding back to the
codes the import gave it), and what is refused before anything starts (a data set not imported
or not trained, the demo generator's sizes with another data set)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from benchmarks.chaos import resolve_capacity
from loadtest.loadgen import rank_message
from loadtest.workload import dataset_bodies, recall_bodies, request_bodies
from serving.cli import main
from serving.config import Settings
from serving.data.store import DataSetStore
from serving.data.tables import DataTables
from serving.grpc_api import request_payload
from serving.schemas import RankRequest
from tests.unit import data_files
from tests.unit.data_files import IMPRESSIONS, KEPT_ROWS, USERS, rankserve_env

NAME = "tiny"
# the impressions also name each request's store (an item group a request's context may carry)
STORES = ["x", "y", "x", "x", None, "y", "x", "y", "q", "x", "y", "x"]  # "q": no item's store


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with ``tiny`` imported (not trained) and ``plain``, whose schema has no context
    and whose impressions name no item group."""
    root = tmp_path_factory.mktemp("bench-data")
    files = data_files.write(root / "files", impressions={**IMPRESSIONS, "store": STORES})
    store = DataSetStore(root / "data")
    store.dataset(NAME).import_files(data_files.schema(), files.items, files.users, files.impressions)
    plain = data_files.SCHEMA.replace("context:\n  categorical: [device]\n  numeric: [hour]\n  sequences: {recent: "
                                      "{of: items, max_len: 3}}\n", "").replace("  context: {hour: hour_of_day}\n", "")
    assert "context" not in plain
    bare = data_files.write(root / "bare", impressions=IMPRESSIONS)  # no store column: no group given either
    store.dataset("plain").import_files(data_files.schema(plain), bare.items, bare.users, bare.impressions)
    return root / "data"


def _loaded(data_dir: Path, name: str = NAME) -> tuple[DataTables, pa.Table]:
    ds = DataSetStore(data_dir).dataset(name)
    return ds.tables(), ds.impressions()


def _encoded(tables: DataTables, user: object, context: dict[str, Any] | None) -> tuple[Any, ...]:
    """A request's user row and context as the request path encodes them, comparable as a tuple."""
    row, cold = tables.user_row(user)
    assert not cold, user
    enc = tables.encode_context(context)
    return (row, tuple(sorted(enc.categorical.items())), tuple((k, round(v, 4)) for k, v in sorted(enc.numeric.items())),
            tuple((k, tuple(v.tolist())) for k, v in sorted(enc.sequences.items())), tuple(sorted(enc.groups.items())))


def test_data_set_bodies_are_its_users_with_the_contexts_of_its_impressions(data_dir: Path) -> None:
    tables, impressions = _loaded(data_dir)
    bodies = dataset_bodies(tables, impressions, 200, seed=3)
    assert len(bodies) == 200 and all(b["k"] == 20 and "candidates" not in b for b in bodies)
    assert {b["user_id"] for b in bodies} <= set(USERS["customer"])  # the schema's integer ids
    for b in bodies:
        RankRequest.model_validate(b)
    # every body is one stored impression: its user, and its context encoding back to the stored codes
    cols = impressions.to_pydict()
    stored = {(u, (("device", d),), (("hour", round(float(h), 4)),), (("recent", tuple(r)),),
               (("store", s),) if s else ())  # a group given: its code (0 where not given: left out)
              for u, d, h, r, s in zip(cols["user_row"], cols["context.device"], cols["context.hour"],
                                       cols["context.recent"], cols["context.store"], strict=True)}
    drawn = {_encoded(tables, b["user_id"], b.get("context")) for b in bodies}
    assert drawn <= stored
    assert len(drawn) == len(stored)  # 200 draws of 7 impressions reach each of them
    # what an impression did not hold is left out, never sent as a null or an unseen value
    contexts = [b["context"] for b in bodies]
    assert all(None not in c.values() for c in contexts)
    assert any("recent" not in c for c in contexts) and any(c.get("recent") for c in contexts)
    assert {c.get("store") for c in contexts} == {"x", "y", None}  # "q" and the null: no store given
    fill = tables.context_numeric["hour"][0]  # the import's fill for a null hour
    hours = {h for h, row in zip(IMPRESSIONS["hour_of_day"], range(12), strict=True) if row in KEPT_ROWS}
    assert {round(c["hour"], 3) for c in contexts} == {fill if h is None else h for h in hours}  # in its own units


def test_a_schema_without_context_gives_bodies_without_one(data_dir: Path) -> None:
    tables, impressions = _loaded(data_dir, "plain")
    bodies = dataset_bodies(tables, impressions, 50)
    assert bodies and all(set(b) == {"user_id", "k"} for b in bodies)


def test_request_bodies_read_the_data_set_the_settings_name(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir).for_data(NAME)
    assert request_bodies(settings, 64, seed=1) == dataset_bodies(*_loaded(data_dir), 64, seed=1)
    assert request_bodies(settings, 64, seed=1) != request_bodies(settings, 64, seed=2)


def test_the_bodies_reach_the_grpc_api_as_the_http_api_reads_them(data_dir: Path) -> None:
    """The load generator's gRPC messages (``rankserve bench``'s ``rankserve_grpc`` point): the
    server reads each back as the JSON body it came from, string ids and context included."""
    strings = {"user_id": "cust-0007", "k": 5, "item_id": "sku-1", "candidates": ["sku-2", "sku-3"],
               "exclude": ["sku-4"], "scenario": "similar", "context": {"device": "ios", "recent": ["sku-5"]}}
    bodies = [*dataset_bodies(*_loaded(data_dir), 50), *recall_bodies(100, 5), strings,
              {"user_id": 3, "candidates": [1, 2], "exclude": [2], "timeout_ms": 50}]
    for body in bodies:
        assert request_payload(rank_message(body), 1 << 20) == body
    assert rank_message(strings).user_id_str == "cust-0007" and not rank_message(strings).HasField("user_id")


def _run(data_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
         ) -> tuple[int, str]:
    with rankserve_env(data_dir), pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv", [("bench", "--data", NAME), ("capacity", "--data", NAME), ("chaos", "--data", NAME),
                                  ("bench",)])
def test_a_data_set_not_trained_is_refused_naming_the_command_to_run(data_dir: Path, argv: tuple[str, ...],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(data_dir, capsys, *argv, env={"RANKSERVE_DATA": NAME})  # the setting, when no --data is given
    assert rc == 2, err
    assert f"data set {NAME!r} has no trained ranker or user_tower" in err and f"rankserve train {NAME}" in err


@pytest.mark.parametrize("argv", [("bench", "--data", "nothing"), ("capacity", "--data", "nothing",
                                                                     "--url", "http://127.0.0.1:9")])
def test_a_data_set_never_imported_is_refused_naming_the_import(data_dir: Path, argv: tuple[str, ...],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(data_dir, capsys, *argv)
    assert rc == 2, err
    assert "no data set 'nothing'" in err and "rankserve data import nothing" in err


def test_the_demo_generator_s_sizes_are_refused_with_another_data_set(data_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("bench", "--data", NAME, "--items", "1000"), ("bench", "--data", NAME, "--users", "10")):
        rc, err = _run(data_dir, capsys, *argv)
        assert rc == 2, err
        assert "--items and --users size the demo marketplace" in err and "--data demo" in err


def test_chaos_sizes_its_load_by_a_capacity_measured_on_the_same_data_set(tmp_path: Path) -> None:
    report = tmp_path / "capacity.json"
    flag = argparse.Namespace(capacity_rps=None)
    assert resolve_capacity(flag, "demo", report) == 200.0  # no report
    report.write_text(json.dumps({"capacity_rps": 80.0}))  # written before reports named their data set: the demo
    assert resolve_capacity(flag, "demo", report) == 80.0 and resolve_capacity(flag, NAME, report) == 200.0
    report.write_text(json.dumps({"data_set": NAME, "capacity_rps": 120.0}))
    assert resolve_capacity(flag, NAME, report) == 120.0 and resolve_capacity(flag, "demo", report) == 200.0
    assert resolve_capacity(argparse.Namespace(capacity_rps=33.0), NAME, report) == 33.0


def test_a_measuring_servers_served_log_goes_to_a_scratch_folder_never_the_data_sets(data_dir: Path) -> None:
    """capacity, chaos and the freshness runs serve with the log in a scratch folder, removed
    afterwards, so ``log join`` never reads their synthetic answers as the data set's impressions."""
    from benchmarks.chaos import ChaosServer
    from serving.cli import _scratch_log
    from serving.feedback.paths import log_root

    settings = Settings(data_dir=data_dir, data=NAME)
    real = log_root(settings)
    with _scratch_log(settings) as run:
        assert run.log_dir is not None and run.log_dir.is_dir() and log_root(run) == run.log_dir != real
        assert real not in run.log_dir.parents
        env = ChaosServer(run, data_dir / "serve.log").env
        assert env["RANKSERVE_LOG_DIR"] == str(run.log_dir) and env["RANKSERVE_DATA"] == NAME
    assert not run.log_dir.exists()


def test_freshness_writes_an_imported_data_sets_changes_in_its_schemas_terms(data_dir: Path, tmp_path: Path) -> None:
    """``rankserve freshness --data NAME``: block, unblock, an update of the first numeric column and
    an added item, each accepted whole by the data set's change log as ``rankserve items`` writes them."""
    import numpy as np

    from benchmarks.freshness import _DataSetChanges
    from serving.repository.catalogue import ChangeLog

    settings = Settings(data_dir=data_dir, data=NAME)
    log = ChangeLog(tmp_path / "repo")
    plan = _DataSetChanges(settings, log)
    rng = np.random.default_rng(0)
    assert {b["k"] for b in plan.bodies(rng, 20)} == {20} and all(isinstance(b["user_id"], int)
                                                                  for b in plan.bodies(rng, 20))
    item = plan.popular[0]
    versions = [plan.append({"block": plan.popular[:2]}), plan.append({"unblock": plan.popular[:2]})]
    update = plan.update(item, rng)
    assert update is not None
    versions.append(plan.append(update))
    versions.append(plan.append(plan.add(item, 3, rng)))
    assert versions == [1, 2, 3, 4]
    cat = log.current(plan.tables)
    t = cat.tables
    assert t.n_items == plan.tables.n_items + 1 and t.item_ids[-1] == "freshness-3" and cat.n_blocked == 0
    row = plan.row_of[item]
    price = t.num_col("item.price")
    assert t.item_num[row, price] != plan.tables.item_num[row, price]  # the update reached the item's price
    vec = t.item_vec_slice("content")
    np.testing.assert_array_equal(t.item_vec[-1, vec], plan.tables.item_vec[row, vec])  # the copy's vector


def test_scenario_freshness_asks_each_scenario_of_a_data_set_with_a_seed_and_its_groups(data_dir: Path) -> None:
    """``rankserve scenario-freshness --data NAME``: every request names a seed item of the data set
    and gives that item's value of each item group in its context (what request:<group> needs)."""
    from benchmarks.scenario_freshness import dataset_bodies_for

    settings = Settings(data_dir=data_dir, data=NAME)
    tables, _ = _loaded(data_dir)
    bodies = dataset_bodies_for(settings, tables, ["home", "similar", "store_page"], n=60, seed=1)
    assert [b["scenario"] for b in bodies[:4]] == ["home", "similar", "store_page", "home"]
    items = data_files.ITEMS
    for b in bodies:
        RankRequest.model_validate(b)
        row = items["sku"].index(b["item_id"])  # the schema's string ids
        assert b["context"]["store"] == items["store"][row] and b["context"]["category"] == items["category"][row]
        assert tables.encode_context(b["context"]).groups == {
            "store": tables.vocab["item.store"][items["store"][row]],
            "category": tables.vocab["item.category"][items["category"][row]]}


def test_index_bench_queries_an_imported_data_sets_users_as_serving_assembles_them(data_dir: Path) -> None:
    """``rankserve index-bench --data NAME``: the user tower's inputs of the data set's users, the
    layout ``tower_inputs`` gives serving (its codes and numerics, an empty sequence's zeros)."""
    import numpy as np

    from benchmarks.index_bench import _user_inputs

    settings = Settings(data_dir=data_dir, data=NAME)
    tables, _ = _loaded(data_dir)
    emb = np.random.default_rng(0).normal(size=(tables.n_items, 6)).astype(np.float32)
    user_cat, user_dense = _user_inputs(settings, emb, most=4)
    assert user_cat.shape[0] == user_dense.shape[0] == 4
    n_cat = len(tables.schema.users.categorical) + len(tables.schema.context.categorical)
    assert user_cat.shape[1] == n_cat and not user_cat[:, len(tables.schema.users.categorical):].any()  # no context
    assert user_dense.shape[1] == len(tables.schema.users.numeric) + len(tables.schema.context.numeric) + 6
    assert not user_dense[:, -6:].any()  # an empty recent: zeros
