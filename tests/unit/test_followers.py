"""A replica's followers without a server: each publishes its own part of the one live snapshot; a
follower that fails keeps what it published and the others keep working; a slow one delays no
other; an answer's versions come from one snapshot when a swap happens between two prepares; a new
user tower goes live with its index caught up with a catalogue change that landed meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving.files import last_good
from serving.index.faiss_index import build_index, save_index
from serving.pipeline.assemble import make_caller
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall
from serving.pipeline.routing import Traffic
from serving.repository import followers
from serving.repository.catalogue import ChangeLog
from serving.repository.followers import (
    CatalogueFollower,
    FollowerRunner,
    ScenarioFollower,
    TrafficFollower,
    UserTowerFollower,
)
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.schemas import RankRequest, RankResponse
from tests.unit.fakes import SPEC, ScoringClient, item_embedding, make_pipeline, make_repo, make_tables
from tests.unit.test_scenarios import SIMILAR

HOME = """
name: home
sources:
  - {kind: given}
  - {kind: user_to_item, count: 40}
ranker: ranker
limits: {max_k: 40}
"""


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def _until(done: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``done()`` came true within ``timeout_s`` (polled)."""
    t_end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > t_end:
            return False
        time.sleep(0.01)
    return True


def _new_ranker_version(repo: Path, version: int) -> None:
    (repo / "ranker" / str(version)).mkdir()
    (repo / "ranker" / str(version) / "meta.json").write_text(json.dumps({"cross_spec": json.loads(SPEC.to_json())}))


class _Counting:
    """A follower, counting its polls."""

    def __init__(self, inner: ScenarioFollower) -> None:
        self.inner, self.name, self.polls = inner, inner.name, 0

    def poll(self) -> bool:
        self.polls += 1
        return self.inner.poll()


class _Blocking:
    """A follower whose poll takes as long as the test says (a Triton load of many seconds)."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def poll(self) -> bool:
        self.entered.set()
        self.release.wait(30)
        return False


def test_a_failing_follower_keeps_the_old_snapshot_and_the_others_keep_working(
        repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = make_pipeline(repo, ScoringClient())
    registry, store = ModelRegistry(repo), ScenarioStore(repo)
    store.apply(SIMILAR, p.settings, registry, p.catalogue.group_counts())
    scenarios = _Counting(ScenarioFollower(p.settings, registry, p.cell, store))
    assert scenarios.poll() and p.live.scenarios["similar"].version == 1
    before = p.live
    store.live_path.write_text("{ damaged")  # not through apply: what a broken disk or hand edit leaves
    last_good(store.live_path).write_text("{ damaged too")  # and its last good copy with it: the follower fails
    runner = FollowerRunner()
    runner.add(scenarios, 0.01)
    runner.add(TrafficFollower(registry, p.cell, "user_tower"), 0.01)
    with caplog.at_level(logging.WARNING, logger="rankserve"):
        runner.start()
        try:
            _new_ranker_version(repo, 2)
            registry.set_traffic("ranker", Traffic(live=2, history=(1,)))
            assert _until(lambda: p.live.traffic["ranker"].live == 2)
            polls = scenarios.polls
            assert _until(lambda: scenarios.polls >= polls + 3)  # it keeps failing
        finally:
            runner.stop()
    assert p.live is not before and p.live.scenarios is before.scenarios  # the scenarios as they were
    assert p.live.catalogue is before.catalogue and p.live.recall is before.recall
    failures = [r for r in caplog.records if r.getMessage().startswith("scenarios follower:")]
    assert len(failures) == 1  # once per distinct failure, not once a poll


def test_a_slow_follower_does_not_delay_another(repo: Path) -> None:
    p = make_pipeline(repo, ScoringClient())
    registry = ModelRegistry(repo)
    slow = _Blocking()
    runner = FollowerRunner()
    runner.add(slow, 0.01)
    runner.add(TrafficFollower(registry, p.cell, "user_tower"), 0.01)
    runner.start()
    try:
        assert slow.entered.wait(10)
        _new_ranker_version(repo, 2)
        registry.set_traffic("ranker", Traffic(live=2, history=(1,)))
        assert _until(lambda: p.live.traffic["ranker"].live == 2)
        assert not slow.release.is_set()  # the slow one is still in its poll
    finally:
        slow.release.set()
        runner.stop()


def test_an_answers_versions_come_from_one_snapshot_when_a_swap_happens_between_two_prepares(repo: Path) -> None:
    client = ScoringClient()
    p = make_pipeline(repo, client)
    registry, store, log = ModelRegistry(repo), ScenarioStore(repo), ChangeLog(repo)
    (alone,), _ = asyncio.run(p.run_batch([p.prepare(RankRequest(user_id=3, k=10))]))
    assert isinstance(alone, RankResponse)
    first = p.prepare(RankRequest(user_id=3, k=10))
    # between the two prepares: a new ranker version takes the traffic, a catalogue change blocks
    # the items the first request would be given, and the repository's own home goes live
    _new_ranker_version(repo, 2)
    registry.set_traffic("ranker", Traffic(live=2, history=(1,)))
    assert TrafficFollower(registry, p.cell, "user_tower").poll()
    blocked = [it.item_id for it in alone.items[:5]]
    log.append(p.catalogue.tables, block=blocked)
    assert CatalogueFollower(p.cell, log, threading.Event(), p.cell.current.catalogue).catch_up() == 1
    store.apply(HOME, p.settings, registry, p.catalogue.group_counts())
    assert ScenarioFollower(p.settings, registry, p.cell, store).poll()
    second = p.prepare(RankRequest(user_id=3, k=10))
    client.calls.clear()
    (a, b), stats = asyncio.run(p.run_batch([first, second]))
    assert isinstance(a, RankResponse) and isinstance(b, RankResponse)
    assert (a.model_version, a.catalogue_version, a.scenario_version) == (1, 0, 0)
    assert (b.model_version, b.catalogue_version, b.scenario_version) == (2, 1, 1)
    assert [it.item_id for it in a.items] == [it.item_id for it in alone.items]  # its own snapshot's catalogue
    assert not set(blocked) & {it.item_id for it in b.items}
    assert stats.requests == 2 and stats.group_scenarios == [1, 1]  # one group per snapshot
    assert {c[1] for c in client.calls if c[0] == "ranker"} == {"1", "2"}


def test_a_new_user_tower_goes_live_with_its_index_caught_up_with_a_change_that_landed_meanwhile(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_pipeline(repo, ScoringClient())
    registry, log = ModelRegistry(repo), ChangeLog(repo)
    tables = make_tables()
    tower_dir = repo / "user_tower" / "2"
    tower_dir.mkdir()
    (tower_dir / "meta.json").write_text("{}")
    save_index(build_index(item_embedding(tables, np.arange(tables.n_items)), kind="flat"), tower_dir / "items.faiss")
    registry.set_traffic("user_tower", Traffic(live=2, history=(1,)))
    catalogue = CatalogueFollower(p.cell, log, threading.Event(), p.cell.current.catalogue)
    tower = UserTowerFollower(p.settings, registry, p.cell, make_caller(p.settings, ScoringClient()), log,
                              threading.Event())
    real_catch_up = followers._catch_up
    landed: list[int] = []

    def catch_up_then_a_change_lands(changes: ChangeLog, recall: Recall, cat: Catalogue) -> None:
        real_catch_up(changes, recall, cat)
        if recall.version == 2 and not landed:  # after the new index caught up, before it is published
            log.append(tables, block=[7])
            landed.append(catalogue.catch_up())

    monkeypatch.setattr(followers, "_catch_up", catch_up_then_a_change_lands)
    assert tower.poll() is True and landed == [1]
    live = p.live
    assert live.recall.version == 2 and live.recall.label == "faiss"
    assert live.recall.index.catalogue_version == live.catalogue.version == 1
    assert tower.poll() is False  # nothing new
    (r,), _ = asyncio.run(p.run_batch([p.prepare(RankRequest(user_id=3, k=10))]))
    assert isinstance(r, RankResponse) and r.catalogue_version == 1 and 7 not in {it.item_id for it in r.items}
