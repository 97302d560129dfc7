"""Nodes follow the repository: each replica's Triton follower loads new versions into its node's
Triton and its heartbeat says what is ready; a push waits for every live node (no server: fakes of
the small Triton client surface the follower uses)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serving.errors import BackendUnavailableError, PushRefusedError
from serving.repository import nodes
from serving.repository.followers import HeartbeatFollower, TritonFollower
from serving.repository.registry import ModelRegistry
from serving.triton.digests import record_digests
from tests.unit.fakes import ScoringClient, make_pipeline, make_repo


class _Triton:
    """The sync client surface the follower uses: load_model and model_ready."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.loads: list[str] = []
        self.loaded: dict[str, set[int]] = {}
        self.down = False

    def load_model(self, name: str, config: str | None = None) -> None:
        if self.down:
            raise BackendUnavailableError("Triton unreachable")
        self.loads.append(name)
        asked = json.loads(config)["version_policy"]["specific"]["versions"] if config else self.registry.versions(name)
        self.loaded[name] = {int(v) for v in asked}

    def ready_versions(self, name: str) -> tuple[int, ...]:
        if self.down:
            raise BackendUnavailableError("Triton unreachable")
        return tuple(sorted(self.loaded.get(name, set())))

    def model_ready(self, name: str, version: str = "") -> bool:
        if self.down:
            raise BackendUnavailableError("Triton unreachable")
        return int(version) in self.loaded.get(name, set())


def test_heartbeats_are_live_while_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes.write_heartbeat(tmp_path, "a", "127.0.0.1:1", {"ranker": [1, 2]})
    nodes.write_heartbeat(tmp_path, "b", "127.0.0.1:2", {"ranker": [1]})
    live = {n.key: n for n in nodes.live_nodes(tmp_path)}
    assert set(live) == {"a", "b"} and live["a"].has("ranker", 2) and not live["b"].has("ranker", 2)
    later = time.time() + nodes.FRESH_S + 1
    monkeypatch.setattr(nodes.time, "time", lambda: later)
    assert nodes.live_nodes(tmp_path) == []
    nodes.remove_heartbeat(tmp_path, "a")
    assert not (tmp_path / ".nodes" / "a.json").exists()


def test_a_push_waits_for_every_live_node_and_names_the_laggards(tmp_path: Path) -> None:
    nodes.write_heartbeat(tmp_path, "a", "t1", {"ranker": [1, 2]})
    nodes.write_heartbeat(tmp_path, "b", "t2", {"ranker": [1]})
    with pytest.raises(PushRefusedError, match=r"\['b'\]"):
        nodes.wait_loaded(tmp_path, "ranker", 2, timeout_s=0.3, poll_s=0.05)
    nodes.write_heartbeat(tmp_path, "b", "t2", {"ranker": [1, 2]})
    assert nodes.wait_loaded(tmp_path, "ranker", 2, timeout_s=1) == ["a", "b"]
    assert nodes.wait_loaded(tmp_path / "nowhere", "ranker", 2, timeout_s=0.1) == []  # nothing serving


def test_the_follower_loads_new_versions_into_its_triton_and_the_heartbeat_reports_them(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pipeline = make_pipeline(repo, ScoringClient())
    registry = ModelRegistry(repo)
    triton = _Triton(registry)
    follower = TritonFollower(registry, triton, "127.0.0.1:1")
    heartbeat = HeartbeatFollower(registry, "node-a", follower, pipeline.cell, lambda: b"# metrics\n")
    assert follower.load() == {"ranker": [1], "user_tower": [1]}
    assert follower.poll() is True and follower.poll() is False
    assert triton.loads == ["ranker", "user_tower"]  # nothing new: no second load
    assert heartbeat.poll() and nodes.live_nodes(registry.heartbeats)[0].loaded == {"ranker": [1], "user_tower": [1]}
    (repo / "ranker" / "2").mkdir()
    (repo / "ranker" / "2" / "meta.json").write_text(json.dumps({}))
    record_digests(repo / "ranker" / "2")
    assert follower.load()["ranker"] == [1, 2]
    assert triton.loads == ["ranker", "user_tower", "ranker"]
    triton.down = True
    assert follower.poll() is True and follower.ready == {}
    heartbeat.poll()
    (node,) = nodes.live_nodes(registry.heartbeats)
    assert (node.key, node.triton, node.loaded) == ("node-a", "127.0.0.1:1", {})
    assert nodes.live_metrics(registry.heartbeats) == ["# metrics\n"]
    triton.down, triton.loaded = False, {}  # a Triton started again holds nothing until loaded
    assert follower.load()["ranker"] == [1, 2]
    assert triton.loads[-2:] == ["ranker", "user_tower"]  # Triton came back: loaded again
    loads = len(triton.loads)
    follower._asked.clear()  # asked again what it holds: the same plan is not loaded twice
    assert follower.load()["ranker"] == [1, 2] and len(triton.loads) == loads
