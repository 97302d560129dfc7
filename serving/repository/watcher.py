"""Follows the model repository into a running pipeline: traffic changes from push, promote and
rollback, and a new user tower version with its index.

Owns: the polling thread of one replica and what it swaps. The ranking traffic split is swapped
as one dict; a new user tower version comes with its own index as one new recall stage, so a
batch never pairs one version's user embedding with another version's index.
Must not touch: the repository's files (read only) or Triton.
"""

from __future__ import annotations

import json
import logging
import threading

from serving.config import Settings
from serving.pipeline.assemble import make_recall
from serving.pipeline.orchestration import RankPipeline
from serving.repository.registry import ModelRegistry
from serving.triton.caller import ModelCaller

__all__ = ["RepositoryWatcher"]

log = logging.getLogger("rankserve")


class RepositoryWatcher:
    """Checks the repository every ``interval_s`` and applies what changed to ``pipeline``.

    Args:
        settings: model names and the repository path.
        registry: the repository.
        pipeline: the pipeline to keep current.
        caller: the Triton caller a new recall stage uses.
        interval_s: seconds between checks.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry, pipeline: RankPipeline, caller: ModelCaller,
                 interval_s: float = 1.0) -> None:
        self.settings = settings
        self.registry = registry
        self.pipeline = pipeline
        self.caller = caller
        self.interval_s = interval_s
        self._stamp = self._read_stamp()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repository-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop checking; waits for a check in progress to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

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
            p.recall = make_recall(self.settings, self.registry, p.tables, self.caller, tower)
        log.info(json.dumps({"event": "traffic_changed", "traffic": {m: t.to_json() for m, t in p.traffic_split.items()},
                             "user_tower": tower}))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as err:  # noqa: BLE001 - a bad file must not kill the watcher; keep serving
                log.warning("repository watcher: %s", err)
