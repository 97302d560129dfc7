"""Follows the model repository into a running replica: one follower per followed thing.

Owns: the followers of one replica and the runner that polls them. Each follower has one shape
(:class:`Follower`): read its versioned file, validate it, build the new state off to the side,
publish it. What the pipeline follows goes into one immutable snapshot (``serving.pipeline.state``),
each follower replacing only its own part of the current one:

* :class:`TrafficFollower`: the traffic split of every ranking model (push, promote, rollback);
* :class:`UserTowerFollower`: the user tower's live version, with its own index as one new recall
  stage, so a batch never pairs one version's user embedding with another version's index;
* :class:`CatalogueFollower`: catalogue changes (``serving.repository.catalogue``): the items they
  add or update are embedded with the live item tower and put in its index first, then the
  catalogue is published, so an answer carrying change V never misses an item of V nor holds an
  item blocked in V;
* :class:`ScenarioFollower`: when ``live.json`` was replaced, every live scenario is validated
  against this replica (its settings, the repository's rankers, its catalogue) and the whole set
  is published at once; a scenario whose new version this replica refuses keeps the version it
  had, with a warning.

Two more follow the node: :class:`TritonFollower` loads each version new on disk into the
node-local Triton (so Tritons on other nodes follow a push made anywhere), and
:class:`HeartbeatFollower` says which versions are ready there (``serving.repository.nodes``): a
push moves traffic only once every live node has them.

:class:`FollowerRunner` runs each follower on its own thread, so a slow one (a Triton load takes
seconds, a new index as long as it takes to load) never delays another (a traffic change, the
heartbeat). A follower that fails keeps what it published last and tries again on its next
tick, logged once per distinct failure. :class:`ReplicaFollowers` wires them for one replica and
catches up the catalogue and the scenarios before the first request. Must not touch: the
repository's versions, traffic, change log or scenario files (read only).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from serving.config import Settings
from serving.errors import RankserveError
from serving.pipeline.assemble import make_recall
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall
from serving.pipeline.routing import read_split
from serving.pipeline.state import LiveCell, LiveState
from serving.repository.catalogue import ChangeLog, CompactedError, apply_change
from serving.repository.loading import load_checked, wanted_versions
from serving.repository.nodes import prune_heartbeats, remove_heartbeat, write_heartbeat
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.triton.caller import ModelCaller
from serving.triton.client import TritonClient, TritonEndpoint

__all__ = ["CatalogueFollower", "Follower", "FollowerRunner", "HeartbeatFollower", "LoadingClient",
           "ReplicaFollowers", "ScenarioFollower", "TrafficFollower", "TritonFollower", "UserTowerFollower",
           "poll_logged", "warm_item_tower"]

log = logging.getLogger("rankserve")
_PRUNE_EVERY_S = 60.0  # how often a replica removes the heartbeats of replicas long gone


class Follower(Protocol):
    """One followed thing: :meth:`poll` reads it, and publishes what changed."""

    @property
    def name(self) -> str:
        """What it follows (its thread's and its log lines' name)."""
        ...

    def poll(self) -> bool:
        """Read, validate, build and publish what changed since the last poll; True when something did."""
        ...


class LoadingClient(Protocol):
    """What following the repository needs of Triton (``serving.triton.client.TritonClient``)."""

    def load_model(self, name: str, config: str | None = None) -> None: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...
    def ready_versions(self, name: str) -> tuple[int, ...]: ...


def poll_logged(follower: Follower, last: str = "") -> str:
    """One poll of ``follower``; a failure is logged unless it is ``last`` (the previous poll's).
    Returns this poll's failure (empty: none), for the next call."""
    try:
        follower.poll()
    except Exception as err:  # noqa: BLE001 - keep serving what was published; retry on the next tick
        if repr(err) != last:  # once per distinct failure, not ten times a second
            log.warning("%s follower: %s", follower.name, err)
        return repr(err)
    return ""


class FollowerRunner:
    """Polls each follower on its own daemon thread, every ``interval_s`` of that follower."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, follower: Follower, interval_s: float) -> None:
        """Poll ``follower`` every ``interval_s`` once started."""
        self._threads.append(threading.Thread(target=self._loop, args=(follower, interval_s),
                                              name=f"{follower.name}-follower", daemon=True))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling (waits up to ``timeout_s`` for each poll in progress)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)

    def _loop(self, follower: Follower, interval_s: float) -> None:
        last = ""
        while not self._stop.wait(interval_s):
            last = poll_logged(follower, last)


def _file_stamp(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced or rewritten (a stat: what a follower polls)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _catch_up(changes: ChangeLog, recall: Recall, cat: Catalogue) -> None:
    """Bring ``recall``'s index to ``cat``: embed and upsert what changed since its version."""
    if recall.index.catalogue_version < cat.version:
        rows = changes.embedded_since(recall.index.catalogue_version, cat.version)
        recall.apply(cat.tables, rows, cat.version)


def _publish_caught_up(cell: LiveCell, changes: ChangeLog, *, recall: Recall | None = None,
                       catalogue: Catalogue | None = None) -> None:
    """Publish a new recall stage or a new catalogue beside the other's current one, the index
    brought to the catalogue first, so that no answer of a catalogue misses an item it names.
    When the other went live anew meanwhile (a catalogue change during a user tower swap, or the
    reverse), it is caught up with that one and published again."""
    while True:
        pair = cell.current.replace(recall=recall, catalogue=catalogue)
        _catch_up(changes, pair.recall, pair.catalogue)

        def beside(state: LiveState, pair: LiveState = pair) -> LiveState | None:
            new = state.replace(recall=recall, catalogue=catalogue)
            return new if new.recall is pair.recall and new.catalogue is pair.catalogue else None

        if cell.publish(beside):
            return


def warm_item_tower(recall: Recall) -> None:
    """Load ``recall``'s item tower now, so that a catalogue change need not wait for it."""
    try:
        recall.warm()
    except Exception as err:  # noqa: BLE001 - only a head start; a change reports the real error
        log.warning("item tower of %s v%s: %s", recall.model, recall.version, err)


@dataclass
class TrafficFollower:
    """The traffic split of every ranking model (the user tower's is :class:`UserTowerFollower`'s)."""

    registry: ModelRegistry
    cell: LiveCell
    user_tower: str
    _stamp: tuple[object, ...] | None = field(default=None, init=False)
    name = "traffic"

    def _read_stamp(self) -> tuple[object, ...]:
        r = self.registry
        return tuple((m, _file_stamp(r.traffic_path(m)), len(r.versions(m))) for m in r.models() if m != self.user_tower)

    def poll(self) -> bool:
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        split = read_split(self.registry, self.user_tower)
        self._stamp = stamp
        if dict(split) == dict(self.cell.current.traffic):
            return False
        self.cell.publish(lambda state: state.replace(traffic=split))
        log.info(json.dumps({"event": "traffic_changed", "traffic": {m: t.to_json() for m, t in split.items()}}))
        return True


@dataclass
class UserTowerFollower:
    """The user tower's live version, published with its own index as one new recall stage.

    A version whose recall stage cannot be built is tried again when the tower's traffic or
    versions change (building one loads a whole index). ``warm`` is set once the catalogue
    changes while serving: then a new version's item tower is loaded at once."""

    settings: Settings
    registry: ModelRegistry
    cell: LiveCell
    caller: ModelCaller
    changes: ChangeLog
    warm: threading.Event
    _stamp: tuple[object, ...] | None = field(default=None, init=False)
    name = "user-tower"

    def poll(self) -> bool:
        tower = self.settings.user_tower_model
        stamp = (_file_stamp(self.registry.traffic_path(tower)), len(self.registry.versions(tower)))
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        version = self.registry.traffic(tower).live
        if version == self.cell.current.recall.version:
            return False
        recall = make_recall(self.settings, self.registry, self.cell.current.catalogue, self.caller, version)
        if self.warm.is_set():
            warm_item_tower(recall)
        _publish_caught_up(self.cell, self.changes, recall=recall)
        log.info(json.dumps({"event": "user_tower_changed", "version": version, "items": recall.index.n_items}))
        return True


@dataclass
class CatalogueFollower:
    """The catalogue change log, folded into the catalogue; the live index takes the changed
    items before the catalogue that names them is published. ``warm`` is set at the first change
    while serving (the item tower is loaded then)."""

    cell: LiveCell
    changes: ChangeLog
    warm: threading.Event
    base: Catalogue  # the built catalogue: where a replica starts again when the log was compacted past it
    name = "catalogue"

    def catch_up(self) -> int:
        """Apply the changes not applied yet (at start, before the first request); returns how many."""
        before = self.cell.current.catalogue
        try:
            changes = self.changes.since(before.version)
            cat = before
        except CompactedError as err:  # folded past this replica's version: from the built catalogue
            log.warning(json.dumps({"event": "catalogue_compacted", "reason": str(err)}))
            changes, cat = self.changes.since(self.base.version), self.base
        if not changes:
            return 0
        for change in changes:
            cat = apply_change(cat, change)
        cat = cat.warm(previous=before)
        _publish_caught_up(self.cell, self.changes, catalogue=cat)
        log.info(json.dumps({"event": "catalogue_applied", "version": cat.version, "items": cat.tables.n_items,
                             "blocked": cat.n_blocked, "changes": len(changes)}))
        return len(changes)

    def poll(self) -> bool:
        if not self.catch_up():
            return False
        if not self.warm.is_set():
            # this catalogue changes while serving: load the item tower now (torch takes seconds to
            # import, and would slow every request at replica start-up), so that items added or
            # updated later are embedded at once
            self.warm.set()
            threading.Thread(target=warm_item_tower, args=(self.cell.current.recall,), name="item-tower-warm",
                             daemon=True).start()
        return True


@dataclass
class ScenarioFollower:
    """The live scenarios (``live.json``), validated against this replica and published as one set."""

    settings: Settings
    registry: ModelRegistry
    cell: LiveCell
    store: ScenarioStore
    _stamp: tuple[int, int] | None = field(default=None, init=False)
    _refused: dict[str, str] = field(default_factory=dict, init=False)
    name = "scenarios"

    @property
    def refused(self) -> dict[str, str]:
        """Scenarios whose live version this replica refused, with the reason."""
        return dict(self._refused)

    def poll(self) -> bool:
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return False
        current = self.cell.current
        served, refused = self.store.live(self.settings, self.registry, current.catalogue.group_counts())
        # a new version this replica refuses leaves the one it served in place
        kept = {n: sc for n, sc in current.scenarios.items() if n in refused and sc.version > 0}
        self.cell.publish(lambda state: state.with_scenarios({**kept, **served}))
        self._stamp = stamp
        for name, why in refused.items():
            if self._refused.get(name) != why:
                log.warning(json.dumps({"event": "scenario_refused", "scenario": name, "reason": why,
                                        "serving": kept[name].version if name in kept else None}))
        self._refused = refused
        log.info(json.dumps({"event": "scenarios_applied",
                             "scenarios": {n: sc.version for n, sc in sorted(self.cell.current.scenarios.items())}}))
        return True


@dataclass
class TritonFollower:
    """Keeps this node's Triton (at ``url``) holding the versions the retention rule wants
    (``serving.repository.loading``): the traffic split's, those being prepared for it, and the
    ``keep_others`` newest others, each checked against its digests before Triton sees it.
    :attr:`ready` is what is ready there, as last seen (replaced whole)."""

    registry: ModelRegistry
    client: LoadingClient
    url: str
    keep_others: int = 2
    ready: Mapping[str, list[int]] = field(default_factory=dict, init=False)
    _asked: dict[str, tuple[int, ...]] = field(default_factory=dict, init=False)  # versions last wanted, per model
    _holding: dict[str, tuple[int, ...]] = field(default_factory=dict, init=False)  # versions Triton was given
    _failed: dict[str, str] = field(default_factory=dict, init=False)  # the last failure per model, logged once
    name = "triton"

    def poll(self) -> bool:
        ready = self.load()
        changed = ready != self.ready
        self.ready = ready
        return changed

    def load(self) -> dict[str, list[int]]:
        """Load what the retention rule wants when that changed; returns the versions ready there.
        A version that fails its check is refused (logged); one the traffic split needs leaves
        Triton as it is."""
        ready: dict[str, list[int]] = {}
        for model in self.registry.models():
            wanted, _ = wanted_versions(self.registry, model, self.keep_others)
            try:
                if wanted != self._asked.get(model):
                    if model not in self._holding:  # what Triton holds already (loaded at its start)
                        self._holding[model] = self.client.ready_versions(model)
                    plan = load_checked(self.client, self.registry, model, self.keep_others, self._holding.get(model))
                    self._asked[model] = wanted
                    if plan.load != self._holding.get(model):
                        self._holding[model] = plan.load
                        log.info(json.dumps({"event": "versions_loaded", "model": model, "versions": list(plan.load)}))
                ready[model] = [v for v in self.registry.versions(model) if self.client.model_ready(model, str(v))]
                self._failed.pop(model, None)
            except RankserveError as err:  # Triton down, the load or the check refused: retry, keep serving
                self._asked.pop(model, None)
                self._holding.pop(model, None)
                if self._failed.get(model) != err.message:
                    log.warning("loading %s into %s: %s", model, self.url, err.message)
                self._failed[model] = err.message
        return ready


@dataclass
class HeartbeatFollower:
    """Writes this node's heartbeat: its Triton, the versions ready there, the catalogue change it
    serves and the replica's metrics snapshot (``metrics``); now and then removes the heartbeats of
    replicas long gone (``serving.repository.nodes.prune_heartbeats``)."""

    registry: ModelRegistry
    node_key: str
    triton: TritonFollower
    cell: LiveCell
    metrics: Callable[[], bytes] | None = None
    name = "heartbeat"
    _pruned_at: float = field(default=0.0, init=False)

    def poll(self) -> bool:
        ready: Mapping[str, Sequence[int]] = self.triton.ready
        write_heartbeat(self.registry.heartbeats, self.node_key, self.triton.url, ready,
                        self.metrics() if self.metrics else None, self.cell.current.catalogue.version)
        now = time.monotonic()
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = now
            gone = prune_heartbeats(self.registry.heartbeats)
            if gone:
                log.info(json.dumps({"event": "heartbeats_pruned", "nodes": gone}))
        return True


class ReplicaFollowers:
    """Every follower of one replica, on one runner.

    Args:
        settings: model names, the poll intervals.
        registry: the repository.
        cell: the pipeline's live state.
        caller: the Triton caller a new recall stage uses.
        triton: this node's Triton and its key, into which new versions are loaded (None: nothing
            loaded, no heartbeat).
        metrics: the replica's metrics exposition, published with each heartbeat.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry, cell: LiveCell, caller: ModelCaller, *,
                 triton: TritonEndpoint | None = None, metrics: Callable[[], bytes] | None = None) -> None:
        self.registry = registry
        self.node_key = f"{socket.gethostname()}-{os.getpid()}"
        changes = ChangeLog(registry.repo)
        warm = threading.Event()
        self.catalogue = CatalogueFollower(cell, changes, warm, cell.current.catalogue)
        self.scenarios = ScenarioFollower(settings, registry, cell, ScenarioStore(registry.repo))
        self.runner = FollowerRunner()
        for f in (TrafficFollower(registry, cell, settings.user_tower_model),
                  UserTowerFollower(settings, registry, cell, caller, changes, warm), self.catalogue, self.scenarios):
            self.runner.add(f, settings.follow_interval_s)
        self._client: TritonClient | None = None
        if triton is not None:
            self._client = triton.client()
            loads = TritonFollower(registry, self._client, triton.url, settings.triton_keep_versions)
            self.runner.add(loads, settings.heartbeat_interval_s)
            self.runner.add(HeartbeatFollower(registry, self.node_key, loads, cell, metrics),
                            settings.heartbeat_interval_s)

    @property
    def refused_scenarios(self) -> dict[str, str]:
        """Scenarios whose live version this replica refused, with the reason."""
        return self.scenarios.refused

    def start(self) -> None:
        """Catch up with the catalogue changes and scenarios so far (before the first request), then follow."""
        self.catalogue.catch_up()
        self.scenarios.poll()
        self.runner.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following (waits for polls in progress) and take this node out of the heartbeats."""
        self.runner.stop(timeout_s)
        if self._client is not None:
            self._client.close()
        remove_heartbeat(self.registry.heartbeats, self.node_key)
