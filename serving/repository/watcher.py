"""Follows the model repository into a running pipeline and into the node's Triton: traffic
changes from push, promote and rollback, a new user tower version with its index, catalogue
changes, scenario changes, and every new version loaded into this node's Triton.

Owns: the polling thread of one replica, what it swaps, and the node's heartbeat
(``serving.repository.nodes``). The ranking traffic split is swapped as one dict; a new user
tower version comes with its own index as one new recall stage, so a batch never pairs one
version's user embedding with another version's index. Each new version on disk is loaded into
the node-local Triton (so Tritons on other nodes follow a push made anywhere), and the heartbeat
says which versions are ready there: a push moves traffic only once every live node has them.
Catalogue changes (``serving.repository.catalogue``) are checked every ``catalogue_interval_s``:
the items they add or update are embedded with the live user tower's item tower and put in its
index first, then the pipeline's catalogue is swapped whole, so an answer carrying change V never
holds an item blocked in V. Scenarios (``serving.repository.scenarios``) are checked every
``catalogue_interval_s`` too: when ``live.json`` was replaced, every live scenario is validated
against this replica (its settings, the repository's rankers, its catalogue) and the whole set is
swapped into the pipeline at once; a scenario whose new version this replica refuses keeps the
version it had, with a warning. Must not touch: the repository's versions, traffic, change log or
scenario files (read only).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from serving.config import Settings
from serving.errors import RankserveError
from serving.pipeline.assemble import make_recall
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.orchestration import RankPipeline, Recall
from serving.repository.catalogue import ChangeLog, apply_change
from serving.repository.nodes import remove_heartbeat, write_heartbeat
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.triton.caller import ModelCaller
from serving.triton.client import TritonEndpoint

__all__ = ["LoadingClient", "RepositoryWatcher"]

log = logging.getLogger("rankserve")


class LoadingClient(Protocol):
    """What following the repository needs of Triton (``serving.triton.client.TritonClient``)."""

    def load_model(self, name: str) -> None: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...


class RepositoryWatcher:
    """Checks the repository every ``interval_s`` and applies what changed to ``pipeline``.

    Args:
        settings: model names and the repository path.
        registry: the repository.
        pipeline: the pipeline to keep current.
        caller: the Triton caller a new recall stage uses.
        triton: this node's Triton, into which new versions are loaded (None: nothing loaded,
            no heartbeat).
        snapshot: the replica's metrics exposition, published with each heartbeat.
        interval_s: seconds between checks of traffic and versions.
        catalogue_interval_s: seconds between checks of the catalogue change log, and of the
            scenarios' ``live.json``.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry, pipeline: RankPipeline, caller: ModelCaller,
                 *, triton: TritonEndpoint | None = None, snapshot: Callable[[], bytes] | None = None,
                 interval_s: float = 1.0, catalogue_interval_s: float = 0.1) -> None:
        self.settings = settings
        self.registry = registry
        self.pipeline = pipeline
        self.caller = caller
        self.triton = triton
        self.triton_url = triton.url if triton is not None else None
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.catalogue_interval_s = catalogue_interval_s
        self.changes = ChangeLog(registry.repo)
        self.scenarios = ScenarioStore(registry.repo)
        self._scenario_stamp: tuple[int, int] | None = None
        self._scenarios_refused: dict[str, str] = {}
        self._warmed = False  # the item tower is loaded once catalogue changes arrive
        self._swap = threading.Lock()  # a catalogue change and a new recall stage are swapped one at a time
        self.node_key = f"{socket.gethostname()}-{os.getpid()}"
        self._on_disk: dict[str, list[int]] = {}  # versions last asked of Triton, per model
        self._ready: dict[str, list[int]] = {}  # versions ready in this node's Triton, as last seen
        self._stamp = self._read_stamp()
        self._stop = threading.Event()
        # two threads: loading a version into Triton takes seconds, and must not hold up applying
        # a traffic change (which a push makes only once every node has loaded what it names)
        self._threads = [threading.Thread(target=self._run, name="repository-watcher", daemon=True),
                         threading.Thread(target=self._follow_loop, name="triton-follower", daemon=True),
                         threading.Thread(target=self._catalogue_loop, name="catalogue-follower", daemon=True),
                         threading.Thread(target=self._scenario_loop, name="scenario-follower", daemon=True)]

    def start(self) -> None:
        """Catch up with the catalogue changes and scenarios so far (before the first request), then follow."""
        self.follow_catalogue()
        self.follow_scenarios()
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop checking (waits for a check in progress) and take this node out of the heartbeats."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)
        remove_heartbeat(self.registry.repo, self.node_key)

    def _read_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for name in self.registry.models():
            t = self.registry.traffic_path(name)
            out.append((name, t.stat().st_mtime_ns if t.exists() else 0, len(self.registry.versions(name))))
        return tuple(out)

    def check(self) -> bool:
        """Apply a changed traffic split; True when something changed."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        p = self.pipeline
        p.refresh_traffic()
        tower = self.registry.traffic(self.settings.user_tower_model).live
        if tower != p.recall.version:
            with self._swap:
                recall = make_recall(self.settings, self.registry, p.catalogue, self.caller, tower)
                if self._warmed:  # this catalogue changes: the new version's item tower is ready at once
                    self._warm(recall)
                self._catch_up(recall, p.catalogue)
                p.recall = recall
        log.info(json.dumps({"event": "traffic_changed", "traffic": {m: t.to_json() for m, t in p.traffic_split.items()},
                             "user_tower": tower}))
        return True

    def follow_catalogue(self) -> int:
        """Apply the catalogue changes not applied yet; returns how many."""
        p = self.pipeline
        changes = self.changes.since(p.catalogue.version)
        if not changes:
            return 0
        with self._swap:
            cat = p.catalogue
            for change in changes:
                cat = apply_change(cat, change)
            self._catch_up(p.recall, cat)  # the index first: then no answer of this version misses an item
            p.catalogue = cat.warm(previous=p.catalogue)
        log.info(json.dumps({"event": "catalogue_applied", "version": cat.version, "items": cat.tables.n_items,
                             "blocked": cat.n_blocked, "changes": len(changes)}))
        return len(changes)

    @property
    def refused_scenarios(self) -> dict[str, str]:
        """Scenarios whose live version this replica refused, with the reason."""
        return dict(self._scenarios_refused)

    def follow_scenarios(self) -> bool:
        """Serve the live scenarios when ``live.json`` changed; True when it had."""
        stamp = self.scenarios.stamp()
        if stamp == self._scenario_stamp:
            return False
        p = self.pipeline
        served, refused = self.scenarios.live(self.settings, self.registry, p.catalogue.group_counts())
        # a new version this replica refuses leaves the one it served in place
        kept = {n: sc for n, sc in p.scenarios.items() if n in refused and sc.version > 0}
        p.set_scenarios({**kept, **served})
        self._scenario_stamp = stamp
        for name, why in refused.items():
            if self._scenarios_refused.get(name) != why:
                log.warning(json.dumps({"event": "scenario_refused", "scenario": name, "reason": why,
                                        "serving": kept[name].version if name in kept else None}))
        self._scenarios_refused = refused
        log.info(json.dumps({"event": "scenarios_applied",
                             "scenarios": {n: sc.version for n, sc in sorted(p.scenarios.items())}}))
        return True

    @staticmethod
    def _warm(recall: Recall) -> None:
        try:
            recall.warm()
        except Exception as err:  # noqa: BLE001 - only a head start; a change reports the real error
            log.warning("item tower of %s v%s: %s", recall.model, recall.version, err)

    def _catch_up(self, recall: Recall, cat: Catalogue) -> None:
        """Bring ``recall``'s index to ``cat``: embed and upsert what changed since its version."""
        if recall.index.catalogue_version < cat.version:
            rows = self.changes.embedded_since(recall.index.catalogue_version, cat.version)
            recall.apply(cat.tables, rows, cat.version)

    def follow(self, client: LoadingClient) -> dict[str, list[int]]:
        """Load versions new on disk into this node's Triton; returns the versions ready there."""
        ready: dict[str, list[int]] = {}
        for model in self.registry.models():
            versions = self.registry.versions(model)
            try:
                if versions != self._on_disk.get(model):
                    client.load_model(model)  # explicit mode: loads the versions on disk, keeps serving the rest
                    self._on_disk[model] = versions
                    log.info(json.dumps({"event": "versions_loaded", "model": model, "versions": versions}))
                ready[model] = [v for v in versions if client.model_ready(model, str(v))]
            except RankserveError as err:  # Triton down or the load refused: report nothing ready, retry
                self._on_disk.pop(model, None)
                log.warning("loading %s into %s: %s", model, self.triton_url, err.message)
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
                if self.triton_url is not None:  # the heartbeat keeps its beat while a load takes seconds
                    write_heartbeat(self.registry.repo, self.node_key, self.triton_url, self._ready,
                                    self.snapshot() if self.snapshot else None, self.pipeline.catalogue.version)
            except Exception as err:  # noqa: BLE001 - a bad file must not kill the watcher; keep serving
                log.warning("repository watcher: %s", err)

    def _catalogue_loop(self) -> None:
        last = ""
        while not self._stop.wait(self.catalogue_interval_s):
            try:
                if self.follow_catalogue() and not self._warmed:
                    # this catalogue changes while serving: load the item tower now (torch takes
                    # seconds to import, and would slow every request at replica start-up), so
                    # that items added or updated later are embedded at once
                    self._warmed = True
                    threading.Thread(target=self._warm, args=(self.pipeline.recall,), name="item-tower-warm",
                                     daemon=True).start()
                last = ""
            except Exception as err:  # noqa: BLE001 - keep serving the catalogue as it was; retry
                if repr(err) != last:  # once per distinct failure, not ten times a second
                    log.warning("catalogue follower: %s", err)
                last = repr(err)

    def _scenario_loop(self) -> None:
        last = ""
        while not self._stop.wait(self.catalogue_interval_s):
            try:
                self.follow_scenarios()
                last = ""
            except Exception as err:  # noqa: BLE001 - keep serving the scenarios as they were; retry
                if repr(err) != last:
                    log.warning("scenario follower: %s", err)
                last = repr(err)

    def _follow_loop(self) -> None:
        if self.triton is None:
            return
        client = self.triton.client()
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self._ready = self.follow(client)
                except Exception as err:  # noqa: BLE001 - keep following; the next tick tries again
                    log.warning("triton follower: %s", err)
        finally:
            client.close()
