"""State files: written durably with a last good copy, read back from it when damaged, temporary
files of crashed writers swept, private folders refused when they are not ours; heartbeats of
replicas long gone pruned; the catalogue change log compacted without changing what it says."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from serving.files import TEMP_MARK, last_good, private_dir, read_state, sweep_temporary, write_state
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.routing import Traffic
from serving.repository import nodes
from serving.repository.catalogue import ChangeLog, CompactedError, apply_change, fold_changes
from serving.repository.registry import ModelRegistry
from tests.unit.fakes import make_repo, make_tables


def test_a_damaged_state_file_is_read_from_its_last_good_copy_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    write_state(path, json.dumps({"live": 2}))
    lines: list[str] = []
    path.write_text("")  # truncated
    assert read_state(path, json.loads, on_damage=lines.append) == {"live": 2}
    assert len(lines) == 1 and "damaged" in lines[0]
    last_good(path).write_text("{")
    with pytest.raises(ValueError, match="damaged"):
        read_state(path, json.loads, on_damage=lines.append)
    assert read_state(tmp_path / "none.json", json.loads) is None


def test_a_replica_reading_a_damaged_traffic_file_keeps_the_split(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    reg = ModelRegistry(repo)
    reg.set_traffic("ranker", Traffic(live=1, history=(1,)))
    reg.traffic_path("ranker").write_bytes(b"")
    assert reg.traffic("ranker") == Traffic(live=1, history=(1,))


def test_temporary_files_of_a_crashed_writer_are_swept_but_not_a_writer_s_in_progress(tmp_path: Path) -> None:
    old = tmp_path / "ranker" / f".traffic.json{TEMP_MARK}abc"
    new = tmp_path / f".live.json{TEMP_MARK}def"
    old.parent.mkdir()
    old.write_text("x")
    new.write_text("y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sweep_temporary(tmp_path) == [old] and new.exists()


def test_a_private_folder_is_0700_and_a_link_in_its_place_is_refused(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "mine")
    assert d.stat().st_mode & 0o777 == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError):
        private_dir(tmp_path / "link")


def test_heartbeats_of_replicas_long_gone_are_pruned(tmp_path: Path) -> None:
    nodes.write_heartbeat(tmp_path, "alive", "127.0.0.1:1", {"ranker": [1]}, b"# m\n")
    nodes.write_heartbeat(tmp_path, "gone", "127.0.0.1:2", {"ranker": [1]}, b"# m\n")
    past = time.time() - 2 * nodes.PRUNE_S
    os.utime(tmp_path / "gone.json", (past, past))
    assert nodes.prune_heartbeats(tmp_path) == ["gone"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alive.json", "alive.prom"]


def test_a_compacted_log_says_what_the_changes_said(tmp_path: Path) -> None:
    base = make_tables()
    log = ChangeLog(tmp_path)
    rng = np.random.default_rng(1)
    row = {"category": 2, "shop": 3, "brand": 4, "price_bucket": 1, "log_price": 0.1, "rating": 0.2,
           "log_popularity": 0.3, "dense": rng.normal(size=base.item_dense.shape[1]).tolist()}
    log.append(base, add=[row, row])
    n = base.n_items
    log.append(base, block=[3, n])
    log.append(base, update=[{"item_id": n, "rating": 0.9}, {"item_id": 5, "log_price": -1.0}])
    log.append(base, unblock=[3])
    log.append(base, block=[7])
    one_by_one = log.current(base)
    folded = log.compact(keep=1)
    assert folded is not None and folded.version == 4 and folded.first_version == 1
    assert log.versions() == [4, 5]
    together = log.current(base)
    assert together.version == one_by_one.version == 5
    assert np.array_equal(together.blocked, one_by_one.blocked)
    for name in ("item_cat", "item_num", "item_dense"):
        assert np.array_equal(getattr(together.tables, name), getattr(one_by_one.tables, name)), name
    with pytest.raises(CompactedError):  # a replica that had change 2 starts again from the built catalogue
        log.since(2)
    assert fold_changes([log.read(4)]).version == 4
    cat = apply_change(Catalogue.initial(base), log.read(4))
    assert cat.version == 4
