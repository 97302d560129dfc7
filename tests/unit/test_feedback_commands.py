"""``rankserve log join`` (a new data set version, or ``--out``; refusals that write nothing),
``rankserve canary report`` and ``rankserve promote --if-better`` on a small imported data set."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.cli import main
from serving.data.store import DataSetStore
from serving.pipeline.routing import Traffic
from serving.repository.registry import ModelRegistry
from tests.unit import data_files
from tests.unit.log_files import Served, at, write_events, write_served

NAME = "shop"


def _cli(data_dir: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with data_files.rankserve_env(data_dir), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data set ``shop`` imported (items s0..s9, users 100..104) and a served log of three answers."""
    files = data_files.write(tmp_path / "files")
    data = tmp_path / "data"
    rc, _, err = _cli(data, "data", "import", NAME, *files.args())
    assert rc == 0, err
    log = data / "datasets" / NAME / "log"
    write_served(log, [Served("r1", 0, [("s1", 0.9), ("s2", 0.4)], user_id="100"),
                       Served("r2", 5, [("s3", 0.7), ("s-new", 0.2)], user_id="101", role="canary", version=2),
                       Served("r3", 9, [("s4", 0.3)], user_id="999")])  # an unknown user
    write_events(log, [("r1", "s2", "click", 3), ("r2", "s-new", "click", 7), ("zz", "s1", "click", 8)])
    return data


def test_log_join_adds_a_version_with_the_known_joined_impressions(data_dir: Path) -> None:
    ds = DataSetStore(data_dir).dataset(NAME)
    before = ds.impressions(1)
    files_before = {p.name: p.read_bytes() for p in ds.version_dir(1).iterdir()}
    rc, out, err = _cli(data_dir, "log", "join", NAME)
    assert rc == 0, err
    assert "3 served records, 5 impressions, 3 events: 2 joined, 1 unmatched, 0 late" in out
    assert "version 2 written (version 1 plus 3 joined impressions; left out 1 naming an item and 1 a user" in out
    assert ds.live_version() == 2 and ds.versions() == [1, 2]
    assert {p.name: p.read_bytes() for p in ds.version_dir(1).iterdir()} == files_before  # untouched
    after = ds.impressions(2)
    assert after.schema == before.schema and after.slice(0, before.num_rows).equals(before)
    added = after.slice(before.num_rows).to_pylist()
    tables = ds.tables(2)
    got = [(tables.user_ids[r["user_row"]], tables.item_ids[r["item_row"]], r["label"]) for r in added]
    assert got == [(100, "s1", 0), (100, "s2", 1), (101, "s3", 0)]
    assert [r["time"] for r in added] == [int(at(0).timestamp())] * 2 + [int(at(5).timestamp())]  # ts is a number
    assert all(r["context.device"] is None for r in added)
    assert ds.manifest(2)["base_version"] == 1 and ds.manifest(2)["rows"]["impressions"] == after.num_rows


def test_training_reads_the_new_version(data_dir: Path, tmp_path: Path) -> None:
    assert _cli(data_dir, "log", "join", NAME)[0] == 0
    rc, out, err = _cli(data_dir, "features", NAME, "--out", str(tmp_path / "train.parquet"))
    assert rc == 0, err
    assert pq.read_table(tmp_path / "train.parquet").num_rows == DataSetStore(data_dir).dataset(NAME).impressions().num_rows


def test_log_join_out_writes_every_joined_impression_and_leaves_the_data_set(data_dir: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "joined.parquet"
    rc, out, err = _cli(data_dir, "log", "join", NAME, "--out", str(out_file), "--since", "2026-03-01T12:00:04Z",
                        "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["counts"]["impressions"] == 3 and summary["out"] == str(out_file)
    t = pq.read_table(out_file)
    assert t.column("item_id").to_pylist() == ["s3", "s-new", "s4"]  # the unknown item kept here
    assert t.column("user_id").type == pa.int64()  # the data set's user ids are integers
    assert DataSetStore(data_dir).dataset(NAME).versions() == [1]
    assert not [p for p in out_file.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("argv", "says"), [
    (["--since", "2030-01-01T00:00:00Z"], "nothing to add: no answer was served in the window"),
    (["--since", "soon"], "neither ISO 8601"),
    (["--since", "2026-03-01T12:00:05Z", "--until", "2026-03-01T12:00:05Z"], "must be after --since"),
])
def test_a_refused_join_says_why_and_writes_nothing(data_dir: Path, argv: list[str], says: str) -> None:
    rc, _, err = _cli(data_dir, "log", "join", NAME, *argv)
    assert rc == 2 and says in err
    assert DataSetStore(data_dir).dataset(NAME).versions() == [1]


def test_a_damaged_file_refuses_the_join_naming_it(data_dir: Path) -> None:
    (data_dir / "datasets" / NAME / "log" / "events" / "events-x-20260301T120000Z-000001.parquet").write_text("no")
    rc, _, err = _cli(data_dir, "log", "join", NAME)
    assert rc == 2 and "events-x-20260301T120000Z-000001.parquet: not a readable Parquet file" in err
    assert DataSetStore(data_dir).dataset(NAME).versions() == [1]


def test_nothing_known_to_add_is_refused(data_dir: Path) -> None:
    rc, _, err = _cli(data_dir, "log", "join", NAME, "--since", "2026-03-01T12:00:09Z")  # r3: an unknown user only
    assert rc == 2 and "nothing to add: all 1 joined impressions name an item (0) or a user (1)" in err
    assert DataSetStore(data_dir).dataset(NAME).live_version() == 1


def test_a_failed_write_leaves_no_version_and_the_live_one(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.data.store as store

    def broken(path: Path, write: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_durable", broken)
    rc, _, err = _cli(data_dir, "log", "join", NAME)
    assert rc == 4 and "No space left on device" in err
    ds = DataSetStore(data_dir).dataset(NAME)
    assert ds.versions() == [1] and ds.live_version() == 1
    assert not [p for p in ds.root.iterdir() if p.name.startswith(".import-")]


def _repository(data_dir: Path, traffic: Traffic) -> ModelRegistry:
    registry = ModelRegistry(data_dir / "datasets" / NAME / "model_repository")
    for version in (1, 2):
        (registry.repo / "ranker" / str(version)).mkdir(parents=True)
    (registry.repo / "ranker" / "config.pbtxt").write_text('name: "ranker"\n')
    registry.set_traffic("ranker", traffic)
    return registry


def test_canary_report_prints_each_role_and_without_a_canary_the_live_one(data_dir: Path) -> None:
    _repository(data_dir, Traffic(live=1, canary_version=2, canary_percent=10.0))
    rc, out, err = _cli(data_dir, "canary", "report", "ranker", "--data", NAME)
    assert rc == 0, err
    assert "live    v1" in out and "canary  v2" in out and "CTR 0.5000" in out
    rc, out, _ = _cli(data_dir, "canary", "report", "ranker", "--data", NAME, "--json")
    report = json.loads(out)
    assert (report["live"], report["canary"]) == (1, 2)
    assert [(a["role"], a["impressions"], a["positives"]) for a in report["arms"]] == [("live", 3, 1),
                                                                                       ("canary", 2, 1)]


def test_canary_report_without_a_canary_exits_0(data_dir: Path) -> None:
    _repository(data_dir, Traffic(live=1))
    rc, out, _ = _cli(data_dir, "canary", "report", "ranker", "--data", NAME)
    assert rc == 0 and "ranker has no canary: live v1 alone" in out


def test_promote_if_better_changes_nothing_without_enough_data(data_dir: Path) -> None:
    registry = _repository(data_dir, Traffic(live=1, canary_version=2, canary_percent=10.0))
    rc, _, err = _cli(data_dir, "promote", "ranker", "--data", NAME, "--if-better")
    assert rc == 3 and "not enough data: canary v2 has 2 of the 1,000 needed; live v1 has 3 of the 1,000" in err
    assert registry.traffic("ranker").canary_version == 2


def test_promote_if_better_promotes_a_canary_users_prefer(data_dir: Path) -> None:
    log = data_dir / "datasets" / NAME / "log"
    write_served(log, [Served(f"l{i}", 20 + i, [("s1", 0.5)], user_id="100") for i in range(50)]
                 + [Served(f"c{i}", 20 + i, [("s1", 0.5)], user_id="101", role="canary", version=2)
                    for i in range(50)], seq=1)
    write_events(log, [(f"c{i}", "s1", "click", 21 + i) for i in range(20)] + [("l0", "s1", "click", 21)], seq=1)
    registry = _repository(data_dir, Traffic(live=1, canary_version=2, canary_percent=10.0))
    rc, out, err = _cli(data_dir, "promote", "ranker", "--data", NAME, "--if-better", "--min-impressions", "50",
                        "--since", "2026-03-01T12:00:20Z")
    assert rc == 0, err
    assert out.startswith("better at 95%: canary v2 CTR 0.4000 on 50 vs live v1 CTR 0.0200 on 50")
    assert registry.traffic("ranker") == Traffic(live=2, history=(1,))
    rc, _, err = _cli(data_dir, "promote", "ranker", "--data", NAME, "--if-better")
    assert rc == 3 and "no canary to judge" in err


def test_train_demo_accepts_a_version_a_join_made_from_the_built_one(tmp_path: Path) -> None:
    from serving.config import Settings
    from serving.errors import ConfigError
    from training.dataset_command import _check_demo
    from training.preflight import BUILD_FORMAT

    files = data_files.write(tmp_path / "files")
    data = tmp_path / "data"
    assert _cli(data, "data", "import", "demo", *files.args())[0] == 0
    (data / "data").mkdir()
    (data / "data" / "build.json").write_text(json.dumps({"format": BUILD_FORMAT, "seed": 0, "config": {},
                                                          "quality": {}, "versions": {}, "data_set_version": 1}))
    write_served(data / "datasets" / "demo" / "log", [Served("r1", 0, [("s1", 0.9)], user_id="100")])
    assert _cli(data, "log", "join", "demo")[0] == 0
    settings = Settings.model_validate({"data_dir": data, "model_repository": tmp_path / "repo"})
    ds = DataSetStore(data).dataset("demo")
    _check_demo(settings, ds, 2)  # made by the join from the built version 1
    assert _cli(data, "data", "import", "demo", *files.args())[0] == 0  # version 3: imported by hand
    with pytest.raises(ConfigError, match="not the one rankserve build imported"):
        _check_demo(settings, ds, 3)


@pytest.mark.parametrize(("like", "expected"), [
    (pa.timestamp("us"), datetime(2026, 3, 1, 23, 59, 1)),  # no zone: the UTC time
    (pa.date32(), date(2026, 3, 1)),
    (pa.int64(), 1772409541),  # a number: epoch seconds
    (pa.float64(), 1772409541.0),
])
def test_the_served_time_takes_the_type_of_the_data_sets_time(like: pa.DataType, expected: object) -> None:
    from serving.feedback.dataset import _times

    served = pa.chunked_array([pa.array([datetime(2026, 3, 1, 23, 59, 1, tzinfo=UTC)], pa.timestamp("ms", tz="UTC"))])
    assert _times(served, like).to_pylist() == [expected]
